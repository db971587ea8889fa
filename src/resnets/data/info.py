"""The dataset description that travels with a model: class names and normalisation statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


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


def compute_normalization(images_uint8: torch.Tensor, chunk: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel mean and (population) std of uint8 images (N, 3, H, W), scaled to [0, 1].

    Sums are accumulated in float64 over chunks: 50,000 CIFAR images are 150M values, whose
    float32 sum of squares would lose digits and whose float64 copy would take 1.2 GB at once.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    n, c = images_uint8.shape[:2]
    if n == 0:
        raise ValueError("cannot compute normalisation statistics of an empty image set")
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, n, chunk):
        x = images_uint8[start:start + chunk].to("cpu", torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = n * images_uint8.shape[2] * images_uint8.shape[3]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0)
    std = var.sqrt()
    return tuple(round(float(v) / 255, 6) for v in mean), tuple(round(float(v) / 255, 6) for v in std)
