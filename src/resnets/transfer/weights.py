"""Loading weights from torchvision, timm and the project's own files, without executing anything.

Every load is strict by default and reports missing, unexpected and mis-shaped keys in words;
the only accepted differences are the ones the caller asked for (a new head, a new input width).
"""

from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError


class WeightsError(InputError):
    """A weights file that is unreadable, not what it claims to be, or does not fit the model."""


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)  # asked for: a new head
    adapted: list[str] = field(default_factory=list)  # asked for: first conv to another in_chans

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = []

        def block(title: str, items: list) -> None:
            if items:
                shown = ", ".join(map(str, items[:8])) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"{title}: {shown}")

        block("missing keys (in the model, not in the file)", self.missing)
        block("unexpected keys (in the file, not in the model)", self.unexpected)
        block("shape mismatches (key, file, model)", self.mismatched)
        block("re-initialised", self.reinitialized)
        block("adapted to the input channels", self.adapted)
        return "\n".join(lines) or "all keys matched"


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
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from ..train.checkpoint import read_metadata

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
            metadata = dict(obj.get("meta") or {})
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
    if classes is not None and not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise bad("classes", "a non-empty list of class names")
    for key in ("mean", "std"):
        if meta.get(key) is not None and not _numbers(meta[key], 3):
            raise bad(key, "three numbers (R, G, B)")
    if meta.get("std") is not None and not all(v > 0 for v in meta["std"]):
        raise bad("std", "three positive numbers")
    size = meta.get("image_size")
    if size is not None and not (_numbers(size) and len(size) in (2, 3) and all(float(v).is_integer() and v > 0 for v in size)):
        raise bad("image_size", "[channels, height, width] of positive integers")


def first_nonfinite(state: dict[str, Tensor]) -> tuple[str, int] | None:
    """``(name, count)`` of the first floating-point tensor holding NaN or inf, else ``None``."""
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name, int((~torch.isfinite(value)).sum())
    return None


def check_finite(state: dict[str, Tensor], path: str | Path) -> None:
    """Refuse weights with NaN/inf (issue 15: a diverged run's inf ``running_var`` loaded silently
    and gave NaN everywhere, or "100 % agreement" in export's parity check)."""
    bad = first_nonfinite(state)
    if bad is not None:
        others = sum(1 for v in state.values() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
        raise WeightsError(f"{path} holds non-finite weights: {bad[0]} has {bad[1]} NaN/inf value(s)"
                           f"{f' ({others} tensors in all)' if others > 1 else ''}; the run that wrote it "
                           "diverged. Use an earlier checkpoint or retrain with a lower learning rate")


def read_metadata_only(path: str | Path) -> dict[str, Any]:
    """A weights file's metadata: from the header alone for ``.safetensors``; other files must be
    read whole (a checkpoint's ``meta`` sits beside its tensors)."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from ..train.checkpoint import read_metadata

        try:
            return read_metadata(path)
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise WeightsError(f"{path} is not a valid safetensors file: {exc}") from exc
    return read_weights(path)[1]


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
    state = dict(state)
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
    report.missing = [k for k in target if k not in state and k not in report.reinitialized]
    if strict and not report.ok:
        raise WeightsError(f"weights do not fit {type(model).__name__}:\n{report}")
    loadable = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
    model.load_state_dict(loadable, strict=False)
    return report
