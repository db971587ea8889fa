"""int8 post-training static quantization (and quantization-aware training) for CPU.

FX graph mode (``torch.ao.quantization.quantize_fx``) with the ``x86`` backend: on torch 2.14
the PT2E flow and its ``X86InductorQuantizer`` are no longer in torch (they moved to the separate
``torchao`` package), while FX graph mode still ships, traces our ResNets (the option-A pad
shortcut included) and runs on fbgemm/oneDNN int8 kernels. Per-channel weights, per-tensor
activations observed on calibration images; conv-BN-ReLU are fused first. torch marks
``torch.ao.quantization`` deprecated, so its warnings are silenced here, in one place.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..progress import LoopProgress

BACKEND = "x86"


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*quant_min and quant_max.*")
        warnings.filterwarnings("ignore", module="torch.ao")
        yield


def batches(x: Tensor, batch_size: int) -> Iterable[Tensor]:
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size]


def quantize_static(model: nn.Module, calibration: Tensor, batch_size: int = 64) -> nn.Module:
    """An int8 copy of ``model`` calibrated on ``calibration`` (normalised float images)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = BACKEND
    with _quiet():
        float_model = copy.deepcopy(model).eval()
        prepared = prepare_fx(float_model, get_default_qconfig_mapping(BACKEND), example_inputs=(calibration[:1],))
        with torch.no_grad(), LoopProgress("int8 calibration", len(calibration), unit="images") as progress:
            for x in batches(calibration, batch_size):
                prepared(x)
                progress.advance(len(x))
        return convert_fx(prepared)


def quantize_aware_train(
    model: nn.Module, images: Tensor, labels: Tensor, *, epochs: int = 1, lr: float = 1e-3,
    batch_size: int = 64, freeze_bn_after: float = 0.5, log: Callable[[str], None] | None = None,
) -> nn.Module:
    """Fine-tune with fake quantization in the graph (Jacob et al. 2018), then convert to int8.

    Starts from trained weights with a small learning rate; BN statistics are frozen for the
    second half, as the paper recommends, so the folded weights stop moving under the quantizer.
    """
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    torch.backends.quantized.engine = BACKEND
    with _quiet():
        qat = prepare_qat_fx(copy.deepcopy(model).train(), get_default_qat_qconfig_mapping(BACKEND),
                             example_inputs=(images[:1],))
        optimizer = torch.optim.SGD(qat.parameters(), lr=lr, momentum=0.9)
        steps = epochs * -(-len(images) // batch_size)
        step = 0
        progress = LoopProgress("QAT", steps, unit="steps")
        for epoch in range(epochs):
            order = torch.randperm(len(images))
            for start in range(0, len(images), batch_size):
                if step == int(steps * freeze_bn_after):
                    qat.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
                idx = order[start:start + batch_size]
                loss = nn.functional.cross_entropy(qat(images[idx]), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                progress.advance(1, epoch=epoch + 1, loss=round(loss.item(), 4))
            if log:
                log(f"QAT epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}")
        progress.close()
        return convert_fx(qat.eval())


@dataclass
class Accuracy:
    top1: float  # percent
    images: int


def predict(model: nn.Module, images: Tensor, batch_size: int = 128) -> Tensor:
    """Arg-max classes; NaN/inf logits are an error, not a class (``argmax`` of NaN rows is an index,
    so a broken model would score chance accuracy instead of failing; issue 15)."""
    model.eval()
    out = []
    with torch.no_grad(), LoopProgress("predict", len(images), unit="images") as progress:
        for x in batches(images, batch_size):
            logits = model(x)
            if not bool(torch.isfinite(logits).all()):
                bad = int((~torch.isfinite(logits).all(1)).sum())
                raise InputError(f"{type(model).__name__} produced NaN/inf logits for {bad} of {len(x)} images "
                                 f"(images {len(out) * batch_size}..{len(out) * batch_size + len(x) - 1})")
            out.append(logits.argmax(1))
            progress.advance(len(x))
    return torch.cat(out)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 128) -> Accuracy:
    pred = predict(model, images, batch_size)
    return Accuracy(100.0 * (pred == labels).float().mean().item(), len(labels))


@dataclass
class QuantReport:
    fp32_top1: float
    int8_top1: float
    drop: float  # percentage points, fp32 - int8
    agreement: float  # fraction of validation images with the same prediction
    images: int
    calibration_images: int

    def to_dict(self) -> dict:
        return asdict(self)


def compare_accuracy(fp32: nn.Module, int8: nn.Module, images: Tensor, labels: Tensor, calibration: int) -> QuantReport:
    p32, p8 = predict(fp32, images), predict(int8, images)
    a32 = 100.0 * (p32 == labels).float().mean().item()
    a8 = 100.0 * (p8 == labels).float().mean().item()
    return QuantReport(a32, a8, a32 - a8, (p32 == p8).float().mean().item(), len(labels), calibration)
