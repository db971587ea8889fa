"""Inference benchmark: torchvision's eager model (the baseline) against our model eager,
channels-last, BN-folded + compiled, int8 and in onnxruntime, on this machine's CPU; on a GPU
(``device="cuda"``) eager, channels-last, compiled, bf16 and bf16 compiled instead (int8 here is
x86 FX graph mode and onnxruntime the CPU provider, so both are CPU-only).

Latency is the median of ``iters`` timed calls at batch 1; throughput is images per second at
``batch`` (median call). Each variant gets ``warmup`` untimed calls first; for the compiled one
those include compilation, reported separately as set-up time.
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..registry import create_model, model_entry
from .fuse import compile_for_inference, fold_bn, to_channels_last

VARIANTS = ("torchvision", "eager", "channels_last", "folded_compiled", "bf16", "bf16_compiled", "int8",
            "onnxruntime")
CPU_ONLY = ("int8", "onnxruntime")
# What runs when no variants are named. bf16 is left out on CPU: without native bf16 instructions
# (AVX-512 BF16 / AMX) it is emulated and slower than fp32, and it is not what a CPU deployment uses.
DEFAULT_VARIANTS = {
    "cpu": ("torchvision", "eager", "channels_last", "folded_compiled", "int8", "onnxruntime"),
    "cuda": ("torchvision", "eager", "channels_last", "folded_compiled", "bf16", "bf16_compiled"),
}


@dataclass
class BenchRow:
    variant: str
    latency_ms: float  # batch 1, median
    throughput: float  # images/s at the large batch
    setup_s: float  # building, calibrating, exporting or compiling, and warm-up
    latency_speedup: float = 1.0  # baseline latency / this latency
    throughput_ratio: float = 1.0  # this throughput / baseline throughput
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchReport:
    """What ``bench_infer`` measured: one row per variant, and where. ``interrupted`` when Ctrl-C
    stopped it: the rows are those finished before."""

    model: str
    size: int
    batch: int
    iters: int
    threads: int
    torch: str
    device: str  # "cpu", or the GPU's name
    cpu: str
    rows: list[BenchRow]
    interrupted: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = self.device if self.device != "cpu" else f"{self.threads} threads, {self.cpu}"
        head = ["variant", "latency b=1 (ms)", "speed-up", f"throughput b={self.batch} (img/s)", "ratio",
                "set-up (s)", "note"]
        body = [[r.variant, f"{r.latency_ms:.1f}", f"{r.latency_speedup:.2f}x", f"{r.throughput:.1f}",
                 f"{r.throughput_ratio:.2f}x", f"{r.setup_s:.1f}", r.note] for r in self.rows]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = [f"{self.model} at {self.size}x{self.size}, {where}, median of {self.iters}"
                 + (" (interrupted: the variants finished before Ctrl-C)" if self.interrupted else "")]
        for row in [head, *body]:
            lines.append("  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        return "\n".join(lines)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def _time(fn: Callable[[], object], iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synchronized(fn: Callable) -> Callable:
    def run(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    return run


def _torchvision_model(name: str) -> nn.Module | None:
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None).eval()
    except ValueError:
        return None


def _calibration(size: int, n: int, data_dir: str | Path | None) -> tuple[Tensor, str]:
    """Real images from the training part of the engine's split (resized to ``size``, normalised
    with that part's statistics: the benchmarked models carry no weights) when a dataset is given,
    else Gaussian noise; the timing does not depend on which, the int8 accuracy would."""
    if data_dir is not None and Path(data_dir).exists():
        from ..data import open_split, sample_images
        from ..preprocessing import Preprocessing

        split = open_split(data_dir)
        prep = Preprocessing.whole_image((size, size), split.train.info.mean, split.train.info.std)
        images, _ = sample_images(split.train, n, prep)
        return prep.normalize(images), "real images"
    return torch.randn(n, 3, size, size), "random inputs"


def bench_infer(model: str = "resnet50", size: int | None = None, batch: int = 32, iters: int = 10,
                warmup: int = 2, variants: tuple[str, ...] | None = None, data_dir: str | Path | None = None,
                calibration_images: int = 64, log: Callable[[str], None] | None = None,
                device: str = "cpu", threads: int | None = None) -> BenchReport:
    """Time ``model`` in each of ``variants`` (default :data:`DEFAULT_VARIANTS` for the device) at batch 1
    and at ``batch``; ``log`` gets a line as each one is built and timed. Ctrl-C stops it cleanly:
    the report holds the variants finished before, with ``interrupted`` set."""
    log = log or (lambda _msg: None)
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type not in DEFAULT_VARIANTS:
        raise InputError(f"device {device!r}: the benchmark runs on cpu or cuda")
    variants = tuple(variants) if variants else DEFAULT_VARIANTS[dev.type]
    entry = model_entry(model)
    size = size or entry.input_size[1]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise InputError(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if dev.type != "cpu" and set(variants) & set(CPU_ONLY):
        raise InputError(f"variants {', '.join(v for v in CPU_ONLY if v in variants)} run on the CPU only; "
                         f"leave them out on {device}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine")
    x1, xb = torch.randn(1, 3, size, size, device=dev), torch.randn(batch, 3, size, size, device=dev)

    ours = create_model(model).eval()
    reference = _torchvision_model(model)
    baseline_note = f"torchvision.models.{model}"
    if reference is not None:
        # Same weights in both, so the comparison is of implementations, not of initialisations.
        ours.load_state_dict(reference.state_dict())
        reference = reference.to(dev)
    else:
        reference, baseline_note = ours, f"torchvision has no {model}: ours eager is the baseline"
    ours = ours.to(dev)

    rows: list[BenchRow] = []
    report = BenchReport(model, size, batch, iters, torch.get_num_threads(), torch.__version__,
                         torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", cpu_name(), rows)

    def measure(variant: str, build: Callable[[], tuple[Callable, str]],
                convert: Callable[[Tensor], object] = lambda t: t) -> None:
        """``build`` returns the callable to time and a note for the table."""
        if variant not in variants:
            return
        log(f"{variant}: building")
        start = time.perf_counter()
        run, note = build()
        if dev.type == "cuda":  # kernels are asynchronous: time until they have finished
            run = _synchronized(run)
        a, b = convert(x1), convert(xb)
        with torch.no_grad():
            # Warm-up of both shapes counts as set-up: it is where torch.compile compiles.
            for _ in range(warmup):
                run(a)
                run(b)
            setup = time.perf_counter() - start
            log(f"{variant}: timing (set-up {setup:.1f} s)")
            latency = _time(lambda: run(a), iters, 0)
            per_batch = _time(lambda: run(b), iters, 0)
        rows.append(BenchRow(variant, latency * 1e3, batch / per_batch, setup, note=note))
        log(f"{variant}: {latency * 1e3:.1f} ms at batch 1, {batch / per_batch:.1f} img/s at batch {batch}")

    def channels_last(t: Tensor) -> Tensor:
        return t.contiguous(memory_format=torch.channels_last)

    def to_bf16(t: Tensor) -> Tensor:
        return t.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)

    def bf16_model() -> nn.Module:
        return fold_bn(ours).to(dtype=torch.bfloat16, memory_format=torch.channels_last)

    def build_int8():
        from .quantize import quantize_static

        calibration, source = _calibration(size, calibration_images, data_dir)
        note = f"FX graph mode, x86 backend, static int8, calibrated on {len(calibration)} {source}"
        return quantize_static(ours, calibration, batch_size=16), note

    def build_ort():
        import onnxruntime as ort

        from .export import export_onnx

        path = Path(tempfile.mkdtemp()) / f"{model}.onnx"
        export_onnx(ours, x1, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        note = f"onnxruntime {ort.__version__} CPU EP, fp32, all graph optimisations"
        return (lambda arr: session.run(None, {"input": arr})), note

    try:
        measure("torchvision", lambda: (reference, baseline_note))
        measure("eager", lambda: (ours, "resnets, NCHW"))
        measure("channels_last", lambda: (to_channels_last(copy.deepcopy(ours)), "NHWC weights and input"),
                channels_last)
        measure("folded_compiled", lambda: (compile_for_inference(to_channels_last(fold_bn(ours))),
                                            "BN folded, channels-last, inductor with freezing"), channels_last)
        measure("bf16", lambda: (bf16_model(), "BN folded, bf16 weights and input, channels-last"), to_bf16)
        measure("bf16_compiled", lambda: (compile_for_inference(bf16_model()), "bf16, BN folded, channels-last, "
                                          "inductor with freezing"), to_bf16)
        measure("int8", build_int8)
        measure("onnxruntime", build_ort, lambda t: t.numpy())
    except KeyboardInterrupt:
        report.interrupted = True
        log("interrupted: reporting the variants finished so far")
    finally:
        # torch.compile's compile workers are processes that would keep the interpreter from exiting
        # after Ctrl-C (issue 18: `bench infer` ignored it).
        if "torch._inductor.async_compile" in sys.modules:
            sys.modules["torch._inductor.async_compile"].shutdown_compile_workers()

    base = next((r for r in rows if r.variant == "torchvision"), rows[0] if rows else None)
    for row in rows:
        row.latency_speedup = base.latency_ms / row.latency_ms
        row.throughput_ratio = row.throughput / base.throughput
    return report

