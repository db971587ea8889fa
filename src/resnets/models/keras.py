"""The Keras CIFAR-10 example's API, depth as the only knob: ``resnet_v1`` and ``resnet_v2``.

Unlike the Keras example (projection shortcuts and Adam), ``resnet_v1`` uses the paper's
parameter-free option A shortcut by default; pass ``shortcut="B"`` for the Keras behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError
from .cifar import cifar_resnet
from .resnet import ResNet


def _in_chans(input_shape: Sequence[int]) -> int:
    """Channels of a (H, W, C) Keras shape or a (C, H, W) PyTorch shape."""
    if len(input_shape) != 3:
        raise InputError(f"input_shape must have 3 entries, (H, W, C) or (C, H, W); got {tuple(input_shape)}")
    first, _, last = input_shape
    if last <= 4 and first > 4:
        channels, size = last, input_shape[:2]
    elif first <= 4:
        channels, size = first, input_shape[1:]
    else:
        raise InputError(f"cannot tell the channel axis of input_shape {tuple(input_shape)}")
    if min(size) < 8:
        raise InputError(f"a CIFAR ResNet halves the input twice and needs at least 8x8 pixels; got {tuple(size)}")
    return channels


def resnet_v1(input_shape: Sequence[int] = (32, 32, 3), depth: int = 20, num_classes: int = 10, **kwargs) -> ResNet:
    """ResNet v1 for CIFAR (He et al. 2015): basic blocks, depth 6n+2."""
    return cifar_resnet(depth, in_chans=_in_chans(input_shape), num_classes=num_classes, **kwargs)


def resnet_v2(input_shape: Sequence[int] = (32, 32, 3), depth: int = 56, num_classes: int = 10, **kwargs) -> ResNet:
    """ResNet v2 for CIFAR (He et al. 2016): pre-activation bottlenecks, depth 9n+2."""
    return cifar_resnet(
        depth, bottleneck=True, preact=True, in_chans=_in_chans(input_shape), num_classes=num_classes, **kwargs
    )
