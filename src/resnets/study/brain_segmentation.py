"""Segmentation of a real brain scan (issue 16, item 4): a residual encoder with a U-Net decoder
(:class:`resnets.transfer.segmentation.UNet`) learns background / CSF-other / grey / white matter
from axial slices of the MNI152 T1 template (:mod:`resnets.data.brain`), and is scored by Dice per
class on a held-out slab of the same volume.

    resnets study brain-seg --out runs/brain-seg            # about 15 minutes on 2 CPU cores

Writes ``report.json`` (Dice per class on the held-out slab, the settings, wall time),
``segmentation.png`` (input, truth and prediction side by side for held-out slices) and
``weights.safetensors`` (the network, with its classes and settings in the metadata).

One volume is one subject (the template is an average of 152): the held-out slab measures how the
network segments anatomy it did not see at those levels, not how it generalises to other scanners
or patients. Say so with the figures.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.brain import CLASSES, SliceSet, brain_slices, dice_scores
from ..errors import InputError
from ..progress import LoopProgress
from ..train.config import ScheduleConfig
from ..train.engine import train_step
from ..train.optim import Schedule, param_groups
from ..transfer.segmentation import UNet
from ..weights_io import atomic_write, export_weights, save_figure
from .report import StudyReport


@dataclass
class BrainSegResult(StudyReport):
    out_dir: Path
    dice: dict[str, float]  # class -> Dice on the held-out slab
    mean_tissue_dice: float  # mean over CSF/other, grey and white matter (background left out)
    train_slices: int
    held_out_slices: int
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    figure: Path | None = None

    def __str__(self) -> str:
        rows = "\n".join(f"  {name:<13} {100 * v:6.2f}" for name, v in self.dice.items())
        return (f"Dice (%) on {self.held_out_slices} held-out slices after {self.epochs} epochs on "
                f"{self.train_slices} ({self.seconds:.0f} s):\n{rows}\n"
                f"  mean tissue   {100 * self.mean_tissue_dice:6.2f}  (CSF/other, grey, white)")


def _augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, shift: int = 8):
    """Left-right flips (the brain is near-symmetric) and shifts of up to ``shift`` pixels, the
    same for image and labels; a random intensity scale and offset for the image alone."""
    n = len(x)
    flip = torch.rand(n, generator=g) < 0.5
    x, y = x.clone(), y.clone()
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    for i in range(n):
        dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=g))
        x[i], y[i] = x[i].roll((dy, dx), (-2, -1)), y[i].roll((dy, dx), (-2, -1))
    scale = 1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1)
    offset = 0.1 * (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1)
    return x * scale + offset, y


@torch.no_grad()
def segment(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Predicted labels (N, H, W) for images (N, C, H, W)."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def confusion_matrix(truth: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount((truth.flatten() * k + pred.flatten()), minlength=k * k).view(k, k)


def _figure(path: Path, held_out: SliceSet, pred: torch.Tensor, dice: dict[str, float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["black", "tab:blue", "tab:gray", "white"])
    picks = [round(i * (len(held_out) - 1) / 2) for i in range(3)]
    fig, axes = plt.subplots(len(picks), 3, figsize=(7.5, 2.5 * len(picks)))
    for row, i in zip(axes, picks, strict=True):
        for ax, img, title in zip(row, (held_out.images[i, 0], held_out.labels[i], pred[i]),
                                  (f"T1, slice z={held_out.z[i]}", "truth", "prediction"), strict=True):
            ax.imshow(img, cmap="gray" if title.startswith("T1") else cmap,
                      **({} if title.startswith("T1") else {"vmin": 0, "vmax": len(CLASSES) - 1}),
                      interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle("held-out slab; Dice " + ", ".join(f"{k} {100 * v:.1f}" for k, v in dice.items() if k != "background")
                 + "\n(black background, blue CSF/other, grey GM, white WM)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def brain_segmentation_study(out_dir: str | Path = "runs/brain-seg", *, encoder: str = "resnet18", epochs: int = 40,
                             batch_size: int = 8, lr: float = 2e-3, weight_decay: float = 1e-4, seed: int = 0,
                             resolution: int = 2, limit: int = 0, threads: int = 0) -> BrainSegResult:
    """Train and score the segmenter; ``limit`` keeps that many training slices (tests)."""
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise InputError(f"epochs and batch_size must be >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}")
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    train_set, held_out = brain_slices(resolution=resolution)
    if limit:
        keep = torch.randperm(len(train_set), generator=g)[:limit].sort().values
        train_set = SliceSet(train_set.images[keep], train_set.labels[keep], [train_set.z[i] for i in keep])
    model = UNet(encoder, num_classes=len(CLASSES), in_chans=1).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)  # no decay on BN or biases
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total = epochs * steps_per_epoch
    # One epoch of linear warm-up, then a cosine to zero: the engine's `cosine` schedule.
    lr_at = Schedule(ScheduleConfig(name="cosine", warmup=steps_per_epoch), lr, total, steps_per_epoch).lr

    start, step, losses = time.perf_counter(), 0, []
    with LoopProgress("brain-seg training", total, unit="steps") as progress:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train_set), generator=g)
            loss_sum, n = 0.0, 0
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                x, y = _augment(train_set.images[idx], train_set.labels[idx], g)
                x = x.contiguous(memory_format=torch.channels_last)
                loss, _, count = train_step(model, [(x, y)], optimizer, lr_at(step), raw_model=model,
                                            where=f"step {step + 1} (epoch {epoch + 1})")
                loss_sum, n, step = loss_sum + float(loss), n + count, step + 1
                progress.advance(1, loss=round(loss_sum / n, 4))
            losses.append(loss_sum / n)
    seconds = time.perf_counter() - start
    pred = segment(model, held_out.images.contiguous(memory_format=torch.channels_last))
    scores = dice_scores(confusion_matrix(held_out.labels, pred, len(CLASSES)))
    dice = dict(zip(CLASSES, scores, strict=True))
    tissue = [v for v in scores[1:] if not math.isnan(v)]
    result = BrainSegResult(out, dice, sum(tissue) / len(tissue), len(train_set), len(held_out), epochs, seconds,
                            losses)
    result.figure = _figure(out / "segmentation.png", held_out, pred, dice)
    settings = {"encoder": encoder, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "weight_decay": weight_decay, "seed": seed, "resolution_mm": resolution, "limit": limit,
                "train_z": train_set.z, "held_out_z": held_out.z}
    export_weights(out / "weights.safetensors", model.state_dict(),
                   {"model": "unet", "encoder": encoder, "classes": list(CLASSES), "in_chans": 1,
                    "dataset": "MNI152 T1 2009 template (nilearn), axial slices", "settings": settings,
                    "metrics": {"dice": dice, "mean_tissue_dice": result.mean_tissue_dice}})
    # The report names its files relative to its own folder: it may be copied or shipped (issue 18).
    report = {**result.to_dict(), "out_dir": ".", "figure": result.figure.name, "settings": settings}
    atomic_write(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    return result
