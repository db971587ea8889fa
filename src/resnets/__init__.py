"""resnets: residual networks faithful to the papers (He et al. 2015; 2016) on PyTorch."""

from importlib import metadata as _metadata

from . import models  # noqa: F401  (registers the zoo)
from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from .models import DenseNet, ResNet, cifar_resnet, imagenet_resnet, resnet_v1, resnet_v2, wide_resnet_cifar
from .preprocessing import Preprocessing, PreprocessingError, transforms_for
from .profile import Profile, count_params, profile
from .registry import create_model, list_models, load_model, model_entry, register_model
from .runtime import Backend, open_backend

try:  # the installed distribution's version (pyproject.toml), one place for it
    __version__ = _metadata.version("resnets")
except _metadata.PackageNotFoundError:  # a source tree on sys.path without `pip install -e .`
    __version__ = "0+unknown"

__all__ = [
    "Backend", "BasicBlock", "Bottleneck", "DenseNet", "PreActBasicBlock", "PreActBottleneck", "Preprocessing",
    "PreprocessingError", "Profile", "ResNet",
    "cifar_resnet", "count_params", "create_model", "imagenet_resnet", "list_models", "load_model", "model_entry",
    "open_backend", "profile", "register_model", "resnet_v1", "resnet_v2", "transforms_for", "wide_resnet_cifar",
]

# Training API (issue 4): resnets.train(config), resnets.evaluate(weights, data), resnets.predict(weights, images).
# Note: this binds the name `train` to the function; the subpackage stays importable as `from resnets.train import ...`.
from .train import evaluate, predict, train  # noqa: E402

__all__ += ["evaluate", "predict", "train"]
