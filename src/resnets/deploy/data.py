"""Real images for calibration, validation and parity checks, read from an image folder
(``<root>/<class>/<file>``, classes in sorted order as in the CIFAR-10 JPEG set).

A deterministic split carved from the training folder: per class, files in sorted order, the
*last* ``val_per_class`` are validation and the calibration/fine-tuning images come from the rest.
(The ResNet paper validated on 5k images carved from CIFAR-10's 50k; the held-out test split is
never used here.) Kept small and local so the shared data module can replace it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class Split:
    classes: list[str]
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]


def default_data_dir() -> Path | None:
    """``$RESNETS_DATA`` when set, else the shared CIFAR-10 JPEG folder if it exists."""
    env = os.environ.get("RESNETS_DATA")
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "cifar10-jpeg" / "train"
    return shared if shared.is_dir() else None


def split_folder(root: str | Path, val_per_class: int = 500) -> Split:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{root} holds no class folders (<root>/<class>/<image>)")
    train, val = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        cut = max(0, len(files) - val_per_class)
        train += [(p, label) for p in files[:cut]]
        val += [(p, label) for p in files[cut:]]
    return Split(classes, train, val)


def take_balanced(samples: Sequence[tuple[Path, int]], n: int, seed: int = 0) -> list[tuple[Path, int]]:
    """``n`` samples spread evenly over the classes (a fixed random choice within each)."""
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    rng = np.random.default_rng(seed)
    per_class = -(-n // max(1, len(by_class)))
    picked = []
    for label in sorted(by_class):
        items = by_class[label]
        idx = rng.permutation(len(items))[:per_class]
        picked += [items[i] for i in sorted(idx)]
    # Shuffle so a prefix (a batch) mixes the classes.
    order = rng.permutation(len(picked))
    return [picked[i] for i in order][:n]


def load_images(paths: Sequence[str | Path], size: int | tuple[int, int] | None = None) -> Tensor:
    """uint8 tensor (N, 3, H, W); images are resized (bilinear) to ``size`` when given."""
    if isinstance(size, int):
        size = (size, size)
    arrays = []
    for path in paths:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            arrays.append(np.asarray(img, dtype=np.uint8))
    if not arrays:
        raise ValueError("no images to load")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images differ in size {sorted(shapes)}; pass a size to resize them")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_samples(samples: Sequence[tuple[Path, int]], size=None) -> tuple[Tensor, Tensor]:
    images = load_images([p for p, _ in samples], size)
    return images, torch.tensor([label for _, label in samples], dtype=torch.long)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1]."""
    x = images.to(torch.float64).div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (N, C, H, W) to the float input a model was trained on."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255 - m) / s
