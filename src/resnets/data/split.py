"""Which images are held out, and which are sampled: the training engine's split, reproduced
for evaluation (``resnets eval --holdout``), calibration (``quantize``), fine-tuning and
validation (``prune``) and parity checks (``export``) (issue 14).

The held-out images are ``split_train_val(open_dataset(root), val_size, seed)`` with the
training recipe's ``data.val_size``/``data.split_seed`` (recorded in the weights' metadata), else
the engine's defaults (5000 images, seed 0: the paper's 45k/5k on CIFAR-10). So accuracy before
and after int8 or pruning is measured on images the model did not train on; calibration and
fine-tuning images come from the train part.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..preprocessing import Preprocessing
from .describe import SAMPLE_NAME, fingerprint
from .images import load_image
from .sources import open_dataset, split_train_val
from .tensor_dataset import TensorImageDataset

DEFAULT_VAL_SIZE = 5000  # the training engine's defaults (train.config.DataConfig uses these)
DEFAULT_SPLIT_SEED = 0


def sample_data_dir() -> Path:
    """The small CIFAR-10 sample bundled with the package (``data.path: null`` trains on it)."""
    from importlib.resources import files

    return Path(str(files("resnets") / "assets" / "cifar10_sample"))


def recipe_data(meta: Mapping[str, Any] | None) -> dict:
    """The ``data`` section of the training recipe stored in weights' metadata ({} when absent)."""
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
    recipe = recipe_data(meta)
    trained_on = recipe.get("dataset")
    if isinstance(trained_on, dict):  # weights describe their data, not where it was (issue 18)
        return sample_data_dir() if trained_on.get("name") == SAMPLE_NAME else None  # else: ask for --data
    if "path" not in recipe:  # weights written before issue 18 recorded the training folder's path
        return None
    if not recipe["path"]:
        return sample_data_dir()
    path = Path(recipe["path"]).expanduser()
    return path if path.exists() else None  # trained elsewhere: the caller asks for --data


class NoHeldOutImages(InputError):
    """The weights were trained on every image: there is no held-out part to evaluate on."""


def split_settings(meta: Mapping[str, Any] | None = None, val_size: int | None = None,
                   seed: int | None = None) -> tuple[int, int, str, list[str]]:
    """``(val_size, seed, origin, notes)``: the arguments given, else the weights' recipe, else the
    training defaults. A recipe that held nothing out gives the default size and a note saying the
    images are not unseen (:func:`holdout_split` refuses instead)."""
    recipe = recipe_data(meta)
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
    return int(val_size), int(seed), origin, notes


@dataclass
class DataSplit:
    """The training engine's train/validation split of ``root``, and where its settings came from."""

    root: Path
    train: Any  # TensorImageDataset (small images, in memory) or FolderDataset
    val: Any
    val_size: int
    seed: int
    origin: str  # "the weights' recipe", "the training defaults" or "--val-size/--split-seed"
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"validation from the {len(self.val)} images split_train_val(val_size={self.val_size}, "
                f"seed={self.seed}) holds out of {self.root} ({self.origin})")

    def to_dict(self) -> dict:
        return {"data": str(self.root), "val_size": self.val_size, "split_seed": self.seed, "from": self.origin}


def open_split(root: str | Path, meta: Mapping[str, Any] | None = None, val_size: int | None = None,
               seed: int | None = None, dataset=None) -> DataSplit:
    """The engine's split of the dataset at ``root`` (settings as :func:`split_settings` picks them);
    ``dataset`` is ``open_dataset(root)`` when already open."""
    root = Path(root)
    val_size, seed, origin, notes = split_settings(meta, val_size, seed)
    dataset = dataset if dataset is not None else open_dataset(root)
    train, val = split_train_val(dataset, val_size=val_size, seed=seed)
    trained_on = recipe_data(meta).get("dataset")
    if isinstance(trained_on, dict) and trained_on.get("fingerprint"):
        # The same images anywhere give the same fingerprint; only other images are worth a word (issue 18).
        if fingerprint(dataset) != trained_on["fingerprint"]:
            notes.append(f"the weights were trained on {trained_on.get('name')} ({trained_on.get('images')} images, "
                         f"fingerprint {trained_on['fingerprint'][:19]}), not on the images in {root}: the "
                         f"held-out part is training's only for the same dataset")
    return DataSplit(root, train, val, val_size, seed, origin, notes)


def holdout_split(root: str | Path, meta: Mapping[str, Any] | None, val_size: int | None = None,
                  seed: int | None = None, dataset=None) -> DataSplit:
    """The images training held out, for ``resnets eval --holdout``. Refuses weights whose recipe
    held nothing out (``data.val_size: 0``): every image was trained on."""
    recipe = recipe_data(meta)
    if "val_size" in recipe and not recipe["val_size"]:
        raise NoHeldOutImages(
            f"--holdout: these weights were trained on all of the data (the recipe's data.val_size is "
            f"{recipe['val_size']}), so no image was held out; evaluate on a test split (--split test) or "
            f"on another folder, or retrain with --set data.val_size=N")
    if not recipe and val_size is None:
        raise NoHeldOutImages("--holdout: these weights carry no training recipe (data.val_size, "
                              "data.split_seed), so which images were held out is unknown; pass --val-size N "
                              "(and --split-seed S) to choose the split")
    return open_split(root, meta, val_size, seed, dataset)


# ---- sampling --------------------------------------------------------------------------------------

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


def sample_images(dataset, n: int, preprocessing: Preprocessing, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A class-balanced seeded subset of ``n`` images as uint8 (N, 3, H, W), resized and cropped by
    ``preprocessing`` (the weights' own), and their labels: calibration, validation and parity sets."""
    idx = balanced_indices(dataset.labels, n, seed)
    h, w = preprocessing.input_size
    if isinstance(dataset, TensorImageDataset):
        return preprocessing.resize(dataset.images[idx]), dataset.labels[idx]
    images = [preprocessing.resize(load_image(dataset.samples[i][0])) for i in idx.tolist()]
    if not images:
        return torch.zeros(0, 3, h, w, dtype=torch.uint8), dataset.labels[idx]
    return torch.stack(images), dataset.labels[idx]


def load_files(paths: Sequence[str | Path], preprocessing: Preprocessing) -> Tensor:
    """Image files as uint8 (N, 3, H, W), preprocessed as ``resnets predict`` does (RGB, EXIF
    orientation honoured, unreadable files named in the error)."""
    if not paths:
        raise InputError("no images to load")
    return torch.stack([preprocessing.resize(load_image(p)) for p in paths])
