"""A 2D segmentation set from a real brain scan: the MNI152 T1 template (ICBM 2009, as nilearn ships
it inside its wheel, so nothing is downloaded) with its grey- and white-matter probability maps.

Each axial slice of the T1 volume is an input image; its target labels every voxel as background
(outside nilearn's brain mask), CSF and other tissue (inside the mask, where neither grey nor white
matter is the most probable), grey matter or white matter (the larger of the two probabilities, when
it beats the rest). The held-out slices are one contiguous slab of the volume, separated from the
training slices by a gap on each side, so no held-out slice has a training neighbour one voxel
away (adjacent slices of a 2 mm volume are nearly the same image).

Needs the ``medical`` extra (``pip install "resnets[medical]"``: nilearn and nibabel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, need

CLASSES = ("background", "csf/other", "grey matter", "white matter")


@dataclass
class SliceSet:
    """Axial slices: ``images`` float (N, 1, H, W), z-scored over the brain; ``labels`` int64 (N, H, W)."""

    images: Tensor
    labels: Tensor
    z: list[int]  # the slice index of each, in the template's voxel grid

    def __len__(self) -> int:
        return len(self.z)


def _templates(resolution: int):
    datasets = need("nilearn.datasets", "medical", "the brain-scan dataset")
    load = (datasets.load_mni152_template, datasets.load_mni152_gm_template, datasets.load_mni152_wm_template,
            datasets.load_mni152_brain_mask)
    return [np.asarray(f(resolution=resolution).dataobj, dtype=np.float32) for f in load]


def tissue_labels(gm: np.ndarray, wm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """0 background (outside ``mask``), 1 CSF/other, 2 grey matter, 3 white matter: inside the mask,
    the most probable of (1 - gm - wm, gm, wm)."""
    rest = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = np.argmax(np.stack([rest, gm, wm]), axis=0).astype(np.int64) + 1
    labels[mask <= 0.5] = 0
    return labels


def brain_slices(resolution: int = 2, held_out: tuple[float, float] = (0.45, 0.60), gap: int = 3,
                 size: tuple[int, int] = (112, 128)) -> tuple[SliceSet, SliceSet]:
    """(train, held-out) axial slices of the brain. ``held_out`` is the slab as fractions of the
    brain's extent along z (from its lowest to its highest slice holding brain); ``gap`` slices on
    each side of it belong to neither part. Slices are padded (or centre-cropped) to ``size``."""
    if not 0 <= held_out[0] < held_out[1] <= 1:
        raise InputError(f"held_out must be two fractions 0 <= lo < hi <= 1; got {held_out}")
    t1, gm, wm, mask = _templates(resolution)
    labels = tissue_labels(gm, wm, mask)
    inside = t1[mask > 0.5]
    t1 = (t1 - inside.mean()) / inside.std()  # z-scored over the brain, as MRI inputs usually are
    present = np.nonzero((mask > 0.5).sum(axis=(0, 1)) > 0.02 * mask.shape[0] * mask.shape[1])[0]
    z0, z1 = int(present.min()), int(present.max())
    lo = z0 + round(held_out[0] * (z1 - z0))
    hi = z0 + round(held_out[1] * (z1 - z0))
    train_z = [z for z in range(z0, z1 + 1) if z < lo - gap or z > hi + gap]
    val_z = list(range(lo, hi + 1))

    def take(zs: list[int]) -> SliceSet:
        # (x, y) voxel grid -> image rows from anterior to posterior: transpose and flip for display.
        imgs = np.stack([_fit(np.flipud(t1[:, :, z].T), size, fill=float(t1.min())) for z in zs])
        labs = np.stack([_fit(np.flipud(labels[:, :, z].T), size, fill=0) for z in zs])
        return SliceSet(torch.from_numpy(imgs.copy())[:, None], torch.from_numpy(labs.copy()), zs)

    return take(train_z), take(val_z)


def _fit(a: np.ndarray, size: tuple[int, int], fill: float) -> np.ndarray:
    """``a`` centred in a ``size`` canvas (padded with ``fill``, or centre-cropped)."""
    out = np.full(size, fill, dtype=a.dtype)
    h, w = min(a.shape[0], size[0]), min(a.shape[1], size[1])
    ay, ax = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
    oy, ox = (size[0] - h) // 2, (size[1] - w) // 2
    out[oy:oy + h, ox:ox + w] = a[ay:ay + h, ax:ax + w]
    return out


def dice_scores(confusion: Tensor) -> list[float]:
    """Dice per class, 2 TP / (2 TP + FP + FN), from a (true, predicted) confusion matrix; NaN for a
    class absent from both truth and prediction."""
    tp = confusion.diag().double()
    denom = confusion.sum(0).double() + confusion.sum(1).double()
    return [float(2 * t / d) if d > 0 else float("nan") for t, d in zip(tp, denom, strict=True)]
