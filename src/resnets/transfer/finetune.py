"""Fine-tuning controls: freeze stages by name, freeze batch-norm, linear probe, per-stage
learning-rate multipliers and gradual unfreezing (Howard & Ruder 2018, "ULMFiT", section 3.2)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..errors import InputError

# Trainable groups of a ResNet, input to output. "conv1" stands for the whole stem.
STEM = ("conv1", "bn1")


def stage_names(model: nn.Module) -> list[str]:
    """``["conv1", "layer1", ..., "fc"]`` (plus ``"norm"`` for pre-activation nets)."""
    names = ["conv1"] + [f"layer{i}" for i in range(1, 5) if isinstance(getattr(model, f"layer{i}", None), nn.Module)]
    if any(True for _ in getattr(model, "norm", nn.Identity()).parameters()):
        names.append("norm")
    return names + ["fc"]


def _prefixes(model: nn.Module, names: Iterable[str]) -> tuple[str, ...]:
    valid = stage_names(model)
    prefixes: list[str] = []
    for name in names:
        name = name.strip()
        if name in ("stem", "conv1"):
            prefixes.extend(f"{p}." for p in STEM)
        elif name in valid:
            prefixes.append(f"{name}.")
        else:
            raise InputError(f"unknown stage {name!r} to freeze; choose from {', '.join(valid)}")
    return tuple(prefixes)


def parse_names(names: str | Sequence[str] | None) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        return [n for n in names.split(",") if n.strip()]
    return list(names)


def set_trainable(model: nn.Module, names: str | Sequence[str], trainable: bool) -> int:
    """(Un)freeze the parameters of the named stages (``"conv1,layer1,layer2"``); returns how many."""
    prefixes = _prefixes(model, parse_names(names))
    count = 0
    for key, param in model.named_parameters():
        if key.startswith(prefixes):
            param.requires_grad_(trainable)
            count += param.numel()
    return count


def freeze(model: nn.Module, names: str | Sequence[str]) -> int:
    return set_trainable(model, names, False)


def linear_probe(model: nn.Module) -> None:
    """Train the classifier only: every other parameter frozen, batch-norm statistics fixed."""
    for key, param in model.named_parameters():
        param.requires_grad_(key.startswith("fc."))
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


def stage_of(param_name: str) -> str:
    head = param_name.split(".", 1)[0]
    return "conv1" if head in STEM else head


def lr_multipliers(model: nn.Module, multipliers: dict[str, float]) -> dict[str, float]:
    """Per-parameter learning-rate factors from per-stage ones (``{"conv1": 0.1, "layer1": 0.1}``);
    stages not named get 1.0. Unknown stage names are rejected."""
    _prefixes(model, multipliers)  # validates the names
    return {name: float(multipliers.get(stage_of(name), 1.0)) for name, _ in model.named_parameters()}


class GradualUnfreezer:
    """Start with the classifier alone and unfreeze one more stage, from the top, every
    ``every`` epochs: fc; then layer4; then layer3; ... down to the stem."""

    def __init__(self, model: nn.Module, every: int = 1, frozen: str | Sequence[str] = ()) -> None:
        if every < 1:
            raise InputError(f"gradual unfreezing needs every >= 1 epoch; got {every}")
        self.model = model
        self.every = every
        keep = set(parse_names(frozen))  # stages the user froze for good stay out of the order
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
