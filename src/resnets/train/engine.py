"""The training loop: ``train(config)``. One CPU, one GPU, or many processes under torchrun.

Read top to bottom: set up (processes, device, data, model, optimizer), restore a checkpoint when
resuming, then epochs of optimizer steps, each epoch ending with validation, a metrics row, the
``best`` and ``last`` checkpoints. Every piece of state that influences the next step is in the
checkpoint, so an interrupted run resumed from it ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.profiler import record_function

from ..data.split import sample_data_dir
from ..errors import InputError
from ..pretrained import identity, resolve
from ..registry import create_model
from ..transfer.finetune import GradualUnfreezer, set_trainable, stage_names
from ..weights_io import METRIC_ALIASES, WriteError, atomic_write, first_nonfinite, read_metadata_only
from .checkpoint import (
    CheckpointError,
    export_weights,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import Config, DataConfig, config_from_dict, load_config, set_key
from .config import validate as check_config
from .distill import Distillation, load_teachers
from .host_memory import keep_freed_memory
from .optim import EMA, Schedule, build_optimizer
from .report import Reporter, write_metrics


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on; the message says which and what to do."""


class NonFiniteLossError(TrainingError):
    pass


class NonFiniteStateError(TrainingError):
    """A parameter or buffer became NaN/inf; nothing was written over the last good checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C or SIGTERM after writing a resumable checkpoint; ``signum`` says which."""

    def __init__(self, signum: int | None = None):
        super().__init__(signum)
        self.signum = signum


@dataclass
class StepInfo:
    """What a callback sees after every optimizer step (raise KeyboardInterrupt to stop cleanly)."""

    step: int
    epoch: int
    batch: int  # batches of this epoch consumed so far
    loss: float
    lr: float
    model: nn.Module


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, float]  # the last epoch's row
    best: float | None
    weights: Path  # final .safetensors
    history: list[dict[str, float]] = field(default_factory=list)


def weights_metadata(model: str, weights: str) -> dict[str, Any]:
    """The metadata of pretrained weights (classes, mean/std...); empty for plain state dicts."""
    return read_metadata_only(resolve(model, weights))


def select_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512_BF16 or AMX-BF16; Linux's cpuinfo flags).
    Without them oneDNN emulates bf16 and a bf16 step is slower than fp32 (measured on AVX2-only EPYC
    machines of this project); with them a ResNet-20 step ran 1.9x faster than fp32 (RESULTS.md)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the device computes it natively, else fp32; other values unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def _setup_distributed(device_name: str) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; init the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        gpu = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
        dist.init_process_group("nccl" if gpu else "gloo")
    return rank, world, local_rank


def _all_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    """Metrics summed over processes (each process sees a different slice of every batch)."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _finite_everywhere(loss: torch.Tensor, world: int) -> bool:
    """Whether the loss is finite on every process. Under DDP all ranks must take the same branch:
    a rank that skipped (or stopped) alone would leave the others' gradient all-reduce waiting
    for it, or pair their buckets with its next batch's (tests/test_train_ddp.py)."""
    finite = torch.isfinite(loss.detach()).to(torch.int32)
    if world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


class _StopNow(KeyboardInterrupt):
    """The second Ctrl-C/SIGTERM: raised wherever the process is, possibly between an optimizer
    update (or a batch-norm statistics update) and the step count, so the state is not saved."""


class _StopOnSignals:
    """First Ctrl-C or SIGTERM (what schedulers and container runtimes send before killing):
    finish the current step, write a resumable checkpoint, stop. A second one: stop now, writing
    nothing (a checkpoint of a half-done step would apply its batch twice when resumed)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested, self.signum, self._old = False, None, {}

    def _handle(self, signum, frame):
        if self.requested:
            raise _StopNow
        self.requested, self.signum = True, signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this step ({name} again to stop at once)...", flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def _per_step(loader, accumulate: int, batches: int, start: int):
    """The loader's batches grouped by optimizer step: `accumulate` micro-batches each, fewer at the
    epoch's tail. `start` (where the loader resumes) is always a step boundary."""
    group, index = [], start
    for x, y in loader:
        group.append((x, y))
        index += 1
        if len(group) == accumulate or index == batches:
            yield group
            group = []


Criterion = Callable[[nn.Module, Any, Any], tuple[torch.Tensor, Any]]
"""``(model, inputs, targets) -> (loss, correct)``: the forward pass and its loss, for a step whose
model is not a classifier trained by cross-entropy (torchvision's detectors take targets and return
their losses); ``correct`` counts right answers where that means something, else 0."""


def train_step(model: nn.Module, micro_batches: list, optimizer: torch.optim.Optimizer, lr: float, *,
               raw_model: nn.Module, ema: EMA | None = None, scaler=None, autocast=None,
               label_smoothing: float = 0.0, grad_clip: float = 0.0, world: int = 1,
               where: str = "", criterion: Criterion | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimizer step: forward, loss and backward for each micro-batch (gradient accumulation:
    the mean over them), then the optimizer and the EMA of the weights. The loss is cross-entropy
    on the model's logits unless a ``criterion`` computes it.

    Returns the summed loss and the number of correct top-1 predictions as tensors (converting them
    is the caller's choice of when to synchronise) and the number of images."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    loss_sum = correct = 0
    n = 0
    autocast = autocast or nullcontext()
    for i, (x, y) in enumerate(micro_batches):
        # Under DDP the gradients are all-reduced on the last micro-batch's backward only.
        sync = model.no_sync() if world > 1 and i + 1 < len(micro_batches) else nullcontext()
        with sync:
            with autocast, record_function("step/forward"):
                if criterion is None:
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
                else:
                    loss, hits = criterion(model, x, y)
            if not _finite_everywhere(loss, world):
                value = loss.item()
                raise NonFiniteLossError(f"loss is {value} at {where}" if not math.isfinite(value)
                                         else f"loss is not finite on another process at {where}")
            scaled = loss / len(micro_batches)
            with record_function("step/backward"):
                (scaler.scale(scaled) if scaler else scaled).backward()
        with torch.no_grad():
            loss_sum = loss_sum + loss.detach() * len(y)
            correct = correct + ((logits.argmax(1) == y).sum() if criterion is None else hits)
        n += len(y)
    with record_function("step/optimizer"):
        if scaler:
            scaler.unscale_(optimizer)
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        with record_function("step/ema"):
            ema.update(raw_model)
    return loss_sum, correct, n


@contextmanager
def _resumable_on_write_error(run_dir: Path):
    """A failed write (disk full, file-size limit) says how to go on: the previous checkpoint is
    intact, so after freeing space the run resumes from it (issue 15)."""
    try:
        yield
    except WriteError as exc:
        raise WriteError(f"{exc}; then resume with: resnets train --resume {run_dir}") from None


def _first_nonfinite(model: nn.Module, ema: EMA | None = None, world: int = 1) -> str | None:
    """The name of the first parameter or buffer (of the model, then of its EMA) holding a NaN or
    inf, else None (``weights_io.first_nonfinite``: one fused check, one host sync). Under DDP every
    rank gets the same answer: ranks' BN statistics differ without SyncBatchNorm, so all stop or none."""
    state = {f"parameter/buffer {k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        state.update({f"EMA tensor {k}": v for k, v in ema.state.items()})
    bad = first_nonfinite(state)
    if world > 1:
        finite = torch.tensor(int(bad is None), dtype=torch.int32, device=next(iter(state.values())).device)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bad is None and not bool(finite):
            return "a tensor on another process"
    return bad[0] if bad else None


def _bn_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of the batch-norm running statistics, to undo a skipped forward pass's update."""
    return [(b, b.detach().clone()) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in m.buffers()]


def _restore(saved) -> None:
    with torch.no_grad():
        for live, copy_ in saved or ():
            live.copy_(copy_)


def _explain_runtime_error(exc: BaseException, where: str, batch_size: int, accumulate: int) -> Exception | None:
    text = str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower():
        return TrainingError(
            f"out of memory at {where} with {batch_size} images per forward pass. Use a smaller batch at "
            f"the same effective size: --set train.accumulate={accumulate * 2} (or lower train.batch_size), "
            f"or --set train.precision=bf16.")
    if "Expected more than 1 value per channel when training" in text:
        return TrainingError(
            f"batch-norm got a batch of one image at {where}: batch statistics of a single image are "
            f"undefined. Change train.batch_size (or the number of processes / train.accumulate) so no "
            f"batch holds exactly one image, or set train.freeze_bn=true.")
    return None


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _top_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum())


@torch.no_grad()
def validate(model: nn.Module, loader, device: torch.device, autocast, world: int = 1) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy over a loader (summed over processes)."""
    was_training = model.training
    model.eval()
    loss_sum = correct = correct5 = n = 0.0
    for x, y in loader:
        with autocast:
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        correct5 += _top_correct(logits, y, 5)
        n += len(y)
    model.train(was_training)
    loss_sum, correct, correct5, n = _all_sum([loss_sum, correct, correct5, n], device, world)
    n = max(n, 1)
    return {"val_loss": loss_sum / n, "val_top1": correct / n, "val_top5": correct5 / n}


# What a checkpoint's state was made with: changed on resume, the weights would not load (model),
# the optimizer's state would not fit (optim.name, finetune's parameter groups), the loader's
# position would mean other images (the split, the batch size, the seed of the shuffle), or the
# weights would hold two recipes under the one they record (distill.*).
_FIXED_ON_RESUME = ("model.name", "model.kwargs", "data.val_size", "data.split_seed", "data.limit",
                    "train.batch_size", "train.accumulate", "train.seed", "optim.name", "finetune.weights",
                    "finetune.weights_normalization", "finetune.freeze", "finetune.linear_probe",
                    "finetune.lr_mult", "finetune.unfreeze_every", "distill.teachers", "distill.alpha",
                    "distill.temperature", "distill.tta")


def _check_resume_keys(saved: Config, cfg: Config, run_dir: Path) -> None:
    before, after = saved.to_dict(), cfg.to_dict()
    for key in _FIXED_ON_RESUME:
        section, name = key.split(".")
        old, new = before[section][name], after[section][name]
        if old != new:
            hint = "" if key.startswith("model.") else "; finetune.weights can start it from this run's weights"
            raise InputError(f"--set {key}={new}: {run_dir / 'last.pt'} was trained with {key}={old}, and a resumed "
                             f"run keeps it (its state and the data order depend on it). Start a new run to "
                             f"change it{hint}.")


def _check_resume_data(saved_meta: dict, recipe: dict, data_path, run_dir: Path) -> None:
    """The same images as the run was trained on, wherever they now lie: other images would make
    another 45k/5k split, mixing validation images into training, with nothing said. Refused when
    the classes or the images per class differ (the split depends on the labels alone); the same
    counts with other content (another image decoder's pixels, or edited files) is only a warning."""
    old = ((saved_meta.get("recipe") or {}).get("data") or {}).get("dataset") or {}
    new = recipe["data"]["dataset"]
    if not old.get("fingerprint") or old["fingerprint"] == new["fingerprint"]:
        return
    then_now = (f"{old.get('images')} images of {old.get('name')!r} then, {new['images']} of {new['name']!r} now")
    if old.get("classes") != new["classes"] or old.get("images_per_class") != new["images_per_class"]:
        raise InputError(f"data.path {data_path}: not the images {run_dir} was trained on ({then_now}; other "
                         f"classes or images per class). Resume with the original images (--data DIR), or start "
                         f"a new run.")
    warnings.warn(f"data.path {data_path}: the same classes and images per class as {run_dir} was trained on "
                  f"({then_now}), but other content (another image decoder, or edited files); resuming on them",
                  stacklevel=3)


def _check_resume_teachers(saved_meta: dict, teachers: list[dict], specs: list[str], run_dir: Path) -> None:
    """A resumed distillation keeps its teachers by content: a tag (resnet56:cifar10) names another
    file once newer weights ship, and a path may have been overwritten since the run started."""
    saved = ((saved_meta.get("recipe") or {}).get("distill") or {}).get("teachers") or []
    for i, (spec, old, new) in enumerate(zip(specs, saved, teachers)):
        if isinstance(old, dict) and old.get("sha256") and old["sha256"] != new["sha256"]:
            raise InputError(f"distill.teachers[{i}] ({spec}) is now {new['file']} (sha256 {new['sha256'][:12]}...), "
                             f"but {run_dir / 'last.pt'} was taught by {old.get('file')} (sha256 "
                             f"{old['sha256'][:12]}...); a resumed run keeps its teachers. Put that file back "
                             f"and name it, or start a new run.")


def _new_run_dir(cfg: Config) -> Path:
    name = cfg.name or f"{cfg.model.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out_dir) / name
    if (run_dir / "last.pt").exists():
        raise TrainingError(f"{run_dir} already holds a run; resume it with --resume {run_dir} "
                            f"or choose another --set name=...")
    return run_dir


def train(
    config: Config | str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    resume: str | Path | None = None,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
) -> TrainResult:
    """Train a model as ``config`` says (a :class:`Config`, or a YAML path, plus ``key=value`` overrides).

    ``resume``: a run directory; training continues from its ``last.pt`` with its saved config
    (``overrides`` still apply, e.g. a longer ``train.epochs``).
    """
    threads, had_group = torch.get_num_threads(), dist.is_available() and dist.is_initialized()
    try:
        return _train(config, overrides, resume, callbacks)
    finally:
        torch.set_num_threads(threads)
        if not had_group and dist.is_available() and dist.is_initialized():  # we started it (torchrun)
            dist.destroy_process_group()


def _train(config, overrides, resume, callbacks) -> TrainResult:
    # ---- configuration and processes -------------------------------------------------------------
    ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "last.pt").is_file():
            raise FileNotFoundError(f"nothing to resume: {run_dir / 'last.pt'} does not exist")
        ckpt = load_checkpoint(run_dir / "last.pt")
        config = config_from_dict(ckpt["config"], check=False)  # checked below, after the overrides
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
        for assignment in overrides:
            set_key(cfg, assignment)
        check_config(cfg)
    else:
        cfg = load_config(config, overrides)
    if ckpt is not None:
        _check_resume_keys(config, cfg, run_dir)
    t = cfg.train
    rank, world, local_rank = _setup_distributed(t.device)
    device = select_device(t.device, local_rank)
    if t.threads:
        torch.set_num_threads(t.threads)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults on each step's fresh activations (host_memory.py)
    # Resolved once and saved so: a resumed run keeps the arithmetic it started with on any machine.
    t.precision = resolve_precision(t.precision, device)
    if resume is None:
        run_dir = _broadcast(_new_run_dir(cfg) if rank == 0 else None, world)
    is_main = rank == 0

    # ---- data ------------------------------------------------------------------------------------
    from ..data import TensorImageDataset, make_loader, open_dataset, portable_recipe, split_train_val

    if cfg.data.path is not None and not str(cfg.data.path).strip():
        # `--data ""` (an unset shell variable) must not quietly train on the bundled sample.
        raise InputError("data.path is empty (--data \"\"?): give an image folder or CIFAR archive folder, "
                         "or leave it out for the bundled sample")
    data_path = cfg.data.path or sample_data_dir()
    dataset = open_dataset(data_path, split="train", download=cfg.data.download,
                           allow_empty_classes=cfg.data.allow_empty_classes)
    # The recipe describes its data by content, not by this machine's path (issue 18).
    recipe = portable_recipe(cfg.to_dict(), dataset, cfg.data.path, sample_data_dir())
    if ckpt is not None:
        _check_resume_data(ckpt.get("meta") or {}, recipe, data_path, run_dir)
    if cfg.data.val_size > 0:
        train_ds, val_ds = split_train_val(dataset, val_size=cfg.data.val_size, seed=cfg.data.split_seed)
    else:
        train_ds, val_ds = dataset, None
    if 0 < cfg.data.limit < len(train_ds):
        # A class-balanced subset (the stratified splitter again, keeping `limit` images), not the
        # first N, which would be the first classes only.
        train_ds, _ = split_train_val(train_ds, val_size=len(train_ds) - cfg.data.limit, seed=cfg.data.split_seed)
    ft = cfg.finetune
    saved_meta = (ckpt or {}).get("meta") or {}
    if ft.weights and ft.weights_normalization:
        # Pretrained features expect the pixels normalised as in their own training; a resumed run
        # reads them from its checkpoint, not from the file it started from (which may be gone).
        source = saved_meta if ckpt is not None else weights_metadata(cfg.model.name, ft.weights)
        if source.get("mean") and source.get("std"):
            train_ds.info = dataclasses.replace(train_ds.info, mean=tuple(source["mean"]), std=tuple(source["std"]))
    info = train_ds.info
    if val_ds is not None:
        # Validated as the weights will be used: with the training part's mean and std, which
        # data.limit (a subset of the training part) computes again.
        val_ds.info = info
    micro = t.batch_size // (world * t.accumulate)
    if micro * world * t.accumulate != t.batch_size:
        raise ValueError(f"train.batch_size={t.batch_size} must be divisible by processes ({world}) x "
                         f"train.accumulate ({t.accumulate})")
    # In-memory small images augment whole batches (pad-crop, flip, cutout); folders of large images
    # go through DataLoader workers with torchvision transforms.
    if isinstance(train_ds, TensorImageDataset):
        augment = {"crop_padding": cfg.data.crop_padding, "cutout": cfg.data.cutout}
    else:
        defaults = DataConfig()
        ignored = [f"data.{k}={getattr(cfg.data, k)}" for k in ("cutout", "crop_padding")
                   if getattr(cfg.data, k) != getattr(defaults, k)]
        if ignored:  # else they would be dropped: FolderLoader augments by random-resized crop and flip
            raise InputError(f"{', '.join(ignored)}: the pad-and-crop and cutout augmentations work on small "
                             f"images held in memory (CIFAR-sized, up to 64 px); {data_path} is read as a "
                             f"folder of larger images, augmented by random-resized crops and flips. "
                             f"Remove the key(s).")
        augment = {}
    common = {"device": device, "seed": t.seed, "rank": rank, "world_size": world, "channels_last": t.channels_last}
    loader = make_loader(train_ds, micro, train=True, flip=cfg.data.flip, **augment, **common)
    val_loader = make_loader(val_ds, max(micro, 256), train=False, **common) if val_ds is not None else None
    batches = len(loader)
    steps_per_epoch = math.ceil(batches / t.accumulate)
    total_steps = t.steps if t.steps > 0 else t.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)

    # What inference must do to see the images as training did (input size, resize, crop, mean/std;
    # issue 14): in every checkpoint and export, read back by resnets.preprocessing.
    preprocessing = loader.preprocessing()
    criterion = None
    if cfg.distill.teachers:
        # Loaded before the run directory is made, so a bad teacher leaves nothing behind (issue 15).
        teachers = load_teachers(cfg.distill.teachers, classes=list(info.classes), mean=info.mean, std=info.std,
                                 input_size=preprocessing.input_size, recipe_data=recipe["data"], device=device,
                                 channels_last=t.channels_last)
        if t.compile:  # their forward passes are a large part of the step
            for teacher in teachers:
                teacher.net = torch.compile(teacher.net)
        # What the teachers were, by content (the config's paths are only file names once portable).
        recipe["distill"]["teachers"] = [teacher.description for teacher in teachers]
        if ckpt is not None:
            _check_resume_teachers(saved_meta, recipe["distill"]["teachers"], cfg.distill.teachers, run_dir)
        criterion = Distillation(teachers, cfg.distill.alpha, cfg.distill.temperature, t.label_smoothing,
                                 flip=cfg.distill.tta == "flip")

    # ---- model, optimizer, schedule --------------------------------------------------------------
    torch.manual_seed(t.seed)
    # A resumed run's weights are its checkpoint's: the file a fine-tune started from is not read again
    # (it may be gone, or hold other weights by now), and the builder arguments it inherited from that
    # file (shortcut="B"...) are the saved ones.
    inherited = saved_meta.get("model_kwargs") or {}
    model = create_model(cfg.model.name, num_classes=len(info.classes),
                         weights=ft.weights if ckpt is None else None, **{**inherited, **cfg.model.kwargs})
    if ft.weights:
        # What the run started from, by content: a tag such as cifar10 names another file once newer weights
        # ship, and a path is only a file name once the recipe is portable (as for the teachers above). A
        # resumed run keeps what its start recorded.
        saved = (saved_meta.get("recipe") or {}).get("finetune") or {}
        if "source" in saved:
            recipe["finetune"]["source"] = saved["source"]
        else:
            recipe["finetune"]["source"] = identity(resolve(cfg.model.name, ft.weights))
    if is_main and resume is None:  # only now: bad data or model arguments must leave nothing behind (issue 15)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
    unfreezer = None
    if ft.linear_probe:  # the classifier alone; BN kept in eval mode below (train_mode)
        set_trainable(model, stage_names(model)[:-1], False)
    set_trainable(model, ft.freeze, False)
    if ft.unfreeze_every:
        if world > 1:
            raise ValueError("finetune.unfreeze_every is not supported with several processes (DDP "
                             "fixes the set of trained parameters when it wraps the model)")
        unfreezer = GradualUnfreezer(model, ft.unfreeze_every, frozen=ft.freeze)
    if t.sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if t.channels_last else torch.preserve_format)
    if micro == 1 and not t.freeze_bn and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise TrainingError(
            "batch-norm would train on batches of one image (train.batch_size / processes / train.accumulate "
            "= 1): its batch statistics would be those of a single image. Use at least 2 images per "
            "process and micro-batch, or set train.freeze_bn=true.")
    raw_model = model  # what checkpoints hold: no DDP `module.` or compile `_orig_mod.` prefixes
    optimizer = build_optimizer(model, cfg.optim, ft.lr_mult, thawing=unfreezer is not None)
    schedule = Schedule(cfg.schedule, cfg.optim.lr, total_steps, steps_per_epoch)
    ema = EMA(model, t.ema_decay) if t.ema_decay > 0 else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    # fp16 needs loss scaling to keep small gradients representable (Micikevicius et al. 2018); bf16 doesn't.
    scaler = torch.amp.GradScaler(device.type) if t.precision == "fp16" else None
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        model = torch.compile(model)
    eval_model = copy.deepcopy(raw_model) if ema else raw_model

    # The builder arguments the model was really built with: a fine-tune inherits the source weights'
    # (create_model merges them), so a shortcut="B" network stays one when the result is reloaded.
    source_kwargs = (getattr(raw_model, "pretrained_meta", None) or {}).get("model_kwargs") or inherited
    model_kwargs = {k: v for k, v in {**source_kwargs, **cfg.model.kwargs}.items()
                    if k not in ("num_classes", "in_chans")}
    meta = {"model": cfg.model.name, "model_kwargs": model_kwargs, "classes": list(info.classes),
            "mean": list(info.mean), "std": list(info.std), "image_size": [3, *preprocessing.input_size],
            "preprocessing": preprocessing.to_metadata(),
            "recipe": recipe}
    higher_better = t.best_metric.endswith(("top1", "top5"))

    # ---- state, restored when resuming -----------------------------------------------------------
    step, start_epoch, start_batch, best = 0, 0, 0, None
    stats = {"loss": 0.0, "correct": 0.0, "n": 0.0, "seconds": 0.0}  # running sums of the current epoch
    history: list[dict[str, float]] = []
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as exc:  # torch: "loaded state dict contains a parameter group that doesn't match"
            raise CheckpointError(f"{run_dir / 'last.pt'}: its optimizer state does not fit the parameter groups this "
                                  f"version builds ({exc}); a run started before a change to the fine-tuning "
                                  f"stages (finetune.lr_mult, the DenseNet stage names) cannot resume: start it "
                                  f"again, or from its weights with finetune.weights") from None
        schedule.load_state_dict(ckpt["schedule"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt["rng"])
        step, best, stats = ckpt["step"], ckpt["best"], dict(ckpt["epoch_stats"])
        # Rows of a run from before the metric rename (val_acc -> val_top1) under today's names.
        history = [{METRIC_ALIASES.get(k, k): v for k, v in row.items()} for row in ckpt["history"]]
        start_epoch, start_batch = ckpt["loader"]["epoch"], ckpt["loader"]["batch"]
        if start_batch >= batches:
            start_epoch, start_batch = start_epoch + 1, 0
        del ckpt
        if is_main:  # the overrides, once the state has loaded with them
            cfg.save(run_dir / "config.yaml")
    saved_step = step if resume is not None else None  # of the last.pt on disk, for messages

    def last_good() -> str:
        return (f"the last good state is {run_dir / 'last.pt'} (step {saved_step})" if saved_step is not None
                else "no checkpoint had been written yet")

    def checkpoint(name: str, epoch: int, batch: int) -> None:
        nonlocal saved_step
        if not is_main:
            return
        bad = _first_nonfinite(raw_model, ema)
        if bad:  # never replace a good checkpoint with a broken state (issue 15)
            raise NonFiniteStateError(f"{bad} is not finite at step {step}; {run_dir / name} was not written")
        with _resumable_on_write_error(run_dir):
            save_checkpoint(run_dir / name, {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "ema": ema.state_dict() if ema else None, "epoch": epoch, "step": step,
                "loader": {"epoch": epoch, "batch": batch}, "rng": rng_state(), "config": cfg.to_dict(),
                "meta": {**meta, "metrics": history[-1] if history else {}}, "epoch_stats": dict(stats),
                "best": best, "history": history,
            })
        if name == "last.pt":
            saved_step = step

    reporter = Reporter(run_dir, enabled=is_main, progress=t.progress, tensorboard=t.tensorboard,
                        purge_step=step if step else None)
    if is_main and resume is not None:
        # A row written after the checkpoint (an end-of-epoch save that failed) is repeated by the
        # resumed run: metrics.csv is made to hold exactly the checkpoint's history again.
        write_metrics(run_dir / "metrics.csv", history)
    if is_main:
        where = "resuming at step {step}" if step else "starting"
        reporter.print(f"[bold]{run_dir}[/]: {cfg.model.name}, {len(train_ds)} train / "
                       f"{len(val_ds) if val_ds is not None else 0} val images, {epochs} epochs of "
                       f"{steps_per_epoch} steps ({total_steps} in all), device {device}"
                       f"{f' x{world}' if world > 1 else ''}; {where.format(step=step)}")

    # ---- the loop ----------------------------------------------------------------------------------
    def train_mode() -> None:
        model.train()
        if t.freeze_bn or ft.linear_probe:
            _freeze_bn(model)
        # A frozen stage keeps its batch-norm statistics too, or its outputs would drift.
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
                m.eval()

    def stop_if_not_finite(where: str) -> None:
        """Refuse a state with a NaN/inf parameter or buffer (issue 15): batch-norm in training mode
        keeps the loss finite for a while as running_var overflows, so the loss alone is no guard."""
        with record_function("step/finite-check"):
            bad = _first_nonfinite(raw_model, ema, world)
        if bad:
            raise NonFiniteStateError(
                f"{bad} is not finite after {where}. Stopped without writing a checkpoint: {last_good()}. "
                f"Lower optim.lr or set train.grad_clip, then start again"
                f"{' or resume from it' if saved_step is not None else ''}.")

    epoch, batch_index, resume_at = start_epoch, start_batch, start_batch
    step_args = {"raw_model": raw_model, "ema": ema, "scaler": scaler, "autocast": autocast,
                 "label_smoothing": t.label_smoothing, "grad_clip": t.grad_clip, "world": world, "criterion": criterion}
    with _StopOnSignals() as stop:
        try:
            for epoch in range(start_epoch, epochs):
                if step >= total_steps:  # a finished run resumed (one that ended mid-epoch): exports only
                    break
                loader.set_epoch(epoch)
                if start_batch:
                    loader.load_state_dict({"epoch": epoch, "batch": start_batch})
                batch_index, start_batch = start_batch if epoch == start_epoch else 0, 0
                resume_at = batch_index  # first batch not yet part of a completed step
                if unfreezer is not None:  # a function of the epoch alone, so resuming reproduces it
                    unfreezer.step(epoch)
                train_mode()
                reporter.start_epoch(epoch, epochs, steps_per_epoch, done=batch_index // t.accumulate)
                tick = time.perf_counter()
                for micro_batches in _per_step(loader, t.accumulate, batches, batch_index):
                    where = f"step {step + 1} (epoch {epoch + 1}, batch {batch_index + len(micro_batches)}/{batches})"
                    lr = schedule.lr(step)
                    bn_buffers = _bn_buffers(raw_model) if t.skip_nonfinite else None
                    try:
                        loss_sum, correct, n = train_step(model, micro_batches, optimizer, lr, where=where, **step_args)
                    except NonFiniteLossError as exc:
                        if not t.skip_nonfinite:
                            # The parameters are those before this step; keep them if the forward pass
                            # left the batch-norm statistics finite (else last.pt stays as it was).
                            if not _first_nonfinite(raw_model, ema, world):
                                checkpoint("last.pt", epoch, batch_index)
                            raise NonFiniteLossError(
                                f"{exc}. Stopped; {last_good()}. "
                                f"Lower optim.lr, set train.grad_clip, or --set train.skip_nonfinite=true to "
                                f"skip such batches.") from None
                        reporter.print(f"[yellow]skipping batch: {exc}[/]")
                        _restore(bn_buffers)  # the skipped forward pass updated the running statistics
                        optimizer.zero_grad(set_to_none=True)
                        batch_index += len(micro_batches)
                        resume_at = batch_index
                        continue
                    except (RuntimeError, ValueError) as exc:
                        explained = _explain_runtime_error(exc, where, len(micro_batches[0][1]), t.accumulate)
                        if explained is None:
                            raise
                        raise explained from exc
                    step += 1
                    batch_index += len(micro_batches)
                    resume_at = batch_index
                    stop_if_not_finite(where)
                    loss_sum, correct = float(loss_sum), float(correct)
                    stats["loss"] += loss_sum
                    stats["correct"] += correct
                    stats["n"] += n
                    now = time.perf_counter()
                    stats["seconds"] += now - tick
                    tick = now
                    reporter.step(step, loss_sum / n, correct / n, lr, stats)
                    for callback in callbacks:
                        callback(StepInfo(step, epoch, batch_index, loss_sum / n, lr, raw_model))
                    if stop.requested and batch_index < batches:  # at an epoch's end, validate and save first
                        raise KeyboardInterrupt
                    if step >= total_steps:
                        break

                # ---- end of epoch (or of training, possibly mid-epoch): validation, metrics, checkpoints ----
                resume_at = batch_index if step >= total_steps else batches
                reporter.end_epoch()
                loss_sum, correct, n = _all_sum([stats["loss"], stats["correct"], stats["n"]], device, world)
                row = {"epoch": epoch + 1, "step": step, "lr": schedule.lr(max(step - 1, 0)),
                       "train_loss": loss_sum / max(n, 1), "train_top1": correct / max(n, 1),
                       "seconds": stats["seconds"], "img_per_s": n / max(stats["seconds"], 1e-9)}
                if val_loader is not None:
                    if ema:
                        eval_model.load_state_dict(ema.state)
                    # In full precision whatever train.precision is: the metric written into the
                    # weights is then the one `resnets eval` (fp32) reproduces (tests/test_pretrained.py).
                    row.update(validate(eval_model, val_loader, device, nullcontext(), world))
                history.append(row)
                metric = row.get(t.best_metric)
                watched = cfg.schedule.plateau_metric or t.best_metric
                schedule.epoch_end(row.get(watched), watched.endswith(("top1", "top5")))
                stats = {"loss": 0.0, "correct": 0.0, "n": 0.0, "seconds": 0.0}
                improved = metric is not None and (best is None or (metric > best if higher_better else metric < best))
                if improved:
                    best = metric
                reporter.epoch_row(history, improved=improved, best_metric=t.best_metric)
                if improved:
                    checkpoint("best.pt", epoch, resume_at)
                checkpoint("last.pt", epoch, resume_at)
                if step >= total_steps:
                    break
                if stop.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            # Between steps the state is consistent (and was checked finite): save it where the next
            # step would start. Not after a second signal: it may have come in the middle of a step.
            at_once = isinstance(exc, _StopNow)
            if not at_once:
                checkpoint("last.pt", epoch, resume_at)
            reporter.close()
            if is_main:
                how = {signal.SIGTERM: "terminated (SIGTERM)"}.get(stop.signum, "interrupted")
                if at_once:
                    then = f"; resume with: resnets train --resume {run_dir}" if saved_step is not None else ""
                    print(f"{how} at once in step {step + 1}, saving nothing from it; {last_good()}{then}", flush=True)
                else:
                    print(f"{how} at step {step}; resume with: resnets train --resume {run_dir}", flush=True)
            raise TrainingInterrupted(stop.signum) from None
        except BaseException:
            reporter.close()
            raise

    # ---- the end: exported weights and plots -------------------------------------------------------
    final = run_dir / "final.safetensors"
    stop_if_not_finite(f"step {step}, before writing {final.name}")
    if is_main:
        weights = ema.state if ema else raw_model.state_dict()
        with _resumable_on_write_error(run_dir):  # a resumed finished run writes its exports again
            export_weights(final, weights, {**meta, "metrics": history[-1] if history else {}})
            if best is not None and (run_dir / "best.pt").exists():
                best_ckpt = load_checkpoint(run_dir / "best.pt")
                best_weights = best_ckpt["ema"]["state"] if best_ckpt.get("ema") else best_ckpt["model"]
                export_weights(run_dir / "best.safetensors", best_weights, best_ckpt["meta"])
            atomic_write(run_dir / "summary.yaml", yaml.safe_dump(
                {"best": {t.best_metric: best}, "last": history[-1] if history else {}, "steps": step},
                sort_keys=False).encode())
    reporter.finish(history, best, t.best_metric, plots=t.plots)
    return TrainResult(run_dir, history[-1] if history else {}, best, final, history)
