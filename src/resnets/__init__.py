"""resnets: residual networks faithful to the papers (He et al. 2015; 2016) on PyTorch."""

from . import models  # noqa: F401  (registers the zoo)
from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from .models import ResNet, cifar_resnet, imagenet_resnet, resnet_v1, resnet_v2, wide_resnet_cifar
from .profile import Profile, count_params, profile
from .registry import create_model, list_models, model_entry, register_model

__version__ = "0.1.0"

__all__ = [
    "BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck", "Profile", "ResNet",
    "cifar_resnet", "count_params", "create_model", "imagenet_resnet", "list_models", "model_entry",
    "profile", "register_model", "resnet_v1", "resnet_v2", "wide_resnet_cifar",
]
