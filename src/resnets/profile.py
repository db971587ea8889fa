"""Parameter and multiply-accumulate counts, measured by running the model under
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; normalisation,
activations and additions are not counted, the convention of the papers and torchvision)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class Profile:
    params: int
    macs: int  # per image
    input_size: tuple[int, int, int]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def profile(model: nn.Module, input_size: int | Sequence[int] = (3, 32, 32)) -> Profile:
    """Parameters and MACs per image of ``model`` at ``input_size`` ((C, H, W), (H, W) or a side)."""
    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
    elif len(input_size) == 2:
        input_size = (3, *input_size)
    # Here, not at the top: the flop counter imports triton (0.2 s), which `import resnets` need not pay.
    from torch.utils.flop_counter import FlopCounterMode

    size = tuple(int(s) for s in input_size)
    param = next(model.parameters(), None)
    x = torch.zeros(1, *size, device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return Profile(count_params(model), counter.get_total_flops() // 2, size)


# ---- the zoo's counts, recorded ------------------------------------------------------------------
# `resnets models` lists parameters and MACs of every registered model. Measuring them builds and runs
# all of them (30 s on 2 busy CPU cores, resnet1202 alone 8 s), so they are recorded, as torchvision's
# weights records carry theirs (issue 18: the command should start about as fast as `import torch`).
# A record is valid only for the code it was measured on: it is keyed by a hash of the model code
# (layers, blocks, models, registry). On a mismatch the counts are measured once and kept in the
# user's cache; tests/test_cli.py fails when the shipped record is stale, naming the command that
# rewrites it: python -c "from resnets.profile import write_zoo_counts; write_zoo_counts()"
COUNTS_FILE = Path(__file__).with_name("model_counts.json")
_MODEL_CODE = ("layers", "blocks.py", "models", "registry.py")


def model_code_hash() -> str:
    """sha256 of the source files that define the registered models and their defaults."""
    root = Path(__file__).parent
    files = sorted(p for part in _MODEL_CODE for p in ([root / part] if part.endswith(".py")
                                                          else (root / part).rglob("*.py")))
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.relative_to(root).as_posix()}\0".encode() + path.read_bytes() + b"\0")
    return h.hexdigest()


def measure_zoo(names: Sequence[str] | None = None) -> dict[str, dict]:
    """Parameters and MACs of registered models as ``create_model(name)`` builds them, at their input size."""
    from .registry import create_model, list_models, model_entry

    out = {}
    for name in names if names is not None else list_models():
        entry = model_entry(name)
        with torch.device("meta"):  # counting needs only shapes: no memory, no initialisation
            model = create_model(name)
        stats = profile(model, entry.input_size)
        out[name] = {"params": stats.params, "macs": stats.macs, "input_size": list(stats.input_size)}
    return out


def _cached_counts_file(code: str) -> Path:
    from .data.cache import default_cache_dir

    return default_cache_dir().parent / f"model_counts-{code[:16]}.json"


def _read_counts(path: Path, code: str) -> dict[str, dict]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record.get("counts", {}) if record.get("model_code_sha256") == code else {}


def zoo_profiles(names: Sequence[str]) -> dict[str, Profile]:
    """:class:`Profile` of each registered model in ``names`` (its default head and input size), from the
    record of the current model code, measuring (and caching) those not recorded."""
    from .weights_io import atomic_write

    code = model_code_hash()
    counts = _read_counts(COUNTS_FILE, code)
    missing = [n for n in names if n not in counts]
    if missing:
        cached = _cached_counts_file(code)
        counts = {**_read_counts(cached, code), **counts}
        missing = [n for n in names if n not in counts]
        if missing:
            counts.update(measure_zoo(missing))
            try:
                atomic_write(cached, json.dumps({"model_code_sha256": code, "counts": counts},
                                                      indent=1, sort_keys=True).encode())
            except OSError:  # a read-only home: measured again next time, nothing else lost
                pass
    return {n: Profile(counts[n]["params"], counts[n]["macs"], tuple(counts[n]["input_size"])) for n in names}


def write_zoo_counts(path: Path = COUNTS_FILE) -> Path:
    """Measure every registered model and record the counts for the current model code (ships in the package)."""
    from .weights_io import atomic_write

    record = {"model_code_sha256": model_code_hash(), "counts": measure_zoo()}
    atomic_write(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return path
