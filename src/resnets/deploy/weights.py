"""Building a model from ``--model NAME`` and an optional ``--weights FILE``.

Kept to one function so it can be swapped for the training engine's shared loader once that
lands. It reads what the engine writes: ``.safetensors`` whose metadata (JSON strings) names the
model and its arguments, the classes and the normalisation; or a plain ``.pt``/``.pth`` state
dict, loaded with ``weights_only=True`` so a file can never run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..registry import create_model, model_entry

# Wrappers that prefix every key: DataParallel/DistributedDataParallel and torch.compile.
_KEY_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    input_size: tuple[int, int, int]
    classes: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        meta = {}
        for key, value in raw.items():
            try:
                meta[key] = json.loads(value)
            except json.JSONDecodeError:
                meta[key] = value
        return load_file(str(path)), meta
    state = torch.load(path, map_location="cpu", weights_only=True)
    meta: dict[str, Any] = {}
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        # A training checkpoint: its EMA weights (what was validated) when present, else the model's.
        meta = state.get("meta", {}) or {}
        state = state["ema"]["state"] if state.get("ema") else state["model"]
    return state, meta


def load_model(name: str | None, weights: str | Path | None = None, num_classes: int | None = None) -> LoadedModel:
    """An eval-mode model: ``name`` from the zoo, with ``weights`` loaded strictly if given.

    ``name`` may be ``None`` when the weights' metadata names the model. The number of classes is
    taken from, in order: ``num_classes``, the metadata's class list, the classifier's weight shape.
    """
    state: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        state, meta = _read_state(path)
        for prefix in _KEY_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
    meta_name = meta.get("model")
    if name is None:
        if not meta_name:
            raise ValueError("no --model given and the weights do not name one")
        name = meta_name
    elif meta_name and meta_name != name:
        raise ValueError(f"--model {name} but the weights were trained as {meta_name}")
    classes = meta.get("classes")
    if num_classes is None:
        if classes:
            num_classes = len(classes)
        elif "fc.weight" in state:
            num_classes = int(state["fc.weight"].shape[0])
    kwargs = dict(meta.get("model_kwargs") or {})
    model = create_model(name, num_classes=num_classes, **kwargs)
    if state:
        model.load_state_dict(state, strict=True)
    model.eval()
    entry = model_entry(name)
    size = tuple(meta.get("image_size") or entry.input_size)
    mean, std = meta.get("mean"), meta.get("std")
    return LoadedModel(
        model, name, (int(size[0]), int(size[1]), int(size[2])), list(classes) if classes else None,
        tuple(float(v) for v in mean) if mean else None, tuple(float(v) for v in std) if std else None, meta,
    )
