"""Export to ONNX, OpenVINO IR, TorchScript and PT2 (``torch.export``), all with a dynamic batch
dimension, and the parity check of an export against the PyTorch model it came from.

ONNX, OpenVINO IR and PT2 files carry the weights' metadata (classes, preprocessing, the source
weights' sha256; :func:`resnets.runtime.file_metadata`), so the file alone is enough to serve it
(``resnets serve --weights model.onnx``).

Every format is serialised in memory and put in place by :func:`resnets.weights_io.atomic_write`
(OpenVINO's two files each so), so a full disk or a file-size limit leaves the previous export
whole and says so; the exporters' own file writers abort the process from C++ with a truncated file.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import InputError, need
from ..runtime import PT2_EXTRA, run_onnxruntime, run_openvino, run_pt2, set_ov_metadata
from ..weights_io import WriteError, atomic_write

FORMATS = ("onnx", "openvino", "torchscript", "pt2")
# torch.export needs a finite range; 1 is allowed because Dim(min=2) specialises batch-1 calls away.
MAX_BATCH = 4096


@dataclass
class Parity:
    """How closely an exported model reproduces PyTorch on the same inputs."""

    max_abs_diff: float  # NaN when either side produced NaN/inf
    top1_agreement: float  # fraction of inputs whose arg-max class is the same (non-finite rows never agree)
    images: int
    nonfinite: int = 0  # inputs for which either model's logits hold NaN/inf

    def ok(self, tolerance: float, min_agreement: float = 0.99) -> bool:
        """Written so that NaN fails: ``nan <= tolerance`` is False (issue 15: ``max(0.0, nan)`` is
        ``0.0`` in Python, and an all-NaN model once passed with "max |diff| 0, agreement 100 %")."""
        return self.nonfinite == 0 and self.max_abs_diff <= tolerance and self.top1_agreement >= min_agreement

    def to_dict(self) -> dict:
        return asdict(self)


def _batch_dim():
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def dynamic_example(inputs: Tensor) -> Tensor:
    """Two rows of ``inputs`` as the example for a dynamic-batch ``torch.export``: with a batch of
    one, torch.export specialises the batch to 1 and refuses the dynamic ``Dim`` ("Constraints
    violated (batch)"), so a single image is repeated (``quantize --val 1`` or ``--calibration 1``)."""
    if not len(inputs):
        raise InputError("no example input to export with: at least one image is needed")
    return inputs[:2] if len(inputs) >= 2 else inputs[:1].expand(2, *inputs.shape[1:]).clone()


def export_onnx(model: nn.Module, example: Tensor, path: str | Path, *, dynamic_batch: bool = True,
                opset: int | None = None, verbose: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """ONNX through the ``torch.export`` based exporter (the TorchScript one is deprecated);
    ``metadata`` goes into the model's ``metadata_props``."""
    for module in ("onnx", "onnxscript"):  # what torch.onnx's exporter builds the graph with
        need(module, "deploy", "ONNX export")
    path = Path(path)
    kwargs = {"dynamic_shapes": ({0: _batch_dim()},)} if dynamic_batch else {}
    if opset is not None:
        kwargs["opset_version"] = opset
    # The exporter narrates every step on stdout; keep the CLI's output to the result unless asked.
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink, torch.no_grad():
        program = torch.onnx.export(
            model.eval(), (example,), input_names=["input"], output_names=["logits"], dynamo=True, **kwargs
        )
        program.model.metadata_props.update(metadata or {})
        data = program.model_proto.SerializeToString()  # initializers included: these models are far below 2 GB
    return atomic_write(path, data)


def export_openvino(model: nn.Module, example: Tensor, path: str | Path, *, dynamic_batch: bool = True,
                    metadata: dict[str, str] | None = None) -> Path:
    """OpenVINO IR (``path`` is the .xml; the weights go to the .bin beside it), converted from the
    ``torch.export`` program by OpenVINO's own converter, weights kept in fp32 (``save_model``
    would halve them to fp16 by default); ``metadata`` goes into the IR's ``rt_info``."""
    ov = need("openvino", "deploy", "export --format openvino")
    path = Path(path)
    if path.suffix != ".xml":  # as written, not lower-cased: OpenVINO's save_model refuses model.XML
        raise InputError(f"OpenVINO IR is an .xml file with a .bin beside it: --out {path.with_suffix('.xml').name}; "
                         f"got {path.name}")
    shapes = ({0: _batch_dim()},) if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=shapes)
        # OpenVINO's converter leaves a torch.export program's input shape open ([?,3,?,?]) even when
        # the program's is fixed: a --static-batch IR must be told its shape.
        fixed = {} if dynamic_batch else {"input": [ov.PartialShape(list(example.shape))]}
        converted = ov.convert_model(program, **fixed)
    converted.input(0).get_tensor().set_names({"input"})
    converted.output(0).get_tensor().set_names({"logits"})
    set_ov_metadata(converted, metadata or {})
    # OpenVINO writes only to files: into a scratch directory, then each file put in place whole. Two
    # files cannot be replaced at once: the .bin goes first, and if the .xml then fails the old .bin is
    # put back, so the folder holds the old pair or the new one.
    with tempfile.TemporaryDirectory(prefix="resnets-openvino-") as scratch:
        tmp = Path(scratch) / "model.xml"
        try:
            ov.save_model(converted, str(tmp), compress_to_fp16=False)
        except (RuntimeError, OSError) as exc:
            raise WriteError(f"could not write the OpenVINO IR for {path}: OpenVINO's writer failed in {scratch} "
                             f"({exc}; a full disk or a file-size limit?); "
                             f"{'the previous file is intact' if path.exists() else 'nothing was written'}") from exc
        weights, graph = tmp.with_suffix(".bin").read_bytes(), tmp.read_bytes()
    bin_path = path.with_suffix(".bin")
    old_bin = bin_path.read_bytes() if bin_path.is_file() else None
    atomic_write(bin_path, weights)
    try:
        return atomic_write(path, graph)
    except BaseException:
        if old_bin is None:
            bin_path.unlink(missing_ok=True)
        else:
            atomic_write(bin_path, old_bin)
        raise


def export_torchscript(model: nn.Module, example: Tensor, path: str | Path) -> Path:
    """TorchScript by tracing: the ResNets have no data-dependent control flow, and tracing keeps
    the batch dimension symbolic (convolutions, pooling and ``flatten(x, 1)`` never read it).

    Tracing rather than ``torch.jit.script``, on purpose: since the zoo uses Identity placeholders,
    every registered model scripts (checked on torch 2.x: all of them, outputs equal to eager),
    but the int8 models that ``resnets quantize --out`` writes are FX ``GraphModule``s, which
    ``torch.jit.script`` rejects (their generated ``forward`` is annotated ``_Tensor_``). One path
    that works for every model this package exports beats two; for these models the traced graph
    is the scripted one.
    """
    path = Path(path)
    # torch deprecates TorchScript in favour of torch.export, but C++/mobile runtimes still load it.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=FutureWarning)
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return atomic_write(path, buffer.getbuffer())


def export_pt2(model: nn.Module, example: Tensor, path: str | Path, *, dynamic_batch: bool = True,
               metadata: dict[str, str] | None = None) -> Path:
    """A ``torch.export`` archive; ``metadata`` as the extra file ``resnets.json`` inside it."""
    path = Path(path)
    shapes = ({0: _batch_dim()},) if dynamic_batch else None
    model.eval()  # not chained: an int8 PT2E graph's eval() returns None (see quantize.py)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={PT2_EXTRA: json.dumps(metadata or {})})
    return atomic_write(path, buffer.getbuffer())


def export(model: nn.Module, example: Tensor, path: str | Path, fmt: str, *, dynamic_batch: bool = True,
           metadata: dict[str, str] | None = None) -> Path:
    """``model`` to ``path`` in ``fmt`` (one of :data:`FORMATS`); ``metadata`` (from
    :func:`resnets.runtime.file_metadata`) is written into ONNX, OpenVINO and PT2 files."""
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt == "onnx":
        return export_onnx(model, example, path, dynamic_batch=dynamic_batch, metadata=metadata)
    if fmt == "openvino":
        return export_openvino(model, example, path, dynamic_batch=dynamic_batch, metadata=metadata)
    if fmt == "torchscript":
        return export_torchscript(model, example, path)
    return export_pt2(model, example, path, dynamic_batch=dynamic_batch, metadata=metadata)


def load_exported(path: str | Path, fmt: str):
    """A callable ``f(x: Tensor) -> Tensor`` running the exported file."""
    path = Path(path)
    if fmt == "onnx":
        return run_onnxruntime(path)
    if fmt == "openvino":
        return run_openvino(path)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu").eval()
    elif fmt == "pt2":
        return run_pt2(path)  # a static-batch program runs any batch, as --backend torch runs it
    else:
        raise InputError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")

    def run_torch(x: Tensor) -> Tensor:
        with torch.no_grad():
            return module(x)

    return run_torch


def compare(reference: nn.Module, candidate, inputs: Tensor, batch_size: int = 64) -> Parity:
    """Run both on ``inputs`` in batches (odd last batch included, which exercises the dynamic
    batch) and report the largest absolute logit difference and top-1 agreement."""
    if not len(inputs):
        raise InputError("the parity check needs at least one input; got none")
    reference.eval()
    worst, agree, nonfinite = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = inputs[start:start + batch_size]
            ref, out = reference(x), candidate(x)
            if out.shape != ref.shape:
                raise RuntimeError(f"exported model returned shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
            finite = torch.isfinite(ref).all(1) & torch.isfinite(out).all(1)
            nonfinite += int((~finite).sum())
            # torch.maximum propagates NaN (Python's max(0.0, nan) is 0.0).
            worst = torch.maximum(torch.tensor(worst), (ref - out).abs().max().double()).item()
            agree += int(((ref.argmax(1) == out.argmax(1)) & finite).sum())
    if nonfinite:
        worst = math.nan
    return Parity(worst, agree / len(inputs), len(inputs), nonfinite)
