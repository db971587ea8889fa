"""ResNets as backbones for torchvision's detectors (FPN) and segmenters (dilated encoder)."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from ..errors import InputError
from ..registry import create_model
from .finetune import freeze_batchnorm

# Trainable from the top down, torchvision's convention for ``trainable_layers`` (0..5).
_TRAINABLE_ORDER = ["layer4", "layer3", "layer2", "layer1", "conv1"]


def fpn_backbone(
    name: str,
    weights: str | None = None,
    trainable_layers: int = 3,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    *,
    out_channels: int = 256,
    extra_blocks: ExtraFPNBlock | None = None,
    frozen_bn: bool | None = None,
    **kwargs,
) -> BackboneWithFPN:
    """A ResNet + feature pyramid that torchvision's FasterRCNN, RetinaNet and MaskRCNN accept as
    ``backbone`` (it has ``out_channels``).

    ``trainable_layers`` counts stages from the top (torchvision's meaning); ``frozen_bn`` (default:
    when pretrained weights are given) fixes batch-norm, since detection batches are small.
    RetinaNet wants ``returned_layers=(2, 3, 4)`` and ``extra_blocks=LastLevelP6P7(256, 256)``.
    """
    model = create_model(name, weights=weights, num_classes=0, **kwargs)
    stages = [f["module"] for f in model.feature_info[1:]]
    if not 0 <= trainable_layers <= len(stages) + 1:
        raise InputError(f"trainable_layers must be in 0..{len(stages) + 1}; got {trainable_layers}")
    if not returned_layers or any(not 1 <= i <= len(stages) for i in returned_layers):
        raise InputError(f"returned_layers must be within 1..{len(stages)}; got {tuple(returned_layers)}")
    if frozen_bn if frozen_bn is not None else weights is not None:
        freeze_batchnorm(model)
    order = [s for s in _TRAINABLE_ORDER if s == "conv1" or s in stages]
    train_prefixes = tuple(order[:trainable_layers]) + (("bn1",) if trainable_layers == len(order) else ())
    for key, param in model.named_parameters():
        if not key.startswith(train_prefixes):
            param.requires_grad_(False)
    return_layers = {f"layer{i}": str(n) for n, i in enumerate(returned_layers)}
    in_channels = [model.feature_info[i]["num_chs"] for i in returned_layers]
    return BackboneWithFPN(
        model, return_layers, in_channels, out_channels,
        extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool(),
    )


class DilatedEncoder(IntermediateLayerGetter):
    """A ResNet whose last stages are dilated (output stride 8 or 16), returning ``{"out", "aux"}``
    maps as torchvision's DeepLabV3 and FCN models expect; ``out_channels`` / ``aux_channels`` say
    what their heads need."""

    out_channels: int
    aux_channels: int


def dilated_backbone(name: str, weights: str | None = None, output_stride: int = 8, aux: bool = True,
                     **kwargs) -> DilatedEncoder:
    """Encoder for ``torchvision.models.segmentation.DeepLabV3(backbone, DeepLabHead(enc.out_channels,
    n), FCNHead(enc.aux_channels, n))`` (Chen et al. 2017 use output stride 8 or 16)."""
    if output_stride not in (8, 16):
        raise InputError(f"output_stride must be 8 or 16; got {output_stride}")
    model = create_model(name, weights=weights, num_classes=0, output_stride=output_stride, **kwargs)
    if model.layer4 is None:
        raise InputError(f"{name} has three stages; a dilated encoder needs an ImageNet-style four-stage ResNet")
    return_layers = {"layer4": "out"}
    if aux:
        return_layers["layer3"] = "aux"
    encoder = DilatedEncoder(model, return_layers)
    encoder.out_channels = model.feature_info[4]["num_chs"]
    encoder.aux_channels = model.feature_info[3]["num_chs"]
    return encoder


__all__ = ["DilatedEncoder", "dilated_backbone", "fpn_backbone"]
