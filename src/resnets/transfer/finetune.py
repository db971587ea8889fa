"""Fine-tuning controls: freeze stages by name, freeze batch-norm, linear probe, per-stage
learning-rate multipliers and gradual unfreezing (Howard & Ruder 2018, "ULMFiT", section 3.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError

# The stages come from the model itself, never from a list of ResNet names: a DenseNet's modules
# are features.* and classifier, and "conv1" and "fc" there froze nothing, silently.
STEM_ALIAS = "stem"


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _classifier_name(model: nn.Module) -> str:
    """The module ``model.get_classifier()`` returns, by name (``fc``, ``classifier``)."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        for name, module in model.named_modules():
            if name and module is head:
                return name
    raise InputError(f"{type(model).__name__} has no get_classifier(): fine-tuning controls need to know "
                     "its classifier")


def _stages(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Stage name -> the names of the modules it covers, input to output, the classifier last.

    The stages are the model's own units (``forward_units()``, else its children) that have
    parameters. The stem's units, up to its first feature point (``feature_info[0]``, as timm
    marks the stem), are one stage named after the first: ``conv1`` (conv1 and bn1) on a ResNet,
    ``features.conv0`` on a DenseNet. Parameters outside every unit get their top-level module
    as a stage, so that freezing "all but the classifier" leaves none of them training."""
    head = _classifier_name(model)
    declared = model.forward_units() if callable(getattr(model, "forward_units", None)) else model.named_children()
    units = [(name, module) for name, module in declared if name != head]
    names = [name for name, _ in units]
    info = getattr(model, "feature_info", None)
    first = info[0].get("module") if isinstance(info, list) and info and isinstance(info[0], dict) else None
    stem_end = names.index(first) + 1 if first in names else 1
    stages: dict[str, tuple[str, ...]] = {}
    stem = tuple(name for name, module in units[:stem_end] if _has_parameters(module))
    if stem:
        stages[names[0]] = stem
    for name, module in units[stem_end:]:
        if _has_parameters(module):
            stages[name] = (name,)
    covered = [m for members in stages.values() for m in members] + [head]
    for key, _ in model.named_parameters():
        if not any(_within(key, m) for m in covered):
            top = key.split(".", 1)[0]
            stages.setdefault(top, (top,))
    stages[head] = (head,)
    return stages


def _within(key: str, module: str) -> bool:
    """Whether parameter ``key`` belongs to module ``module`` (or is the parameter of that name)."""
    return key == module or key.startswith(f"{module}.")


def stage_names(model: nn.Module) -> list[str]:
    """The model's trainable stages, input to output, its classifier last: ``["conv1", "layer1", ...,
    "fc"]`` on a ResNet (plus ``"norm"`` on pre-activation nets), ``["features.conv0",
    "features.denseblock1", "features.transition1", ..., "features.norm5", "classifier"]`` on a
    DenseNet. ``"stem"`` names the first on any model."""
    return list(_stages(model))


def parse_names(names: str | Sequence[str] | None) -> list[str]:
    """Names from ``"conv1, layer1"`` or a list, stripped, empty ones dropped."""
    if names is None:
        return []
    items = names.split(",") if isinstance(names, str) else list(names)
    if not all(isinstance(n, str) for n in items):
        raise InputError(f"stage names must be strings; got {items!r}")
    return [n.strip() for n in items if n.strip()]


def resolve_stages(model: nn.Module, names: str | Sequence[str] | None) -> list[str]:
    """The stages ``names`` mean on ``model`` (:func:`parse_names`; ``"stem"`` is the first stage);
    a name that is no stage of the model raises :class:`InputError` listing them."""
    stages = stage_names(model)
    found = []
    for name in parse_names(names):
        stage = _stage_named(model, stages, name)
        if stage not in found:
            found.append(stage)
    return found


def _stage_named(model: nn.Module, stages: list[str], name: str) -> str:
    stage = stages[0] if name == STEM_ALIAS else name
    if stage not in stages:
        raise InputError(f"unknown stage {name!r}: {type(model).__name__} has the stages {', '.join(stages)} "
                         f"({STEM_ALIAS!r} names {stages[0]})")
    return stage


def _stage_of_parameters(model: nn.Module) -> dict[str, str]:
    """Parameter name -> its stage."""
    modules = sorted(((m, stage) for stage, members in _stages(model).items() for m in members),
                     key=lambda p: -len(p[0]))  # the longest first: a unit inside another's module
    return {key: next(stage for module, stage in modules if _within(key, module))
            for key, _ in model.named_parameters()}


def set_trainable(model: nn.Module, names: str | Sequence[str], trainable: bool) -> int:
    """(Un)freeze the parameters of the named stages (``"conv1,layer1,layer2"``); returns how many."""
    stages = set(resolve_stages(model, names))
    stage_of = _stage_of_parameters(model)
    count = 0
    for key, param in model.named_parameters():
        if stage_of[key] in stages:
            param.requires_grad_(trainable)
            count += param.numel()
    return count


def freeze(model: nn.Module, names: str | Sequence[str]) -> int:
    return set_trainable(model, names, False)


def linear_probe(model: nn.Module) -> None:
    """Train the classifier only: every other parameter frozen, batch-norm statistics fixed."""
    stages = stage_names(model)
    set_trainable(model, stages[:-1], False)
    set_trainable(model, stages[-1:], True)
    freeze_batchnorm(model)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` by torchvision's ``FrozenBatchNorm2d`` in place: statistics and
    affine parameters fixed, as detection fine-tuning does with small batches (torchvision's
    detection backbones). Returns the module (a bare BatchNorm2d is returned converted)."""
    # Here, not at the top: importing torchvision loads its model zoo and torch._dynamo (2-3 s; issue 18).
    from torchvision.ops.misc import FrozenBatchNorm2d

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            frozen.weight.copy_(module.weight)
            frozen.bias.copy_(module.bias)
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def lr_multipliers(model: nn.Module, multipliers: dict[str, float]) -> dict[str, float]:
    """Per-parameter learning-rate factors from per-stage ones (``{"stem": 0.1, "layer1": 0.1}``);
    stages not named get 1.0. Names that are no stage of the model are refused."""
    stages = stage_names(model)
    factors: dict[str, float] = {}
    for name, factor in multipliers.items():
        stage = _stage_named(model, stages, str(name).strip())
        if stage in factors and factors[stage] != float(factor):
            raise InputError(f"learning-rate multipliers give stage {stage} two factors ({factors[stage]} and "
                             f"{float(factor)}, as {name!r}); give one")
        factors[stage] = float(factor)
    return {key: factors.get(stage, 1.0) for key, stage in _stage_of_parameters(model).items()}


class GradualUnfreezer:
    """Start with the classifier alone and unfreeze one more stage, from the top, every
    ``every`` epochs: fc; then layer4; then layer3; ... down to the stem. The stages in ``frozen``
    stay frozen throughout."""

    def __init__(self, model: nn.Module, every: int = 1, frozen: str | Sequence[str] = ()) -> None:
        if every < 1:
            raise InputError(f"gradual unfreezing needs every >= 1 epoch; got {every}")
        self.model = model
        self.every = every
        keep = set(resolve_stages(model, frozen))  # stages the user froze for good stay out of the order
        self.order = [s for s in reversed(stage_names(model)) if s not in keep]  # fc, (norm), layer4, ..., conv1

    def trainable_at(self, epoch: int) -> list[str]:
        return self.order[: 1 + epoch // self.every]

    def step(self, epoch: int) -> list[str]:
        """Set ``requires_grad`` for ``epoch``; returns the trainable stages."""
        trainable = self.trainable_at(epoch)
        if self.order:
            set_trainable(self.model, self.order, False)
        set_trainable(self.model, trainable, True)
        return trainable
