"""Residual blocks: post-activation (v1) and pre-activation (v2), basic and bottleneck.

All four share one constructor signature and a class attribute ``expansion`` (output channels =
``planes * expansion``), so a network is described by a block class and per-stage counts.
Module names follow torchvision (``conv1, bn1, conv2, bn2, conv3, bn3, downsample``) so its
checkpoints load into the v1 blocks unchanged.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from .errors import InputError
from .layers import SqueezeExcite, conv1x1, conv3x3, make_shortcut


class _Block(nn.Module):
    """What every block has: a residual branch, an optional shortcut module and the addition."""

    expansion: ClassVar[int] = 1
    preact: ClassVar[bool] = False

    def _shortcut_and_extras(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        shortcut: str,
        se_reduction: int,
        drop_rate: float,
        residual: bool,
    ) -> None:
        self.residual = residual
        # A plain network (He et al. 2015, section 4.1, "plain networks") has the same layers and no
        # shortcut at all: no addition and no projection parameters.
        self.downsample: nn.Module | None = (
            make_shortcut(shortcut, in_channels, out_channels, stride, batch_norm=not self.preact)
            if residual
            else None
        )
        self.se: nn.Module = SqueezeExcite(out_channels, se_reduction) if se_reduction else nn.Identity()
        # Dropout between the two 3x3 convolutions, as in Wide ResNet (Zagoruyko & Komodakis 2016).
        self.drop: nn.Module = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        """Start the residual branch at zero so each block begins as the identity
        (Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 5.1)."""
        raise NotImplementedError


class BasicBlock(_Block):
    """Two 3x3 convolutions, post-activation: conv-BN-ReLU-conv-BN, add, ReLU (He et al. 2015, Fig. 5 left)."""

    expansion: ClassVar[int] = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        se_reduction: int = 0,
        stride_in_1x1: bool = False,
        residual: bool = True,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise InputError("BasicBlock supports only groups=1 and base_width=64; use Bottleneck for ResNeXt")
        out_channels = planes * self.expansion
        self.conv1 = conv3x3(in_channels, planes, stride, dilation=dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, out_channels, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self._shortcut_and_extras(in_channels, out_channels, stride, shortcut, se_reduction, drop_rate, residual)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.drop(out)))
        out = self.se(out)
        if self.residual:
            out = out + (self.downsample(x) if self.downsample is not None else x)
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 expand (x4), post-activation (He et al. 2015, Fig. 5 right).

    The stride sits on the 3x3 convolution by default ("ResNet v1.5", as in torchvision, which
    measurably improves accuracy); ``stride_in_1x1=True`` puts it on the first 1x1 as in the paper.
    ``groups`` and ``base_width`` widen the 3x3 for ResNeXt (Xie et al. 2017) and Wide ResNet-50.
    """

    expansion: ClassVar[int] = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        se_reduction: int = 0,
        stride_in_1x1: bool = False,
        residual: bool = True,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out_channels = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self._shortcut_and_extras(in_channels, out_channels, stride, shortcut, se_reduction, drop_rate, residual)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(self.drop(out))))
        out = self.bn3(self.conv3(out))
        out = self.se(out)
        if self.residual:
            out = out + (self.downsample(x) if self.downsample is not None else x)
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


class PreActBasicBlock(_Block):
    """Pre-activation basic block: BN-ReLU-conv-BN-ReLU-conv, add, nothing after
    (He et al. 2016, "Identity Mappings in Deep Residual Networks", Fig. 4e).

    A projection shortcut takes the pre-activated input, so both paths see a normalised signal.
    """

    expansion: ClassVar[int] = 1
    preact: ClassVar[bool] = True

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        se_reduction: int = 0,
        stride_in_1x1: bool = False,
        residual: bool = True,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise InputError("PreActBasicBlock supports only groups=1 and base_width=64")
        out_channels = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_channels, planes, stride, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, out_channels, dilation=dilation)
        self._shortcut_and_extras(in_channels, out_channels, stride, shortcut, se_reduction, drop_rate, residual)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        identity = x
        if self.downsample is not None:
            identity = self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.drop(self.relu(self.bn2(out))))
        out = self.se(out)
        if self.residual:
            out = out + identity
        return out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)


class PreActBottleneck(_Block):
    """Pre-activation bottleneck: (BN-ReLU-conv) x3 with 1x1, 3x3, 1x1 (x4) (He et al. 2016)."""

    expansion: ClassVar[int] = 4
    preact: ClassVar[bool] = True

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        se_reduction: int = 0,
        stride_in_1x1: bool = False,
        residual: bool = True,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out_channels = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(in_channels, width, stride_1x1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups, dilation)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self._shortcut_and_extras(in_channels, out_channels, stride, shortcut, se_reduction, drop_rate, residual)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        identity = x
        if self.downsample is not None:
            identity = self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.drop(self.relu(self.bn2(out))))
        out = self.conv3(self.relu(self.bn3(out)))
        out = self.se(out)
        if self.residual:
            out = out + identity
        return out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)


BLOCKS: dict[str, type[_Block]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
}

__all__ = ["BLOCKS", "BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck"]
