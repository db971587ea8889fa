"""Stems, chosen by name: what a ResNet does to the image before its first stage.

A stem builder returns the stem's convolution part and its pooling part separately, because the
network keeps torchvision's names around them (``conv1``, ``bn1``, ``relu``, ``maxpool``), which
checkpoints depend on: the convolution part becomes ``conv1`` and its final batch norm ``bn1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from ..errors import InputError
from .conv_bn_act import conv3x3


class StemParts(NamedTuple):
    conv: nn.Module  # becomes ``conv1``; its output has the stem's width and is normalised by ``bn1``
    conv_stride: int
    pool: nn.Module  # becomes ``maxpool`` (an identity for stems without one)
    pool_stride: int


# (in_chans, width) -> StemParts
StemBuilder = Callable[[int, int], StemParts]


def imagenet_stem(in_chans: int, width: int) -> StemParts:
    """7x7 stride-2 convolution and 3x3 stride-2 max-pool (He et al. 2015, Table 1)."""
    conv = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
    return StemParts(conv, 2, nn.MaxPool2d(kernel_size=3, stride=2, padding=1), 2)


def cifar_stem(in_chans: int, width: int) -> StemParts:
    """One 3x3 convolution at full resolution (He et al. 2015, section 4.2)."""
    return StemParts(conv3x3(in_chans, width), 1, nn.Identity(), 1)


def deep_stem(in_chans: int, width: int) -> StemParts:
    """Three 3x3 convolutions (width/2, width/2, width; the first with stride 2) replacing the
    7x7, then the max-pool: ResNet-C of He et al. 2019, "Bag of Tricks", Figure 2b (same
    receptive field, cheaper per pixel, better accuracy), as in timm's ``resnet*d``.

    ``nn.Sequential`` with timm's indices (``conv1.0``, ``conv1.1``, ``conv1.3``, ``conv1.4``,
    ``conv1.6``). Pre-activation networks keep the inner BN-ReLUs; the last one is their first
    block's pre-activation.
    """
    inner = width // 2
    conv = nn.Sequential(
        nn.Conv2d(in_chans, inner, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(inner),
        nn.ReLU(inplace=True),
        conv3x3(inner, inner),
        nn.BatchNorm2d(inner),
        nn.ReLU(inplace=True),
        conv3x3(inner, width),
    )
    return StemParts(conv, 2, nn.MaxPool2d(kernel_size=3, stride=2, padding=1), 2)


STEMS: dict[str, StemBuilder] = {
    "imagenet": imagenet_stem,
    "cifar": cifar_stem,
    "deep": deep_stem,
}


def make_stem(kind: str, in_chans: int, width: int) -> StemParts:
    """The stem named ``kind`` in :data:`STEMS`."""
    if kind not in STEMS:
        raise InputError(f"stem must be one of {', '.join(STEMS)}; got {kind!r}")
    return STEMS[kind](in_chans, width)
