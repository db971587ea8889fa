"""Building a model from ``--model NAME`` and an optional ``--weights FILE``.

A thin layer over the project's shared loader, :func:`resnets.load_model` /
:func:`resnets.create_model` (built on :func:`resnets.weights_io.read_weights`): safe reading
of ``.safetensors`` with metadata, ``.pt``/``.pth`` state dicts (``weights_only``), training
checkpoints (EMA weights preferred), shipped weight tags, ``module.``/``_orig_mod.`` prefixes and
timm names, strict loading with a readable report. What the deployment commands need besides the
model (name, input size, classes, normalisation, the training recipe) is gathered here from the
weights' metadata (``model.pretrained_meta``) and the registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..registry import create_model, model_entry
from ..registry import load_model as load_weights_model
from ..weights_io import WeightsError


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    input_size: tuple[int, int, int]
    classes: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def load_model(name: str | None, weights: str | Path | None = None, num_classes: int | None = None) -> LoadedModel:
    """An eval-mode model: ``name`` from the zoo, with ``weights`` loaded strictly if given.

    ``name`` may be ``None`` when the weights' metadata names the model (it must agree when both
    are given). With weights, the classifier size is the weights' own; ``num_classes`` is then
    only checked against it (a re-initialised head would make every accuracy figure meaningless).
    Raises ``FileNotFoundError`` for a missing file and :class:`WeightsError` (a ``ValueError``)
    for one that cannot be read or does not fit.
    """
    if weights is None:
        if name is None:
            raise ValueError("no --model given and no --weights whose metadata would name one")
        model, meta = create_model(name, num_classes=num_classes), {}
    else:
        model = load_weights_model(str(weights), name)
        meta = dict(getattr(model, "pretrained_meta", None) or {})
        name = name or meta["model"]
        held = getattr(model, "num_classes", None)
        if num_classes is not None and held is not None and num_classes != held:
            raise WeightsError(f"--num-classes {num_classes}, but {weights} holds a {held}-class classifier")
    model.eval()
    size = meta.get("image_size") or model_entry(name).input_size
    classes, mean, std = meta.get("classes"), meta.get("mean"), meta.get("std")
    return LoadedModel(
        model, name, (int(size[0]), int(size[1]), int(size[2])), list(classes) if classes else None,
        tuple(float(v) for v in mean) if mean else None, tuple(float(v) for v in std) if std else None, meta,
    )
