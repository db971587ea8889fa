"""Training checkpoints: the random-generator state that resuming restores, and the file
functions training uses, which live in :mod:`resnets.weights_io` (atomic writes, safe reads).

A checkpoint holds only tensors, numbers, strings, lists and dicts (numpy's RNG state is
converted), so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..weights_io import (
    CheckpointError,
    WriteError,
    export_weights,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from ..weights_io import read_weights as load_weights

__all__ = ["CheckpointError", "WriteError", "export_weights", "load_checkpoint", "load_weights", "read_metadata",
           "rng_state", "save_checkpoint", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """Every random generator training touches, as plain tensors/lists (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "python_gauss": random.getstate()[2],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    python = state["python"]
    random.setstate((python[-1], tuple(python[:-1]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
