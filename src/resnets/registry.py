"""Model registry: every builder registers its name, family and default input, so
``create_model`` and ``list_models`` (and the tests, which iterate over it) see the whole zoo."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    input_size: tuple[int, int, int]  # (channels, height, width) the model was designed for
    num_classes: int  # default head size
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(family: str, input_size: tuple[int, int, int], num_classes: int):
    """Decorator: register a builder under its function name."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name, builder, family, input_size, num_classes, doc[0] if doc else "")
        return builder

    return wrap


def _unknown(name: str) -> KeyError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `resnets models` lists them all"
    return KeyError(f"unknown model {name!r}{hint}")


def model_entry(name: str) -> ModelEntry:
    """The registry record of ``name`` (raises ``KeyError`` with the closest names)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise _unknown(name) from None


def list_models(pattern: str | None = None, family: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style wildcard (``"resnet*"``)."""
    names = sorted(_REGISTRY, key=_natural_key)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if family:
        names = [n for n in names if _REGISTRY[n].family == family]
    return names


def _natural_key(name: str) -> list:
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def create_model(name: str, num_classes: int | None = None, in_chans: int = 3, **kwargs) -> nn.Module:
    """Build a registered model: ``create_model("resnet20", num_classes=10)``.

    ``num_classes`` defaults to the family's (10 for CIFAR, 1000 for ImageNet); further keyword
    arguments go to the builder (``shortcut="B"``, ``zero_init_last=True``, ``se_reduction=16``...).
    """
    entry = model_entry(name)
    return entry.builder(
        num_classes=entry.num_classes if num_classes is None else num_classes, in_chans=in_chans, **kwargs
    )
