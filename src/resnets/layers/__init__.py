"""Small pieces that blocks are built from: one concept per file (timm's ``layers/`` layout).
Shortcuts and stems are named choices (:data:`SHORTCUTS`, :data:`STEMS`): a new kind is one
builder function and one dictionary entry."""

from .conv_bn_act import ConvBnAct, conv1x1, conv3x3
from .shortcut import SHORTCUTS, PadShortcut, make_shortcut
from .squeeze_excite import SqueezeExcite
from .stem import STEMS, StemParts, make_stem

__all__ = [
    "SHORTCUTS", "STEMS", "ConvBnAct", "PadShortcut", "SqueezeExcite", "StemParts", "conv1x1", "conv3x3",
    "make_shortcut", "make_stem",
]
