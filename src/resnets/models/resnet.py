"""The one ``ResNet`` class every family is built from.

Unlike torchvision's, the stem is a choice by name (:data:`resnets.layers.STEMS`: ``"imagenet"``,
the 7x7 stride-2 conv and max-pool of He et al. 2015 Table 1; ``"cifar"``, one 3x3 conv, section 4.2;
``"deep"``, ResNet-C's three 3x3 convs, He et al. 2019), and so is the shortcut
(:data:`resnets.layers.SHORTCUTS`), so CIFAR networks, ImageNet networks, ResNet-D and their
pre-activation and plain counterparts share one implementation and one set of module names
(``conv1, bn1, layer1..4, fc``) that torchvision checkpoints load into.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..blocks import BLOCKS, _Block
from ..errors import InputError
from ..layers import make_stem

# The block signature every block class shares (resnets.blocks); ResNet passes these itself.
_SHARED_BLOCK_ARGS = ("shortcut", "groups", "base_width", "dilation", "se_reduction", "stride_in_1x1",
                      "residual", "drop_rate")


def check_num_classes(num_classes: int, name: str | None = None) -> None:
    """Every family reads ``num_classes`` 0 as "no classifier" (features out); -1 must not mean that."""
    if num_classes < 0:
        raise InputError(f"{f'{name}: ' if name else ''}num_classes must be >= 0 (0: no classifier, features out); "
                         f"got {num_classes}")


class ResNet(nn.Module):
    """A residual network: stem, stages of blocks, global average pool, linear classifier.

    Args:
        block: block class (or its name in :data:`resnets.blocks.BLOCKS`); pre-activation blocks
            make a v2 network, with a conv-only stem and a final BN-ReLU before pooling.
        layers: number of blocks per stage.
        widths: ``planes`` of each stage (output channels are ``planes * block.expansion``).
        stem: a name in :data:`resnets.layers.STEMS` (``"imagenet"``, ``"cifar"``, ``"deep"``);
            ``stem_width``: the stem's output channels.
        shortcut: a name in :data:`resnets.layers.SHORTCUTS` (``"A"``, ``"B"``, ``"C"``, ``"avg"``).
        groups, width_per_group: grouped / widened 3x3 in bottlenecks (ResNeXt, Wide ResNet-50).
        se_reduction: squeeze-and-excitation ratio in every block (0: none).
        stride_in_1x1: the paper's v1 bottleneck (stride on the first 1x1) instead of v1.5.
        residual: ``False`` builds the plain counterpart (same layers, no shortcuts).
        zero_init_last: zero the last BN (last conv for v2) of every residual branch.
        output_stride: 32 (ImageNet) / 4 (CIFAR) by default; smaller powers of two, down to the
            stem's stride, replace the stride of the last stages by dilation, for dense prediction
            (Chen et al. 2017, DeepLabV3).
        drop_rate: dropout before the classifier; block_drop_rate: dropout inside blocks (WRN).
        block_args: further keyword arguments for every block, for block classes with arguments of
            their own (timm's ``block_args``): a new block keyword needs no edit here or in the
            other blocks.
    """

    def __init__(
        self,
        block: type[_Block] | str,
        layers: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        stem_width: int = 64,
        num_classes: int = 1000,
        in_chans: int = 3,
        shortcut: str = "B",
        groups: int = 1,
        width_per_group: int = 64,
        se_reduction: int = 0,
        stride_in_1x1: bool = False,
        residual: bool = True,
        zero_init_last: bool = False,
        output_stride: int | None = None,
        drop_rate: float = 0.0,
        block_drop_rate: float = 0.0,
        block_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(block, str):
            if block not in BLOCKS:
                raise InputError(f"unknown block {block!r}; choose one of {', '.join(BLOCKS)}")
            block = BLOCKS[block]
        if len(layers) != len(widths):
            raise InputError(f"layers {list(layers)} and widths {list(widths)} must have the same length")
        if len(layers) not in (3, 4):
            raise InputError(f"a ResNet has 3 (CIFAR) or 4 (ImageNet) stages; got layers={list(layers)}")
        if any(n < 1 for n in layers):
            raise InputError(f"every stage needs at least one block; got layers={list(layers)}")
        check_num_classes(num_classes)
        if zero_init_last and not residual:
            # A plain block has no identity path to fall back on: zeroing its last BN zeroes its
            # output, and so every feature the network computes (a constant model).
            raise InputError("zero_init_last=True needs residual blocks; with residual=False (a plain network) "
                             "it makes every block output zero")
        self.preact = block.preact
        self.num_classes = num_classes
        self.drop_rate = drop_rate

        block_args = dict(block_args or {})
        if clash := sorted(set(block_args) & set(_SHARED_BLOCK_ARGS)):
            raise InputError(f"block_args {clash} are ResNet arguments; pass them directly, not in block_args")

        # Stem. A v2 stem ends with its conv: the first block's pre-activation normalises its output.
        parts = make_stem(stem, in_chans, stem_width)
        self.conv1 = parts.conv
        reduction = parts.conv_stride
        # Identity placeholders instead of branches keep one forward path (and TorchScript happy).
        self.bn1: nn.Module = nn.Identity() if self.preact else nn.BatchNorm2d(stem_width)
        self.relu: nn.Module = nn.Identity() if self.preact else nn.ReLU(inplace=True)
        self.feature_info: list[dict[str, Any]] = [
            {"num_chs": stem_width, "reduction": reduction, "module": "conv1" if self.preact else "relu"}
        ]
        self.maxpool: nn.Module = parts.pool
        reduction *= parts.pool_stride

        # Each stage after the first halves the resolution; dilation can only undo those halvings,
        # so an output stride is the stem's reduction times a power of two (not 2 after a stride-4
        # stem, which gave 4, nor 12, which gave 8). One at or above the network's own dilates nothing.
        own_stride = reduction * 2 ** (len(layers) - 1)
        if output_stride is not None and (
                isinstance(output_stride, bool) or not isinstance(output_stride, int) or output_stride < reduction
                or output_stride & (output_stride - 1)):
            raise InputError(f"output_stride must be a power of two >= {reduction} (the {stem!r} stem's stride; "
                             f"{own_stride}, this network's own, dilates nothing); got {output_stride!r}")
        max_stride = output_stride or own_stride
        in_channels, dilation = stem_width, 1
        self.stage_names: list[str] = []
        for index, (num_blocks, planes) in enumerate(zip(layers, widths)):
            stride = 1 if index == 0 else 2
            previous_dilation = dilation
            if reduction * stride > max_stride:
                # Keep the resolution; widen the receptive field with dilation instead.
                dilation *= stride
                stride = 1
            reduction *= stride
            blocks = []
            for i in range(num_blocks):
                blocks.append(
                    block(
                        in_channels, planes, stride if i == 0 else 1,
                        shortcut=shortcut, groups=groups, base_width=width_per_group,
                        # The first block of a dilated stage uses the previous dilation, as in
                        # torchvision, so the change of dilation happens inside one block.
                        dilation=previous_dilation if i == 0 else dilation,
                        se_reduction=se_reduction, stride_in_1x1=stride_in_1x1,
                        residual=residual, drop_rate=block_drop_rate,
                        **block_args,
                    )
                )
                in_channels = planes * block.expansion
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.feature_info.append({"num_chs": in_channels, "reduction": reduction, "module": name})
        if len(layers) == 3:
            # CIFAR networks have three stages; ``None`` keeps forward_features scriptable.
            self.layer4: nn.Module | None = None

        self.num_features = in_channels
        # v2 networks end with BN-ReLU: their last block's output is a raw sum (He et al. 2016).
        self.norm: nn.Module = nn.BatchNorm2d(in_channels) if self.preact else nn.Identity()
        self.act: nn.Module = nn.ReLU(inplace=True) if self.preact else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_drop: nn.Module = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc: nn.Module = nn.Linear(in_channels, num_classes) if num_classes > 0 else nn.Identity()

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_last:
            for module in self.modules():
                if isinstance(module, _Block):
                    module.zero_init_last()

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_units(self) -> list[tuple[str, nn.Module]]:
        """The modules :meth:`forward_features` applies, in order, with their names: where
        :class:`resnets.transfer.FeatureExtractor` cuts the network (``feature_info`` names points on it)."""
        units = [("conv1", self.conv1), ("bn1", self.bn1), ("relu", self.relu), ("maxpool", self.maxpool)]
        units += [(name, getattr(self, name)) for name in self.stage_names]
        return units + [("norm", self.norm), ("act", self.act)]

    def forward_features(self, x: Tensor) -> Tensor:
        """Input images to the last feature map (after the final BN-ReLU for v2 networks)."""
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.layer4 is not None:
            x = self.layer4(x)
        return self.act(self.norm(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Feature map to logits; ``pre_logits=True`` stops at the pooled feature vector."""
        x = torch.flatten(self.avgpool(x), 1)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs (0: none)."""
        check_num_classes(num_classes)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
