"""Training configuration: typed dataclasses, filled from YAML and ``--set key=value`` overrides.

One file describes a run completely; the resolved version is written to ``RUN_DIR/config.yaml`` so a
run can be repeated (or resumed) from its directory alone. Unknown keys are errors that name the
closest valid key: a typo such as ``optim.weight_dcay`` must not silently train with the default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ..data.split import DEFAULT_SPLIT_SEED, DEFAULT_VAL_SIZE
from ..errors import InputError, UnknownNameError
from ..weights_io import METRIC_ALIASES, atomic_write


@dataclass
class ModelConfig:
    name: str = "resnet20"  # any name from `resnets models`
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder arguments, e.g. {shortcut: B}


@dataclass
class DataConfig:
    path: str | None = None  # image folder or CIFAR archive folder; None: the sample bundled with the package
    val_size: int = DEFAULT_VAL_SIZE  # images held out for validation (stratified); 0: no validation
    split_seed: int = DEFAULT_SPLIT_SEED
    limit: int = 0  # train on a class-balanced subset of N images after the split (0: all); for smoke runs
    crop_padding: int = 4  # random crop from a zero-padded image (He et al. 2015, sec. 4.2)
    flip: bool = True  # random horizontal flip
    cutout: int = 0  # side of the erased square (DeVries & Taylor 2017); 0: off
    download: bool = False
    allow_empty_classes: bool = False  # keep a class folder with no images (a label set fixed elsewhere)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw | rmsprop
    lr: float = 0.1  # peak learning rate, per optimizer step of `train.batch_size` images
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # applied to conv/linear weights only, never to BN parameters or biases
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    alpha: float = 0.99  # RMSprop smoothing constant


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # constant | multistep | cosine | onecycle | linear
    unit: str = "step"  # what `milestones` and `warmup` count: step | epoch
    milestones: list[int] = field(default_factory=list)  # multistep: where the lr changes
    factors: list[float] = field(default_factory=list)  # multistep: lr multiplier from each milestone on
    gamma: float = 0.1  # multistep without `factors`: multiply by gamma at every milestone
    warmup: int = 0  # linear warm-up length (in `unit`s), for constant, multistep and cosine
    min_lr: float = 0.0  # cosine, linear: final learning rate
    decay_frac: float = 1.0  # linear: fraction of training, at its end, over which the lr falls to min_lr
    pct_start: float = 0.25  # onecycle: fraction of training spent rising
    div_factor: float = 25.0  # onecycle: start lr = lr / div_factor
    final_div_factor: float = 1e4  # onecycle: end lr = start lr / final_div_factor
    # ReduceLROnPlateau on top of any schedule (the Keras example combines it with its step schedule).
    plateau_factor: float = 0.0  # multiply the lr by this after `plateau_patience` bad epochs; 0: off
    plateau_patience: int = 5
    plateau_cooldown: int = 0
    plateau_min_lr: float = 0.0
    plateau_metric: str = ""  # what plateau watches (Keras: val_loss); empty: train.best_metric


@dataclass
class TrainConfig:
    batch_size: int = 128  # images per optimizer step, summed over processes and accumulation steps
    epochs: int = 0  # length of training in epochs ...
    steps: int = 0  # ... or in optimizer steps (wins when > 0; the paper counts 64k iterations)
    accumulate: int = 1  # micro-batches per optimizer step
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # exponential moving average of the weights; 0: off. Validation uses it.
    grad_clip: float = 0.0  # max global gradient norm; 0: off
    # fp32 | bf16 | fp16 (autocast; fp16 adds a gradient scaler) | auto: bf16 where the device
    # computes it natively (a CUDA GPU with bf16, a CPU with AVX512_BF16 or AMX), else fp32.
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 0
    # val_top1 | val_loss | val_top5 | train_top1 | train_loss (top-k: fractions): what chooses best.pt.
    # val_top1 with data.val_size=0 chooses nothing (no best.pt); another val_* metric is refused then.
    best_metric: str = "val_top1"
    skip_nonfinite: bool = False  # skip a batch whose loss is NaN/inf instead of stopping
    sync_bn: bool = False  # SyncBatchNorm across processes (GPU only)
    freeze_bn: bool = False  # keep BatchNorm in eval mode (running statistics frozen; affine still trains)
    threads: int = 0  # torch intra-op threads for this run (restored after); 0: torch's default
    progress: bool = True  # rich progress bar per epoch
    tensorboard: bool = True
    plots: bool = True


@dataclass
class FinetuneConfig:
    """Transfer learning from pretrained weights (see resnets.transfer)."""

    weights: str | None = None  # start from these: a weights file, or a shipped tag such as cifar10
    freeze: list[str] = field(default_factory=list)  # stages kept frozen, e.g. [conv1, layer1, layer2]
    linear_probe: bool = False  # train the classifier only, batch-norm statistics frozen
    lr_mult: dict[str, float] = field(default_factory=dict)  # per-stage lr factors, e.g. {conv1: 0.1}
    unfreeze_every: int = 0  # gradual unfreezing: fc first, one more stage every N epochs; 0: off
    weights_normalization: bool = True  # normalise with the weights' mean/std, not the new data's


@dataclass
class DistillConfig:
    """Knowledge distillation from fixed teachers (see resnets.train.distill); off without teachers."""

    # weights files, or shipped weights as MODEL:TAG (resnet56:cifar10); several: their probabilities averaged
    teachers: list[str] = field(default_factory=list)
    alpha: float = 0.5  # weight of the teachers' term; the labels' cross-entropy gets 1 - alpha
    temperature: float = 4.0  # softens both distributions (Hinton et al. 2015)
    tta: str = ""  # "flip": each teacher's probabilities averaged over the image and its mirror


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    out_dir: str = "runs"  # runs are written to OUT_DIR/NAME
    name: str = ""  # run name; empty: <model>-<date>-<time>
    recipe: str = ""  # free text recorded with the weights: where the recipe comes from

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def save(self, path: str | Path) -> None:
        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False).encode())


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _keys(cls) -> list[str]:
    """Every dotted key of a config class, for suggestions."""
    out = []
    for name, hint in get_type_hints(cls).items():
        out += [f"{name}.{k}" for k in _keys(hint)] if dataclasses.is_dataclass(hint) else [name]
    return out


def _unknown_key(key: str) -> UnknownNameError:
    valid = _keys(Config) + [f.name for f in dataclasses.fields(Config)]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not close:  # a known leaf under the wrong (or no) section: `lr` -> `optim.lr`
        leaves = {k.rsplit(".", 1)[-1]: k for k in valid}
        close = [leaves[m] for m in difflib.get_close_matches(key.rsplit(".", 1)[-1], leaves, n=1, cutoff=0.6)]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UnknownNameError(f"unknown config key {key!r}{hint}")


def _yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` (never constructs Python objects) with errors that name the file or key."""
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        tag = f" ({exc.problem})" if exc.problem else ""
        raise InputError(f"{where}: YAML tags that build Python objects are refused{tag}; a config holds "
                         "only numbers, strings, booleans, lists and mappings") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: not valid YAML ({exc})") from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert a YAML value to the field's type; YAML reads 1e-4 as a string, so floats are parsed.

    Nothing is converted that would change its meaning: a fraction is not truncated to an int
    (``train.epochs=2.5e0`` is not 2), a boolean is not a number (``data.val_size=false`` is not 0)
    and only true/false (or yes/no, on/off, 1/0) is a boolean (``data.flip=2`` is not true)."""
    origin = getattr(hint, "__origin__", None)
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise InputError(f"config key {key!r} cannot be null")
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            raise InputError(f"config key {key!r}: expected true or false, got {value!r}")
        if hint is int:
            return _whole_number(value, key)
        if hint is float:
            if isinstance(value, bool):
                raise InputError(f"config key {key!r}: expected a number, got {value!r}")
            return float(value)
        if hint is str or text == "str | None":
            return str(value)
        if origin in (list, tuple):
            if isinstance(value, str):
                value = _yaml(value if value.startswith("[") else f"[{value}]", f"config key {key!r}")
            (item,) = set(hint.__args__)
            items = [_coerce(v, item, key) for v in value]
            return tuple(items) if origin is tuple else items
        if origin is dict:
            if isinstance(value, str):
                value = _yaml(value, f"config key {key!r}")
            if not isinstance(value, dict):
                raise ValueError
            item = hint.__args__[1]
            if item is Any:
                return dict(value)
            return {k: _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    except InputError:
        raise
    except (TypeError, ValueError):
        expected = "a number" if hint is float else hint.__name__ if isinstance(hint, type) else text
        raise InputError(f"config key {key!r}: expected {expected}, got {value!r}") from None
    return value


def _whole_number(value: Any, key: str) -> int:
    """An int field's value: an int, or a float/string holding a whole finite number (3.0, "1e3")."""
    if isinstance(value, bool):
        raise InputError(f"config key {key!r}: expected a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"config key {key!r}: expected a whole number, got {value!r}") from None
    if not math.isfinite(number) or not number.is_integer():
        raise InputError(f"config key {key!r}: expected a whole number, got {value!r}")
    return int(number)


def _fill(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    for key, value in data.items():
        dotted = prefix + key
        if key not in hints:
            raise _unknown_key(dotted)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise InputError(f"config key {dotted!r} is a section; expected a mapping, got {value!r}")
            _fill(getattr(obj, key), value, dotted + ".")
        else:
            setattr(obj, key, _coerce(value, hint, dotted))


def set_key(config: Config, assignment: str) -> None:
    """Apply one ``section.key=value`` override (value parsed as YAML: 0.1, true, [1, 2], {a: 1})."""
    if "=" not in assignment:
        raise InputError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    value = _yaml(raw, f"--set {key}") if raw.strip() else ""
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    _fill(config, nested)


def validate(config: Config) -> None:
    t, o, s = config.train, config.optim, config.schedule
    # The metrics' old names (val_acc, train_acc) still read, as the names they now have (issue 14).
    t.best_metric = METRIC_ALIASES.get(t.best_metric, t.best_metric)
    s.plateau_metric = METRIC_ALIASES.get(s.plateau_metric, s.plateau_metric)
    choices = {
        "optim.name": (o.name, ("sgd", "adam", "adamw", "rmsprop")),
        "schedule.name": (s.name, ("constant", "multistep", "cosine", "onecycle", "linear")),
        "schedule.unit": (s.unit, ("step", "epoch")),
        "train.precision": (t.precision, ("fp32", "bf16", "fp16", "auto")),
        "train.best_metric": (t.best_metric, ("val_top1", "val_loss", "val_top5", "train_top1", "train_loss")),
        "distill.tta": (config.distill.tta, ("", "flip")),
    }
    if s.plateau_metric:
        choices["schedule.plateau_metric"] = (s.plateau_metric, choices["train.best_metric"][1])
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(f"{key} must be one of {', '.join(allowed)}; got {value!r}{hint}")
    _check_ranges(config)
    if t.epochs <= 0 and t.steps <= 0:
        raise InputError("set train.epochs or train.steps to a positive number")
    if s.factors and len(s.factors) != len(s.milestones):
        raise InputError(f"schedule.factors ({len(s.factors)}) needs one value per milestone ({len(s.milestones)})")
    f = config.finetune
    if (f.freeze or f.linear_probe or f.lr_mult or f.unfreeze_every) and not f.weights:
        raise InputError("finetune.freeze/linear_probe/lr_mult/unfreeze_every need finetune.weights")
    k = config.distill
    unused = [f"distill.{n}" for n in ("alpha", "temperature", "tta")
              if getattr(k, n) != getattr(DistillConfig, n)]
    if unused and not k.teachers:
        raise InputError(f"{', '.join(unused)} need distill.teachers (weights files, or MODEL:TAG)")
    for i, teacher in enumerate(k.teachers):
        if not isinstance(teacher, str) or not teacher.strip():
            raise InputError(f"distill.teachers[{i}] must be a weights file or MODEL:TAG; got {teacher!r}")
    if list(s.milestones) != sorted(s.milestones):
        raise InputError(f"schedule.milestones must be increasing; got {s.milestones}")
    _check_schedule(config)
    _check_validation_metrics(config)
    _check_model_kwargs(config)
    check_device(t.device, "train.device")


def _check_schedule(config: Config) -> None:
    """Schedule keys that would have no effect (what each schedule reads: optim.Schedule.lr)."""
    s, t = config.schedule, config.train
    if s.name == "onecycle" and s.warmup:
        raise InputError(f"schedule.warmup={s.warmup} has no effect with schedule.name=onecycle, whose warm-up is "
                         f"schedule.pct_start (the fraction of training spent rising; now {s.pct_start}); "
                         "remove schedule.warmup (or set it to 0)")
    # The length of training in schedule.unit, where the config alone says it: train.steps wins
    # over train.epochs, and the steps in an epoch depend on the data, which only the engine knows
    # (an epoch-unit schedule of a run counted in steps is not checked here, nor the reverse).
    if t.steps > 0 and s.unit == "step":
        length, length_key = t.steps, "train.steps"
    elif t.steps <= 0 and s.unit == "epoch":
        length, length_key = t.epochs, "train.epochs"
    else:
        return
    unit = f"schedule.unit={s.unit}"
    if s.name == "multistep":
        # A milestone at the length or after it would change the lr after the last step.
        late = [m for m in s.milestones if m >= length]
        if late:
            raise InputError(f"schedule.milestones {late} are not before the end of training ({length_key}={length}, "
                             f"{unit}): the lr would never change there; remove them or train longer")
    if s.name != "onecycle" and s.warmup > length:
        raise InputError(f"schedule.warmup={s.warmup} is longer than training ({length_key}={length}, {unit}): "
                         "the lr would never reach optim.lr; shorten the warm-up or train longer")


def _check_validation_metrics(config: Config) -> None:
    """With data.val_size=0 nothing is validated, so a val_* metric is never computed: plateau
    would never reduce the lr, and no best.pt would be chosen.

    train.best_metric's default, val_top1, is exempt: every shipped recipe names it, and
    ``--set data.val_size=0`` (train on every image) must keep working with those that do not turn
    the plateau schedule on (keras_example does: it needs held-out images). It then selects
    nothing (last.pt and final.safetensors are the result; see TrainConfig.best_metric). Another
    val_* metric, or a plateau turned on (plateau_factor > 0) watching one, was asked for on
    purpose, and is refused."""
    d, t, s = config.data, config.train, config.schedule
    if d.val_size > 0:
        return
    watched = s.plateau_metric or t.best_metric
    if s.plateau_factor and watched.startswith("val_"):
        named = (f"schedule.plateau_metric={watched}" if s.plateau_metric
                 else f"schedule.plateau_metric (empty: train.best_metric={watched})")
        raise InputError(f"{named} is never computed with data.val_size=0 (no images held out), so "
                         f"schedule.plateau_factor={s.plateau_factor} would never reduce the lr; hold images out "
                         "(data.val_size=N) or watch a training metric (schedule.plateau_metric=train_loss)")
    if t.best_metric.startswith("val_") and t.best_metric != TrainConfig.best_metric:
        raise InputError(f"train.best_metric={t.best_metric} is never computed with data.val_size=0 (no images held "
                         "out), so no best.pt would be chosen; hold images out (data.val_size=N) or choose a "
                         "training metric (train.best_metric=train_loss)")


# create_model's own arguments, which the engine gives it: in model.kwargs they would clash with
# them (num_classes: "got multiple values") or build a model that fails at the first step.
_ENGINE_MODEL_ARGS = {
    "num_classes": "the engine sets it to the number of classes in data.path",
    "in_chans": "training images are decoded to 3-channel RGB, so the model takes 3 channels",
    "weights": "start from weights with finetune.weights",
    "features_only": "training needs the classifier",
    "out_indices": "training needs the classifier",
}


def _check_model_kwargs(config: Config) -> None:
    for name, reason in _ENGINE_MODEL_ARGS.items():
        if name in config.model.kwargs:
            raise InputError(f"model.kwargs.{name} cannot be set: {reason}; remove it from model.kwargs")


# (key, lowest, highest, whether each end is allowed). Written as `lo <= v <= hi` tests that NaN
# fails; `None` is unbounded. Issue 15: data.limit=-5 trained on everything, data.val_size=-1
# meant no validation, optim.lr=0 "trained", train.label_smoothing=2 and train.threads=-1 raised
# tracebacks deep inside torch.
_RANGES: list[tuple[str, float | None, float | None, bool, bool]] = [
    ("data.val_size", 0, None, True, True), ("data.limit", 0, None, True, True),
    ("data.crop_padding", 0, None, True, True), ("data.cutout", 0, None, True, True),
    ("optim.lr", 0, None, False, True), ("optim.momentum", 0, 1, True, False),
    ("optim.weight_decay", 0, None, True, True), ("optim.eps", 0, None, False, True),
    ("optim.alpha", 0, 1, True, True),
    ("schedule.gamma", 0, None, False, True), ("schedule.warmup", 0, None, True, True),
    ("schedule.min_lr", 0, None, True, True), ("schedule.decay_frac", 0, 1, False, True),
    ("schedule.pct_start", 0, 1, False, False), ("schedule.div_factor", 0, None, False, True),
    ("schedule.final_div_factor", 0, None, False, True), ("schedule.plateau_factor", 0, 1, True, False),
    ("schedule.plateau_patience", 0, None, True, True), ("schedule.plateau_cooldown", 0, None, True, True),
    ("schedule.plateau_min_lr", 0, None, True, True),
    ("train.batch_size", 1, None, True, True), ("train.epochs", 0, None, True, True),
    ("train.steps", 0, None, True, True), ("train.accumulate", 1, None, True, True),
    ("train.label_smoothing", 0, 1, True, False), ("train.ema_decay", 0, 1, True, False),
    ("train.grad_clip", 0, None, True, True), ("train.threads", 0, None, True, True),
    ("finetune.unfreeze_every", 0, None, True, True),
    ("distill.alpha", 0, 1, True, True), ("distill.temperature", 0, None, False, True),
]


def _in_range(value: float, lo, hi, lo_ok: bool, hi_ok: bool) -> bool:
    above = lo is None or (value >= lo if lo_ok else value > lo)
    below = hi is None or (value <= hi if hi_ok else value < hi)
    return bool(above and below) and value == value  # value == value: False for NaN


def _describe(lo, hi, lo_ok: bool, hi_ok: bool) -> str:
    if hi is None:
        return f">= {lo}" if lo_ok else f"> {lo}"
    return f"in {'[' if lo_ok else '('}{lo}, {hi}{']' if hi_ok else ')'}"


def _check_ranges(config: Config) -> None:
    def get(key: str):
        section, name = key.split(".")
        return getattr(getattr(config, section), name)

    for key, lo, hi, lo_ok, hi_ok in _RANGES:
        value = get(key)
        if not _in_range(value, lo, hi, lo_ok, hi_ok):
            raise InputError(f"{key} must be {_describe(lo, hi, lo_ok, hi_ok)}; got {value}")
    for i, beta in enumerate(config.optim.betas):
        if not _in_range(beta, 0, 1, True, False):
            raise InputError(f"optim.betas[{i}] must be in [0, 1); got {beta}")
    if len(config.optim.betas) != 2:
        raise InputError(f"optim.betas takes two values; got {list(config.optim.betas)}")
    for i, factor in enumerate(config.schedule.factors):
        if not _in_range(factor, 0, None, False, True):
            raise InputError(f"schedule.factors[{i}] must be > 0; got {factor}")
    for i, milestone in enumerate(config.schedule.milestones):
        if milestone < 0:
            raise InputError(f"schedule.milestones[{i}] must be >= 0; got {milestone}")
    for stage, mult in config.finetune.lr_mult.items():
        if not isinstance(mult, int | float) or not _in_range(float(mult), 0, None, True, True):
            raise InputError(f"finetune.lr_mult.{stage} must be a number >= 0; got {mult!r}")
    if not config.out_dir:
        raise InputError("out_dir must not be empty")


def check_device(name: str, key: str = "train.device") -> None:
    """``name`` is auto, cpu, cuda, cuda:N or mps and present on this machine (issue 15:
    train.device=cuda without a GPU gave a traceback from deep inside torch)."""
    import torch

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"{key} must be auto, cpu, cuda, cuda:N or mps; got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{key}={name}, but CUDA is not available on this machine (torch "
                             f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use "
                             f"{key}=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{key}={name}, but this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError(f"{key}={name}, but MPS (Apple GPU) is not available on this machine; use {key}=cpu or auto")
    elif device.type != "cpu":
        raise InputError(f"{key} must be auto, cpu, cuda, cuda:N or mps; got {name!r}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A :class:`Config` from a YAML file (or the defaults) with ``key=value`` overrides applied."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read config file {path}: {exc}") from None
        data = _yaml(text, str(path)) or {}
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
        _fill(config, data)
    for assignment in overrides:
        set_key(config, assignment)
    validate(config)
    return config


def config_from_dict(data: dict[str, Any], check: bool = True) -> Config:
    """``check=False`` when overrides follow (a resumed run on a machine without its GPU takes
    ``--set train.device=cpu``): the caller validates the result."""
    config = Config()
    _fill(config, data)
    if check:
        validate(config)
    return config
