"""Shared fixtures. Real images come from the CIFAR-10 JPEG folder named by ``RESNETS_DATA``
(default: ``../shared/datasets/cifar10-jpeg/train`` beside the checkout). Without them a test
that needs them is skipped on a developer's machine and fails under CI (``CI=true``, as
``.ci/run`` runs), so a wrong path cannot turn the real-image tests into quiet skips (issue 14)."""

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
        message = f"real CIFAR-10 images not found at {path} (set RESNETS_DATA)"
        if under_ci():
            pytest.fail(f"{message}; under CI the real-image tests must run, not skip", pytrace=False)
        pytest.skip(message)
    return path


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def real_folder(cifar_train_dir, tmp_path_factory):
    """A small folder of real CIFAR-10 JPEGs shared by the data tests (tests/test_data_support.py)."""
    from test_data_support import real_folder_once

    return real_folder_once(cifar_train_dir, tmp_path_factory)
