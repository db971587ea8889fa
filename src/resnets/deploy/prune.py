"""Pruning: structured (whole channels removed, so the network really gets smaller and faster)
and unstructured (individual weights zeroed by magnitude), followed by a short fine-tune.

Structured pruning uses torch-pruning's dependency graph (Fang et al. 2023, "DepGraph"): channels
joined by a residual addition form one group and are removed together from every conv and BN
that reads or writes them, so the additions stay shape-consistent. The option-A shortcut of the
CIFAR ResNets zero-pads channels with ``F.pad``, a coupling the graph cannot follow; for those
networks the residual stream's width is kept and only the channels inside each block are pruned.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..blocks import _Block
from ..errors import InputError, need
from ..layers import PadShortcut, SqueezeExcite
from ..progress import LoopProgress


def _block_output_convs(block: nn.Module) -> list[nn.Module]:
    """The convs that write into the residual stream: the branch's last conv and the projection."""
    names = sorted((n for n, m in block.named_children() if isinstance(m, nn.Conv2d) and n[4:].isdigit()),
                   key=lambda n: int(n[4:]))
    out = [getattr(block, names[-1])] if names else []
    if isinstance(block.downsample, nn.Sequential):
        out += [m for m in block.downsample if isinstance(m, nn.Conv2d)]
    return out


def _ignored_layers(model: nn.Module) -> list[nn.Module]:
    ignored: list[nn.Module] = []
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "fc", None)
    if isinstance(head, nn.Module):
        ignored.append(head)  # the classes are not prunable
    # SE gates are tiny (16/16 = 1 channel in CIFAR stages); pruning them saves nothing.
    for module in model.modules():
        if isinstance(module, SqueezeExcite):
            ignored += [module.fc1, module.fc2]
    if any(isinstance(m, PadShortcut) for m in model.modules()):
        if isinstance(getattr(model, "conv1", None), nn.Conv2d):
            ignored.append(model.conv1)
        for module in model.modules():
            if isinstance(module, _Block):
                ignored += _block_output_convs(module)
    return ignored


def prune_structured(model: nn.Module, ratio: float, example: Tensor, *, inplace: bool = False,
                     global_pruning: bool = False) -> nn.Module:
    """Remove ``ratio`` of the prunable channels, lowest L2 norm first (Li et al. 2017,
    "Pruning Filters for Efficient ConvNets"). Returns a smaller ordinary ``nn.Module``."""
    tp = need("torch_pruning", "deploy", "structured pruning (resnets prune)")

    if not 0.0 <= ratio < 1.0:
        raise InputError(f"pruning ratio must be in [0, 1); got {ratio}")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    ignored = _ignored_layers(model)
    prunable = [m for m in model.modules() if isinstance(m, nn.Conv2d) and not any(m is i for i in ignored)]
    before = sum(m.out_channels for m in prunable)
    # torch-pruning keeps int(C * (1 - ratio)) of a layer's C channels, and when that is 0 it skips the
    # layer altogether (a layer cannot lose every channel): resnet20 lost 90% of its parameters at
    # ratio 0.95, 74% at 0.97 and none at 0.99. Capping each layer's ratio so that it keeps one channel
    # makes the result follow the request. Global pruning ranks all layers together, so there the cap
    # cannot be set per layer; the check after pruning refuses a result that falls short of the request.
    caps = {} if global_pruning else {m: min(ratio, max(0.0, (m.out_channels - 1.5) / m.out_channels))
                                      for m in prunable}
    capped = sum(ratio > cap for cap in caps.values())
    if capped:
        warnings.warn(f"pruning ratio {ratio} would leave no channel in {capped} layer(s); each of them keeps one",
                      stacklevel=2)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        pruning_ratio_dict=caps or None, ignored_layers=ignored, global_pruning=global_pruning, round_to=None,
    )
    pruner.step()
    after = sum(m.out_channels for m in prunable)
    # Each layer may keep one channel more than its share (the cap above): more than that is a skipped layer.
    if global_pruning and after > before * (1 - ratio) + len(prunable):
        raise InputError(f"global pruning at ratio {ratio} removed only {100 * (1 - after / before):.1f}% of the "
                         "prunable channels: torch-pruning skips a layer whose every channel falls below the "
                         "global threshold; use a lower ratio or local pruning (global_pruning=False)")
    # Stage widths changed: keep feature_info (used by Grad-CAM and feature extraction) truthful.
    for info in getattr(model, "feature_info", []):
        stage = model.get_submodule(info["module"])
        if isinstance(stage, nn.Sequential) and isinstance(stage[-1], _Block):
            info["num_chs"] = _block_output_convs(stage[-1])[0].out_channels
    if hasattr(model, "num_features") and isinstance(getattr(model, "fc", None), nn.Linear):
        model.num_features = model.fc.in_features
    return model


def prune_unstructured(model: nn.Module, amount: float, *, inplace: bool = False) -> nn.Module:
    """Zero the ``amount`` fraction of conv and linear weights with the smallest magnitude, ranked
    globally (Han et al. 2015), and make the zeros permanent. Shapes are unchanged: the saving is
    in compressed size or on sparse kernels, not in dense CPU latency."""
    from torch.nn.utils import prune

    if not 0.0 <= amount < 1.0:
        raise InputError(f"pruning amount must be in [0, 1); got {amount}")
    if not inplace:
        model = copy.deepcopy(model)
    targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    return model


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over conv and linear layers."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    return sum((w == 0).sum().item() for w in weights) / max(1, total)


def fine_tune(model: nn.Module, images: Tensor, labels: Tensor, *, epochs: int = 1, lr: float = 0.01,
              batch_size: int = 64, weight_decay: float = 5e-4, keep_zeros: bool = False,
              augment: bool = True, log: Callable[[str], None] | None = None) -> nn.Module:
    """A short SGD fine-tune with a cosine schedule on normalised ``images``; with ``keep_zeros``
    weights that are zero stay zero (for unstructured pruning), by masking their gradients."""
    if epochs and not len(images):  # the loss's running mean would divide by zero
        raise InputError(f"fine-tuning for {epochs} epoch(s) needs at least one training image; got none")
    masks = {}
    if keep_zeros:
        masks = {m.weight: (m.weight != 0).float() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps = max(1, epochs * -(-len(images) // batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    progress = LoopProgress("fine-tune", steps, unit="steps")
    for epoch in range(epochs):
        order = torch.randperm(len(images))
        total, count = 0.0, 0
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            x, y = images[idx], labels[idx]
            if augment:
                x = random_flip_crop(x)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for weight, mask in masks.items():
                weight.grad.mul_(mask)
            optimizer.step()
            schedule.step()
            for weight, mask in masks.items():  # weight decay and momentum would revive them
                weight.data.mul_(mask)
            total += loss.item() * len(idx)
            count += len(idx)
            progress.advance(1, epoch=epoch + 1, loss=round(total / count, 4))
        if log:
            log(f"fine-tune epoch {epoch + 1}/{epochs}: loss {total / count:.3f}")
    progress.close()
    return model.eval()


def random_flip_crop(x: Tensor, pad: int = 4) -> Tensor:
    """The CIFAR augmentation of He et al. 2015 (4-pixel pad, random crop, horizontal flip), batched."""
    n, _, h, w = x.shape
    flip = torch.rand(n) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,))
    # One offset per batch keeps this a single slice; batches differ, which is enough for a fine-tune.
    return padded[:, :, dy:dy + h, dx:dx + w]
