"""Densely connected networks (Huang et al. 2017, "Densely Connected Convolutional Networks").

Not residual: each layer's input is the concatenation of every earlier map of its dense block, and
it adds ``growth_rate`` (k) channels of its own. DenseNet-BC layers are BN-ReLU-1x1 conv (4k)
-BN-ReLU-3x3 conv (k), and the transitions between blocks (BN-ReLU-1x1 conv-2x2 average pool)
halve the channels (compression 0.5). The family and its blocks live here, apart from the
residual blocks, with torchvision's module names (``features.conv0``, ``features.denseblockN.
denselayerM.conv1``, ``features.transitionN``, ``features.norm5``, ``classifier``), so
torchvision's DenseNet state dicts load with ``strict=True`` and give the same logits.

DenseNet-BC on CIFAR (3 blocks of (L-4)/6 layers, stem conv of 2k channels; Table 2, C10+ is the
error on augmented CIFAR-10). Parameters with 10 classes recomputed by ``tests/test_models.py``:

    =====================  =====  ===========  ==========  ============
    model                  L, k   paper params  our params  paper C10+
    =====================  =====  ===========  ==========  ============
    densenet_bc100_k12     100,12  0.8M         769,162     4.51 %
    cifar_densenet(250,24) 250,24  15.3M        15.3M       3.62 %
    cifar_densenet(190,40) 190,40  25.6M        25.6M       3.46 %
    =====================  =====  ===========  ==========  ============

ImageNet DenseNet-BC (Table 1; k=32, stem 7x7 conv of 2k channels and max-pool; DenseNet-161 k=48):
densenet121 7,978,856, densenet169 14,149,480, densenet201 20,013,928, densenet161 28,681,000
parameters, as torchvision's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..layers import conv1x1, conv3x3, make_stem
from ..registry import register_model

CIFAR_INPUT = (3, 32, 32)
IMAGENET_INPUT = (3, 224, 224)


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (``bn_size * growth_rate``) - BN-ReLU-3x3 conv (``growth_rate``): the
    bottleneck layer "B" of DenseNet-BC (section 3). Takes the block's concatenated maps."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int = 4, drop_rate: float = 0.0) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(in_channels, width)
        self.norm2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, growth_rate)
        # Dropout after each layer's new maps (the paper's 0.2, used without data augmentation).
        self.drop: nn.Module = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu1(self.norm1(x)))
        return self.drop(self.conv2(self.relu2(self.norm2(out))))


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers (``denselayer1``...), each fed every earlier map of the block;
    the output is the input and all new maps, concatenated (``in_channels + num_layers * k``)."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int = 4,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(
                f"denselayer{i + 1}", DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, drop_rate)
            )

    def forward(self, x: Tensor) -> Tensor:
        maps = [x]
        for layer in self.values():
            maps.append(layer(torch.cat(maps, 1)))
        return torch.cat(maps, 1)


class Transition(nn.Sequential):
    """Between dense blocks: BN-ReLU-1x1 conv to ``out_channels`` (the compression) and a 2x2
    average pool (section 3, "Pooling layers")."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = conv1x1(in_channels, out_channels)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        self.smallest_input = 2  # of the whole network, set by DenseNet: for the message below

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] < 2 or x.shape[-1] < 2:
            # Else torch's "Output size is too small", which names neither the layer nor the image size.
            n = self.smallest_input
            raise InputError(f"input too small for this DenseNet: a transition's 2x2 pool got a "
                             f"{x.shape[-2]}x{x.shape[-1]} map; it takes images of at least {n}x{n} pixels")
        return self.pool(self.conv(self.relu(self.norm(x))))


def _smallest_input(stem: Sequence[nn.Module], transitions: int) -> int:
    """The smallest image side for which every transition's pool gets a map of at least 2x2."""
    def after(size: int, module: nn.Module) -> int:
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, st, p = (v if isinstance(v, int) else v[0] for v in (module.kernel_size, module.stride, module.padding))
            return (size + 2 * p - k) // st + 1
        return size

    for side in range(1, 1 << 16):
        size = side
        for module in stem:
            size = after(size, module)
        if size >= 2 << max(transitions - 1, 0) or transitions == 0:
            return side
    raise AssertionError("unreachable: the stem shrinks images by a bounded factor")


class DenseNet(nn.Module):
    """DenseNet-BC: a stem, dense blocks joined by compressing transitions, a final BN-ReLU, global
    average pool and a linear classifier.

    Args:
        growth_rate: k, the channels each dense layer adds.
        block_config: dense layers per block.
        stem: ``"imagenet"`` (7x7 stride-2 conv, BN-ReLU, max-pool; Table 1) or ``"cifar"``
            (one 3x3 conv; section 4.2), from :data:`resnets.layers.STEMS`.
        num_init_features: channels of the stem conv (2k in DenseNet-BC).
        bn_size: the bottleneck width in multiples of k (4 in the paper).
        compression: theta, the fraction of channels a transition keeps (0.5 in DenseNet-BC).
        drop_rate: dropout before the classifier; block_drop_rate: dropout after each dense layer.
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        *,
        stem: str = "imagenet",
        num_init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        block_drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise InputError(f"a DenseNet's stem must be 'imagenet' or 'cifar'; got {stem!r}")
        if not 0 < compression <= 1:
            raise InputError(f"compression must be in (0, 1]; got {compression}")
        if not block_config or any(n < 1 for n in block_config):
            raise InputError(f"every dense block needs at least one layer; got block_config={list(block_config)}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate

        parts = make_stem(stem, in_chans, num_init_features)
        units: list[tuple[str, nn.Module]] = [("conv0", parts.conv)]
        reduction = parts.conv_stride
        if stem == "imagenet":
            # Table 1: the ImageNet stem normalises before its max-pool; on CIFAR the first dense
            # layer's own BN-ReLU follows the stem conv directly (section 3).
            units += [("norm0", nn.BatchNorm2d(num_init_features)), ("relu0", nn.ReLU(inplace=True)),
                      ("pool0", parts.pool)]
            self.feature_info: list[dict[str, Any]] = [
                {"num_chs": num_init_features, "reduction": reduction, "module": "features.relu0"}
            ]
            reduction *= parts.pool_stride
        else:
            self.feature_info = [{"num_chs": num_init_features, "reduction": reduction, "module": "features.conv0"}]

        channels = num_init_features
        for index, num_layers in enumerate(block_config):
            units.append((f"denseblock{index + 1}",
                          DenseBlock(num_layers, channels, growth_rate, bn_size, block_drop_rate)))
            channels += num_layers * growth_rate
            if index == len(block_config) - 1:
                break
            # The map before the transition is the block's full output (timm's feature points).
            self.feature_info.append(
                {"num_chs": channels, "reduction": reduction, "module": f"features.denseblock{index + 1}"}
            )
            out_channels = int(channels * compression)
            units.append((f"transition{index + 1}", Transition(channels, out_channels)))
            channels = out_channels
            reduction *= 2
        units.append(("norm5", nn.BatchNorm2d(channels)))
        self.feature_info.append({"num_chs": channels, "reduction": reduction, "module": "features.norm5"})
        self.features = nn.Sequential(OrderedDict(units))
        transitions = [m for m in self.features if isinstance(m, Transition)]
        smallest = _smallest_input([parts.conv, parts.pool], len(transitions))
        for transition in transitions:
            transition.smallest_input = smallest
        # torchvision applies this ReLU functionally after ``features``; as a module it has no
        # weights, so the state dicts stay the same.
        self.act = nn.ReLU(inplace=True)
        self.num_features = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_drop: nn.Module = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.classifier: nn.Module = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He initialisation over fan-out, as in the authors' Torch code (fb.resnet.torch's).
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward_units(self) -> list[tuple[str, nn.Module]]:
        """The modules :meth:`forward_features` applies, in order, with their names: where
        :class:`resnets.transfer.FeatureExtractor` cuts the network (``feature_info`` names points on it)."""
        return [(f"features.{name}", module) for name, module in self.features.named_children()] + [("act", self.act)]

    def forward_features(self, x: Tensor) -> Tensor:
        """Input images to the last feature map, after the final BN-ReLU."""
        return self.act(self.features(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Feature map to logits; ``pre_logits=True`` stops at the pooled feature vector."""
        x = torch.flatten(self.avgpool(x), 1)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def cifar_densenet(depth: int = 100, growth_rate: int = 12, **kwargs) -> DenseNet:
    """A CIFAR DenseNet-BC of depth L = 6n + 4 (three blocks of n bottleneck layers, 2 convs each,
    plus the stem conv, two transitions and the classifier), stem conv of 2k channels."""
    if depth < 10 or (depth - 4) % 6:
        below = max(10, (depth - 4) // 6 * 6 + 4)
        raise InputError(
            f"a CIFAR DenseNet-BC's depth must be 6n+4 for integer n >= 1 (e.g. 40, 100, 190, 250); got {depth}. "
            f"Nearest valid depths: {below} and {below + 6 if below < depth else below}."
        )
    n = (depth - 4) // 6
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("num_init_features", 2 * growth_rate)
    return DenseNet(growth_rate, (n, n, n), stem="cifar", **kwargs)


def imagenet_densenet(growth_rate: int, block_config: Sequence[int], num_init_features: int, **kwargs) -> DenseNet:
    """An ImageNet DenseNet-BC (Huang et al. 2017, Table 1)."""
    return DenseNet(growth_rate, block_config, stem="imagenet", num_init_features=num_init_features, **kwargs)


def _pin_architecture(kwargs: dict[str, Any]) -> dict[str, Any]:
    # The named models fix their shape; growth_rate and the rest are chosen by the model's name.
    for key in ("growth_rate", "block_config", "num_init_features", "stem"):
        if key in kwargs:
            raise InputError(f"this model fixes {key}; use cifar_densenet/imagenet_densenet for another")
    return kwargs


_cifar = register_model("cifar", CIFAR_INPUT, 10, classifier="classifier", first_conv="features.conv0")
_imagenet = register_model("imagenet", IMAGENET_INPUT, 1000, classifier="classifier", first_conv="features.conv0")


@_cifar
def densenet_bc100_k12(**kwargs) -> DenseNet:
    """CIFAR DenseNet-BC (L=100, k=12; Huang et al. 2017): 3 blocks of 16 bottleneck layers, 0.77M."""
    return cifar_densenet(100, 12, **_pin_architecture(kwargs))


@_imagenet
def densenet121(**kwargs) -> DenseNet:
    """ImageNet DenseNet-121 (Huang et al. 2017; k=32, blocks 6/12/24/16; torchvision-compatible)."""
    return imagenet_densenet(32, (6, 12, 24, 16), 64, **_pin_architecture(kwargs))


@_imagenet
def densenet169(**kwargs) -> DenseNet:
    """ImageNet DenseNet-169 (Huang et al. 2017; k=32, blocks 6/12/32/32; torchvision-compatible)."""
    return imagenet_densenet(32, (6, 12, 32, 32), 64, **_pin_architecture(kwargs))


@_imagenet
def densenet201(**kwargs) -> DenseNet:
    """ImageNet DenseNet-201 (Huang et al. 2017; k=32, blocks 6/12/48/32; torchvision-compatible)."""
    return imagenet_densenet(32, (6, 12, 48, 32), 64, **_pin_architecture(kwargs))


@_imagenet
def densenet161(**kwargs) -> DenseNet:
    """ImageNet DenseNet-161 (Huang et al. 2017; k=48, blocks 6/12/36/24; torchvision-compatible)."""
    return imagenet_densenet(48, (6, 12, 36, 24), 96, **_pin_architecture(kwargs))
