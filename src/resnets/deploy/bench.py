"""Inference benchmark: torchvision's eager model (the baseline) against our model eager,
channels-last, BN-folded + compiled and int8 (PT2E lowered by inductor; FX graph mode, the
fallback), and against the runtimes ``--backend`` offers, onnxruntime and OpenVINO, in fp32 and in
their own static int8 (onnxruntime's ``quantize_static``, OpenVINO's NNCF), every int8 variant
calibrated on the same images; on a GPU (``device="cuda"``) eager, channels-last, compiled, bf16
and bf16 compiled instead (int8 and the runtimes here are CPU-only). Runtimes that are not
installed are left out of the default set with a note (they come with the ``deploy`` extra).

Latency is the median of ``iters`` timed calls at batch 1; throughput is images per second at
``batch`` (median call). Each variant gets ``warmup`` untimed calls first; for the compiled one
those include compilation, reported separately as set-up time. Every variant is built first, then
all are timed together, round by round (:func:`_interleaved`), so that on a shared CPU the other
work slows them alike.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import InputError, need
from ..registry import create_model, model_entry
from .fuse import compile_for_inference, fold_bn, to_channels_last

VARIANTS = ("torchvision", "eager", "channels_last", "folded_compiled", "bf16", "bf16_compiled", "int8", "int8_fx",
            "onnxruntime", "onnxruntime_int8", "openvino", "openvino_int8")
CPU_ONLY = ("int8", "int8_fx", "onnxruntime", "onnxruntime_int8", "openvino", "openvino_int8")
# What runs when no variants are named. bf16 is left out on CPU: without native bf16 instructions
# (AVX-512 BF16 / AMX) it is emulated and slower than fp32, and it is not what a CPU deployment uses.
DEFAULT_VARIANTS = {
    "cpu": ("torchvision", "eager", "channels_last", "folded_compiled", "int8", "int8_fx", "onnxruntime",
            "onnxruntime_int8", "openvino", "openvino_int8"),
    "cuda": ("torchvision", "eager", "channels_last", "folded_compiled", "bf16", "bf16_compiled"),
}
# The optional packages each variant needs (all in the deploy extra); the ONNX export needs onnxscript.
REQUIRES = {"int8": ("torchao",), "onnxruntime": ("onnxscript", "onnxruntime"),
            "onnxruntime_int8": ("onnxscript", "onnxruntime"), "openvino": ("openvino",),
            "openvino_int8": ("openvino", "nncf")}
FP32_OURS = ("eager", "channels_last", "folded_compiled")
FP32_RUNTIMES = ("onnxruntime", "openvino")
INT8_GOAL, FP32_GOAL = 3.0, 1.0


def missing_packages(variant: str) -> list[str]:
    import importlib.util

    return [m for m in REQUIRES.get(variant, ()) if importlib.util.find_spec(m) is None]


def default_variants(device: str = "cpu") -> tuple[tuple[str, ...], list[str]]:
    """(variants, notes): the device's default set less the variants whose packages are not
    installed, and a note for each left out, naming the extra that brings them (issue 17, item 5)."""
    variants, notes = [], []
    for variant in DEFAULT_VARIANTS[device]:
        if missing := missing_packages(variant):
            notes.append(f"{variant} left out: {', '.join(missing)} not installed (pip install \"resnets[deploy]\")")
        else:
            variants.append(variant)
    return tuple(variants), notes


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
    stopped it: the rows are the variants built before, from the timing rounds done before."""

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
    notes: list[str] = field(default_factory=list)  # variants left out, and why
    goals: list[str] = field(default_factory=list)  # issue 17's goals, measured (see goal_lines)

    def to_dict(self) -> dict:
        return asdict(self)

    def row(self, variant: str) -> BenchRow | None:
        return next((r for r in self.rows if r.variant == variant), None)

    def goal_lines(self) -> list[str]:
        """The goals, from the rows measured: the fastest fp32 path (any variant, a runtime included:
        choosing it for the user is the point) against the best of onnxruntime and OpenVINO fp32,
        at batch 1 and at the large batch; the same for PyTorch alone; int8 (PT2E) throughput
        against torchvision eager."""
        lines = []
        runtimes = [r for r in map(self.row, FP32_RUNTIMES) if r is not None]
        ours = [r for r in map(self.row, FP32_OURS) if r is not None]
        if runtimes and ours:
            best_lat = min(runtimes, key=lambda r: r.latency_ms)
            best_thr = max(runtimes, key=lambda r: r.throughput)
            for label, pool in (("fastest path", ours + runtimes), ("PyTorch alone", ours)):
                lat = min(pool, key=lambda r: r.latency_ms)
                thr = max(pool, key=lambda r: r.throughput)
                a, b = best_lat.latency_ms / lat.latency_ms, thr.throughput / best_thr.throughput
                met = "met" if min(a, b) >= FP32_GOAL else "not met"
                lines.append(f"fp32, {label} vs the best of {'/'.join(r.variant for r in runtimes)} "
                             f"(goal >= {FP32_GOAL:.1f}x): batch 1 {a:.2f}x ({lat.variant} vs {best_lat.variant}), "
                             f"batch {self.batch} {b:.2f}x ({thr.variant} vs {best_thr.variant}): {met}")
        base, int8 = self.row("torchvision"), self.row("int8")
        if base is not None and int8 is not None:
            ratio = int8.throughput / base.throughput
            lines.append(f"int8 (PT2E) vs torchvision eager at batch {self.batch} (goal >= {INT8_GOAL:.0f}x): "
                         f"{ratio:.2f}x: {'met' if ratio >= INT8_GOAL else 'not met'}")
        return lines

    def __str__(self) -> str:
        where = self.device if self.device != "cpu" else f"{self.threads} threads, {self.cpu}"
        head = ["variant", "latency b=1 (ms)", "speed-up", f"throughput b={self.batch} (img/s)", "ratio",
                "set-up (s)", "note"]
        body = [[r.variant, f"{r.latency_ms:.1f}", f"{r.latency_speedup:.2f}x", f"{r.throughput:.1f}",
                 f"{r.throughput_ratio:.2f}x", f"{r.setup_s:.1f}", r.note] for r in self.rows]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = [f"{self.model} at {self.size}x{self.size}, {where}, median of {self.iters}"
                 + (" (interrupted: the rounds timed before Ctrl-C)" if self.interrupted else "")]
        for row in [head, *body]:
            lines.append("  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        lines += [f"note: {n}" for n in self.notes] + self.goals
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


def _interleaved(built, iters: int, latency: dict[str, list[float]], per_batch: dict[str, list[float]],
                 log: Callable[[str], None]) -> None:
    """Time every built variant in rounds: each round calls each variant once at batch 1, then each
    once at the large batch, in an order that alternates from round to round; the seconds go into
    ``latency`` and ``per_batch`` by variant as they are measured (so Ctrl-C keeps the rounds done).
    On a CPU shared with other work the load then falls on all variants alike, instead of on
    whichever was being timed when it came, so the ratios between them hold (the absolute figures
    still move with the load)."""
    for variant, *_ in built:
        latency[variant], per_batch[variant] = [], []
    with torch.no_grad():
        for i in range(iters):
            order = built if i % 2 == 0 else built[::-1]
            for shape, samples in ((2, latency), (3, per_batch)):
                for item in order:
                    start = time.perf_counter()
                    item[1](item[shape])
                    samples[item[0]].append(time.perf_counter() - start)
            log(f"timing: round {i + 1} of {iters} done ({len(built)} variants, interleaved)")


def _rows(built, latency: dict[str, list[float]], per_batch: dict[str, list[float]], batch: int) -> list:
    """A row per variant with at least one sample of each shape (medians)."""
    return [BenchRow(variant, statistics.median(latency[variant]) * 1e3,
                     batch / statistics.median(per_batch[variant]), setup, note=note)
            for variant, _, _, _, setup, note in built if latency.get(variant) and per_batch.get(variant)]


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
    variants, notes = (tuple(variants), []) if variants else default_variants(dev.type)
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
                         torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", cpu_name(), rows,
                         notes=notes)
    for note in notes:
        log(f"note: {note}")
    threads = torch.get_num_threads()  # the runtimes get the same number as torch
    workdir = Path(tempfile.mkdtemp(prefix="resnets-bench-"))
    exported: dict[str, Path] = {}
    calibrated: list[tuple[Tensor, str]] = []

    built: list[tuple[str, Callable, object, object, float, str]] = []  # variant, run, a, b, set-up, note
    latency: dict[str, list[float]] = {}  # seconds per call, by variant
    per_batch: dict[str, list[float]] = {}

    def measure(variant: str, build: Callable[[], tuple[Callable, str]],
                convert: Callable[[Tensor], object] = lambda t: t) -> None:
        """Build and warm up ``variant`` (``build`` returns the callable and a note for the table);
        it is timed later, with the others (:func:`_interleaved`)."""
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
        built.append((variant, run, a, b, setup, note))
        log(f"{variant}: ready (set-up {setup:.1f} s)")

    def channels_last(t: Tensor) -> Tensor:
        return t.contiguous(memory_format=torch.channels_last)

    def to_bf16(t: Tensor) -> Tensor:
        return t.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)

    def bf16_model() -> nn.Module:
        return fold_bn(ours).to(dtype=torch.bfloat16, memory_format=torch.channels_last)

    def calibration() -> tuple[Tensor, str]:
        """The same calibration images for every int8 variant (computed once)."""
        if not calibrated:
            calibrated.append(_calibration(size, calibration_images, data_dir))
        return calibrated[0]

    def exported_file(fmt: str) -> Path:
        """Our model exported once per format, as ``resnets export`` writes it (dynamic batch)."""
        if fmt not in exported:
            from .export import export

            suffix = {"onnx": ".onnx", "openvino": ".xml"}[fmt]
            # A batch of 2 as the example: torch.export would specialise a batch of 1 away.
            example = torch.randn(2, 3, size, size)
            exported[fmt] = export(ours, example, workdir / f"{model}{suffix}", fmt)
        return exported[fmt]

    def build_int8():
        from .quantize import quantize_pt2e

        images, source = calibration()
        note = f"PT2E: X86InductorQuantizer, inductor; static, calibrated on {len(images)} {source}"
        return quantize_pt2e(ours, images, batch_size=16), note

    def build_int8_fx():
        from .quantize import _quiet, quantize_static

        images, source = calibration()
        note = f"FX graph mode (the fallback), x86; static, calibrated on {len(images)} {source}"
        with _quiet():
            return quantize_static(ours, images, batch_size=16), note

    def ort_session(path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda arr: session.run(None, {"input": arr})

    def build_ort():
        import onnxruntime as ort

        run = ort_session(exported_file("onnx"))
        return run, f"onnxruntime {ort.__version__} CPU EP, fp32, all graph optimisations"

    def build_ort_int8():
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from .quantize import has_vnni

        images, source = calibration()

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{"input": images[i:i + 16].numpy()} for i in range(0, len(images), 16)])

            def get_next(self):
                return next(self.batches, None)

        prepared, int8_path = workdir / f"{model}.pre.onnx", workdir / f"{model}.int8.onnx"
        quant_pre_process(str(exported_file("onnx")), str(prepared))
        # 7-bit weights without VNNI, as onnxruntime advises for such CPUs (and as our PT2E does, in its way).
        quantize_static(str(prepared), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=not has_vnni())
        note = (f"onnxruntime {ort.__version__} quantize_static (QDQ, per-channel s8 weights, u8 activations), "
                f"calibrated on {len(images)} {source}")
        return ort_session(int8_path), note

    def ov_compiled(ov_model):
        import openvino as ov

        from ..runtime import openvino_config

        compiled = ov.Core().compile_model(ov_model, "CPU", openvino_config(threads))
        request = compiled.create_infer_request()
        return lambda arr: request.infer({0: arr})

    def build_ov():
        import openvino as ov

        return ov_compiled(str(exported_file("openvino"))), f"OpenVINO {ov.get_version().split('-')[0]} CPU plugin, fp32 IR"

    def build_ov_int8():
        import nncf
        import openvino as ov

        images, source = calibration()
        ov_model = ov.Core().read_model(str(exported_file("openvino")))
        dataset = nncf.Dataset([images[i:i + 1].numpy() for i in range(len(images))])
        # NNCF draws its progress bars on stdout, which --json keeps for the JSON document.
        with contextlib.redirect_stdout(sys.stderr):
            int8 = nncf.quantize(ov_model, dataset, subset_size=len(images))
        note = f"OpenVINO {ov.get_version().split('-')[0]} with NNCF {nncf.__version__} static int8, calibrated on {len(images)} {source}"
        return ov_compiled(int8), note

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
        measure("int8_fx", build_int8_fx)
        for variant, build in (("onnxruntime", build_ort), ("onnxruntime_int8", build_ort_int8),
                               ("openvino", build_ov), ("openvino_int8", build_ov_int8)):
            if variant in variants:
                for module in REQUIRES[variant]:  # named explicitly but not installed: say which extra
                    need(module, "deploy", f"bench infer --variants {variant}")
            measure(variant, build, lambda t: t.numpy())
        _interleaved(built, iters, latency, per_batch, log)
    except KeyboardInterrupt:
        report.interrupted = True
        log("interrupted: reporting the rounds timed so far")
    finally:
        # torch.compile's compile workers are processes that would keep the interpreter from exiting
        # after Ctrl-C (issue 18: `bench infer` ignored it).
        if "torch._inductor.async_compile" in sys.modules:
            sys.modules["torch._inductor.async_compile"].shutdown_compile_workers()

    rows[:] = _rows(built, latency, per_batch, batch)
    for row in rows:
        log(f"{row.variant}: {row.latency_ms:.1f} ms at batch 1, {row.throughput:.1f} img/s at batch {batch}")
    base = next((r for r in rows if r.variant == "torchvision"), rows[0] if rows else None)
    for row in rows:
        row.latency_speedup = base.latency_ms / row.latency_ms
        row.throughput_ratio = row.throughput / base.throughput
    report.goals = report.goal_lines()
    shutil.rmtree(workdir, ignore_errors=True)
    return report

