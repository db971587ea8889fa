"""Atomic checkpoint writes, safe loading, RNG state and the safetensors export."""

from __future__ import annotations

import errno
import random

import numpy as np
import pytest
import torch

from resnets import weights_io
from resnets.train.checkpoint import (
    CheckpointError,
    export_weights,
    load_checkpoint,
    load_weights,
    read_metadata,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _fail_with(exc):
    def fake_fsync(fd):  # after the bytes went into the temporary file, before the rename
        raise exc
    return fake_fsync


@pytest.mark.parametrize("failure, error", [
    (OSError(errno.ENOSPC, "No space left on device"), CheckpointError),
    (KeyboardInterrupt(), KeyboardInterrupt),  # Ctrl-C mid-write
])
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure, error):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(4.0)})
    monkeypatch.setattr(weights_io.os, "fsync", _fail_with(failure))
    with pytest.raises(error) as info:
        save_checkpoint(path, {"step": 2, "w": torch.zeros(4)})
    monkeypatch.undo()
    if error is CheckpointError:
        assert "disk full" in str(info.value) and "the previous file is intact" in str(info.value)
    old = load_checkpoint(path)
    assert old["step"] == 1 and torch.equal(old["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_rng_state_round_trip_is_weights_only_loadable(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_safetensors_export_carries_json_metadata(tmp_path):
    state = {"fc.weight": torch.randn(10, 4), "fc.bias": torch.zeros(10)}
    meta = {"model": "resnet20", "model_kwargs": {"shortcut": "B"}, "classes": ["a", "b"],
            "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "metrics": {"val_top1": 0.9}, "recipe": {"x": 1}}
    export_weights(tmp_path / "w.safetensors", state, meta)
    loaded, read = load_weights(tmp_path / "w.safetensors")
    assert read_metadata(tmp_path / "w.safetensors") == {**meta, "format": "resnets"} == read
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
