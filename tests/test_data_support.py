"""Helpers shared by the data tests (no tests here): small copies of the real CIFAR-10 JPEGs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def copy_real_images(src: Path, dst: Path, per_class: int, classes=CLASSES, offset: int = 0) -> Path:
    """dst/<class>/<NNNN>.jpg: the first ``per_class`` real JPEGs of each class (copied, not linked)."""
    for name in classes:
        (dst / name).mkdir(parents=True, exist_ok=True)
        files = sorted((src / name).iterdir())[offset:offset + per_class]
        for f in files:
            shutil.copyfile(f, dst / name / f.name)
    return dst


def decode_folder(root: Path, classes=CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference decode with plain Pillow, for comparing against the library."""
    images, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            with Image.open(f) as im:
                images.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


_REAL_FOLDERS: dict[str, Path] = {}


def real_folder_once(cifar_train_dir: Path, tmp_path_factory) -> Path:
    """300 real CIFAR-10 JPEGs, 30 per class, as an image folder; copied once per session."""
    key = str(cifar_train_dir)
    if key not in _REAL_FOLDERS or not _REAL_FOLDERS[key].is_dir():
        _REAL_FOLDERS[key] = copy_real_images(cifar_train_dir, tmp_path_factory.mktemp("real") / "train", 30)
    return _REAL_FOLDERS[key]
