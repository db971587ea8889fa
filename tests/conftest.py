"""Shared fixtures. Real images come from the CIFAR-10 JPEG folder named by ``RESNETS_DATA``
(default: ``../shared/datasets/cifar10-jpeg/train`` beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "cifar10-jpeg" / "train"


def cifar_train_path() -> Path:
    return Path(os.environ.get("RESNETS_DATA", DEFAULT_DATA))


@pytest.fixture(scope="session")
def cifar_train_dir() -> Path:
    """The real CIFAR-10 training images (image folder, 10 classes x 5000 JPEGs)."""
    path = cifar_train_path()
    if not (path / "airplane").is_dir():
        pytest.skip(f"real CIFAR-10 images not found at {path} (set RESNETS_DATA)")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def real_folder(cifar_train_dir, tmp_path_factory):
    """A small folder of real CIFAR-10 JPEGs shared by the data tests (tests/test_data_support.py)."""
    from test_data_support import real_folder_once

    return real_folder_once(cifar_train_dir, tmp_path_factory)
