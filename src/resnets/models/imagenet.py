"""ImageNet ResNets (He et al. 2015, Table 1): 7x7 stride-2 stem and max-pool, four stages of
widths 64-512, v1.5 bottlenecks (stride on the 3x3) as in torchvision, whose checkpoints load
with ``strict=True``. Also pre-activation (v2), plain, Wide, ResNeXt and SE variants, and ResNet-D
(He et al. 2019): the same blocks with the deep stem and the average-pool shortcut, chosen by name.

Parameters (1000 classes), checked by ``tests/test_models.py`` against torchvision and timm:

    resnet18 11.69M   resnet34 21.80M   resnet50 25.56M   resnet101 44.55M   resnet152 60.19M
    resnet18d 11.71M  resnet34d 21.82M  resnet50d 25.58M  resnet101d 44.57M
"""

from __future__ import annotations

from ..blocks import BasicBlock, Bottleneck, PreActBottleneck
from ..errors import InputError
from ..registry import register_model
from ._builder import pin
from .resnet import ResNet

IMAGENET_INPUT = (3, 224, 224)
STAGE_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def imagenet_resnet(depth: int, *, preact: bool = False, **kwargs) -> ResNet:
    """An ImageNet ResNet of depth 18, 34, 50, 101 or 152 (basic blocks below 50)."""
    if depth not in STAGE_BLOCKS:
        raise InputError(f"ImageNet ResNet depth must be one of {sorted(STAGE_BLOCKS)}; got {depth}")
    if depth < 50:
        if preact:
            raise InputError("pre-activation ImageNet ResNets are defined for depth >= 50")
        block = BasicBlock
    else:
        block = PreActBottleneck if preact else Bottleneck
    kwargs.setdefault("stem", "imagenet")
    return ResNet(block, STAGE_BLOCKS[depth], **kwargs)


def resnet_d(depth: int, **kwargs) -> ResNet:
    """ResNet-D (He et al. 2019, "Bag of Tricks", section 4): ResNet-B's stride on the 3x3 (our
    default, v1.5), ResNet-C's deep stem of three 3x3 convs, and ResNet-D's 2x2 average pool
    before the 1x1 projection of downsampling shortcuts; timm's ``resnet*d`` (stem width 32/32/64)."""
    return imagenet_resnet(depth, **pin(kwargs, stem="deep", shortcut="avg"))


_imagenet = register_model("imagenet", IMAGENET_INPUT, 1000)
# The deep stem's first convolution is conv1.0 (what another in_chans adapts when loading weights).
_imagenet_deep_stem = register_model("imagenet", IMAGENET_INPUT, 1000, first_conv="conv1.0")


# One explicit builder per registered name (grep finds them); variants pin the arguments that
# define them and refuse a caller's conflicting value.


@_imagenet
def resnet18(**kwargs) -> ResNet:
    """ImageNet ResNet-18 (v1.5, torchvision-compatible)."""
    return imagenet_resnet(18, **kwargs)


@_imagenet
def resnet34(**kwargs) -> ResNet:
    """ImageNet ResNet-34 (v1.5, torchvision-compatible)."""
    return imagenet_resnet(34, **kwargs)


@_imagenet
def resnet50(**kwargs) -> ResNet:
    """ImageNet ResNet-50 (v1.5, torchvision-compatible)."""
    return imagenet_resnet(50, **kwargs)


@_imagenet
def resnet101(**kwargs) -> ResNet:
    """ImageNet ResNet-101 (v1.5, torchvision-compatible)."""
    return imagenet_resnet(101, **kwargs)


@_imagenet
def resnet152(**kwargs) -> ResNet:
    """ImageNet ResNet-152 (v1.5, torchvision-compatible)."""
    return imagenet_resnet(152, **kwargs)


@_imagenet
def resnetv2_50(**kwargs) -> ResNet:
    """ImageNet pre-activation ResNet-50 (He et al. 2016)."""
    return imagenet_resnet(50, **pin(kwargs, preact=True))


@_imagenet
def resnetv2_101(**kwargs) -> ResNet:
    """ImageNet pre-activation ResNet-101 (He et al. 2016)."""
    return imagenet_resnet(101, **pin(kwargs, preact=True))


@_imagenet
def resnetv2_152(**kwargs) -> ResNet:
    """ImageNet pre-activation ResNet-152 (He et al. 2016)."""
    return imagenet_resnet(152, **pin(kwargs, preact=True))


@_imagenet
def plain18(**kwargs) -> ResNet:
    """ImageNet plain-18: ResNet-18's layers without shortcuts."""
    return imagenet_resnet(18, **pin(kwargs, residual=False))


@_imagenet
def plain34(**kwargs) -> ResNet:
    """ImageNet plain-34: ResNet-34's layers without shortcuts."""
    return imagenet_resnet(34, **pin(kwargs, residual=False))


@_imagenet
def wide_resnet50_2(**kwargs) -> ResNet:
    """Wide ResNet-50-2: bottleneck 3x3 twice as wide."""
    return imagenet_resnet(50, **pin(kwargs, width_per_group=128))


@_imagenet
def wide_resnet101_2(**kwargs) -> ResNet:
    """Wide ResNet-101-2: bottleneck 3x3 twice as wide."""
    return imagenet_resnet(101, **pin(kwargs, width_per_group=128))


@_imagenet
def resnext50_32x4d(**kwargs) -> ResNet:
    """ResNeXt-50 32x4d (Xie et al. 2017)."""
    return imagenet_resnet(50, **pin(kwargs, groups=32, width_per_group=4))


@_imagenet
def resnext101_32x8d(**kwargs) -> ResNet:
    """ResNeXt-101 32x8d (Xie et al. 2017)."""
    return imagenet_resnet(101, **pin(kwargs, groups=32, width_per_group=8))


@_imagenet
def seresnet50(**kwargs) -> ResNet:
    """SE-ResNet-50 (Hu et al. 2018), reduction 16."""
    return imagenet_resnet(50, **pin(kwargs, se_reduction=16))


@_imagenet_deep_stem
def resnet18d(**kwargs) -> ResNet:
    """ImageNet ResNet-18-D (He et al. 2019): deep stem, average-pool shortcut (timm's resnet18d)."""
    return resnet_d(18, **kwargs)


@_imagenet_deep_stem
def resnet34d(**kwargs) -> ResNet:
    """ImageNet ResNet-34-D (He et al. 2019): deep stem, average-pool shortcut (timm's resnet34d)."""
    return resnet_d(34, **kwargs)


@_imagenet_deep_stem
def resnet50d(**kwargs) -> ResNet:
    """ImageNet ResNet-50-D (He et al. 2019): deep stem, average-pool shortcut (timm's resnet50d)."""
    return resnet_d(50, **kwargs)


@_imagenet_deep_stem
def resnet101d(**kwargs) -> ResNet:
    """ImageNet ResNet-101-D (He et al. 2019): deep stem, average-pool shortcut (timm's resnet101d)."""
    return resnet_d(101, **kwargs)


