"""Running a model: PyTorch, onnxruntime or OpenVINO behind one interface (issue 17, item 1).

``open_backend(source, backend)`` returns a :class:`Backend`: the callable from normalised input
(N, 3, H, W) to logits, with what is needed to prepare that input and read the answer (the
weights' preprocessing, class names, the sha256 of what it runs). ``resnets predict``, ``eval`` and
``serve`` take ``--backend`` and go through it, so an image gets the same probabilities from each
runtime (tests/test_runtime.py checks them against PyTorch on real images, within 1e-4).

- ``torch``: weights (``.safetensors``, ``.pt``/``.pth``, a shipped tag such as ``cifar10``) through
  the registry's loader, or a ``.pt2`` archive that ``resnets export``/``quantize`` wrote (run as
  exported: an int8 program is its quantize/dequantize graph op by op, correct but not fast; its
  speed comes from inductor, :class:`resnets.deploy.PT2EInt8`).
- ``onnxruntime``: an ``.onnx`` file (``resnets export --out model.onnx``).
- ``openvino``: OpenVINO IR (``resnets export --format openvino --out model.xml``), or an ``.onnx``
  file, which OpenVINO reads as well.

An exported file is enough on its own: ``resnets export`` writes the weights' metadata into it
(:func:`file_metadata`: ONNX ``metadata_props``, OpenVINO ``rt_info`` section ``resnets``, a
``.pt2`` archive's extra file ``resnets.json``), with the source weights' name and sha256, and
:func:`read_file_metadata` reads it back. Each value is JSON, as in a ``.safetensors`` header.

onnxruntime and OpenVINO are optional (the ``deploy`` extra); asking for one that is not installed
says which extra brings it (:func:`resnets.errors.need`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError, need
from .preprocessing import Preprocessing, PreprocessingError


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (None or 0: left as they are) for the block, then restored."""
    if not n or n == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

BACKENDS = ("torch", "onnxruntime", "openvino")
# Which runtime an exported file is for, when --backend is not given.
# Suffixes are compared lower-cased, here and wherever a file's kind is told from its name:
# model.ONNX was taken for weights and refused as "not a PyTorch file" (or "weights file not found").
SUFFIX_BACKENDS = {".onnx": "onnxruntime", ".xml": "openvino", ".pt2": "torch"}
EXPORTED_SUFFIXES = tuple(SUFFIX_BACKENDS)
# OpenVINO IR's rt_info section and the .pt2 archive's extra file that hold the metadata.
SECTION = "resnets"
PT2_EXTRA = "resnets.json"
# Keys of the source weights' metadata not carried into an exported file: the safetensors writer's
# marker. Everything else is (classes, preprocessing, metrics, and the recipe, whose data split
# `resnets eval --holdout` reads).
NOT_CARRIED = ("format",)


@dataclass
class Backend:
    """A model ready to run, and what is needed to use it. ``backend(x)`` takes a normalised float
    batch (N, 3, H, W) on any device and returns float32 logits on the CPU."""

    backend: str  # "torch", "onnxruntime" or "openvino"
    name: str  # the zoo name of the network
    preprocessing: Preprocessing | None  # None: the file carries none (``preprocessing_error`` says which key)
    classes: list[str]
    run: Callable[[Tensor], Tensor]
    sha256: str  # of the file run (for shipped weights: the verified file)
    source: str  # the file's name or the shipped tag, not the machine's path
    metadata: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None  # the PyTorch model (torch backend, weights): Grad-CAM, features
    parameters: int | None = None
    runtime: str = ""  # e.g. "onnxruntime 1.32.0, CPUExecutionProvider"
    exported_from: dict[str, str] | None = None  # an exported file's source weights: {"weights", "sha256"}
    preprocessing_error: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, *self.prepared().input_size)

    def prepared(self) -> Preprocessing:
        """The preprocessing, or :class:`PreprocessingError` naming the missing key (nothing is guessed)."""
        if self.preprocessing is None:
            raise PreprocessingError(self.preprocessing_error)
        return self.preprocessing

    def __call__(self, x: Tensor) -> Tensor:
        return self.run(x)

    def probabilities(self, x: Tensor) -> Tensor:
        return self.run(x).softmax(1)


# ---- metadata in exported files ------------------------------------------------------------------

def file_metadata(meta: dict[str, Any], *, name: str, preprocessing: Preprocessing | None,
                  classes: list[str] | None, weights: str | None, sha256: str | None,
                  parameters: int | None = None) -> dict[str, str]:
    """What an exported file carries, as strings (JSON values): the weights' metadata (classes,
    preprocessing, metrics, recipe), the network's name and parameter count, the source weights'
    name and sha256."""
    out = {k: v for k, v in meta.items() if k not in NOT_CARRIED and v is not None}
    out["model"] = name
    if parameters is not None:
        out["parameters"] = int(parameters)
    if classes:
        out["classes"] = list(classes)
    if preprocessing is not None:
        out["preprocessing"] = preprocessing.to_metadata()
    if weights:
        out["source_weights"] = weights
    if sha256:
        out["source_sha256"] = sha256
    out["resnets_version"] = _version()
    return {k: json.dumps(v) for k, v in out.items()}


def _version() -> str:
    # As resnets.__version__ says it; read here, since importing the package root from this layer
    # would import every layer above it.
    from importlib import metadata

    try:
        return metadata.version("resnets")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _decoded(raw: dict[str, str]) -> dict[str, Any]:
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def read_file_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata an exported ``.onnx``, ``.xml`` (OpenVINO IR) or ``.pt2`` file carries (empty if none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        onnx = need("onnx", "deploy", "reading an ONNX file's metadata")
        proto = onnx.load_model(str(path), load_external_data=False)
        return _decoded({p.key: p.value for p in proto.metadata_props})
    if suffix == ".xml":
        ov = need("openvino", "deploy", "reading OpenVINO IR")
        model = ov.Core().read_model(str(path))
        return _ov_metadata(model)
    if suffix == ".pt2":
        return _load_pt2(path)[1]
    raise InputError(f"{path.name}: not an exported model file ({', '.join(EXPORTED_SUFFIXES)})")


def _ov_metadata(model) -> dict[str, Any]:
    if not model.has_rt_info([SECTION]):
        return {}
    section = model.get_rt_info()[SECTION]
    return _decoded({k: v.astype(str) for k, v in section.items()})


def set_ov_metadata(model, metadata: dict[str, str]) -> None:
    """Write :func:`file_metadata` into an OpenVINO model's rt_info (saved in the IR's .xml)."""
    for k, v in metadata.items():
        model.set_rt_info(v, [SECTION, k])


# ---- opening a backend ---------------------------------------------------------------------------

def backend_for(source: str | Path, backend: str | None) -> str:
    """The backend to use: the one asked for, else the runtime an exported file is for, else torch."""
    suffix = Path(str(source)).suffix.lower()
    if backend is None:
        return SUFFIX_BACKENDS.get(suffix, "torch")
    if backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


def open_backend(source: str | Path, backend: str | None = None, *, model: str | None = None,
                 device: str | torch.device = "cpu", threads: int | None = None) -> Backend:
    """``source`` run by ``backend`` (default: by its suffix, see :data:`SUFFIX_BACKENDS`, else torch).

    Weights run on torch only; onnxruntime takes an ``.onnx`` file, OpenVINO an ``.xml`` (IR) or
    ``.onnx`` one; the refusal says how to export. ``model`` (a zoo name) is needed for a shipped
    tag and checked against an exported file's metadata. onnxruntime and OpenVINO run on the CPU
    with ``threads`` threads (default: their own choice)."""
    kind = backend_for(source, backend)
    path = Path(str(source))
    suffix = path.suffix.lower()
    if kind != "torch" and torch.device(device).type != "cpu":
        raise InputError(f"--backend {kind} runs on the CPU; got --device {device}")
    accepted = {"torch": (".pt2",), "onnxruntime": (".onnx",), "openvino": (".xml", ".onnx")}[kind]
    if suffix in EXPORTED_SUFFIXES and suffix not in accepted:
        raise InputError(f"--backend {kind} cannot run {path.name}; it takes {' or '.join(accepted)}"
                         + ("" if kind != "torch" else " or weights (.safetensors, .pt, .pth, a shipped tag)"))
    if kind == "torch":
        return _open_pt2(path, model, device) if suffix == ".pt2" else _open_weights(source, model, device)
    if suffix not in accepted:
        fmt = "onnx --out model.onnx" if kind == "onnxruntime" else "openvino --out model.xml"
        raise InputError(f"--backend {kind} runs an exported model file ({' or '.join(accepted)}), not weights: "
                         f"resnets export --weights {source}{f' --model {model}' if model else ''} --format {fmt}")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    meta = read_file_metadata(path)
    run = run_onnxruntime(path, threads) if kind == "onnxruntime" else run_openvino(path, threads)
    return _exported(kind, path, meta, model, run, run.runtime)


def _described(meta: dict[str, Any], source: str) -> tuple[Preprocessing | None, str, list[str] | None]:
    """(preprocessing or None, why none, class names or None) from metadata."""
    preprocessing, why = None, ""
    try:
        preprocessing = Preprocessing.from_metadata(meta, source)
    except PreprocessingError as exc:
        why = str(exc)
    classes = meta.get("classes")
    # A string would become its letters as class names (list("cat,dog")): refuse what is not a list.
    if classes and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise InputError(f"{source}: metadata 'classes' must be a JSON list of class names; got {classes!r:.80}")
    return preprocessing, why, list(classes) if classes else None


def _checked_name(meta: dict[str, Any], model: str | None, path: Path) -> str:
    held = meta.get("model")
    if model and held and model != held:
        raise InputError(f"{path.name} holds {held!r}, not {model!r}")
    name = held or model
    if not name:
        raise InputError(f"{path.name} does not say which model it holds (no metadata); pass --model NAME")
    return name


def _exported(kind: str, path: Path, meta: dict[str, Any], model: str | None, run, runtime: str) -> Backend:
    from .pretrained import sha256_of

    name = _checked_name(meta, model, path)
    preprocessing, why, classes = _described(meta, str(path))
    parameters = meta.get("parameters")
    # int() would give a bare ValueError for a string and quietly truncate 1.5 (or take true as 1).
    # A negative count is no count either.
    if parameters is not None and not (isinstance(parameters, int) and not isinstance(parameters, bool)
                                       and parameters >= 0):
        raise InputError(f"{path.name}: metadata 'parameters' must be a non-negative JSON integer (the parameter count); "
                         f"got {parameters!r:.80}")
    from .registry import model_entry

    # One run tells the class count: the names must match it, or predictions get another class's
    # name (or none: an index past the list) and eval's count check compares the list with itself.
    # A batch of 2: what `resnets export --static-batch` fixes it to (api.py's example).
    size = tuple(preprocessing.input_size) if preprocessing else tuple(model_entry(name).input_size[1:])
    source = "its metadata's preprocessing" if preprocessing else f"the {name} registry entry (no preprocessing record)"
    graph_size = getattr(run, "input_size", None)
    if graph_size is not None and graph_size != size:
        raise InputError(f"{path.name}: {source} gives {size[0]}x{size[1]} inputs, but the model takes "
                         f"{graph_size[0]}x{graph_size[1]}; the file's metadata does not match its graph")
    try:
        outputs = run(torch.zeros(2, 3, *size)).shape[1]
    except Exception as exc:  # the runtimes' own errors (onnxruntime's, OpenVINO's, a guard's) name no file
        raise InputError(f"{path.name}: a trial run on {size[0]}x{size[1]} inputs (from {source}) failed "
                         f"({type(exc).__name__}: {str(exc).strip()[:300]})") from exc
    if classes is None:
        classes = [str(i) for i in range(outputs)]
    elif len(classes) != outputs:
        raise InputError(f"{path.name}: its metadata 'classes' names {len(classes)} classes but the model has "
                         f"{outputs} outputs")
    source = {"weights": meta["source_weights"], "sha256": meta.get("source_sha256", "")} \
        if meta.get("source_weights") else None
    return Backend(kind, name, preprocessing, classes, run, sha256_of(path), path.name, meta,
                   parameters=parameters, runtime=runtime,
                   exported_from=source, preprocessing_error=why)


def _open_weights(weights: str | Path, model: str | None, device) -> Backend:
    from .pretrained import available, resolve, sha256_of
    from .registry import load_model

    net = load_model(str(weights), model).to(device).eval()
    meta = dict(getattr(net, "pretrained_meta", None) or {})
    name = model or meta["model"]
    preprocessing, why, classes = _described(meta, str(weights))
    classes = classes or [str(i) for i in range(net.num_classes)]
    sha256 = sha256_of(resolve(name, weights))
    for record in available(name):  # shipped weights: their checked figures (RESULTS.md)
        if record.sha256 == sha256:
            meta["metrics"] = {**(meta.get("metrics") or {}), **record.metrics}
    dev = torch.device(device)

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return net(x.to(dev)).float().cpu()

    return Backend("torch", name, preprocessing, classes, run, sha256, Path(str(weights)).name, meta, module=net,
                   parameters=sum(p.numel() for p in net.parameters()), runtime=f"torch {torch.__version__}",
                   preprocessing_error=why)


def _open_pt2(path: Path, model: str | None, device) -> Backend:
    run = run_pt2(path, device)
    return _exported("torch", path, run.metadata, model, run, run.runtime)


def run_pt2(path: str | Path, device: str | torch.device = "cpu") -> Callable[[Tensor], Tensor]:
    """A callable running a ``.pt2`` program (``resnets export``/``quantize``) on ``device``, any
    batch; its ``runtime`` attribute says which, its ``metadata`` what the file carries."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    program, metadata = _load_pt2(path)
    module = program.module().to(device)
    dev = torch.device(device)
    # The input's batch: an int for `resnets export --static-batch` (the program's guard refuses any
    # other), else a symbol.
    user_input = program.graph_signature.user_inputs[0]
    dims = next(n for n in program.graph.nodes if n.name == user_input).meta["val"].shape
    batch = dims[0]

    def run_program(x: Tensor) -> Tensor:
        with torch.no_grad():
            return module(x.to(dev)).float().cpu()

    run = _any_batch(run_program, batch if isinstance(batch, int) else None)
    run.runtime = f"torch {torch.__version__} (torch.export program)"
    run.input_size = _static_size(dims)
    run.metadata = metadata
    return run


def _load_pt2(path: Path):
    """A ``.pt2`` archive's program and the metadata in its extra file (empty if none)."""
    extra = {PT2_EXTRA: ""}
    program = torch.export.load(str(path), extra_files=extra)
    return program, _decoded(json.loads(extra[PT2_EXTRA])) if extra[PT2_EXTRA] else {}


def _static_size(dims) -> tuple[int, int] | None:
    """(H, W) of an (N, C, H, W) input shape when both are fixed numbers (a symbol or name: None)."""
    hw = tuple(dims)[2:] if len(dims) == 4 else ()
    return hw if len(hw) == 2 and all(isinstance(d, int) for d in hw) else None


def _any_batch(run: Callable[[Tensor], Tensor], fixed: int | None) -> Callable[[Tensor], Tensor]:
    """``run`` for an exported file that takes only a batch of ``fixed`` (``resnets export
    --static-batch``; None: any batch, ``run`` itself), made to take any batch: onnxruntime and a
    ``.pt2`` program refuse any other, and so does OpenVINO. Chunks of ``fixed``, the last padded with
    zeros (eval mode: rows do not affect each other), the padding's rows dropped."""
    if fixed is None:
        return run

    def chunked(x: Tensor) -> Tensor:
        if len(x) == fixed:
            return run(x)
        if not len(x):  # no chunks: torch.cat([]) would fail; the one padded run gives the output's shape
            return run(x.new_zeros(fixed, *x.shape[1:]))[:0]
        out = []
        for start in range(0, len(x), fixed):
            chunk = x[start:start + fixed]
            padded = torch.cat([chunk, chunk.new_zeros(fixed - len(chunk), *chunk.shape[1:])])
            out.append(run(padded)[:len(chunk)])
        return torch.cat(out)

    return chunked


def run_onnxruntime(path: str | Path, threads: int | None = None) -> Callable[[Tensor], Tensor]:
    """A callable running an ONNX file in onnxruntime's CPU provider, all graph optimisations on;
    its ``runtime`` attribute says which."""
    ort = need("onnxruntime", "deploy", "running ONNX (--backend onnxruntime)")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]  # an int for `resnets export --static-batch`, else a name

    def run_session(x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {name: array})[0])

    run = _any_batch(run_session, batch if isinstance(batch, int) else None)
    run.runtime = f"onnxruntime {ort.__version__}, CPUExecutionProvider"
    run.input_size = _static_size(session.get_inputs()[0].shape)
    return run


def openvino_config(threads: int | None = None, hint: str = "LATENCY") -> dict[str, str]:
    """The CPU plugin's settings: fp32 inference (OpenVINO would run bf16 on CPUs that have it,
    which breaks parity with PyTorch), a latency or throughput hint, and the thread count."""
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def run_openvino(path: str | Path, threads: int | None = None) -> Callable[[Tensor], Tensor]:
    """A callable running OpenVINO IR (or an ONNX file) on OpenVINO's CPU plugin in fp32; its
    ``runtime`` attribute says which."""
    ov = need("openvino", "deploy", "running OpenVINO IR (--backend openvino)")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", openvino_config(threads))
    request = compiled.create_infer_request()
    shape = compiled.input(0).get_partial_shape()
    batch = shape[0].get_length() if shape.rank.is_static and shape[0].is_static else None

    def run_request(x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        # The request's output buffer is reused by the next call: copy it out.
        return torch.from_numpy(request.infer({0: array})[0].copy())

    run = _any_batch(run_request, batch)
    run.runtime = f"OpenVINO {ov.get_version().split('-')[0]}, CPU plugin, fp32"
    if shape.rank.is_static:
        run.input_size = _static_size([d.get_length() if d.is_static else None for d in shape])
    return run
