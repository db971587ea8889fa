"""int8 post-training static quantization (and quantization-aware training) for CPU.

The maintained path is PT2E (issue 17, item 2): ``torch.export`` captures the network, torchao's
``X86InductorQuantizer`` annotates it (per-channel int8 weights, per-tensor uint8 activations
observed on calibration images; conv-BN folded, ReLU and residual additions fused into the
convolutions), ``convert_pt2e`` writes the quantize/dequantize graph, and inductor with freezing
lowers that to oneDNN int8 kernels (:func:`quantize_pt2e`). The PT2E flow left torch for the
separate ``torchao`` package (the ``deploy`` extra).

FX graph mode (``torch.ao.quantization.quantize_fx``, x86 backend) is kept as the fallback
(:func:`quantize_static`): torch marks it deprecated, but it ships with torch itself, so it still
works where torchao is not installed, and QAT uses it. Choosing it says so in a warning;
``torch.ao.quantization``'s own deprecation warnings are silenced here, in one place.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..errors import InputError, need
from ..progress import LoopProgress

BACKEND = "x86"
METHODS = ("pt2e", "fx")
FX_FALLBACK = ("int8 through FX graph mode, torch's deprecated quantization path, kept as a fallback; "
               "PT2E (torch.export + torchao's X86InductorQuantizer) is the maintained one")


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


def _calibrate(model: Callable[[Tensor], Tensor], calibration: Tensor, batch_size: int) -> None:
    with torch.no_grad(), LoopProgress("int8 calibration", len(calibration), unit="images") as progress:
        for x in batches(calibration, batch_size):
            model(x)
            progress.advance(len(x))


# ---- PT2E: torch.export + torchao's X86InductorQuantizer, lowered by inductor -------------------

def has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX-512 VNNI). Without them oneDNN's
    u8 x s8 products are summed pairwise in int16, which saturates: activations must then use 7
    bits (``reduce_range``, as FX's x86 default does). Measured on this project's AVX2 machine
    (resnet20, 300 real held-out images): 8 bits gave 92.0 % agreement with fp32, 7 bits 98.7 %
    (tests/test_deploy.py checks the shipped weights' drop)."""
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(check()) if check is not None else False


def torchao_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


def _distinct_relu_partitions(graph: torch.fx.GraphModule) -> int:
    """Give each ReLU call its own source partition; returns how many there are.

    The quantizer finds "conv -> ReLU" and "conv -> add -> ReLU" patterns by source partitions:
    the nodes traced from one module or function. Our blocks (as torchvision's) call one
    ``self.relu`` twice, and ``torch.export``'s default (non-strict) capture records both calls
    under that one module, so the partition has two outputs and ``X86InductorQuantizer.annotate``
    fails ("Input partition has more than one output node"). As far as quantization is concerned
    each call is a partition of its own: the label below (``source_fn_stack``, which the
    partitioner reads before the module stack) says so, and nothing else reads it. Checked on
    resnet20: all 19 convolutions are then lowered to int8, 9 with the residual addition and ReLU
    fused in, 10 with the ReLU (inductor's ``qconv2d_binary``/``qconv_unary`` matchers).
    """
    relus = {torch.ops.aten.relu.default, torch.ops.aten.relu_.default}
    count = 0
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target in relus:
            node.meta["source_fn_stack"] = [(node.name, torch.nn.ReLU)]
            count += 1
    return count


class PT2EInt8(nn.Module):
    """An int8 network from the PT2E flow: ``graph`` is the converted quantize/dequantize graph
    (the reference; what ``resnets quantize --out x.pt2`` saves), ``forward`` runs it lowered by
    inductor with freezing to oneDNN int8 convolutions, compiled at the first call for each input
    shape."""

    def __init__(self, graph: torch.fx.GraphModule):
        super().__init__()
        self.graph = graph
        self._compiled: Callable[[Tensor], Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self._compiled is None:
            from .fuse import compile_for_inference

            self._compiled = compile_for_inference(self.graph)
        return self._compiled(x)

    def reference(self, x: Tensor) -> Tensor:
        """The quantize/dequantize graph run op by op (slow; the numerics inductor reproduces)."""
        with torch.no_grad():
            return self.graph(x)


def quantize_pt2e(model: nn.Module, calibration: Tensor, batch_size: int = 64) -> PT2EInt8:
    """An int8 copy of ``model`` calibrated on ``calibration`` (normalised float images), through
    PT2E: ``torch.export`` (dynamic batch), ``X86InductorQuantizer`` with its default static config
    (per-channel symmetric int8 weights, per-tensor affine uint8 activations; 7-bit without VNNI,
    see :func:`has_vnni`), ``convert_pt2e``."""
    import logging

    # torchao 0.18 registers an Enum with torch's pytree at import, which torch 2.14 logs a
    # deprecation warning about on every run; it is torchao's to fix, not the user's to read.
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        need("torchao", "deploy", "int8 through PT2E (quantize --method pt2e)")
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    finally:
        pytree_log.setLevel(level)

    from .export import MAX_BATCH, dynamic_example

    example = dynamic_example(calibration)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(copy.deepcopy(model).eval(), (example,), dynamic_shapes=({0: batch},))
    graph = program.module()
    _distinct_relu_partitions(graph)
    config = x86.get_default_x86_inductor_quantization_config(reduce_range=not has_vnni())
    quantizer = x86.X86InductorQuantizer().set_global(config)
    prepared = prepare_pt2e(graph, quantizer)
    _calibrate(prepared, calibration, batch_size)
    converted = convert_pt2e(prepared)
    # An exported graph refuses .eval(), which predict() and torch.compile call; this lets it (there
    # is no dropout or batch norm left in it for the mode to change).
    allow_exported_model_train_eval(converted)
    return PT2EInt8(converted)


def resolve_method(method: str) -> str:
    """The quantization flow that will run for ``method``: "pt2e" (the default) or "fx". Without
    torchao, "pt2e" falls back to FX with a warning saying so; asking for "fx" warns as well."""
    if method not in METHODS:
        raise InputError(f"quantization method must be one of {', '.join(METHODS)}; got {method!r}")
    if method == "pt2e" and not torchao_available():
        warnings.warn('torchao is not installed (pip install "resnets[deploy]"): ' + FX_FALLBACK, stacklevel=2)
        return "fx"
    if method == "fx":
        warnings.warn(FX_FALLBACK, stacklevel=2)
    return method


def quantize_int8(model: nn.Module, calibration: Tensor, method: str = "pt2e", batch_size: int = 64) -> nn.Module:
    """int8 by ``method`` as :func:`resolve_method` resolves it (call that first to know which)."""
    if method == "pt2e":
        return quantize_pt2e(model, calibration, batch_size)
    if method == "fx":
        return quantize_static(model, calibration, batch_size)
    raise InputError(f"quantization method must be one of {', '.join(METHODS)}; got {method!r}")


# ---- FX graph mode: the fallback -------------------------------------------------------------------

def quantize_static(model: nn.Module, calibration: Tensor, batch_size: int = 64) -> nn.Module:
    """An int8 copy of ``model`` calibrated on ``calibration`` (normalised float images), by FX
    graph mode (the fallback; see the module's docstring)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = BACKEND
    with _quiet():
        float_model = copy.deepcopy(model).eval()
        prepared = prepare_fx(float_model, get_default_qconfig_mapping(BACKEND), example_inputs=(calibration[:1],))
        _calibrate(prepared, calibration, batch_size)
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
