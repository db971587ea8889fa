"""The dataset description that travels with a model: class names and normalisation statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import InputError


@dataclass
class DatasetInfo:
    """What training, evaluation, prediction and export need to agree on.

    ``mean``/``std`` are per-channel (RGB) statistics of the *training* pixels scaled to [0, 1],
    so a model trained on CIFAR uses CIFAR's statistics rather than ImageNet's.
    """

    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    image_size: tuple[int, int] | None = None  # (H, W) when all images share it

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["image_size"] = list(self.image_size) if self.image_size is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DatasetInfo:
        missing = {"classes", "mean", "std", "source"} - set(d)
        if missing:
            raise ValueError(f"dataset info is missing {sorted(missing)}: {d!r}")
        size = d.get("image_size")
        return cls(
            classes=[str(c) for c in d["classes"]],
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            source=str(d["source"]),
            image_size=tuple(int(v) for v in size) if size is not None else None,
        )


def compute_normalization(images_uint8: torch.Tensor) -> tuple[tuple, tuple]:
    """Per-channel mean and (population) std of uint8 images (N, 3, H, W), scaled to [0, 1].

    Computed exactly from each channel's 256-bin histogram: no float32 rounding over 50M values,
    and no float copy of the whole set (50,000 CIFAR images would need 1.2 GB as float64).
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise InputError(f"expected uint8 images (N, C, H, W), got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    if images_uint8.shape[0] == 0:
        raise InputError("cannot compute normalisation statistics of an empty image set")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    mean, std = [], []
    for c in range(images_uint8.shape[1]):
        hist = torch.bincount(images_uint8[:, c].reshape(-1).cpu(), minlength=256).to(torch.float64)
        p = hist / hist.sum()
        m = float((p * values).sum())
        var = float((p * (values - m) ** 2).sum())
        mean.append(round(m, 6))
        std.append(round(var ** 0.5, 6))
    return tuple(mean), tuple(std)
