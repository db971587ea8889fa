"""Shortcut connections, chosen by name: the paper's options A, B and C (He et al. 2015, sections
3.3 and 4.1) and ResNet-D's average-pool projection (He et al. 2019, "Bag of Tricks", section 4.1).

Each choice is one small builder in :data:`SHORTCUTS`, so a new kind is one function and one entry
here; blocks call :func:`make_shortcut` and never branch on the kind themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .conv_bn_act import conv1x1


class PadShortcut(nn.Module):
    """Option A: a parameter-free shortcut for a change of shape.

    Subsamples by ``stride`` (takes every stride-th pixel, like a 1x1 conv with stride 2 would) and
    zero-pads the new channels, split evenly on both sides as in the CIFAR experiments of He et al.
    2015 (section 4.2). A real module rather than a lambda, so models pickle and script.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise InputError(
                f"option A shortcut cannot reduce channels ({in_channels} -> {out_channels}); "
                "use shortcut='B' or 'C' (a 1x1 projection)"
            )
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_before or self.pad_after:
            x = F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


# (in_channels, out_channels, stride, batch_norm) -> the block's ``downsample`` module or None (identity)
ShortcutBuilder = Callable[[int, int, int, bool], "nn.Module | None"]


def _same_shape(in_channels: int, out_channels: int, stride: int) -> bool:
    return stride == 1 and in_channels == out_channels


def _projection(in_channels: int, out_channels: int, stride: int, batch_norm: bool) -> nn.Sequential:
    # nn.Sequential(conv, bn): the keys downsample.0 / downsample.1 of torchvision's checkpoints.
    layers: list[nn.Module] = [conv1x1(in_channels, out_channels, stride)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*layers)


def zero_pad_shortcut(in_channels: int, out_channels: int, stride: int, batch_norm: bool) -> nn.Module | None:
    """Option A: identity where the shape is unchanged, else :class:`PadShortcut` (no parameters)."""
    return None if _same_shape(in_channels, out_channels, stride) else PadShortcut(in_channels, out_channels, stride)


def projection_where_needed(in_channels: int, out_channels: int, stride: int, batch_norm: bool) -> nn.Module | None:
    """Option B: identity where the shape is unchanged, else a strided 1x1 projection (+ BN)."""
    if _same_shape(in_channels, out_channels, stride):
        return None
    return _projection(in_channels, out_channels, stride, batch_norm)


def projection_everywhere(in_channels: int, out_channels: int, stride: int, batch_norm: bool) -> nn.Module:
    """Option C: a 1x1 projection (+ BN) in every block."""
    return _projection(in_channels, out_channels, stride, batch_norm)


def avg_pool_projection(in_channels: int, out_channels: int, stride: int, batch_norm: bool) -> nn.Module | None:
    """ResNet-D (He et al. 2019, Figure 2c): where the shape changes, a 2x2 average pool with the
    block's stride, then a stride-1 1x1 projection (+ BN). A strided 1x1 conv ignores three
    quarters of its input; pooling first lets every pixel reach the next stage.

    ``nn.Sequential(pool, conv, bn)``: the keys ``downsample.1`` / ``downsample.2`` of timm's
    ``resnet*d`` checkpoints; the pool is an identity where only the width changes, as in timm.
    """
    if _same_shape(in_channels, out_channels, stride):
        return None
    # ceil_mode and count_include_pad=False: odd sizes keep their last row and column, unpadded (timm).
    pool: nn.Module = (
        nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    )
    layers: list[nn.Module] = [pool, conv1x1(in_channels, out_channels)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*layers)


SHORTCUTS: dict[str, ShortcutBuilder] = {
    "A": zero_pad_shortcut,
    "B": projection_where_needed,
    "C": projection_everywhere,
    "avg": avg_pool_projection,
}


def _lookup(kind: str) -> ShortcutBuilder:
    for key in (kind, kind.upper(), kind.lower()):
        if key in SHORTCUTS:
            return SHORTCUTS[key]
    raise InputError(f"shortcut must be one of {', '.join(SHORTCUTS)}; got {kind!r}")


def make_shortcut(
    kind: str, in_channels: int, out_channels: int, stride: int, *, batch_norm: bool = True
) -> nn.Module | None:
    """The ``downsample`` module of a block (``None`` for the identity), by name from :data:`SHORTCUTS`.

    Pre-activation blocks pass ``batch_norm=False``: their projection sees an already normalised
    input (He et al. 2016).
    """
    return _lookup(kind)(in_channels, out_channels, stride, batch_norm)
