"""Convolutions and the conv-BN-activation unit."""

from __future__ import annotations

from torch import Tensor, nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with "same" padding and no bias (a BN follows, so a bias would be redundant)."""
    return nn.Conv2d(
        in_channels, out_channels, kernel_size=3, stride=stride, padding=dilation,
        groups=groups, dilation=dilation, bias=False,
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class ConvBnAct(nn.Sequential):
    """One conv, batch-norm and activation unit: the Keras example's ``resnet_layer``.

    ``conv_first=True`` is the v1 (post-activation) order conv -> BN -> act;
    ``conv_first=False`` is the v2 (pre-activation) order BN -> act -> conv of He et al. 2016,
    "Identity Mappings in Deep Residual Networks", where the BN normalises the *input* channels.
    ``batch_norm=False`` or ``activation=False`` drop those parts, as in the Keras function.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        conv_first: bool = True,
        batch_norm: bool = True,
        activation: bool = True,
        groups: int = 1,
        dilation: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            groups=groups, dilation=dilation, bias=not batch_norm,
        )
        norm_channels = out_channels if conv_first else in_channels
        parts: list[tuple[str, nn.Module]] = []
        if not conv_first:
            if batch_norm:
                parts.append(("bn", nn.BatchNorm2d(norm_channels)))
            if activation:
                parts.append(("act", nn.ReLU(inplace=True)))
        parts.append(("conv", conv))
        if conv_first:
            if batch_norm:
                parts.append(("bn", nn.BatchNorm2d(norm_channels)))
            if activation:
                parts.append(("act", nn.ReLU(inplace=True)))
        super().__init__()
        for name, module in parts:
            self.add_module(name, module)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - Sequential's forward, typed for TorchScript
        for module in self:
            x = module(x)
        return x
