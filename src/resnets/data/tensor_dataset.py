"""The small-images path: a whole dataset held as one uint8 tensor."""

from __future__ import annotations

import torch

from ..errors import InputError
from .images import BadFile
from .info import DatasetInfo


class TensorImageDataset:
    """Images uint8 (N, 3, H, W) and labels int64 (N,) in memory, with their description.

    Deliberately not a torch ``Dataset`` of per-image samples: :class:`BatchLoader` indexes
    whole batches of it at once.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo,
                 bad_files: list[BadFile] | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (images.shape[0],):
            raise InputError(f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.info = info
        self.bad_files = list(bad_files or [])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, indices) -> TensorImageDataset:
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return TensorImageDataset(self.images[indices], self.labels[indices], self.info, self.bad_files)

    def class_counts(self) -> list[int]:
        return self.labels.bincount(minlength=len(self.info.classes)).tolist()

    def __repr__(self) -> str:
        h, w = self.images.shape[2:]
        return (f"TensorImageDataset({len(self)} images {h}x{w}, {len(self.info.classes)} classes, "
                f"source={self.info.source!r})")
