"""Building a model from ``--model NAME`` and an optional ``--weights FILE``.

A thin layer over the project's shared loader, :func:`resnets.load_model` /
:func:`resnets.create_model` (built on :func:`resnets.weights_io.read_weights`): safe reading
of ``.safetensors`` with metadata, ``.pt``/``.pth`` state dicts (``weights_only``), training
checkpoints (EMA weights preferred), shipped weight tags, ``module.``/``_orig_mod.`` prefixes and
timm names, strict loading with a readable report. What the deployment commands need besides the
model (name, input size, classes, preprocessing, the training recipe) is gathered here from the
weights' metadata (``model.pretrained_meta``) and the registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError
from ..preprocessing import Preprocessing, PreprocessingError
from ..registry import create_model, model_entry
from ..registry import load_model as load_weights_model
from ..weights_io import WeightsError


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    input_size: tuple[int, int, int]
    classes: list[str] | None = None
    preprocessing: Preprocessing | None = None  # None: the weights carry none (see preprocessing_error)
    metadata: dict[str, Any] = field(default_factory=dict)
    preprocessing_error: str = ""  # why there is none: the key that is missing and how to supply it

    @property
    def mean(self) -> tuple[float, ...] | None:
        return self.preprocessing.mean if self.preprocessing else None

    @property
    def std(self) -> tuple[float, ...] | None:
        return self.preprocessing.std if self.preprocessing else None


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
            raise InputError("no --model given and no --weights whose metadata would name one")
        model, meta = create_model(name, num_classes=num_classes), {}
    else:
        model = load_weights_model(str(weights), name)
        meta = dict(getattr(model, "pretrained_meta", None) or {})
        name = name or meta["model"]
        held = getattr(model, "num_classes", None)
        if num_classes is not None and held is not None and num_classes != held:
            raise WeightsError(f"--num-classes {num_classes}, but {weights} holds a {held}-class classifier")
    model.eval()
    preprocessing, why = None, ""
    try:
        preprocessing = Preprocessing.from_metadata(meta, str(weights) if weights is not None else name)
    except PreprocessingError as exc:
        why = str(exc)
    channels = model_entry(name).input_size[0]
    size = (channels, *preprocessing.input_size) if preprocessing else model_entry(name).input_size
    classes = meta.get("classes")
    return LoadedModel(model, name, tuple(int(v) for v in size), list(classes) if classes else None, preprocessing,
                       meta, why)
