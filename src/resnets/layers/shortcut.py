"""Shortcut connections: the paper's options A, B and C (He et al. 2015, section 4.1 and 3.3)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .conv_bn_act import conv1x1

SHORTCUTS = ("A", "B", "C")


class PadShortcut(nn.Module):
    """Option A: a parameter-free shortcut for a change of shape.

    Subsamples by ``stride`` (takes every stride-th pixel, like a 1x1 conv with stride 2 would) and
    zero-pads the new channels, split evenly on both sides as in the CIFAR experiments of He et al.
    2015 (section 4.2). A real module rather than a lambda, so models pickle and script.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
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


def make_shortcut(
    kind: str, in_channels: int, out_channels: int, stride: int, *, batch_norm: bool = True
) -> nn.Module | None:
    """The ``downsample`` module of a block, or ``None`` for the identity.

    - ``"A"``: identity where the shape is unchanged, else :class:`PadShortcut` (no parameters);
    - ``"B"``: identity where the shape is unchanged, else a 1x1 projection (+ BN);
    - ``"C"``: a 1x1 projection (+ BN) everywhere.

    Projections are ``nn.Sequential(conv, bn)`` so their keys (``downsample.0``, ``downsample.1``)
    match torchvision's checkpoints. Pre-activation blocks pass ``batch_norm=False``: their
    projection sees an already normalised input (He et al. 2016).
    """
    kind = kind.upper()
    if kind not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}; got {kind!r}")
    same_shape = stride == 1 and in_channels == out_channels
    if kind == "A":
        return None if same_shape else PadShortcut(in_channels, out_channels, stride)
    if kind == "B" and same_shape:
        return None
    layers: list[nn.Module] = [conv1x1(in_channels, out_channels, stride)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*layers)
