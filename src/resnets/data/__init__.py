"""Datasets and loaders: CIFAR archives and image folders, decoded safely, loaded fast, in a
deterministic order that survives resuming and distributed training.

    from resnets.data import open_dataset, split_train_val, make_loader
    train, val = split_train_val(open_dataset("data/cifar10", download=True), 5000)  # the paper's 45k/5k
    loader = make_loader(train, 128, train=True, device="cuda", seed=0)
"""

from .cifar import CifarUnpickler, UnsafePickleError, download_cifar, read_cifar, write_cifar_archive
from .describe import describe_dataset, fingerprint, portable_recipe
from .folder import read_class_map, resolve_classes, verify_folder
from .images import BadFile, BadImageError, BadImageWarning, load_image
from .info import DatasetInfo, compute_normalization
from .loader import BatchLoader, FolderLoader, build_transforms, make_loader
from .order import BatchPlan, epoch_permutation
from .scenes import Scenes, SceneSettings, coco_map, compose_scenes, scene_sources
from .sources import DataError, FolderDataset, open_dataset, split_train_val
from .split import (
    DataSplit,
    NoHeldOutImages,
    balanced_indices,
    data_dir,
    holdout_split,
    load_files,
    open_split,
    sample_data_dir,
    sample_images,
    split_settings,
)
from .tensor_dataset import TensorImageDataset

__all__ = [
    "BadFile", "BadImageError", "BadImageWarning", "BatchLoader", "BatchPlan", "CifarUnpickler", "DataError",
    "DataSplit", "DatasetInfo", "FolderDataset", "FolderLoader", "NoHeldOutImages", "SceneSettings", "Scenes",
    "TensorImageDataset", "UnsafePickleError", "balanced_indices", "build_transforms", "coco_map", "compose_scenes",
    "compute_normalization", "data_dir", "describe_dataset", "download_cifar", "epoch_permutation", "fingerprint",
    "holdout_split", "load_files", "load_image", "make_loader", "open_dataset", "open_split", "portable_recipe",
    "read_cifar", "read_class_map", "resolve_classes", "sample_data_dir", "sample_images", "scene_sources",
    "split_settings", "split_train_val", "verify_folder", "write_cifar_archive",
]
