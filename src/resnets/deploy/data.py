"""Real images for calibration, validation and parity checks, through the shared data API
(:mod:`resnets.data`): an image folder ``<root>/<class>/<image>`` or a CIFAR archive folder.

Validation images are the part the training engine holds out:
``split_train_val(open_dataset(root), val_size, seed)`` with the engine's defaults (5000 images,
seed 0: the paper's 45k/5k on CIFAR-10), or the ``data.val_size``/``data.split_seed`` of the
training recipe recorded in the weights' metadata. So accuracy before/after int8 or pruning is
measured on images the model did not train on. Calibration and fine-tuning images come from the
train part, and so do the normalisation statistics when the weights carry none (the split
recomputes them from the train part alone, as training does).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import TensorImageDataset, build_transforms, load_image, open_dataset, split_train_val
from ..errors import InputError
from ..train.config import DataConfig

DEFAULT_VAL_SIZE = DataConfig.val_size  # the training engine's defaults
DEFAULT_SPLIT_SEED = DataConfig.split_seed


@dataclass
class DeploySplit:
    """The training engine's train/validation split of ``root``, and where its settings came from."""

    root: Path
    train: Any  # TensorImageDataset (small images, in memory) or FolderDataset
    val: Any
    val_size: int
    seed: int
    origin: str  # "the weights' recipe", "the training defaults" or "--val-size/--split-seed"
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.train.info.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.train.info.std)

    def describe(self) -> str:
        return (f"validation from the {len(self.val)} images split_train_val(val_size={self.val_size}, "
                f"seed={self.seed}) holds out of {self.root} ({self.origin})")

    def to_dict(self) -> dict:
        return {"data": str(self.root), "val_size": self.val_size, "split_seed": self.seed, "from": self.origin}


def _recipe_data(meta: Mapping[str, Any] | None) -> dict:
    recipe = (meta or {}).get("recipe")
    data = recipe.get("data") if isinstance(recipe, dict) else None
    return data if isinstance(data, dict) else {}


def data_dir(given: str | Path | None = None, meta: Mapping[str, Any] | None = None) -> Path | None:
    """``given``, else ``$RESNETS_DATA``, else the data the weights' recipe trained on (``data.path``
    when it exists here; none there means the bundled sample, as in training), else ``None``."""
    if given:
        return Path(given)
    if os.environ.get("RESNETS_DATA"):
        return Path(os.environ["RESNETS_DATA"])
    recipe = _recipe_data(meta)
    from ..data.describe import SAMPLE_NAME

    trained_on = recipe.get("dataset")
    if isinstance(trained_on, dict):  # weights describe their data, not where it was (issue 18)
        if trained_on.get("name") != SAMPLE_NAME:
            return None  # the caller asks for --data
        from ..train.engine import sample_data_dir

        return sample_data_dir()
    if "path" not in recipe:  # weights written before issue 18 recorded the training folder's path
        return None
    if not recipe["path"]:
        from ..train.engine import sample_data_dir

        return sample_data_dir()
    path = Path(recipe["path"]).expanduser()
    return path if path.exists() else None  # trained elsewhere: the caller asks for --data


def split_settings(meta: Mapping[str, Any] | None = None, val_size: int | None = None,
                   seed: int | None = None) -> tuple[int, int, str, list[str]]:
    """``(val_size, seed, origin, notes)``: the arguments given, else the weights' recipe, else the
    training defaults."""
    recipe = _recipe_data(meta)
    notes = []
    if val_size is not None or seed is not None:
        origin = "--val-size/--split-seed"
    elif "val_size" in recipe or "split_seed" in recipe:
        origin = "the weights' recipe"
    else:
        origin = "the training defaults"
    if val_size is None:
        val_size = recipe.get("val_size", DEFAULT_VAL_SIZE)
        if not val_size:
            notes.append(f"the weights' recipe held no images out (data.val_size {val_size}): the model trained "
                         f"on every image, so the {DEFAULT_VAL_SIZE} validation images used here are not unseen")
            val_size = DEFAULT_VAL_SIZE
    if seed is None:
        seed = recipe.get("split_seed", DEFAULT_SPLIT_SEED)
    return val_size, int(seed), origin, notes


def open_split(root: str | Path, meta: Mapping[str, Any] | None = None, val_size: int | None = None,
               seed: int | None = None) -> DeploySplit:
    """The engine's split of the dataset at ``root`` (settings as :func:`split_settings` picks them)."""
    root = Path(root)
    val_size, seed, origin, notes = split_settings(meta, val_size, seed)
    dataset = open_dataset(root)
    train, val = split_train_val(dataset, val_size=val_size, seed=seed)
    trained_on = _recipe_data(meta).get("dataset")
    if isinstance(trained_on, dict) and trained_on.get("fingerprint"):
        from ..data.describe import fingerprint

        # The same images anywhere give the same fingerprint; only other images are worth a word.
        if fingerprint(dataset) != trained_on["fingerprint"]:
            notes.append(f"the weights were trained on {trained_on.get('name')} ({trained_on.get('images')} images, "
                         f"fingerprint {trained_on['fingerprint'][:19]}), not on the images in {root}: the "
                         f"held-out part is training's only for the same dataset")
    return DeploySplit(root, train, val, val_size, seed, origin, notes)


def balanced_indices(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """Indices of ``n`` samples spread evenly over the classes (a seeded random choice within
    each), shuffled so that any prefix (a batch) mixes the classes."""
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per_class = -(-n // max(1, len(classes)))
    picked = [members[torch.randperm(len(members), generator=g)[:per_class]].sort().values
              for members in ((labels == c).nonzero().flatten() for c in classes)]
    picked = torch.cat(picked) if picked else torch.zeros(0, dtype=torch.int64)
    return picked[torch.randperm(len(picked), generator=g)][:n]


def resize(images: Tensor, size: Sequence[int] | None) -> Tensor:
    """uint8 (N, 3, H, W) resized (bilinear, antialiased) to ``size`` (H, W), as evaluation does."""
    if size is None or tuple(images.shape[2:]) == tuple(size):
        return images
    x = F.interpolate(images.float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def take(dataset, n: int, size: Sequence[int] | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """uint8 images (N, 3, H, W) at ``size`` and their labels: a balanced seeded subset of ``n``.

    In-memory small images are indexed and resized; large-image folders are decoded with the
    evaluation transform (resize, centre crop to ``size``).
    """
    idx = balanced_indices(dataset.labels, n, seed)
    if isinstance(dataset, TensorImageDataset):
        return resize(dataset.images[idx], size), dataset.labels[idx]
    side = int(size[-1]) if size is not None else 224
    transform = build_transforms(False, dataset.info, side, normalize=False)
    images = [transform(load_image(dataset.samples[i][0])) for i in idx.tolist()]
    if not images:
        return torch.zeros(0, 3, side, side, dtype=torch.uint8), dataset.labels[idx]
    return torch.stack(images).mul_(255).round_().to(torch.uint8), dataset.labels[idx]


def load_files(paths: Sequence[str | Path], size: Sequence[int]) -> Tensor:
    """Image files as uint8 (N, 3, H, W), whole images resized to ``size`` (H, W) as ``resnets
    predict`` does (RGB, EXIF orientation honoured, unreadable files named in the error)."""
    from PIL import Image

    h, w = int(size[0]), int(size[1])
    arrays = []
    for path in paths:
        img = load_image(path)
        arrays.append(np.asarray(img if img.size == (w, h) else img.resize((w, h), Image.BICUBIC)))
    if not arrays:
        raise InputError("no images to load")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (N, C, H, W) to the float input a model was trained on (the evaluation code's
    normalisation, so deployment and ``resnets evaluate`` feed a model identical inputs)."""
    from ..train.evaluate import _normalise

    return _normalise(images, {"mean": list(mean), "std": list(std)}, images.device)
