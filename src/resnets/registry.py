"""Model registry: every builder registers its name, family and default input, so
``create_model`` and ``list_models`` (and the tests, which iterate over it) see the whole zoo."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .errors import InputError, UnknownNameError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    input_size: tuple[int, int, int]  # (channels, height, width) the model was designed for
    num_classes: int  # default head size
    description: str
    # Where loading weights finds the head (replaced for another num_classes) and the first conv
    # (adapted for another in_chans): timm's pretrained_cfg "classifier" and "first_conv".
    classifier: str = "fc"
    first_conv: str = "conv1"


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(family: str, input_size: tuple[int, int, int], num_classes: int, *,
                   classifier: str = "fc", first_conv: str = "conv1"):
    """Decorator: register a builder under its function name. ``classifier`` and ``first_conv``
    name the head and the first convolution's modules where they are not ``fc`` and ``conv1``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name, builder, family, input_size, num_classes, doc[0] if doc else "",
                                     classifier, first_conv)
        return builder

    return wrap


def _unknown(name: str) -> UnknownNameError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `resnets models` lists them all"
    return UnknownNameError(f"unknown model {name!r}{hint}")


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


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    *,
    weights: str | None = None,
    strict: bool = True,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model: ``create_model("resnet20", num_classes=10)``.

    - ``num_classes`` defaults to the weights' classes, else the family's (10 CIFAR, 1000 ImageNet);
      further keyword arguments go to the builder (``shortcut="B"``, ``zero_init_last=True``...).
    - ``weights``: the tag of shipped weights (``"cifar10"``, see :mod:`resnets.pretrained`), a ``.safetensors`` file of ours (its metadata rebuilds the architecture and
      carries classes and normalisation), a torchvision or timm ``.pth`` state_dict, or a training
      checkpoint. Loading is strict; a different ``num_classes`` re-initialises the classifier and a
      different ``in_chans`` adapts the first convolution, and a warning says so. The weights'
      metadata is kept on the model as ``model.pretrained_meta``.
    - ``features_only=True`` returns a :class:`resnets.models.features.FeatureExtractor` giving the maps of
      ``out_indices`` (0 = stem, 1..N = stages; all stages by default).
    """
    entry = model_entry(name)
    state, meta, source_classes = None, {}, None
    if weights is not None:
        from .pretrained import resolve
        from .weights_io import WeightsError, read_weights

        state, meta = read_weights(resolve(name, weights))
        if meta.get("model") and meta["model"] != name:
            raise WeightsError(f"{weights} holds weights for {meta['model']!r}, not {name!r}")
        saved_kwargs = {k: v for k, v in (meta.get("model_kwargs") or {}).items()
                        if k not in ("num_classes", "in_chans")}
        kwargs = {**saved_kwargs, **kwargs}
        if meta.get("classes"):
            source_classes = len(meta["classes"])
        elif f"{entry.classifier}.weight" in state:
            source_classes = state[f"{entry.classifier}.weight"].shape[0]
    if num_classes is None:
        num_classes = source_classes if source_classes is not None else entry.num_classes
    from .models.resnet import check_num_classes  # here: the model modules register into this one

    check_num_classes(num_classes, name)  # before any family's builder, DenseNets' included
    where = f" (with model_kwargs from {weights})" if weights is not None and meta.get("model_kwargs") else ""
    try:
        model = entry.builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    except InputError as exc:  # our own checks name the argument already; say where it came from
        if not where:
            raise
        raise InputError(f"cannot build {name}{where}: {exc}") from None
    except TypeError as exc:  # an argument the builder does not take: a message, not a traceback
        raise InputError(f"cannot build {name}{where}: {exc}") from None
    except ValueError as exc:
        # A value torch refuses deep inside a layer (drop_rate=2: "dropout probability has to be
        # between 0 and 1, but got 2"): the message names the model and the arguments given.
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise InputError(f"cannot build {name}{where} with {given or 'its defaults'}: {exc}") from None
    if state is not None:
        import warnings

        from .weights_io import WeightsError, load_into

        new_head = source_classes is not None and num_classes != source_classes
        try:
            report = load_into(model, state, strict=strict, new_head=new_head,
                               head=entry.classifier, first_conv=entry.first_conv)
        except WeightsError as exc:
            raise WeightsError(f"{weights}: {exc}") from None
        if report.reinitialized or report.adapted:
            warnings.warn(f"{name} from {weights}: {report}", stacklevel=2)
        model.pretrained_meta = meta
        model.load_report = report
    if features_only:
        from .models.features import FeatureExtractor

        extractor = FeatureExtractor(model, out_indices)
        if state is not None:  # resnets.transforms_for(extractor) reads the weights' preprocessing
            extractor.pretrained_meta = meta
        return extractor
    return model


def load_model(weights: str, model: str | None = None, **kwargs) -> nn.Module:
    """Rebuild the model a weights file was made for: its name comes from the file's metadata
    (or ``model``, which must agree), its architecture arguments and classes too. The model is in
    eval mode; ``model.pretrained_meta`` holds the metadata (classes, mean, std, metrics...)."""
    from .weights_io import WeightsError, read_metadata_only

    path = str(weights)
    if model is None:
        try:
            meta = read_metadata_only(path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"weights file not found: {path} (shipped weights are named with a model: --model NAME --weights TAG)"
            ) from None
        model = meta.get("model")
        if not model:
            raise WeightsError(f"{path} does not say which model it holds; pass the model name (--model NAME)")
    return create_model(model, weights=path, **kwargs).eval()
