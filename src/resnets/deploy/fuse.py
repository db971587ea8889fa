"""Inference-time rewrites: batch norm folded into the preceding convolution, channels-last,
and ``torch.compile`` set up for CPU inference."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` module names where a BN's only input is a conv whose only user is that BN.

    Found on the traced graph rather than by naming convention, so it works for any model
    (ours, torchvision's) and skips pre-activation BNs, which follow an addition, not a conv.
    """
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node) and source.op == "call_module"
            and isinstance(modules.get(source.target), nn.Conv2d) and len(source.users) == 1
        ):
            pairs.append((source.target, node.target))
    return pairs


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fold_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every eval-mode BN that directly follows a conv into that conv's weight and bias
    (w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta) and replace the BN by
    an identity. Module names and methods (``forward_features``...) are kept, so Grad-CAM and
    the exporters work on the folded model too. Only valid for inference: the BN statistics are
    frozen into the weights."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for conv_name, bn_name in conv_bn_pairs(model):
        fused = fuse_conv_bn_eval(model.get_submodule(conv_name), model.get_submodule(bn_name))
        _set_module(model, conv_name, fused)
        _set_module(model, bn_name, nn.Identity())
    return model


def to_channels_last(model: nn.Module) -> nn.Module:
    """NHWC weights: oneDNN's convolutions run without reordering when the input is NHWC too."""
    return model.to(memory_format=torch.channels_last)


def compile_for_inference(model: nn.Module, dynamic: bool | None = False) -> Callable[..., Tensor]:
    """``torch.compile`` with inductor's freezing, which treats the weights as constants: on CPU
    convolutions get pre-packed oneDNN weights and fused ReLU/addition post-ops; on any device
    constants are folded (inference only: the returned callable runs under ``no_grad``).

    Freezing is switched on around every call rather than by ``torch.compile(options=...)``: in
    torch 2.14 ``compile_fx`` reads ``config.freezing`` outside the options' patch, so
    ``options={"freezing": True}`` compiled without freezing (no weight was pre-packed; found by
    counting inductor's ``mkldnn_conv_weight_pack`` matches, now asserted in tests/test_deploy.py).
    Patching at call time also covers recompilations for new input shapes.
    """
    model.eval()  # not chained: an exported graph's eval() (torchao's, see quantize.py) returns None
    compiled = torch.compile(model, dynamic=dynamic)

    @functools.wraps(model.forward)
    def run(*args, **kwargs):
        with torch._inductor.config.patch(freezing=True), torch.no_grad():
            return compiled(*args, **kwargs)

    return run
