"""Parameter and multiply-accumulate counts, measured by running the model under
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; normalisation,
activations and additions are not counted, the convention of the papers and torchvision)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Profile:
    params: int
    macs: int  # per image
    input_size: tuple[int, int, int]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def profile(model: nn.Module, input_size: int | Sequence[int] = (3, 32, 32)) -> Profile:
    """Parameters and MACs per image of ``model`` at ``input_size`` ((C, H, W), (H, W) or a side)."""
    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
    elif len(input_size) == 2:
        input_size = (3, *input_size)
    size = tuple(int(s) for s in input_size)
    param = next(model.parameters(), None)
    x = torch.zeros(1, *size, device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return Profile(count_params(model), counter.get_total_flops() // 2, size)
