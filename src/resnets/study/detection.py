"""Detection on composed CIFAR-10 scenes (issue 16, item 3): two-stage (Faster R-CNN) and one-stage
(FCOS, RetinaNet) detectors from torchvision on residual and plain backbones of the same depth
(resnet18, plain18), trained on the same stream of scenes and scored with COCO's mAP on held-out
scenes.

    resnets study detection --data ../shared/datasets/cifar10-jpeg/train --out runs/detection

The scenes are composed (:mod:`resnets.data.scenes`): real CIFAR-10 images pasted onto canvases
made from other real images, so every box is exact. Training scenes use only the 45k training part
of the engine's split, held-out scenes only the 5k it holds out. Every detector sees the same
scenes in the same order (scene ``i`` of the seed), from the same initial random state.

As detection backbones usually start from classification weights (and none can be downloaded
here), each backbone first learns CIFAR-10 classification on the same 45k training images for
``pretrain_epochs`` (one by default; the same recipe for residual and plain); ``0`` trains the
detectors from scratch.

Writes ``report.json`` (COCO mAP@[.5:.95], mAP@.5, mAP@.75 and class-agnostic mAP@.5 per detector
and backbone, the loss curve, the backbones' held-out top-1, wall times, the settings and the
command that reproduces them), ``detections.png`` (held-out scenes with the true boxes and each
detector's boxes) and the pretrained backbones (``<backbone>_cifar10.safetensors``).
"""

from __future__ import annotations

import json
import shlex
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import make_loader
from ..data.scenes import Scenes, SceneSettings, SceneSources, coco_map, compose_scenes, scene_sources
from ..errors import InputError
from ..progress import LoopProgress
from ..registry import create_model
from ..train.config import ScheduleConfig
from ..train.engine import train_step
from ..train.optim import Schedule, param_groups
from ..transfer.detection import DETECTORS, detector
from ..weights_io import atomic_write, export_weights, save_figure
from .report import StudyReport

# The plain counterpart of each residual backbone: the same layers without shortcuts.
PLAIN_OF = {"resnet18": "plain18", "resnet34": "plain34"}


@dataclass
class Pretraining:
    """A backbone's CIFAR-10 classification training before detection, and its held-out top-1."""

    backbone: str
    epochs: float
    steps: int
    val_top1: float  # on the images the split holds out (the held-out scenes' sources)
    seconds: float
    weights: str  # the file, in the study's folder


@dataclass
class DetectionRun:
    detector: str
    design: str  # "two-stage" or "one-stage"
    backbone: str
    residual: bool
    metrics: dict[str, float]  # coco_map's figures on the held-out scenes
    parameters: int
    steps: int
    train_seconds: float
    eval_seconds: float
    losses: list[float] = field(default_factory=list)  # mean total loss over each twentieth of training


@dataclass
class DetectionResult(StudyReport):
    out_dir: Path
    runs: list[DetectionRun]
    train_scenes: int  # scenes seen in training by each detector (steps x batch size)
    held_out_scenes: int
    held_out_objects: int
    seconds: float  # the whole study, data and figure included
    command: str
    settings: dict
    pretraining: list[Pretraining] = field(default_factory=list)
    figure: Path | None = None

    def __str__(self) -> str:
        head = f"{'detector':<11} {'design':<9} {'backbone':<9} {'mAP':>6} {'mAP50':>6} {'mAP75':>6} {'AP50 any':>8} {'train s':>8}"
        rows = [f"{r.detector:<11} {r.design:<9} {r.backbone:<9} {100 * r.metrics['map']:6.1f} "
                f"{100 * r.metrics['map_50']:6.1f} {100 * r.metrics['map_75']:6.1f} "
                f"{100 * r.metrics['map_50_agnostic']:8.1f} {r.train_seconds:8.0f}" for r in self.runs]
        return (f"COCO box mAP (%) on {self.held_out_scenes} held-out scenes ({self.held_out_objects} objects), "
                f"after {self.train_scenes} training scenes each; {self.seconds:.0f} s in all\n"
                + "\n".join([head, *rows])
                + "\n(AP50 any: mAP@.5 with the classes ignored, how well the objects are found)")


def pretrain_backbone(name: str, sources: SceneSources, path: str | Path, *, epochs: float = 1.0,
                      batch_size: int = 128, lr: float = 0.1, seed: int = 0) -> Pretraining:
    """Train ``name`` to classify the training part's images (32 px, the pasted objects' scale),
    the paper's CIFAR recipe shortened: SGD with Nesterov momentum, a 10 % linear warm-up then a
    cosine to zero, weight decay 5e-4 on weights, label smoothing 0.1, pad-crop and flip. Writes
    the weights to ``path`` (``create_model(name, weights=path)`` reads them back)."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=len(sources.classes))
    loader = make_loader(sources.train, batch_size, train=True, seed=seed)
    steps = max(1, round(epochs * len(loader)))
    lr_at = _warmup_cosine(lr, steps, max(1, steps // 10))
    optimizer = torch.optim.SGD(param_groups(model, 5e-4), lr=lr, momentum=0.9, nesterov=True)
    start, step = time.perf_counter(), 0
    model.train()
    with LoopProgress(f"{name}: CIFAR-10 classification before detection", steps, unit="steps") as progress:
        while step < steps:
            for x, y in loader:
                loss, correct, n = train_step(model, [(x, y)], optimizer, lr_at(step),
                                              raw_model=model, label_smoothing=0.1, where=f"{name} step {step + 1}")
                step += 1
                progress.advance(1, loss=round(float(loss) / n, 3), acc=round(float(correct) / n, 3))
                if step == steps:
                    break
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in make_loader(sources.held_out, 500, train=False, info=sources.train.info):
            correct, total = correct + int((model(x).argmax(1) == y).sum()), total + len(y)
    seconds = time.perf_counter() - start
    h, w = sources.train.images.shape[2:]
    info = sources.train.info
    export_weights(path, model.state_dict(), {
        "model": name, "classes": list(sources.classes), "mean": list(info.mean), "std": list(info.std),
        "image_size": [3, h, w], "metrics": {"val_top1": correct / total},
        "recipe": {"purpose": "detection backbone (resnets study detection)", "epochs": epochs, "steps": steps,
                   "batch_size": batch_size, "lr": lr, "optimizer": "SGD nesterov 0.9, wd 5e-4",
                   "label_smoothing": 0.1, "seed": seed, "data": sources.describe()},
    })
    return Pretraining(name, epochs, steps, correct / total, seconds, Path(path).name)


def _warmup_cosine(lr: float, steps: int, warmup: int):
    """``lr(step)``: a linear warm-up, then a cosine to zero (the engine's ``cosine`` schedule)."""
    return Schedule(ScheduleConfig(name="cosine", warmup=warmup), lr, steps, 1).lr


def _detection_loss(model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict]) -> tuple[torch.Tensor, int]:
    """The engine's ``Criterion`` for torchvision's detectors: in training they take the targets and
    return a dict of losses (classification, box regression, and centre-ness or objectness); the
    step minimises their sum."""
    return sum(model(images, targets).values()), 0


def _as_inputs(images: torch.Tensor) -> list[torch.Tensor]:
    return list(images.float().div_(255))  # torchvision's detectors take RGB in [0, 1] and normalise


def train_detector(model: torch.nn.Module, sources: SceneSources, steps: int, *, batch_size: int = 16,
                   lr: float = 1e-3, weight_decay: float = 1e-4, warmup: int | None = None, seed: int = 0,
                   settings: SceneSettings | None = None, grad_clip: float = 10.0,
                   what: str = "detection training") -> list[float]:
    """AdamW on scenes ``step * batch_size ...`` of ``seed``, composed from the training part;
    returns the mean total loss over each twentieth of the steps."""
    settings = settings or SceneSettings()
    warmup = warmup if warmup is not None else max(1, steps // 10)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    lr_at = _warmup_cosine(lr, steps, warmup)
    window = max(1, steps // 20)
    losses, running, count = [], 0.0, 0
    model.train()
    with LoopProgress(what, steps, unit="steps") as progress:
        for step in range(steps):
            scenes = compose_scenes(sources.train.images, sources.train.labels, batch_size, seed=seed,
                                    start=step * batch_size, settings=settings)
            loss, _, n = train_step(model, [(_as_inputs(scenes.images), scenes.targets())], optimizer, lr_at(step),
                                    raw_model=model, grad_clip=grad_clip, criterion=_detection_loss,
                                    where=f"{what} step {step + 1}")
            running, count = running + float(loss) / n, count + 1
            if count == window or step + 1 == steps:
                losses.append(running / count)
                running, count = 0.0, 0
            progress.advance(1, loss=round(losses[-1], 3) if losses else None)
    return losses


@torch.no_grad()
def detect(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """Detections (``boxes``, ``scores``, ``labels``) for uint8 images (N, 3, H, W)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        out += model(_as_inputs(images[i:i + batch_size]))
    return out


def held_out_scenes(sources: SceneSources, n: int, seed: int = 0, settings: SceneSettings | None = None) -> Scenes:
    """The evaluation scenes: ``n`` composed from the held-out images only (their own seed stream)."""
    return compose_scenes(sources.held_out.images, sources.held_out.labels, n, seed=seed + 1,
                          settings=settings, classes=sources.classes)


def _figure(path: Path, scenes: Scenes, runs: Sequence[DetectionRun], predictions: Sequence[list[dict]],
            picks: Sequence[int], min_score: float = 0.3) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = [("truth", None)] + [(f"{r.detector} / {r.backbone}\nmAP {100 * r.metrics['map']:.1f}, "
                                 f"AP50 {100 * r.metrics['map_50']:.1f}", p) for r, p in zip(runs, predictions)]
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(1.9 * len(picks), 2.0 * len(rows)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for (title, preds), row_axes in zip(rows, axes, strict=True):
        for ax, i in zip(row_axes, picks, strict=True):
            ax.imshow(scenes.images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
            if preds is None:
                boxes, labels, scores = scenes.boxes[i], scenes.labels[i], [None] * len(scenes.labels[i])
            else:
                keep = preds[i]["scores"] >= min_score
                boxes, labels, scores = preds[i]["boxes"][keep][:5], preds[i]["labels"][keep][:5], \
                    preds[i]["scores"][keep][:5].tolist()
            for box, label, score in zip(boxes.tolist(), labels.tolist(), scores):
                x1, y1, x2, y2 = box
                color = colors((label - 1) % 10)
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=1.5, ec=color))
                name = scenes.classes[label - 1] if 0 < label <= len(scenes.classes) else str(label)
                ax.text(x1 - 0.5, y1 - 1, name if score is None else f"{name} {score:.2f}", fontsize=6,
                        color="white", va="bottom", bbox={"facecolor": color, "pad": 0.5, "lw": 0})
            ax.set_xticks([])
            ax.set_yticks([])
        row_axes[0].set_ylabel(title, fontsize=7)
    fig.suptitle(f"held-out composed scenes: true boxes (top row) and detections scoring >= {min_score}",
                 fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def study_command(data, out_dir, detectors, backbones, steps, batch_size, lr, pretrain_epochs, held_out, seed,
                  threads, limit) -> str:
    """The ``resnets study detection`` command line that reproduces a study."""
    words = ["resnets", "study", "detection", "--data", str(data), "--out", str(out_dir), "--detectors",
             ",".join(detectors), "--backbones", ",".join(backbones), "--steps", str(steps), "--batch-size",
             str(batch_size), "--lr", f"{lr:g}", "--pretrain-epochs", f"{pretrain_epochs:g}", "--held-out",
             str(held_out), "--seed", str(seed)]
    if threads:
        words += ["--threads", str(threads)]
    if limit:
        words += ["--limit", str(limit)]
    return shlex.join(words)


def detection_study(data: str | Path, out_dir: str | Path = "runs/detection", *,
                    detectors: Sequence[str] = ("fcos", "fasterrcnn"), backbones: Sequence[str] = ("resnet18", "plain18"),
                    steps: int = 300, batch_size: int = 16, lr: float = 1e-3, weight_decay: float = 1e-4,
                    pretrain_epochs: float = 1.0, held_out: int = 500, seed: int = 0, threads: int = 0,
                    limit: int = 0, settings: SceneSettings | None = None, fpn_channels: int = 128,
                    head_convs: int = 2) -> DetectionResult:
    """Train every detector on every backbone; score each on the held-out scenes.

    With ``pretrain_epochs`` > 0 each backbone first learns CIFAR-10 classification on the training
    part for that many epochs (the same recipe for residual and plain), as detection backbones
    start from classification weights; 0 trains the detectors from scratch. ``limit`` keeps a
    class-balanced subset of that many source images in each part of the split (tests)."""
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown or not detectors or not backbones:
        raise InputError(f"detectors must be among {', '.join(DETECTORS)} and backbones given; got "
                         f"{list(detectors)}, {list(backbones)}")
    if steps < 1 or batch_size < 1 or held_out < 1 or not lr > 0 or pretrain_epochs < 0:
        raise InputError(f"steps, batch_size and held_out must be >= 1, lr > 0, pretrain_epochs >= 0; got {steps}, "
                         f"{batch_size}, {held_out}, {lr}, {pretrain_epochs}")
    if threads:
        torch.set_num_threads(threads)
    settings = settings or SceneSettings()
    out = Path(out_dir)
    start = time.perf_counter()
    sources = scene_sources(data, limit=limit)
    test = held_out_scenes(sources, held_out, seed, settings)
    mean, std = sources.train.info.mean, sources.train.info.std
    runs, predictions, pretraining = {}, {}, []
    for name in backbones:
        weights = None
        if pretrain_epochs:
            pretraining.append(pretrain_backbone(name, sources, out / f"{name}_cifar10.safetensors",
                                                 epochs=pretrain_epochs, seed=seed))
            weights = str(out / pretraining[-1].weights)
        for kind in detectors:
            torch.manual_seed(seed)
            with warnings.catch_warnings():  # "classifier re-initialised": a backbone has none
                warnings.simplefilter("ignore", UserWarning)
                model = detector(kind, name, len(sources.classes) + 1, image_size=settings.size, image_mean=mean,
                                 image_std=std, fpn_channels=fpn_channels, head_convs=head_convs, weights=weights,
                                 trainable_layers=5, frozen_bn=False)
            t0 = time.perf_counter()
            losses = train_detector(model, sources, steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                    seed=seed, settings=settings, what=f"{kind} on {name}")
            t1 = time.perf_counter()
            found = detect(model, test.images)
            metrics = coco_map(found, test.targets(), num_classes=len(sources.classes))
            t2 = time.perf_counter()
            residual = all(getattr(m, "residual", True) for m in model.backbone.body.modules())
            runs[kind, name] = DetectionRun(kind, DETECTORS[kind], name, residual, metrics,
                                            sum(p.numel() for p in model.parameters()), steps, t1 - t0, t2 - t1, losses)
            predictions[kind, name] = found
    order = [(kind, name) for kind in detectors for name in backbones]  # the table: by detector, then backbone
    command = study_command(data, out_dir, detectors, backbones, steps, batch_size, lr, pretrain_epochs, held_out,
                            seed, threads, limit)
    settings_record = {"scenes": settings.to_dict(), "batch_size": batch_size, "lr": lr, "optimizer": "AdamW",
                       "schedule": "linear warm-up (10% of steps), cosine to zero", "weight_decay": weight_decay,
                       "grad_clip": 10.0, "fpn_channels": fpn_channels, "head_convs": head_convs, "seed": seed,
                       "pretrain_epochs": pretrain_epochs, "threads": torch.get_num_threads(), "limit": limit,
                       "sources": sources.describe()}
    result = DetectionResult(out, [runs[k] for k in order], steps * batch_size, len(test),
                             sum(len(b) for b in test.boxes), 0.0, command, settings_record, pretraining)
    result.figure = _figure(out / "detections.png", test, result.runs, [predictions[k] for k in order],
                            list(range(min(6, len(test)))))
    result.seconds = time.perf_counter() - start
    # The report names its files relative to its own folder: it may be copied or shipped (issue 18).
    report = {**result.to_dict(), "out_dir": ".", "figure": result.figure.name}
    atomic_write(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    return result
