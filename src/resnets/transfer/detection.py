"""torchvision's detectors on the project's ResNet-FPN backbones (issue 16, item 3), sized for small
images (the 64-px composed scenes of :mod:`resnets.data.scenes`).

    model = detector("fcos", "resnet18", num_classes=11, image_size=64)     # labels 1..10, 0 background
    losses = model(images, targets)          # training: a dict of losses
    detections = model.eval()(images)        # inference: boxes, scores, labels per image

Two designs:

- two-stage: ``fasterrcnn``, Faster R-CNN (Ren et al. 2015): a region proposal network over every
  FPN level, then RoIAlign and a small MLP that classifies and refines each proposal;
- one-stage: ``fcos`` (Tian et al. 2019, anchor-free: each location of the pyramid predicts its
  class, its distances to the four box sides and a centre-ness) and ``retinanet`` (Lin et al.
  2017, anchors and the focal loss). Like the YOLO family, they predict boxes densely in one pass.

torchvision's defaults are for 800-px COCO images and 256-channel FPNs; here the images are not
resized (``min_size = max_size = image_size``), anchors start at 16 px on the stride-8 level, and
the FPN and heads are narrower (``fpn_channels``, ``head_convs``) so that a CPU trains them in
minutes. With ``weights=None`` every layer of the backbone trains, its batch-norm included.
torchvision's detection modules load on first use (``import resnets`` stays light, issue 18).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn

from ..errors import InputError

DETECTORS = {"fasterrcnn": "two-stage", "fcos": "one-stage", "retinanet": "one-stage"}
# torchvision's detectors' own normalisation: for a backbone trained on ImageNet, or from scratch.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def detector(kind: str, backbone: str = "resnet18", num_classes: int = 11, *, image_size: int = 64,
             weights: str | None = None, fpn_channels: int = 128, head_convs: int = 2,
             image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None,
             score_thresh: float = 0.05, detections_per_img: int = 100, trainable_layers: int | None = None,
             **backbone_kwargs) -> nn.Module:
    """A torchvision ``FasterRCNN``, ``FCOS`` or ``RetinaNet`` on ``fpn_backbone(backbone)``.

    ``num_classes`` counts the background (torchvision's convention: labels 1..num_classes-1).
    ``score_thresh`` 0.05 keeps the low-scoring detections COCO's mAP needs for its whole
    precision-recall curve (FCOS's own default, 0.2, would cut it short).
    ``image_mean``/``image_std`` default to the normalisation ``weights`` were trained with (their
    preprocessing record), else ImageNet's.
    """
    if kind not in DETECTORS:
        raise InputError(f"unknown detector {kind!r}; choose one of {', '.join(DETECTORS)}")
    if num_classes < 2:
        raise InputError(f"num_classes counts the background and must be >= 2; got {num_classes}")
    if image_size < 32 or fpn_channels < 32 or fpn_channels % 32 or not 1 <= head_convs <= 4:
        raise InputError(f"need image_size >= 32, fpn_channels a multiple of 32 (GroupNorm in the heads), "
                         f"1 <= head_convs <= 4; got {image_size}, {fpn_channels}, {head_convs}")
    if trainable_layers is None:
        trainable_layers = 5 if weights is None else 3  # from scratch every layer learns
    if image_mean is None or image_std is None:
        mean, std = _normalization(backbone, weights)
        image_mean = mean if image_mean is None else image_mean
        image_std = std if image_std is None else image_std
    common = {"min_size": image_size, "max_size": image_size, "image_mean": list(image_mean),
              "image_std": list(image_std)}
    if kind == "fasterrcnn":
        return _faster_rcnn(backbone, num_classes, weights, trainable_layers, fpn_channels, score_thresh,
                            detections_per_img, common, backbone_kwargs)
    return _one_stage(kind, backbone, num_classes, weights, trainable_layers, fpn_channels, head_convs,
                      score_thresh, detections_per_img, common, backbone_kwargs)


def _normalization(backbone: str, weights: str | None) -> tuple[Sequence[float], Sequence[float]]:
    """The weights' own mean and std: the backbone must see pixels normalised as in its training
    (ImageNet's statistics on a CIFAR-trained backbone shift and rescale every input)."""
    if weights is None:
        return IMAGENET_MEAN, IMAGENET_STD
    from ..preprocessing import PreprocessingError, transforms_for

    try:
        preprocessing = transforms_for(weights, model=backbone)
    except PreprocessingError:  # a torchvision or timm state dict: trained on ImageNet, without a record
        return IMAGENET_MEAN, IMAGENET_STD
    return preprocessing.mean, preprocessing.std


def _faster_rcnn(backbone, num_classes, weights, trainable_layers, channels, score_thresh, detections_per_img,
                 common, backbone_kwargs):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    from .backbones import fpn_backbone

    # Strides 4, 8, 16, 32 and the max-pooled 64: one anchor size per level, three aspect ratios.
    body = fpn_backbone(backbone, weights, trainable_layers, (1, 2, 3, 4), out_channels=channels, **backbone_kwargs)
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    representation = 256  # torchvision's 1024 is for 91 COCO classes; 256 serves ten
    return FasterRCNN(
        body, None, **common, rpn_anchor_generator=anchors, box_roi_pool=pool,
        box_head=TwoMLPHead(channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        # A 64-px scene holds 1-3 objects: 100 proposals and 32 sampled RoIs per image (up to 8
        # positive) are plenty. torchvision's 2000 and 512 are for COCO; RoIAlign's backward, the
        # slowest part of a step on a CPU, grows with the RoIs (1.1 s a step of 16 scenes, not 1.8).
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100, rpn_batch_size_per_image=64, box_batch_size_per_image=32,
        box_score_thresh=score_thresh, box_detections_per_img=detections_per_img,
    )


def _one_stage(kind, backbone, num_classes, weights, trainable_layers, channels, head_convs, score_thresh,
               detections_per_img, common, backbone_kwargs):
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from .backbones import fpn_backbone

    # Strides 8, 16, 32 and the max-pooled 64 (torchvision's P6/P7 would be 1x1 on a 64-px image).
    body = fpn_backbone(backbone, weights, trainable_layers, (2, 3, 4), out_channels=channels,
                        extra_blocks=LastLevelMaxPool(), **backbone_kwargs)
    if kind == "fcos":
        # FCOS's "anchor" is a location with a size: the stride, as in torchvision. Its positives are
        # the locations within 1.5 sizes of an object's centre (3x3 of them), and a level takes the
        # objects whose farthest side lies 4 to 8 sizes away (the first level from 0): here every
        # object up to 128 px goes to stride 8, where a 20-40 px object spans 3-5 locations.
        anchors = AnchorGenerator(((8,), (16,), (32,), (64,)), ((1.0,),) * 4)
        head = FCOSHead(channels, 1, num_classes, num_convs=head_convs)
        return FCOS(body, num_classes, **common, anchor_generator=anchors, head=head, score_thresh=score_thresh,
                    detections_per_img=detections_per_img)
    # RetinaNet: three octave scales and three aspect ratios per level, from 16 px at stride 8.
    sizes = tuple(tuple(round(base * 2 ** (i / 3)) for i in range(3)) for base in (16, 32, 64, 128))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 4)
    head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes,
                         norm_layer=partial(nn.GroupNorm, 32))
    for branch in (head.classification_head, head.regression_head):  # its towers have 4 convs: keep head_convs
        branch.conv = branch.conv[:head_convs]
    return RetinaNet(body, num_classes, **common, anchor_generator=anchors, head=head, score_thresh=score_thresh,
                     detections_per_img=detections_per_img)


__all__ = ["DETECTORS", "detector"]
