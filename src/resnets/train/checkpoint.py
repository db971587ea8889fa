"""Checkpoints and exported weights.

* Writes are atomic: temporary file in the same directory, fsync, ``os.replace``, fsync of the
  directory. A crash or a full disk mid-write leaves the previous checkpoint whole.
* Reads never unpickle arbitrary objects: ``torch.load(weights_only=True)``, or safetensors. So a
  checkpoint holds only tensors, numbers, strings, lists and dicts (numpy's RNG state is converted).
* Final weights are ``.safetensors`` whose metadata (strings; JSON inside) is enough to rebuild the
  model and preprocess an image: model name and arguments, classes, mean/std, metrics, recipe.
"""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says what to do."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path`` and rename it into place when whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            old = " the previous one is kept" if path.exists() else " no earlier one exists"
            raise CheckpointError(f"disk full while writing {path};{old}. Free space (or set out_dir "
                                  f"elsewhere) and resume with --resume {path.parent}") from exc
        raise CheckpointError(f"could not write {path}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable resnets checkpoint ({exc})") from exc


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


def export_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Weights as safetensors; metadata values are JSON-encoded (safetensors only stores strings)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    meta = {"format": "resnets", **{k: json.dumps(v) for k, v in metadata.items()}}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:  # safetensors writes by path; make it atomic the same way
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path}: {exc}") from exc


def read_metadata(path: str | Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` from a ``.safetensors`` export, a training checkpoint (EMA weights
    preferred) or a plain state dict: :func:`resnets.transfer.read_weights`, the one safe reader."""
    from ..transfer.weights import read_weights

    return read_weights(path)
