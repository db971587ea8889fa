"""A dataset described by what it is, not by where it lies (issue 18, item 4).

Weights files travel: a path on the machine that trained them means nothing elsewhere, and
comparing it with the user's path says "another dataset" for the same images in another folder.
So weights record their data as a name, the classes, the images per class and a content
fingerprint, and commands compare fingerprints.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

SAMPLE_NAME = "resnets cifar10_sample (bundled)"


def dataset_name(path: str | Path | None, sample: Path | None = None) -> str:
    """``cifar10-jpeg/train``: the last two parts of the folder, which say what it is, not where."""
    if path is None or (sample is not None and Path(path).resolve() == Path(sample).resolve()):
        return SAMPLE_NAME
    parts = Path(path).expanduser().resolve().parts
    return "/".join(parts[-2:]) if len(parts) > 2 else parts[-1]


def fingerprint(dataset) -> str:
    """sha256 of a dataset's content. Images decoded in memory: their pixels and labels. Large-image
    folders (decoded per sample): every file's path under the root, label and size in bytes, which is
    what a copy to another folder or machine keeps (modification times are not)."""
    h = hashlib.sha256()
    h.update(",".join(dataset.info.classes).encode() + b"\n")
    if hasattr(dataset, "images"):
        h.update(dataset.images.contiguous().numpy().tobytes())
        h.update(dataset.labels.to(dtype=dataset.labels.dtype).contiguous().numpy().tobytes())
    else:
        root = os.path.join(str(dataset.root), "")
        for path, label in dataset.samples:
            rel = path[len(root):] if path.startswith(root) else os.path.basename(path)
            h.update(f"{rel}\0{label}\0{os.path.getsize(path)}\n".encode("utf-8", "surrogateescape"))
    return "sha256:" + h.hexdigest()


def _labels(dataset) -> list[int]:
    if hasattr(dataset, "labels"):
        return [int(v) for v in dataset.labels.tolist()]
    return [label for _, label in dataset.samples]


def describe_dataset(dataset, path: str | Path | None = None, sample: Path | None = None) -> dict[str, Any]:
    """``{"name", "images", "classes", "images_per_class", "fingerprint"}`` of an opened dataset
    (:func:`resnets.data.open_dataset`); ``path`` only gives the name (``sample``: the bundled one)."""
    counts = Counter(_labels(dataset))
    classes = list(dataset.info.classes)
    return {"name": dataset_name(path, sample), "images": len(dataset), "classes": classes,
            "images_per_class": {c: counts.get(i, 0) for i, c in enumerate(classes)},
            "fingerprint": fingerprint(dataset)}


def portable_recipe(recipe: dict[str, Any], dataset, path: str | Path | None, sample: Path | None = None) -> dict:
    """A training config (``Config.to_dict()``) fit to ship in a weights file: ``data.path`` becomes
    ``data.dataset`` (:func:`describe_dataset`), and any other absolute path (``out_dir``,
    ``finetune.weights``) keeps its file name only."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
            return Path(value).name
        return value

    data = {k: v for k, v in recipe.get("data", {}).items() if k != "path"}
    return {**strip({k: v for k, v in recipe.items() if k != "data"}),
            "data": {**strip(data), "dataset": describe_dataset(dataset, path, sample)}}
