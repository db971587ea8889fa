"""ImageNet ResNets (He et al. 2015, Table 1): 7x7 stride-2 stem and max-pool, four stages of
widths 64-512, v1.5 bottlenecks (stride on the 3x3) as in torchvision, whose checkpoints load
with ``strict=True``. Also pre-activation (v2), plain, Wide, ResNeXt and SE variants.
"""

from __future__ import annotations

from ..blocks import BasicBlock, Bottleneck, PreActBottleneck
from ..registry import register_model
from ._builder import pin
from .resnet import ResNet

IMAGENET_INPUT = (3, 224, 224)
STAGE_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def imagenet_resnet(depth: int, *, preact: bool = False, **kwargs) -> ResNet:
    """An ImageNet ResNet of depth 18, 34, 50, 101 or 152 (basic blocks below 50)."""
    if depth not in STAGE_BLOCKS:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(STAGE_BLOCKS)}; got {depth}")
    if depth < 50:
        if preact:
            raise ValueError("pre-activation ImageNet ResNets are defined for depth >= 50")
        block = BasicBlock
    else:
        block = PreActBottleneck if preact else Bottleneck
    return ResNet(block, STAGE_BLOCKS[depth], stem="imagenet", **kwargs)


def _register(name: str, depth: int, doc: str, **pinned) -> None:
    def builder(**kwargs) -> ResNet:
        return imagenet_resnet(depth, **pin(kwargs, **pinned))

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    register_model("imagenet", IMAGENET_INPUT, 1000)(builder)
    globals()[name] = builder


for _depth in (18, 34, 50, 101, 152):
    _register(f"resnet{_depth}", _depth, f"ImageNet ResNet-{_depth} (v1.5, torchvision-compatible).")
for _depth in (50, 101, 152):
    _register(f"resnetv2_{_depth}", _depth, f"ImageNet pre-activation ResNet-{_depth} (He et al. 2016).", preact=True)
for _depth in (18, 34):
    _register(f"plain{_depth}", _depth, f"ImageNet plain-{_depth}: ResNet-{_depth}'s layers without shortcuts.",
              residual=False)
_register("wide_resnet50_2", 50, "Wide ResNet-50-2: bottleneck 3x3 twice as wide.", width_per_group=128)
_register("wide_resnet101_2", 101, "Wide ResNet-101-2: bottleneck 3x3 twice as wide.", width_per_group=128)
_register("resnext50_32x4d", 50, "ResNeXt-50 32x4d (Xie et al. 2017).", groups=32, width_per_group=4)
_register("resnext101_32x8d", 101, "ResNeXt-101 32x8d (Xie et al. 2017).", groups=32, width_per_group=8)
_register("seresnet50", 50, "SE-ResNet-50 (Hu et al. 2018), reduction 16.", se_reduction=16)
