"""Weights and checkpoint files: the one place that writes and reads them (issue 14).

It sits below everything else in the package (it imports only torch and safetensors), so the
registry, training, transfer, deployment and the data cache all use it without import cycles.

* :func:`atomic_write` is the package's only way to put a file in place: bytes go to a temporary
  file in the same directory, are fsynced, renamed over the target (``os.replace``) and the
  directory is fsynced. A crash, a full disk or a file-size limit mid-write leaves the previous
  file whole; the error says so in words (no C++ traceback), because everything is serialised to
  bytes first and the only failing call is our own ``write``. Temporary files of a writer that
  was killed are removed by the next write into the same directory.
* Reads never unpickle arbitrary objects: ``torch.load(weights_only=True)``, or safetensors.
* Final weights are ``.safetensors`` whose metadata (strings; JSON inside) rebuilds the model and
  its preprocessing: model name and arguments, classes, preprocessing, metrics, recipe.
* torchvision and timm files map onto the zoo's module names (:func:`convert_timm_state_dict`,
  ``module.``/``_orig_mod.`` prefixes), and :func:`load_into` says in words what did not fit.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import pickle
import re
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError


class WeightsError(InputError):
    """A weights file that is unreadable, not what it claims to be, or does not fit the model."""


class CheckpointError(RuntimeError):
    """A checkpoint or weights file could not be written or read; the message says what to do."""


class WriteError(CheckpointError):
    """Writing a file failed (disk full, file-size limit, permissions); the previous file is intact."""


# ---- the one atomic write --------------------------------------------------------------------

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
# mkstemp creates 0600 files; a new file gets what open() would give it (0666 less the umask) and a
# replaced one keeps its mode, so an export or weights file stays readable by the server's account.
def _umask() -> int:
    """The process's umask now. Linux says it in /proc; elsewhere os.umask reads it only by setting it
    (and back), which can race with other threads creating files, so it is the fallback."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()
# .NAME.PID-HOST-RANDOM.tmp: who wrote it, so a later write can tell a dead writer's file from a live one's.
_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[^.]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temporaries(directory: str | Path) -> list[Path]:
    """Remove temporary files left in ``directory`` by writers of this machine that are gone
    (killed mid-write); another live process's temporary file is left alone."""
    removed = []
    if os.name != "posix":
        return removed
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m and m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(path: Path, exc: OSError, size: int) -> WriteError:
    kept = "the previous file is intact" if path.exists() else "nothing was written"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = f"disk full while writing {path} ({size:,} bytes); {kept}. Free space or write elsewhere"
    elif exc.errno == errno.EFBIG:
        what = (f"file-size limit reached while writing {path} ({size:,} bytes; see `ulimit -f`); {kept}. "
                f"Raise the limit or write a smaller file")
    else:
        what = f"could not write {path}: {exc.strerror or exc}; {kept}"
    return WriteError(what)


def atomic_write(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Put ``data`` at ``path`` whole or not at all (see the module docstring). Creates the parent
    directory; raises :class:`WriteError` naming the file when the write fails."""
    path = Path(path)
    view = memoryview(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-{_HOST}-", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc, len(view)) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                os.fchmod(f.fileno(), _mode_for(path))
            except (OSError, AttributeError):  # a mount that refuses chmod (vfat, CIFS), or no fchmod (Windows)
                pass
            f.write(view)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, exc, len(view)) from exc
    except BaseException:  # Ctrl-C mid-write: no half file under any name
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path



def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """A matplotlib figure as a PNG at ``path``, written atomically, and closed: a run stopped
    mid-plot leaves the previous picture, never half of one."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write(path, buf.getvalue())

# ---- training checkpoints ----------------------------------------------------------------------

def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` of tensors, numbers, strings, lists and dicts, written atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getbuffer())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable resnets checkpoint ({exc})") from exc


# ---- safetensors with metadata -------------------------------------------------------------------

# One name per metric (issue 14): top-1 accuracy is `val_top1`/`train_top1`, a fraction. Files and
# configs written before the rename say `val_acc`/`train_acc`; they are read under the new names.
METRIC_ALIASES = {"val_acc": "val_top1", "train_acc": "train_top1"}


def canonical_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with its metrics under their current names (see :data:`METRIC_ALIASES`)."""
    metrics = meta.get("metrics")
    if isinstance(metrics, dict) and any(k in metrics for k in METRIC_ALIASES):
        meta = {**meta, "metrics": {METRIC_ALIASES.get(k, k): v for k, v in metrics.items()}}
    return meta


def export_weights(path: str | Path, state_dict: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    """Weights as safetensors; metadata values are JSON-encoded (safetensors stores strings only)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    meta = {"format": "resnets", **{k: json.dumps(v) for k, v in metadata.items()}}
    atomic_write(path, save(tensors, metadata=meta))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A ``.safetensors`` file's metadata, JSON values decoded (read from the header alone)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return canonical_metadata(out)


# ---- reading any weights file safely -------------------------------------------------------------

def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # DataParallel/DDP ("module.") and torch.compile ("_orig_mod.") wrappers prefix every key.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def convert_timm_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm checkpoints to our names. timm's ``ResNet`` already uses torchvision's names (and our
    ``se.fc1/fc2``); its pre-activation ``ResNetV2`` uses ``stem/stages/blocks/normN``."""
    if not any(k.startswith(("stem.", "stages.")) for k in state):
        return dict(state)
    out = {}
    for key, value in state.items():
        new = key
        if key.startswith("stem.conv."):
            new = "conv1." + key[len("stem.conv."):]
        elif key.startswith("head.fc."):
            new = "fc." + key[len("head.fc."):]
            if value.ndim == 4:  # timm's v2 head is a 1x1 conv; ours is a Linear
                value = value.flatten(1)
        elif m := re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key):
            stage, index, rest = int(m.group(1)), m.group(2), m.group(3)
            rest = re.sub(r"^norm(\d)\.", r"bn\1.", rest)
            rest = re.sub(r"^downsample\.conv\.", "downsample.0.", rest)
            new = f"layer{stage + 1}.{index}.{rest}"
        out[new] = value
    return out


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` from a file, never unpickling arbitrary objects.

    Accepts ``.safetensors`` (ours carry metadata), torchvision/timm ``.pth`` state_dicts, and the
    project's training checkpoints (EMA weights preferred, as they are what was validated).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty")
    metadata: dict[str, Any] = {}
    with open(path, "rb") as f:
        head = f.read(16)
    # Lower-cased: torch.load would refuse w.SAFETENSORS as "not a PyTorch file". A safetensors file
    # under another name (w.pth, w.bin) is known by its header: 8 bytes of JSON length, then '{'.
    if path.suffix.lower() == ".safetensors" or (head[8:10] == b'{"' and head[:2] not in (b"PK", b"\x80\x02")):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
            metadata = read_metadata(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path} is not a valid safetensors file: {exc}") from exc
    else:
        try:
            # weights_only=True: tensors and containers only; a pickle that tries to build any
            # other object (a code-execution vector) is refused here, not run.
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
            kind = "a zip/pickle file" if head[:2] == b"PK" or head[:1] == b"\x80" else "not a PyTorch file"
            raise WeightsError(
                f"refused to load {path} ({kind}): it is not a plain state_dict of tensors ({exc})"
            ) from exc
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # a resnets training checkpoint
            if not isinstance(obj.get("meta") or {}, dict):
                raise WeightsError(f"{path}: a checkpoint's 'meta' must be a mapping (model, classes, "
                                   f"preprocessing, ...); got {type(obj['meta']).__name__}")
            metadata = canonical_metadata(dict(obj.get("meta") or {}))
            ema = obj.get("ema")
            obj = ema["state"] if isinstance(ema, dict) and ema.get("state") else obj["model"]
        elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise WeightsError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
        state = obj
    check_finite(state, path)
    check_metadata(metadata, path)
    return convert_timm_state_dict(_strip_prefixes(state)), metadata


def _numbers(value: Any, n: int | None = None) -> bool:
    return (isinstance(value, list | tuple) and (n is None or len(value) == n)
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def check_metadata(meta: dict[str, Any], path: str | Path) -> None:
    """The metadata fields that rebuild and preprocess a model have the types they must have,
    before anything reaches a builder (issue 15: crafted ``model_kwargs`` gave raw tracebacks)."""
    def bad(key: str, expected: str) -> WeightsError:
        return WeightsError(f"{path}: metadata {key!r} must be {expected}; got {str(meta[key])[:100]!r}")

    if meta.get("model") is not None and not (isinstance(meta["model"], str) and meta["model"].isidentifier()):
        raise bad("model", "a model name")
    kwargs = meta.get("model_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
            raise bad("model_kwargs", "a mapping of builder argument names to values")
        for k, v in kwargs.items():
            if not isinstance(v, str | int | float | bool | list | type(None)):
                raise WeightsError(f"{path}: metadata model_kwargs.{k} must be a plain value; got {str(v)[:100]!r}")
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)
                                    and len(set(classes)) == len(classes)):  # ["cat"] * 10: every answer "cat"
        raise bad("classes", "a non-empty list of distinct, non-empty class names")
    for key in ("mean", "std"):
        if meta.get(key) is not None and not _numbers(meta[key], 3):
            raise bad(key, "three numbers (R, G, B)")
    if meta.get("std") is not None and not all(v > 0 for v in meta["std"]):
        raise bad("std", "three positive numbers")
    size = meta.get("image_size")
    if size is not None and not (_numbers(size) and len(size) in (2, 3) and all(float(v).is_integer() and v > 0 for v in size)):
        raise bad("image_size", "[channels, height, width] of positive integers")


_NORM_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def first_nonfinite(state: dict[str, Tensor]) -> tuple[str, int] | None:
    """``(name, count)`` of the first floating-point tensor holding NaN or inf, else ``None``.

    One fused max-|x| over all tensors and a single host sync when everything is finite: cheap
    enough for the training loop's check after every step (~1 ms for ResNet-50's 320 tensors on a
    CPU); only a bad state pays for finding which tensor and how many values."""
    # float8 has no norm kernel: widened first. Counted as float32 holds them, since that is how they are
    # used: a float64 1e300 is inf there (it was refused as holding "0 NaN/inf values").
    named = [(name, value.detach() if value.dtype in _NORM_DTYPES else value.detach().float())
             for name, value in state.items() if value.is_floating_point() and value.numel()]
    if not named:
        return None
    amax = torch.stack([m.float() for m in torch._foreach_norm([v for _, v in named], float("inf"))])
    if bool(amax.isfinite().all()):
        return None
    for (name, value), ok in zip(named, amax.isfinite().tolist()):
        if not ok:
            return name, int((~torch.isfinite(value.float())).sum())
    return None


def check_finite(state: dict[str, Tensor], path: str | Path) -> None:
    """Refuse weights with NaN/inf (issue 15: a diverged run's inf ``running_var`` loaded silently
    and gave NaN everywhere, or "100 % agreement" in export's parity check)."""
    bad = first_nonfinite(state)
    if bad is not None:
        others = sum(1 for v in state.values() if v.is_floating_point() and not bool(torch.isfinite(v.float()).all()))
        raise WeightsError(f"{path} holds non-finite weights: {bad[0]} has {bad[1]} NaN/inf value(s)"
                           f"{f' ({others} tensors in all)' if others > 1 else ''}; the run that wrote it "
                           "diverged. Use an earlier checkpoint or retrain with a lower learning rate")


def read_metadata_only(path: str | Path) -> dict[str, Any]:
    """A weights file's metadata: from the header alone for ``.safetensors``; other files must be
    read whole (a checkpoint's ``meta`` sits beside its tensors)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors" and path.is_file():
        try:
            return read_metadata(path)
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise WeightsError(f"{path} is not a valid safetensors file: {exc}") from exc
    return read_weights(path)[1]


# ---- loading into a model ------------------------------------------------------------------------

@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)  # asked for: a new head
    adapted: list[str] = field(default_factory=list)  # asked for: first conv to another in_chans
    # Integer or complex values where the model has floats: cast silently, int8 or int64 weights gave
    # logits off by 1,573 and "truck 1.000".
    wrong_kind: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.wrong_kind)

    def __str__(self) -> str:
        lines = []

        def block(title: str, items: list) -> None:
            if items:
                shown = ", ".join(map(str, items[:8])) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"{title}: {shown}")

        block("missing keys (in the model, not in the file)", self.missing)
        block("unexpected keys (in the file, not in the model)", self.unexpected)
        block("shape mismatches (key, file, model)", self.mismatched)
        block("not floating-point numbers where the model has them (key, file, model)", self.wrong_kind)
        block("re-initialised", self.reinitialized)
        block("adapted to the input channels", self.adapted)
        return "\n".join(lines) or "all keys matched"


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """First-conv weights for another number of input channels (timm's rule): summed over RGB for
    one channel; RGB repeated and rescaled by 3/C for C channels, so activations keep their scale."""
    out_ch, src_ch, kh, kw = weight.shape
    if in_chans == src_ch:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // src_ch)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (src_ch / in_chans)


def load_into(
    model: nn.Module,
    state: dict[str, Tensor],
    *,
    strict: bool = True,
    new_head: bool = False,
    head: str = "fc",
    first_conv: str = "conv1",
) -> LoadReport:
    """Load ``state`` into ``model`` and say exactly what did not fit.

    ``new_head=True`` drops the file's classifier (the model's stays freshly initialised); a first
    conv with another number of input channels is adapted with :func:`adapt_input_conv`. Anything
    else that differs raises :class:`WeightsError` when ``strict`` (the default).
    """
    target = model.state_dict()
    # A file may store its floats at lower precision than the model holds them (the shipped resnet110
    # is fp16 so that no tracked file exceeds 5 MB): cast first, so adapt_input_conv works in the model's dtype.
    state = {k: v.to(target[k].dtype) if k in target and v.is_floating_point() and target[k].is_floating_point()
             else v for k, v in state.items()}
    report = LoadReport()
    conv_key = f"{first_conv}.weight"
    if conv_key in state and conv_key in target and state[conv_key].shape[1] != target[conv_key].shape[1]:
        if state[conv_key].shape[0] == target[conv_key].shape[0]:
            state[conv_key] = adapt_input_conv(state[conv_key], target[conv_key].shape[1])
            report.adapted.append(conv_key)
    if new_head:
        for key in [k for k in state if k.startswith(f"{head}.")]:
            del state[key]
        report.reinitialized = [k for k in target if k.startswith(f"{head}.")]
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif target[key].shape != value.shape:
            report.mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
        elif target[key].is_floating_point() and not value.is_floating_point():
            report.wrong_kind.append((key, str(value.dtype).removeprefix("torch."), str(target[key].dtype).removeprefix("torch.")))
    # Batch-norm's step counter came with PyTorch 0.4.1: older and converted checkpoints lack it,
    # and torch's own strict load_state_dict keeps the model's value then (it only counts steps
    # for momentum=None), so its absence is not a missing weight.
    report.missing = [k for k in target if k not in state and k not in report.reinitialized
                      and not k.endswith(".num_batches_tracked")]
    if strict and not report.ok:
        raise WeightsError(f"weights do not fit {type(model).__name__}:\n{report}")
    wrong = {k for k, _, _ in report.wrong_kind}
    loadable = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape and k not in wrong}
    model.load_state_dict(loadable, strict=False)
    return report
