"""Transfer learning: weights from torchvision, timm and our own files; adapting heads and
input channels; fine-tuning controls; feature extraction; detection and segmentation backbones."""

# The model-side pieces transfer learning uses, re-exported here (they live below the registry).
from ..models.features import FeatureExtractor
from ..weights_io import (
    LoadReport,
    WeightsError,
    adapt_input_conv,
    convert_timm_state_dict,
    load_into,
    read_weights,
)
from .finetune import (
    GradualUnfreezer,
    freeze,
    freeze_batchnorm,
    linear_probe,
    lr_multipliers,
    set_trainable,
    stage_names,
)

__all__ = [
    "DilatedEncoder", "FeatureExtractor", "GradualUnfreezer", "LoadReport", "WeightsError", "adapt_input_conv",
    "convert_timm_state_dict", "dilated_backbone", "fpn_backbone", "freeze", "freeze_batchnorm",
    "linear_probe", "load_into", "lr_multipliers", "read_weights", "set_trainable", "stage_names",
]


# The detection/segmentation backbones need torchvision.models (and with it torch._dynamo): 2-3 s
# that `import resnets` and every command would pay. They load on first use (issue 18).
_BACKBONES = ("DilatedEncoder", "dilated_backbone", "fpn_backbone")


def __getattr__(name: str):
    if name in _BACKBONES:
        from . import backbones

        return getattr(backbones, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
