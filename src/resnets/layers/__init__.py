"""Small pieces that blocks are built from: one concept per file (timm's ``layers/`` layout)."""

from .conv_bn_act import ConvBnAct, conv1x1, conv3x3
from .shortcut import PadShortcut, make_shortcut
from .squeeze_excite import SqueezeExcite

__all__ = ["ConvBnAct", "PadShortcut", "SqueezeExcite", "conv1x1", "conv3x3", "make_shortcut"]
