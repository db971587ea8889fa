"""The fault-injection suite (issue 15): probes that try what faults, attackers and careless users
would, each passing only when the project holds (a clear error, nothing written, or a correct result).

    python tests/fault_suite.py              # every probe, then the tally: how many tried, how many held
    python tests/fault_suite.py nan serve    # only the groups (or probe names) containing these words

``tests/test_faults.py`` runs the same probes under pytest, one test each. A probe is one small
function taking a fresh temporary folder; it raises (an ``AssertionError`` saying what happened)
when the project did not hold. Adding one::

    @probe("group")
    def what_is_tried(tmp: Path) -> None:
        code, err = cli("eval", ...)
        expect(code, err, 2, "the message")

Real images are the CIFAR-10 sample bundled with the package (no dataset needed).
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "src/resnets/assets/weights/resnet20_cifar10.safetensors"
QUICKSTART = REPO / "configs/quickstart.yaml"


@dataclass(frozen=True)
class Probe:
    group: str
    name: str
    fn: Callable[[Path], None]
    slow: bool = False

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"


PROBES: list[Probe] = []


def probe(group: str, *, slow: bool = False, name: str | None = None):
    """Register ``fn(tmp)`` as a probe of ``group``."""
    def wrap(fn):
        PROBES.append(Probe(group, name or fn.__name__, fn, slow))
        return fn
    return wrap


# ---- helpers ------------------------------------------------------------------------------------

def cli(*argv: str) -> tuple[int, str]:
    """``resnets ARGV`` in-process: (exit code, stdout + stderr)."""
    from resnets.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue()


def expect(code: int, output: str, want_code: int, *needles: str) -> None:
    assert code == want_code, f"exit {code}, expected {want_code}; output:\n{output[-2000:]}"
    assert "Traceback" not in output, f"a traceback instead of a message:\n{output[-2000:]}"
    for needle in needles:
        assert needle in output, f"{needle!r} not in the output:\n{output[-2000:]}"


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


@contextlib.contextmanager
def writes_nothing(folder: Path):
    """Assert that nothing under ``folder`` appears, changes or goes while the block runs."""
    before = {p: p.stat().st_mtime_ns for p in files_under(folder)}
    yield
    after = {p: p.stat().st_mtime_ns for p in files_under(folder)}
    assert after == before, f"files written: {sorted(map(str, set(after) - set(before)))[:10]}"


def sample_folder(dest: Path, per_class: int = 8, classes: list[str] | None = None) -> Path:
    """A small image folder of real CIFAR-10 JPEGs (the bundled sample)."""
    from resnets.train.engine import sample_data_dir

    source = sample_data_dir()
    for cls in classes or sorted(p.name for p in source.iterdir() if p.is_dir()):
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((source / cls).iterdir())[:per_class]:
            shutil.copy(f, dest / cls / f.name)
    return dest


def shipped_state():
    from safetensors.torch import load_file

    from resnets.train.checkpoint import read_metadata

    meta = read_metadata(SHIPPED)
    meta.pop("format", None)
    return load_file(str(SHIPPED)), meta


def write_weights(path: Path, state, meta) -> Path:
    from resnets.train.checkpoint import export_weights

    export_weights(path, state, meta)
    return path


def nonfinite_weights(tmp: Path) -> Path:
    """The shipped ResNet-20 with one batch-norm's running_var inf and one conv weight NaN: what a
    diverged run (optim.lr=1e8) wrote in the issue."""
    state, meta = shipped_state()
    state["layer2.0.bn1.running_var"][:] = float("inf")
    state["layer3.1.conv2.weight"][0, 0, 0, 0] = float("nan")
    return write_weights(tmp / "diverged.safetensors", state, meta)


NAN_MESSAGE = "holds non-finite weights: layer2.0.bn1.running_var"


# ---- 1. non-finite weights are refused at every load point --------------------------------------

@probe("nan-weights")
def create_model_refuses(tmp: Path) -> None:
    import resnets
    from resnets.weights_io import WeightsError

    path = nonfinite_weights(tmp)
    try:
        resnets.create_model("resnet20", weights=str(path))
    except WeightsError as exc:
        assert str(path) in str(exc) and NAN_MESSAGE in str(exc), exc
    else:
        raise AssertionError("create_model loaded NaN/inf weights")


@probe("nan-weights")
def checkpoint_refused(tmp: Path) -> None:
    import torch

    state, meta = shipped_state()
    state["layer2.0.bn1.running_var"][:] = float("inf")
    path = tmp / "last.pt"
    torch.save({"model": state, "meta": meta}, path)
    data = sample_folder(tmp / "data", 2)
    with writes_nothing(tmp):
        expect(*cli("eval", "--weights", path, "--data", data), 2, str(path), NAN_MESSAGE)


@probe("nan-weights")
def eval_refuses(tmp: Path) -> None:
    path, data = nonfinite_weights(tmp), sample_folder(tmp / "data", 2)
    with writes_nothing(tmp):
        expect(*cli("eval", "--weights", path, "--data", data), 2, str(path), NAN_MESSAGE)


@probe("nan-weights")
def predict_refuses(tmp: Path) -> None:
    path, data = nonfinite_weights(tmp), sample_folder(tmp / "data", 1)
    expect(*cli("predict", "--weights", path, data / "cat"), 2, str(path), NAN_MESSAGE)


@probe("nan-weights")
def features_refuses(tmp: Path) -> None:
    path, data = nonfinite_weights(tmp), sample_folder(tmp / "data", 1)
    with writes_nothing(tmp):
        expect(*cli("features", "--weights", path, data, "--out", tmp / "f.npy"), 2, str(path), NAN_MESSAGE)


@probe("nan-weights")
def export_refuses(tmp: Path) -> None:
    path = nonfinite_weights(tmp)
    with writes_nothing(tmp):
        expect(*cli("export", "--weights", path, "--out", tmp / "m.onnx"), 2, str(path), NAN_MESSAGE)


@probe("nan-weights")
def quantize_refuses(tmp: Path) -> None:
    path, data = nonfinite_weights(tmp), sample_folder(tmp / "data", 4)
    with writes_nothing(tmp):
        expect(*cli("quantize", "--weights", path, "--data", data, "--out", tmp / "q.pt2"), 2, str(path),
               NAN_MESSAGE)


@probe("nan-weights")
def serve_refuses(tmp: Path) -> None:
    from resnets.serve import create_app
    from resnets.weights_io import WeightsError

    path = nonfinite_weights(tmp)
    try:
        create_app(path)
    except WeightsError as exc:
        assert str(path) in str(exc) and NAN_MESSAGE in str(exc), exc
    else:
        raise AssertionError("the server loaded NaN/inf weights")


@probe("nan-weights")
def export_parity_fails_on_nan(tmp: Path) -> None:
    """The parity check itself: an all-NaN model compared with itself is a failure, not "max |diff| 0,
    top-1 agreement 100 %" (Python's ``max(0.0, nan)`` is ``0.0``)."""
    import math

    import torch

    import resnets
    from resnets.deploy.export import compare

    model = resnets.create_model("resnet20", weights=str(SHIPPED)).eval()
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    parity = compare(model, model, torch.randn(8, 3, 32, 32), batch_size=3)
    assert math.isnan(parity.max_abs_diff) and parity.nonfinite == 8 and parity.top1_agreement == 0, parity
    assert not parity.ok(1e-3)


@probe("nan-weights")
def quantize_accuracy_fails_on_nan(tmp: Path) -> None:
    import torch

    import resnets
    from resnets.deploy.quantize import accuracy

    model = resnets.create_model("resnet20", weights=str(SHIPPED)).eval()
    with torch.no_grad():
        model.fc.bias[3] = float("nan")
    try:
        accuracy(model, torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    except ValueError as exc:
        assert "NaN/inf logits for 4 of 4" in str(exc), exc
    else:
        raise AssertionError("an accuracy was computed from NaN logits")


# ---- 3. wrong inputs are errors that name the key or file, exit 2, nothing written --------------

def _train(tmp: Path, *sets: str, data: Path | None = None, config: Path = QUICKSTART) -> tuple[int, str]:
    data = data or sample_folder(tmp / "data", 4)
    args = ["train", "--config", config, "--data", data, "--set", f"out_dir={tmp / 'runs'}",
            "--set", "train.progress=false", "--set", "data.val_size=10"]
    for s in sets:
        args += ["--set", s]
    return cli(*args)


def _bad_train(*sets: str, message: str):
    def run(tmp: Path) -> None:
        data = sample_folder(tmp / "data", 4)
        with writes_nothing(tmp):
            expect(*_train(tmp, *sets, data=data), 2, message)
        assert not (tmp / "runs").exists()
    return run


BAD_CONFIG = {
    "data.limit=-5": "data.limit must be >= 0; got -5",
    "data.val_size=-1": "data.val_size must be >= 0; got -1",
    "optim.lr=0": "optim.lr must be > 0; got 0.0",
    "optim.lr=.nan": "optim.lr must be > 0; got nan",
    "optim.momentum=1.5": "optim.momentum must be in [0, 1); got 1.5",
    "train.label_smoothing=2": "train.label_smoothing must be in [0, 1); got 2.0",
    "train.threads=-1": "train.threads must be >= 0; got -1",
    "train.batch_size=0": "train.batch_size must be >= 1; got 0",
    "train.epochs=-3": "train.epochs must be >= 0; got -3",
    "train.ema_decay=1": "train.ema_decay must be in [0, 1); got 1.0",
    "schedule.milestones=[-1]": "schedule.milestones[0] must be >= 0; got -1",
    # cuda:64 fails on every machine: no CUDA, or fewer than 65 devices.
    "train.device=cuda:64": "train.device=cuda:64, but",
    "train.device=tpu": "train.device must be auto, cpu, cuda, cuda:N or mps; got 'tpu'",
}
for _assignment, _message in BAD_CONFIG.items():
    probe("bad-input", name=f"train {_assignment}")(_bad_train(_assignment, message=_message))


@probe("bad-input")
def cuda_without_gpu(tmp: Path) -> None:
    import torch

    if torch.cuda.is_available():  # on a GPU machine, the probe above (cuda:64) covers the count
        return
    _bad_train("train.device=cuda", message="train.device=cuda, but CUDA is not available")(tmp)


@probe("bad-input")
def yaml_python_tag_refused(tmp: Path) -> None:
    marker = tmp / "executed"
    config = tmp / "evil.yaml"
    config.write_text(f"train:\n  epochs: 1\nname: !!python/object/apply:os.system ['touch {marker}']\n")
    data = sample_folder(tmp / "data", 4)
    with writes_nothing(tmp):
        expect(*_train(tmp, data=data, config=config), 2, str(config),
               "YAML tags that build Python objects are refused")
    assert not marker.exists(), "the YAML tag ran"


@probe("bad-input")
def one_class_folder(tmp: Path) -> None:
    data = sample_folder(tmp / "data", 8, classes=["cat"])
    with writes_nothing(tmp):
        expect(*_train(tmp, "data.val_size=2", data=data), 2, "1 class (cat)", "at least 2 class folders")


@probe("bad-input")
def empty_class_folder(tmp: Path) -> None:
    data = sample_folder(tmp / "data", 4, classes=["cat", "dog"])
    (data / "unicorn").mkdir()
    with writes_nothing(tmp):
        expect(*_train(tmp, "data.val_size=2", data=data), 2, "with no usable image: unicorn",
               "data.allow_empty_classes=true")


@probe("bad-input")
def decompression_bomb_in_a_folder(tmp: Path) -> None:
    """A PNG whose header declares 20000 x 20000 pixels among real images: eval skips it, naming it,
    and scores the rest (Pillow's DecompressionBombError escaped the size survey as a traceback)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    data = sample_folder(tmp / "data", 4)
    bomb = data / "cat" / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # the CLI's bad-file report is a warning on stderr
        warnings.simplefilter("always")
        expect(*cli("eval", "--weights", SHIPPED, "--data", data), 0, "on 40 images")
    said = [str(w.message) for w in caught]
    assert any(f"skipping {bomb}: image too large" in m for m in said), said


@probe("bad-input")
def numeric_options_out_of_range(tmp: Path) -> None:
    """Each was passed on: a batch size of 0 raised range()'s ValueError and -1 scored "on 0 images"
    with exit 0; --topk -1 a RuntimeError; --timeout nan started a server answering every request
    504; --class 10 of a 10-class model an IndexError. Now exit 2 naming the option, nothing written."""
    data = sample_folder(tmp / "data", 2)
    image = next((data / "cat").iterdir())
    w = ["--weights", SHIPPED]
    cases = [
        (["eval", *w, "--data", data, "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["eval", *w, "--data", data, "--batch-size", "-1"], "argument --batch-size: must be at least 1, got -1"),
        (["eval", *w, "--data", data, "--holdout", "--val-size", "0"], "argument --val-size: must be at least 1"),
        (["predict", *w, image, "--topk", "-1"], "argument --topk: must be at least 1, got -1"),
        (["features", *w, data, "--out", tmp / "f.npy", "--batch-size", "0"], "argument --batch-size"),
        (["explain", *w, image, "--out", tmp / "cam", "--batch-size", "0"], "argument --batch-size"),
        (["explain", *w, image, "--out", tmp / "cam", "--class", "10"],
         "target class 10 is not one of the model's 10 classes, 0 to 9"),
        (["serve", *w, "--timeout", "nan"], "argument --timeout: must be a finite number, got nan"),
        (["serve", *w, "--max-wait-ms", "nan"], "argument --max-wait-ms: must be a finite number"),
        (["serve", *w, "--threads", "-1"], "argument --threads: must be at least 0, got -1"),
        (["export", *w, "--out", tmp / "m.onnx", "--tolerance", "nan"], "argument --tolerance: must be a finite"),
        (["export", *w, "--out", tmp / "m.onnx", "--std", "0.2", "0", "0.2"], "argument --std: must be above 0"),
    ]
    with writes_nothing(tmp):
        for argv, message in cases:
            expect(*cli(*argv), 2, message)


def _plain_state_dict(tmp: Path, num_classes: int) -> Path:
    import torch

    import resnets

    path = tmp / f"resnet20_{num_classes}.pt"
    torch.save(resnets.create_model("resnet20", num_classes=num_classes).state_dict(), path)
    return path


@probe("bad-input")
def eval_class_count_mismatch(tmp: Path) -> None:
    weights, data = _plain_state_dict(tmp, 5), sample_folder(tmp / "data", 2)
    with writes_nothing(tmp):
        expect(*cli("eval", "--model", "resnet20", "--weights", weights, "--data", data), 2,
               f"{weights} has a 5-class classifier and no class names", "has 10 classes")


@probe("bad-input")
def eval_class_names_mismatch(tmp: Path) -> None:
    state, meta = shipped_state()
    meta["classes"] = [f"c{i}" for i in range(10)]
    weights, data = write_weights(tmp / "renamed.safetensors", state, meta), sample_folder(tmp / "data", 2)
    with writes_nothing(tmp):
        expect(*cli("eval", "--weights", weights, "--data", data), 2,
               f"has 10 class(es) that {weights} does not know: airplane")


@probe("bad-input")
def crafted_model_kwargs(tmp: Path) -> None:
    state, meta = shipped_state()
    meta["model_kwargs"] = {"evil": "__import__('os')"}
    weights = write_weights(tmp / "crafted.safetensors", state, meta)
    with writes_nothing(tmp):
        expect(*cli("export", "--weights", weights, "--out", tmp / "m.onnx"), 2,
               f"cannot build resnet20 (with model_kwargs from {weights})", "evil")


@probe("bad-input")
def model_kwargs_not_a_mapping(tmp: Path) -> None:
    state, meta = shipped_state()
    meta["model_kwargs"] = ["depth", 20]
    weights = write_weights(tmp / "crafted.safetensors", state, meta)
    expect(*cli("predict", "--weights", weights, SHIPPED), 2,
           f"{weights}: metadata 'model_kwargs' must be a mapping of builder argument names to values")


@probe("bad-input")
def bad_mean_metadata(tmp: Path) -> None:
    state, meta = shipped_state()
    meta["std"] = [0.2, 0.0, 0.2]
    weights = write_weights(tmp / "crafted.safetensors", state, meta)
    expect(*cli("predict", "--weights", weights, SHIPPED), 2, f"{weights}: metadata 'std' must be three positive")


@probe("bad-input")
def shape_mismatch_names_the_file(tmp: Path) -> None:
    weights = _plain_state_dict(tmp, 10)
    with writes_nothing(tmp):
        expect(*cli("export", "--model", "resnet32", "--weights", weights, "--out", tmp / "m.onnx"), 2,
               f"{weights}: weights do not fit", "missing keys")


@probe("bad-input")
def garbage_weights_file(tmp: Path) -> None:
    weights = tmp / "garbage.safetensors"
    weights.write_bytes(b"\x00\x01not a safetensors file" * 10)
    expect(*cli("predict", "--model", "resnet20", "--weights", weights, SHIPPED), 2,
           f"{weights} is not a valid safetensors file")


# ---- 2. training faults with real causes: a file-size limit, kill -9, divergence -----------------

def _train_process(tmp: Path, data: Path, *sets: str, fsize: int | None = None,
                   kill_after_checkpoint: bool = False) -> subprocess.CompletedProcess:
    """``resnets train`` as a real child process (RLIMIT_FSIZE applies to it alone; kill -9 is real)."""
    run_dir = tmp / "runs" / "r"
    if (run_dir / "last.pt").exists():  # the run exists: continue it with its saved config
        argv = [sys.executable, "-m", "resnets", "train", "--resume", str(run_dir)]
    else:
        argv = [sys.executable, "-m", "resnets", "train", "--config", str(QUICKSTART), "--data", str(data),
                "--set", f"out_dir={tmp / 'runs'}", "--set", "name=r", "--set", "data.val_size=10",
                "--set", "train.batch_size=16",
                "--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.plots=false"]
    for s in sets:
        argv += ["--set", s]

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    if not kill_after_checkpoint:
        return subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env, preexec_fn=limit)
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    last = tmp / "runs" / "r" / "last.pt"
    deadline = time.monotonic() + 1800
    while not last.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.kill()  # SIGKILL: no handler, no cleanup, wherever it was (in the next epoch, or a write)
    out, _ = child.communicate()
    return subprocess.CompletedProcess(argv, child.returncode, out, "")


@probe("training")
def file_size_limit_during_training(tmp: Path) -> None:
    """The epoch-2 checkpoint cannot be written (RLIMIT_FSIZE below its size): the run stops with the
    message, epoch 1's last.pt is intact, and the resumed run finishes from it."""
    import torch

    data = sample_folder(tmp / "data", 4)
    first = _train_process(tmp, data, "train.epochs=1")
    assert first.returncode == 0, first.stderr[-2000:]
    last = tmp / "runs" / "r" / "last.pt"
    before = last.read_bytes()
    (tmp / "runs" / "r" / "final.safetensors").unlink()
    limited = _train_process(tmp, data, "train.epochs=2", fsize=len(before) // 2)
    assert limited.returncode == 1, f"exit {limited.returncode}:\n{limited.stderr[-2000:]}"
    err = limited.stderr
    for needle in (f"file-size limit reached while writing {last}", "the previous file is intact",
                   f"resume with: resnets train --resume {tmp / 'runs' / 'r'}"):
        assert needle in err, f"{needle!r} not in:\n{err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    assert last.read_bytes() == before, "last.pt changed"
    assert not [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")], "a temporary file was left"
    assert torch.load(last, weights_only=True)["step"] == 1
    resumed = _train_process(tmp, data, "train.epochs=2")
    assert resumed.returncode == 0 and (last.parent / "final.safetensors").exists(), resumed.stderr[-2000:]


@probe("training")
def file_size_limit_on_metrics_csv(tmp: Path) -> None:
    """The training reporter in a child process whose file-size limit lets metrics.csv hold one epoch's
    row but not two (a whole run cannot isolate it: its config.yaml is larger): the second epoch's
    write fails with the message and metrics.csv is the one-row file, whole (an append left half a row)."""
    script = textwrap.dedent("""
        import resource, sys
        from pathlib import Path
        from resnets.train.report import Reporter
        from resnets.weights_io import WriteError
        rows = [{"epoch": e, "step": 10 * e, "lr": 0.1, "train_loss": 1.0, "train_top1": 0.5, "val_loss": 1.0,
                 "val_top1": 0.5, "val_top5": 0.9, "seconds": 1.0, "img_per_s": 100.0} for e in (1, 2)]
        reporter = Reporter(Path(sys.argv[1]), progress=False, tensorboard=False)
        reporter.epoch_row(rows[:1], improved=True, best_metric="val_top1")
        size = (Path(sys.argv[1]) / "metrics.csv").stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, size + 20))
        try:
            reporter.epoch_row(rows, improved=False, best_metric="val_top1")
        except WriteError as exc:
            sys.exit(f"error: {exc}")
    """)
    run = subprocess.run([sys.executable, "-c", script, str(tmp)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    metrics = tmp / "metrics.csv"
    expect(run.returncode, run.stderr, 1, f"error: file-size limit reached while writing {metrics}",
           "the previous file is intact")
    lines = metrics.read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("1,10,"), lines


@probe("training")
def kill_9_then_resume(tmp: Path) -> None:
    """kill -9 once the first checkpoint exists (no handler runs): the resumed run finishes, and no
    temporary file of the killed writer is left behind."""
    data = sample_folder(tmp / "data", 4)
    killed = _train_process(tmp, data, "train.epochs=12", kill_after_checkpoint=True)
    assert killed.returncode == -9, f"exit {killed.returncode}: {killed.stdout[-2000:]}"
    run_dir = tmp / "runs" / "r"
    resumed = _train_process(tmp, data, "train.epochs=12")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run_dir / "final.safetensors").exists()
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")], sorted(p.name for p in run_dir.iterdir())
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [str(e) for e in range(1, 13)], rows


@probe("training")
def diverging_run_stops_and_writes_no_weights(tmp: Path) -> None:
    """optim.lr=1e30: running_var goes to inf while the loss may stay finite; the run must stop naming
    the tensor, exit 1, and write no final weights."""
    data = sample_folder(tmp / "data", 4)
    run = _train_process(tmp, data, "train.epochs=4", "optim.lr=1e30")
    assert run.returncode == 1, f"exit {run.returncode}:\n{run.stderr[-2000:]}"
    err = run.stderr
    assert ("is not finite" in err or "loss is nan" in err) and "Traceback" not in err, err[-2000:]
    assert not (tmp / "runs" / "r" / "final.safetensors").exists()
    last = tmp / "runs" / "r" / "last.pt"
    if last.exists():  # what it kept must be usable: every tensor finite
        import torch

        state = torch.load(last, weights_only=True)["model"]
        assert all(bool(v.isfinite().all()) for v in state.values() if v.is_floating_point()), "last.pt is not finite"


def _export_under_limit(tmp: Path, fmt: str, suffix: str) -> None:
    """``resnets export`` of the shipped ResNet-20 (1.1-1.3 MB in every format) in a child process
    whose RLIMIT_FSIZE is 100 kB, over an existing export: exit 1 with the message, the old file(s)
    byte for byte, no temporary file. The exporters' own writers once left a truncated file and
    aborted the process from C++ (terminate called after throwing c10::Error)."""
    out = tmp / "out" / f"m{suffix}"
    out.parent.mkdir()
    olds = {out: b"the previous export"}
    if fmt == "openvino":
        olds[out.with_suffix(".bin")] = b"the previous weights"
    for path, data in olds.items():
        path.write_bytes(data)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    argv = [sys.executable, "-m", "resnets", "export", "--weights", SHIPPED, "--format", fmt, "--out", out]
    run = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=900, preexec_fn=limit,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")})
    needle = (f"could not write the OpenVINO IR for {out}" if fmt == "openvino"
              else f"file-size limit reached while writing {out}")
    expect(run.returncode, run.stderr, 1, f"resnets export: error: {needle}", "the previous file is intact")
    assert {p: p.read_bytes() for p in olds} == olds, "the previous export changed"
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in olds), "a temporary file was left"


for _fmt, _suffix in [("onnx", ".onnx"), ("openvino", ".xml"), ("torchscript", ".pt"), ("pt2", ".pt2")]:
    probe("disk-full", name=f"export_{_fmt}_under_a_file_size_limit")(
        lambda tmp, fmt=_fmt, suffix=_suffix: _export_under_limit(tmp, fmt, suffix))


# ---- 4. the server does bounded work -------------------------------------------------------------

@probe("serve")
def decode_amplification_refused(tmp: Path) -> None:
    """256 real 4096 x 4096 PNGs of 16 kB each (each within --max-pixels; 4.2 MB in all): refused
    from their headers, no image decoded (it once kept a core busy for minutes after the 504)."""
    from fastapi.testclient import TestClient
    from PIL import Image

    from resnets.serve import create_app, inputs

    png = io.BytesIO()
    Image.new("L", (4096, 4096)).save(png, "PNG", compress_level=9)
    decoded = []
    original = inputs.decode_with_mode
    inputs.decode_with_mode = lambda *a, **k: decoded.append(1) or original(*a, **k)
    try:
        with TestClient(create_app(SHIPPED)) as client:
            start = time.monotonic()
            r = client.post("/v1/predict", files=[("images", (f"{i}.png", png.getvalue(), "image/png"))
                                                  for i in range(256)])
            seconds = time.monotonic() - start
    finally:
        inputs.decode_with_mode = original
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_pixels", r.text
    assert "--max-request-pixels" in r.json()["error"]["message"], r.text
    assert not decoded and seconds < 10, (len(decoded), seconds)


@probe("serve")
def token_file_unreadable(tmp: Path) -> None:
    expect(*cli("serve", "--weights", SHIPPED, "--token-file", tmp / "missing"), 2,
           f"cannot read --token-file {tmp / 'missing'}")


# ---- running ------------------------------------------------------------------------------------

def run_probe(p: Probe) -> tuple[bool, str, float]:
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="resnets-fault-"))
    try:
        p.fn(tmp)
        return True, "", time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - a probe that did not hold, whatever the reason
        detail = str(exc) if isinstance(exc, AssertionError) else traceback.format_exc(limit=3)
        return False, detail, time.perf_counter() - start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    import warnings

    warnings.simplefilter("ignore")
    chosen = [p for p in PROBES if not argv or any(word in p.id for word in argv)]
    results = []
    for p in chosen:
        held, detail, seconds = run_probe(p)
        results.append((p, held))
        print(f"{'held  ' if held else 'FAILED'} {p.id} ({seconds:.1f} s)" + (f"\n    {detail}" if detail else ""),
              flush=True)
    groups: dict[str, list[bool]] = {}
    for p, held in results:
        groups.setdefault(p.group, []).append(held)
    print()
    for group, held in groups.items():
        print(f"{group:>14}: {sum(held)} of {len(held)} held")
    total = sum(h for _, h in results)
    print(f"{'all':>14}: {len(results)} tried, {total} held, {len(results) - total} failed")
    return 0 if total == len(results) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main(sys.argv[1:]))
