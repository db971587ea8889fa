"""Detection scenes composed from real CIFAR-10 images (issue 16, item 3), and the COCO evaluator.

CIFAR-10 has no boxes, so the scenes are *composed*: each canvas is a crop of one real image
scaled up to the canvas size, and one to three other real images are pasted onto it at random
sizes, aspect ratios and positions, without overlapping. An object is a whole pasted image, so its
box is exact: the pasted rectangle, in pixels, with the image's class as its label. The scenes are
not photographs of several objects; the objects' pixels are real, their arrangement is not.

Training scenes are made from the training part of the engine's 45k/5k split
(:func:`resnets.data.split_train_val`, seed 0), held-out scenes from the 5,000 validation images, so
no object or background of a held-out scene was seen in training. Scene ``i`` of a seed is the same
whatever else is asked for (its own generator), so a training stream can be drawn step by step and
a held-out set rebuilt from ``(seed, n)`` alone.

Boxes follow torchvision's convention: ``(x1, y1, x2, y2)`` in pixels, the object covering
columns ``x1 .. x2 - 1`` and rows ``y1 .. y2 - 1``; labels are ``1 + class index`` (0 is background).

:func:`coco_map` scores detections with pycocotools (the ``detection`` extra): COCO mAP@[.5:.95],
mAP@.5 and the class-agnostic mAP@.5 (how well objects are found, whatever their class).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .sources import open_dataset, split_train_val
from .split import balanced_indices
from .tensor_dataset import TensorImageDataset

# Scene i of seed s draws from its own generator, seeded s * _STREAM + i.
_STREAM = 1_000_003


@dataclass
class Scenes:
    """Composed scenes: ``images`` uint8 (N, 3, S, S); per scene, ``boxes`` float (k, 4) and
    ``labels`` int64 (k,) in 1..C; ``sources`` the indices, in the image set they were drawn from,
    of the background image and then of each object."""

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    sources: list[list[int]]
    classes: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def targets(self) -> list[dict[str, Tensor]]:
        """What torchvision's detectors take in training and :func:`coco_map` as truth."""
        return [{"boxes": b, "labels": lab} for b, lab in zip(self.boxes, self.labels, strict=True)]

    def subset(self, indices: Sequence[int]) -> Scenes:
        indices = list(indices)
        return Scenes(self.images[indices], [self.boxes[i] for i in indices], [self.labels[i] for i in indices],
                      [self.sources[i] for i in indices], self.classes)


@dataclass
class SceneSettings:
    """How scenes are composed: canvas side, objects per scene, object side (the geometric mean
    of width and height) in pixels, the largest width/height ratio, and the side of the square
    background crop that is scaled up to the canvas."""

    size: int = 64
    objects: tuple[int, int] = (1, 3)
    object_size: tuple[int, int] = (20, 40)
    max_aspect: float = 1.25
    background_crop: tuple[int, int] = (12, 24)

    def check(self, image_size: int) -> None:
        lo, hi = self.object_size
        if not (1 <= self.objects[0] <= self.objects[1]):
            raise InputError(f"objects per scene must be 1 <= min <= max; got {self.objects}")
        if not 4 <= lo <= hi <= self.size:
            raise InputError(f"object sizes must satisfy 4 <= min <= max <= canvas {self.size}; got {self.object_size}")
        if self.max_aspect < 1:
            raise InputError(f"max_aspect must be >= 1; got {self.max_aspect}")
        if not 2 <= self.background_crop[0] <= self.background_crop[1] <= image_size:
            raise InputError(f"background crop must be within 2..{image_size} px; got {self.background_crop}")

    def to_dict(self) -> dict:
        return {"size": self.size, "objects": list(self.objects), "object_size": list(self.object_size),
                "max_aspect": self.max_aspect, "background_crop": list(self.background_crop)}


def _resize(image: Tensor, h: int, w: int) -> Tensor:
    return F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]


def _distinct(g: torch.Generator, n: int, k: int) -> list[int]:
    picked: list[int] = []
    while len(picked) < k:
        i = int(torch.randint(n, (1,), generator=g))
        if i not in picked:
            picked.append(i)
    return picked


def compose_scene(images: Tensor, labels: Tensor, g: torch.Generator, settings: SceneSettings):
    """One scene drawn with ``g``: (image float (3, S, S) in 0..255, boxes (k, 4), labels (k,), sources)."""
    s, n = settings.size, len(images)
    k = int(torch.randint(settings.objects[0], settings.objects[1] + 1, (1,), generator=g))
    sources = _distinct(g, n, 1 + k)
    # Background: a random square crop of another real image, scaled up to the canvas, maybe mirrored.
    _, ih, iw = images.shape[1:]
    side = int(torch.randint(settings.background_crop[0], settings.background_crop[1] + 1, (1,), generator=g))
    top = int(torch.randint(0, ih - side + 1, (1,), generator=g))
    left = int(torch.randint(0, iw - side + 1, (1,), generator=g))
    canvas = _resize(images[sources[0], :, top:top + side, left:left + side].float(), s, s)
    if bool(torch.rand(1, generator=g) < 0.5):
        canvas = canvas.flip(-1)
    placed: list[list[int]] = []
    kept = [sources[0]]
    log_lo, log_hi = math.log(settings.object_size[0]), math.log(settings.object_size[1])
    log_aspect = math.log(settings.max_aspect)
    for src in sources[1:]:
        for _ in range(20):  # a few tries to find room; an object that finds none is left out
            side = math.exp(log_lo + (log_hi - log_lo) * float(torch.rand(1, generator=g)))
            aspect = math.exp(log_aspect * (2 * float(torch.rand(1, generator=g)) - 1))
            w = min(s, max(4, round(side * math.sqrt(aspect))))
            h = min(s, max(4, round(side / math.sqrt(aspect))))
            x = int(torch.randint(0, s - w + 1, (1,), generator=g))
            y = int(torch.randint(0, s - h + 1, (1,), generator=g))
            if all(x >= bx2 or x + w <= bx1 or y >= by2 or y + h <= by1 for bx1, by1, bx2, by2 in placed):
                canvas[:, y:y + h, x:x + w] = _resize(images[src].float(), h, w)
                placed.append([x, y, x + w, y + h])
                kept.append(src)
                break
    boxes = torch.tensor(placed, dtype=torch.float32).reshape(-1, 4)
    return canvas, boxes, labels[kept[1:]] + 1, kept


def compose_scenes(images: Tensor, labels: Tensor, n: int, *, seed: int = 0, start: int = 0,
                   settings: SceneSettings | None = None, classes: Sequence[str] | None = None) -> Scenes:
    """Scenes ``start .. start + n - 1`` of ``seed``, composed from ``images`` uint8 (M, 3, h, w)
    with class indices ``labels`` (M,). Every scene has at least one object (the first always fits)."""
    settings = settings or SceneSettings()
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"images must be uint8 (M, 3, H, W); got {images.dtype} {tuple(images.shape)}")
    settings.check(min(images.shape[2:]))
    if len(images) < settings.objects[1] + 1:
        raise InputError(f"a scene needs {settings.objects[1] + 1} distinct images; got {len(images)}")
    if n < 0:
        raise InputError(f"n must be >= 0; got {n}")
    out = torch.empty((n, 3, settings.size, settings.size), dtype=torch.uint8)
    boxes, scene_labels, sources = [], [], []
    for j in range(n):
        g = torch.Generator().manual_seed(seed * _STREAM + start + j)
        canvas, b, lab, src = compose_scene(images, labels, g, settings)
        out[j] = canvas.round().clamp(0, 255).to(torch.uint8)
        boxes.append(b)
        scene_labels.append(lab)
        sources.append(src)
    names = list(classes) if classes is not None else [str(c) for c in range(int(labels.max()) + 1)]
    return Scenes(out, boxes, scene_labels, sources, names)


@dataclass
class SceneSources:
    """The images scenes are composed from: the training and held-out parts of one split."""

    train: TensorImageDataset
    held_out: TensorImageDataset
    root: Path
    val_size: int
    split_seed: int

    @property
    def classes(self) -> list[str]:
        return list(self.train.info.classes)

    def describe(self) -> str:
        return (f"objects and backgrounds from {self.root}: training scenes from the {len(self.train)}-image train "
                f"part, held-out scenes from the {len(self.held_out)} images split_train_val(val_size="
                f"{self.val_size}, seed={self.split_seed}) holds out")


def scene_sources(root: str | Path, val_size: int = 5000, split_seed: int = 0, limit: int = 0) -> SceneSources:
    """Open the CIFAR-10 images at ``root`` and split them as the training engine does (45k/5k);
    ``limit`` keeps a class-balanced seeded subset of that many images in each part (tests)."""
    dataset = open_dataset(root)
    if not isinstance(dataset, TensorImageDataset):
        raise InputError(f"{root}: scenes are composed from small images (CIFAR-like, at most 64 px) held in "
                         f"memory; these are larger")
    train, held_out = split_train_val(dataset, val_size=val_size, seed=split_seed)
    if limit:
        train = train.subset(balanced_indices(train.labels, limit, split_seed))
        held_out = held_out.subset(balanced_indices(held_out.labels, limit, split_seed))
    return SceneSources(train, held_out, Path(root), val_size, split_seed)


# ---- evaluation --------------------------------------------------------------------------------

def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise InputError('detection metrics need pycocotools: pip install "resnets[detection]"') from None
    return COCO, COCOeval


def _xywh(boxes: Tensor) -> list[list[float]]:
    b = boxes.detach().to("cpu", torch.float64)
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist() if len(b) else []


def coco_map(predictions: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]],
             num_classes: int | None = None) -> dict[str, float]:
    """COCO box metrics of ``predictions`` (per image ``boxes`` (k, 4) x1y1x2y2, ``scores``,
    ``labels``) against ``targets`` (``boxes``, ``labels``), by pycocotools' ``COCOeval``:
    ``map`` (mAP@[.5:.95], 100 detections per image), ``map_50``, ``map_75`` and ``map_50_agnostic``
    (mAP@.5 with every class the same: localisation alone). Categories are the labels 1..num_classes
    (default: the largest label present); with no detection at all every figure is 0."""
    if len(predictions) != len(targets):
        raise InputError(f"{len(predictions)} predictions for {len(targets)} images")
    COCO, COCOeval = _pycocotools()
    top = num_classes or max([int(t["labels"].max()) for t in targets if len(t["labels"])] or [1])
    images, annotations, detections = [], [], []
    for image_id, (pred, target) in enumerate(zip(predictions, targets, strict=True), start=1):
        images.append({"id": image_id})
        for box, label in zip(_xywh(target["boxes"]), target["labels"].tolist(), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        for box, label, score in zip(_xywh(pred["boxes"]), pred["labels"].tolist(), pred["scores"].tolist(),
                                     strict=True):
            detections.append({"image_id": image_id, "category_id": int(label), "bbox": box, "score": float(score)})
    names = ("map", "map_50", "map_75", "map_50_agnostic")
    if not detections or not annotations:
        return dict.fromkeys(names, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": c} for c in range(1, top + 1)]}
        truth.createIndex()
        found = truth.loadRes(detections)
        stats = []
        for use_cats in (1, 0):
            evaluator = COCOeval(truth, found, "bbox")
            evaluator.params.useCats = use_cats
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats.append(evaluator.stats)
    # COCOeval writes -1 where no ground truth exists (e.g. no large objects); the overall figures exist here.
    return {"map": max(0.0, float(stats[0][0])), "map_50": max(0.0, float(stats[0][1])),
            "map_75": max(0.0, float(stats[0][2])), "map_50_agnostic": max(0.0, float(stats[1][1]))}


__all__ = ["SceneSettings", "SceneSources", "Scenes", "coco_map", "compose_scene", "compose_scenes",
           "scene_sources"]
