"""The deployment commands as library functions (issue 18, item 5): ``export_model``,
``quantize_model``, ``prune_model`` (and :func:`resnets.deploy.bench.bench_infer`) each take a zoo
name and optional weights, do the whole job with its checks, and return a report dataclass that
prints as the command does and serialises with ``to_dict()`` (what ``--json`` prints).

    from resnets.deploy import quantize_model
    report = quantize_model("resnet20", "cifar10", data="cifar10-jpeg/train", out="r20_int8.pt")
    print(report)                  # top-1 before/after, latency, where the images came from
    report.drop, report.to_dict()

Real images come from the training engine's own train/validation split of ``data``
(:mod:`resnets.data.split`): accuracy is measured on the held-out part, calibration and
fine-tuning use the train part. Images are preprocessed as the weights say
(:mod:`resnets.preprocessing`, issue 14); ``mean``/``std`` replace the weights' normalisation, and
weights without any are refused with the missing key named.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..preprocessing import Preprocessing
from .weights import LoadedModel, load_model

# Looked up lower-cased, as the runtime's SUFFIX_BACKENDS: model.ONNX is an ONNX file.
SUFFIX_FORMATS = {".onnx": "onnx", ".xml": "openvino", ".pt2": "pt2", ".pt": "torchscript", ".ts": "torchscript"}
# The formats checked against PyTorch after export, and the runtime that checks each.
CHECKED = {"onnx": "onnxruntime", "openvino": "openvino"}
Log = Callable[[str], None]


@dataclass
class DataChoice:
    """Where the images come from: a dataset folder and the split's settings (None: the defaults)."""

    data: str | Path | None = None
    val_size: int | None = None
    split_seed: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None


def _quiet(_message: str) -> None:
    pass


def _choice(data: DataChoice | str | Path | None) -> DataChoice:
    """``data`` as a :class:`DataChoice`: a folder alone (``data="cifar10-jpeg/train"``) is one."""
    return data if isinstance(data, DataChoice) else DataChoice(data)


def open_model_split(loaded: LoadedModel, choice: DataChoice, log: Log):
    """The training engine's train/validation split of the data (see :mod:`resnets.data.split`)."""
    from ..data import data_dir, open_split

    root = data_dir(choice.data, loaded.metadata)
    if root is None:
        raise InputError("no images: pass --data DIR (an image folder <DIR>/<class>/<image> or a CIFAR archive "
                         "folder) or set RESNETS_DATA")
    split = open_split(root, loaded.metadata, choice.val_size, choice.split_seed)
    for note in split.notes:
        log(f"note: {note}")
    return split


def preprocessing_for(loaded: LoadedModel, choice: DataChoice) -> tuple[Preprocessing, str]:
    """(preprocessing, where from): the weights' own, with ``choice.mean/std`` replacing its
    normalisation; weights without any: the whole image at the model's input size normalised by
    ``choice.mean/std``, else an error naming the missing key (nothing is guessed, issue 14)."""
    given = choice.mean or choice.std
    if given and (not (choice.mean and choice.std) or len(choice.mean) != 3 or len(choice.std) != 3):
        raise InputError("--mean and --std take three values each (R G B, pixels in [0, 1])")
    if loaded.preprocessing is not None:
        if given:
            return loaded.preprocessing.with_normalization(choice.mean, choice.std), "the weights, --mean/--std"
        return loaded.preprocessing, "the weights' metadata"
    if given:
        return Preprocessing.whole_image(loaded.input_size[1:], choice.mean, choice.std), "--mean/--std"
    raise InputError(loaded.preprocessing_error)


def _samples(loaded: LoadedModel, choice: DataChoice, n_train: int, n_val: int, log: Log):
    """Normalised (train, train labels, val, val labels) tensors, the split, the preprocessing and a
    line saying where they came from."""
    from ..data import sample_images

    split = open_model_split(loaded, choice, log)
    prep, source = preprocessing_for(loaded, choice)
    train_u8, train_y = sample_images(split.train, n_train, prep, seed=0)
    val_u8, val_y = sample_images(split.val, n_val, prep, seed=1)
    return (prep.normalize(train_u8), train_y, prep.normalize(val_u8), val_y, split, prep,
            f"preprocessing from {source} ({prep.describe()}); {split.describe()}")


def latency_ms(model, size, iters: int = 10) -> float:
    """Median wall-clock milliseconds of one forward pass at batch 1 (after one untimed call)."""
    x = torch.randn(1, *size)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(iters):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


class _Report:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ---- export -----------------------------------------------------------------------------------

@dataclass
class ExportReport(_Report):
    model: str
    format: str
    out: str
    bytes: int
    dynamic_batch: bool
    # The exported file run by its runtime against PyTorch: runtime, max_abs_diff, top1_agreement,
    # images, inputs (None: not checked, a TorchScript or PT2 file or --no-check).
    check: dict[str, Any] | None = None
    tolerance: float = 1e-3
    split: dict[str, Any] | None = None
    metadata: list[str] = field(default_factory=list)  # the keys written into the file
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "passed": self.passed}

    @property
    def passed(self) -> bool:
        """No check, or the runtime agrees with PyTorch within the tolerance, on >= 99% of top-1, with no
        NaN/inf logits (:meth:`resnets.deploy.export.Parity.ok`; NaN fails)."""
        from .export import Parity

        c = self.check
        return c is None or Parity(c["max_abs_diff"], c["top1_agreement"], c["images"], c.get("nonfinite", 0)).ok(
            self.tolerance)

    def __str__(self) -> str:
        size = self.bytes / 1e6
        lines = [f"wrote {self.out} ({self.format}, {size:.1f} MB, {'dynamic' if self.dynamic_batch else 'static'} batch"
                 + ("; the weights' metadata inside" if self.metadata else "") + ")"]
        if c := self.check:
            lines.append(f"{c['runtime']} vs PyTorch on {c['inputs']}: max |diff| {c['max_abs_diff']:.3g}, "
                         f"top-1 agreement {100 * c['top1_agreement']:.2f}%"
                         + (f", NaN/inf logits on {c['nonfinite']} input(s)" if c.get("nonfinite") else ""))
            if not self.passed:
                lines.append(f"WARNING: the {self.format} model disagrees with PyTorch (tolerance {self.tolerance})")
        return "\n".join(lines)


def export_model(model: str | None, weights: str | Path | None = None, *, out: str | Path,
                 format: str | None = None, size: int | None = None, dynamic_batch: bool = True,
                 check: bool = True, check_images: int = 256, tolerance: float = 1e-3,
                 data: DataChoice | str | Path | None = None, num_classes: int | None = None,
                 log: Log = _quiet) -> ExportReport:
    """Export to ONNX, OpenVINO IR, TorchScript or PT2 (format from ``out``'s suffix unless given).
    ONNX and OpenVINO files are checked against PyTorch by their own runtime on real held-out images
    (random ones without data); ONNX, OpenVINO and PT2 files carry the weights' metadata."""
    from ..data import data_dir, sample_images
    from .export import compare, export, load_exported

    choice = _choice(data)
    loaded = load_model(model, weights, num_classes)
    fmt = format or SUFFIX_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise InputError(f"cannot tell the format from {str(out)!r}; pass --format onnx|openvino|torchscript|pt2")
    if check and fmt in CHECKED and check_images < 1:
        raise InputError(f"--check-images: the check needs at least one image; got {check_images} (or pass --no-check)")
    shape = loaded.input_size if not size else (loaded.input_size[0], size, size)
    if loaded.preprocessing is None and not (choice.mean or choice.std):
        prep, source = None, ""  # exported all the same; the file carries no preprocessing to serve it by
    else:
        prep, source = preprocessing_for(loaded, choice)
    if prep is not None and size:  # exported for another size: the same preprocessing, scaled to it
        resize = (size, size) if prep.crop == "none" else (round(size * 256 / 224),)
        prep = dataclasses.replace(prep, input_size=(size, size), resize_size=resize)
    metadata = _file_metadata(loaded, weights, prep, loaded.model)
    path = export(loaded.model, torch.randn(2, *shape), out, fmt, dynamic_batch=dynamic_batch, metadata=metadata)
    written = sorted(metadata) if fmt in ("onnx", "openvino", "pt2") else []
    report = ExportReport(loaded.name, fmt, str(path), _file_bytes(path), dynamic_batch, tolerance=tolerance,
                          metadata=written)
    if fmt in CHECKED and check:
        if data_dir(choice.data, loaded.metadata) is not None:
            if prep is None:
                raise InputError(loaded.preprocessing_error)
            split = open_model_split(loaded, choice, report.notes.append)
            images, _ = sample_images(split.val, check_images, prep, seed=1)
            inputs = prep.normalize(images)
            what = f"{len(images)} real validation images from {split.root} (preprocessing from {source})"
            report.split = split.to_dict()
        else:
            inputs, what = torch.randn(check_images, *shape), f"{check_images} random inputs (no --data)"
        # Batches of 50 on purpose: a shorter last batch exercises the dynamic batch dimension. A static
        # file takes only the example's batch of 2: its runner (resnets.runtime._any_batch) runs any batch
        # in padded chunks of 2, as predict and eval run it, so every requested image is checked (trimming
        # to an even count left --check-images 1 with none, and a ZeroDivisionError after the file was written).
        parity = compare(loaded.model, load_exported(path, fmt), inputs, batch_size=50 if dynamic_batch else 2)
        report.check = {"runtime": CHECKED[fmt], **parity.to_dict(), "inputs": what}
    for note in report.notes:
        log(f"note: {note}")
    return report


def _source_weights(name: str, weights: str | Path | None) -> dict[str, str | None]:
    """The source weights' file name (or shipped tag) and sha256, as an exported file records them."""
    if weights is None:
        return {"weights": None, "sha256": None}
    from ..pretrained import resolve, sha256_of

    return {"weights": Path(str(weights)).name, "sha256": sha256_of(resolve(name, weights))}


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _file_metadata(loaded, weights: str | Path | None, prep, model, base: dict | None = None) -> dict[str, str]:
    """What an exported file (ONNX, OpenVINO, PT2) carries so that predict/eval/serve can run it
    alone: the weights' metadata (or ``base``), preprocessing, classes, parameters, source weights."""
    from ..runtime import file_metadata

    return file_metadata(loaded.metadata if base is None else base, name=loaded.name, preprocessing=prep,
                         classes=loaded.classes, parameters=_parameters(model), **_source_weights(loaded.name, weights))


def _file_bytes(path: Path) -> int:
    """The size of what was written: OpenVINO IR is the .xml and the .bin beside it."""
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


# ---- quantize ---------------------------------------------------------------------------------

@dataclass
class QuantizeReport(_Report):
    model: str
    method: str  # how: post-training static (with its calibration) or QAT
    fp32_top1: float  # percent, on `images` held-out images
    int8_top1: float
    drop: float  # percentage points, fp32 - int8
    agreement: float  # fraction of images with the same prediction
    images: int
    calibration_images: int
    seconds: float
    latency_ms_fp32: float
    latency_ms_int8: float
    max_drop: float
    normalization: str
    split: dict[str, Any]
    out: str | None = None
    flow: str = "pt2e"  # "pt2e" (torch.export + torchao, lowered by inductor) or "fx" (the fallback)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "exceeded": self.exceeded}

    @property
    def exceeded(self) -> bool:
        return self.drop > self.max_drop

    def __str__(self) -> str:
        flow = "PT2E, X86InductorQuantizer, inductor" if self.flow == "pt2e" else "FX graph mode, x86: the fallback"
        lines = [f"int8 ({self.method}; {flow}) in {self.seconds:.1f} s; {self.normalization}",
                 f"top-1 on {self.images} validation images: fp32 {self.fp32_top1:.2f}% -> int8 {self.int8_top1:.2f}% "
                 f"(drop {self.drop:+.2f} points, agreement {100 * self.agreement:.1f}%)",
                 f"latency at batch 1: fp32 {self.latency_ms_fp32:.2f} ms, int8 {self.latency_ms_int8:.2f} ms"]
        if self.out:
            lines.append(f"wrote {self.out} ({'torch.export archive' if self.flow == 'pt2e' else 'TorchScript'}, int8)")
        if self.exceeded:
            banner = "!" * 78
            lines += [banner, f"WARNING: int8 accuracy dropped {self.drop:.2f} points, more than the allowed "
                              f"{self.max_drop}.", "Try more calibration images (--calibration) or QAT "
                              "(--qat-epochs 1).", banner]
        return "\n".join(lines)


# What each flow saves: PT2E a torch.export archive (with the weights' metadata), FX TorchScript.
INT8_SUFFIXES = {"pt2e": (".pt2",), "fx": (".pt", ".ts")}


def quantize_model(model: str | None, weights: str | Path | None = None, *,
                   data: DataChoice | str | Path | None = None, calibration: int = 512, val: int = 2000,
                   max_drop: float = 0.5, qat_epochs: int = 0, qat_images: int = 0, lr: float = 1e-3,
                   out: str | Path | None = None,
                   num_classes: int | None = None, method: str = "pt2e", log: Log = _quiet) -> QuantizeReport:
    """int8 static quantization (PT2E, or the FX fallback with ``method="fx"``; QAT with ``qat_epochs``,
    through FX) calibrated on the split's training part, top-1 before and after on its held-out part,
    latency of both; ``out`` saves the int8 model (PT2E: ``.pt2``, FX: TorchScript ``.pt``)."""
    from .export import dynamic_example
    from .quantize import compare_accuracy, quantize_aware_train, quantize_int8, resolve_method

    flow = "fx" if qat_epochs else resolve_method(method)
    if out is not None and Path(out).suffix.lower() not in INT8_SUFFIXES[flow]:
        raise InputError(f"--out: the {flow} int8 model is saved as {' or '.join(INT8_SUFFIXES[flow])}; "
                         f"got {Path(out).name}")
    # QAT trains on max(calibration, qat_images) images and calibrates on none, so --calibration 0
    # is fine there; post-training quantization observes its ranges on the calibration images.
    if not qat_epochs and calibration < 1:
        raise InputError(f"--calibration: post-training quantization needs at least one calibration image; "
                         f"got {calibration} (or train with --qat-epochs N --qat-images M)")
    if qat_epochs and max(calibration, qat_images) < 1:
        raise InputError("--qat-images: quantization-aware training needs at least one training image; "
                         f"got --qat-images {qat_images} and --calibration {calibration}")
    choice = _choice(data)
    loaded = load_model(model, weights, num_classes)
    train, train_y, val_x, val_y, split, prep, norm = _samples(loaded, choice, max(calibration, qat_images), val, log)
    log(f"{loaded.name}: {len(train)} calibration / {len(val_x)} validation images, {norm}")
    calib = train[:calibration]
    start = time.perf_counter()
    if qat_epochs:
        int8 = quantize_aware_train(loaded.model, train, train_y, epochs=qat_epochs, lr=lr, log=log)
        how = f"QAT, {qat_epochs} epoch(s) on {len(train)} images"
    else:
        int8 = quantize_int8(loaded.model, calib, flow)
        how = f"post-training static, calibrated on {len(calib)} images"
    seconds = time.perf_counter() - start
    acc = compare_accuracy(loaded.model, int8, val_x, val_y, len(calib))
    saved = None
    if out and flow == "pt2e":
        from .export import export_pt2

        metadata = _file_metadata(loaded, weights, prep, loaded.model)
        saved = str(export_pt2(int8.graph, dynamic_example(val_x), out, metadata=metadata))
    elif out:
        from .export import export_torchscript

        saved = str(export_torchscript(int8, dynamic_example(val_x), out))
    return QuantizeReport(loaded.name, how, acc.fp32_top1, acc.int8_top1, acc.drop, acc.agreement, acc.images,
                          acc.calibration_images, seconds, latency_ms(loaded.model, loaded.input_size),
                          latency_ms(int8, loaded.input_size), max_drop, norm, split.to_dict(), saved, flow)


# ---- prune ------------------------------------------------------------------------------------

@dataclass
class PruneStage:
    params: int
    macs: int
    latency_ms: float
    top1: float  # percent
    sparsity: float  # fraction of zero weights in convolutions and linear layers


@dataclass
class PruneReport(_Report):
    model: str
    method: str
    ratio: float
    fine_tune_epochs: int
    before: PruneStage
    pruned: PruneStage
    after_fine_tune: PruneStage
    normalization: str
    split: dict[str, Any]
    out: str | None = None

    def __str__(self) -> str:
        lines = []
        for label, row in (("before", self.before), ("pruned", self.pruned), ("fine-tuned", self.after_fine_tune)):
            lines.append(f"{label:>10}: {row.params:>10,} params {row.macs / 1e6:>9.2f}M MACs "
                         f"{row.latency_ms:>7.2f} ms  top-1 {row.top1:.2f}%  sparsity {100 * row.sparsity:.1f}%")
        if self.out:
            lines.append(f"wrote {self.out}")
        return "\n".join(lines)


def prune_model(model: str | None, weights: str | Path | None = None, *, method: str = "structured",
                ratio: float = 0.3, epochs: int = 1, train_images: int = 5000, val: int = 2000, lr: float = 0.01,
                out: str | Path | None = None, data: DataChoice | str | Path | None = None,
                num_classes: int | None = None, log: Log = _quiet) -> PruneReport:
    """Structured (channels, dependency-aware) or unstructured (weights) pruning, a short fine-tune on
    the split's training part, parameters/MACs/latency/top-1 at each stage; ``out`` saves the result
    (.safetensors for unstructured, .pt2/.onnx/.pt for either)."""
    from ..profile import profile
    from .prune import fine_tune, prune_structured, prune_unstructured, sparsity
    from .quantize import accuracy

    if method not in ("structured", "unstructured"):
        raise InputError(f"pruning method must be 'structured' or 'unstructured'; got {method!r}")
    if epochs and train_images < 1:
        # Refused before minutes of pruning and measuring: the fine-tune would have nothing to train on.
        raise InputError(f"--train-images {train_images} leaves nothing to fine-tune on for --epochs {epochs}: "
                         "pass --epochs 0 to skip the fine-tune, or --train-images N")
    out_path = Path(out) if out else None
    suffix = out_path.suffix.lower() if out_path else ""
    if out_path is not None:  # refuse a file we could not write before minutes of work
        if suffix == ".safetensors" and method == "structured":
            raise InputError("structured pruning changes layer shapes: save as .pt2, .onnx or .pt")
        if suffix != ".safetensors" and suffix not in SUFFIX_FORMATS:
            raise InputError(f"--out must end in .safetensors, .pt2, .onnx or .pt; got {out_path.name}")
    choice = _choice(data)
    loaded = load_model(model, weights, num_classes)
    train, train_y, val_x, val_y, split, prep, norm = _samples(loaded, choice, train_images, val, log)
    log(f"{loaded.name}: {len(train)} fine-tuning / {len(val_x)} validation images, {norm}")
    size = loaded.input_size

    def measure(m) -> PruneStage:
        stats = profile(m, size)
        return PruneStage(stats.params, stats.macs, latency_ms(m, size), accuracy(m, val_x, val_y).top1, sparsity(m))

    before = measure(loaded.model)
    if method == "structured":
        pruned = prune_structured(loaded.model, ratio, torch.randn(1, *size))
    else:
        pruned = prune_unstructured(loaded.model, ratio)
    after_prune = measure(pruned)
    if epochs:
        fine_tune(pruned, train, train_y, epochs=epochs, lr=lr, keep_zeros=method == "unstructured", log=log)
    after = measure(pruned)
    saved = None
    if out_path is not None:
        # The pruned model's own figures replace the source's metrics; the pruning is recorded beside them.
        pruned_meta = {**loaded.metadata, "metrics": {"val_top1": after.top1 / 100, "val_images": len(val_y)},
                       "pruning": {"method": method, "ratio": ratio, "sparsity": after.sparsity,
                                   "fine_tune_epochs": epochs, "from": Path(str(weights)).name if weights else None,
                                   **split.to_dict()}}
        if suffix == ".safetensors":
            from ..weights_io import export_weights

            # Everything the source weights carried (builder arguments, classes, recipe, preprocessing),
            # so the file reloads with create_model/load_model like any other (issue 14).
            meta = {**{k: v for k, v in pruned_meta.items() if k != "format"}, "model": loaded.name,
                    "image_size": list(size),
                    "preprocessing": prep.to_metadata(), "mean": list(prep.mean), "std": list(prep.std)}
            export_weights(out_path, pruned.state_dict(), meta)
        else:
            from .export import export

            # As export_model writes it, so that predict/eval/serve can run the file alone.
            metadata = _file_metadata(loaded, weights, prep, pruned, pruned_meta)
            export(pruned, torch.randn(2, *size), out_path, SUFFIX_FORMATS[suffix], metadata=metadata)
        saved = str(out_path)
    return PruneReport(loaded.name, method, ratio, epochs, before, after_prune, after, norm, split.to_dict(), saved)
