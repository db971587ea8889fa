"""Model families. Importing this package registers every builder."""

from . import cifar, densenet, imagenet  # noqa: F401  (registration side effects)
from .cifar import cifar_resnet, wide_resnet_cifar
from .densenet import DenseNet, cifar_densenet, imagenet_densenet
from .imagenet import imagenet_resnet, resnet_d
from .keras import resnet_v1, resnet_v2
from .resnet import ResNet

__all__ = ["DenseNet", "ResNet", "cifar_densenet", "cifar_resnet", "imagenet_densenet", "imagenet_resnet", "resnet_d",
           "resnet_v1", "resnet_v2", "wide_resnet_cifar"]
