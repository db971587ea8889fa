"""Model families. Importing this package registers every builder."""

from . import cifar, imagenet  # noqa: F401  (registration side effects)
from .cifar import cifar_resnet, wide_resnet_cifar
from .imagenet import imagenet_resnet
from .keras import resnet_v1, resnet_v2
from .resnet import ResNet

__all__ = ["ResNet", "cifar_resnet", "imagenet_resnet", "resnet_v1", "resnet_v2", "wide_resnet_cifar"]
