"""resnets.weights_io: the one atomic write, tested against a real file-size limit (issue 14, 15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import resnets
from resnets.weights_io import (
    atomic_write,
    clean_stale_temporaries,
    export_weights,
    load_checkpoint,
    save_checkpoint,
)

SRC = str(Path(resnets.__file__).resolve().parents[1])

# A child process under RLIMIT_FSIZE writes a file larger than the limit with SIGXFSZ ignored, so
# write() fails with EFBIG, as it does on a full disk with ENOSPC: the kernel's own failure.
CHILD = textwrap.dedent("""
    import resource, signal, sys
    import torch
    from resnets.weights_io import WriteError, export_weights, save_checkpoint
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    state = {"w": torch.arange(limit // 2, dtype=torch.float32)}  # 2x the limit in bytes
    try:
        if sys.argv[1] == "checkpoint":
            save_checkpoint(sys.argv[2], {"model": state, "step": 2})
        else:
            export_weights(sys.argv[2], state, {"model": "resnet20"})
    except WriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("kind, name", [("checkpoint", "last.pt"), ("safetensors", "final.safetensors")])
def test_file_size_limit_keeps_the_previous_file_and_says_so(tmp_path, kind, name):
    path = tmp_path / name
    small = {"w": torch.arange(8.0)}
    if kind == "checkpoint":
        save_checkpoint(path, {"model": small, "step": 1})
    else:
        export_weights(path, small, {"model": "resnet20"})
    before = path.read_bytes()
    limit = 1 << 20
    run = subprocess.run([sys.executable, "-c", CHILD, kind, str(path), str(limit)], capture_output=True,
                         text=True, timeout=1800, env={**os.environ, "PYTHONPATH": SRC})
    assert run.returncode == 1, run.stderr
    message = run.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: file-size limit reached while writing {path}"), run.stderr
    assert "the previous file is intact" in message and "Traceback" not in run.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    # A writer killed mid-write (SIGKILL: no cleanup runs) leaves its temporary file behind.
    child = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, signal, sys, tempfile
        from resnets import weights_io
        d = sys.argv[1]
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".x.bin.{os.getpid()}-{weights_io._HOST}-", suffix=".tmp")
        os.write(fd, b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    """), str(tmp_path)], env={**os.environ, "PYTHONPATH": SRC})
    assert child.returncode == -signal.SIGKILL
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".x.bin.") and left.name.endswith(".tmp")
    mine = tmp_path / f".y.bin.{os.getpid()}-x.tmp"  # not the pattern of a writer: never touched
    mine.write_bytes(b"keep")
    atomic_write(tmp_path / "x.bin", b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "x.bin"]
    assert (tmp_path / "x.bin").read_bytes() == b"whole"


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        from resnets import weights_io

        live = tmp_path / f".x.bin.{sleeper.pid}-{weights_io._HOST}-abc.tmp"
        live.write_bytes(b"in progress")
        assert clean_stale_temporaries(tmp_path) == []
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert clean_stale_temporaries(tmp_path) == [live]


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    state = {"model": {"w": torch.randn(3)}, "step": 4, "history": [{"val_top1": 0.5}]}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["step"] == 4 and torch.equal(back["model"]["w"], state["model"]["w"])


def test_an_upper_case_safetensors_suffix_is_read_as_safetensors(tmp_path):
    """w.SAFETENSORS went to torch.load (the suffix compared as written) and was refused as "not a
    PyTorch file"; a missing one, named bare, was looked up as a shipped tag."""
    from resnets.pretrained import resolve
    from resnets.weights_io import read_metadata_only, read_weights

    path = tmp_path / "w.SAFETENSORS"
    export_weights(path, {"w": torch.ones(2)}, {"model": "resnet20"})
    state, meta = read_weights(path)
    assert torch.equal(state["w"], torch.ones(2)) and meta["model"] == "resnet20"
    assert read_metadata_only(path)["model"] == "resnet20"
    assert resolve("resnet20", "missing.SAFETENSORS") == Path("missing.SAFETENSORS")


def test_a_half_precision_file_loads_in_the_models_dtype(tmp_path):
    """The shipped resnet110 stores fp16 (5 MB per tracked file): loading casts each tensor to the model's
    dtype before anything is computed from it, so an adapted first conv is the fp32 sum, not an fp16 one."""
    from resnets.weights_io import adapt_input_conv

    torch.manual_seed(0)
    state = {k: v.half() if v.is_floating_point() else v for k, v in resnets.create_model("resnet20").state_dict().items()}
    path = tmp_path / "half.safetensors"
    export_weights(path, state, {"model": "resnet20"})
    with pytest.warns(UserWarning, match="conv1"):
        model = resnets.create_model("resnet20", weights=str(path), in_chans=1)
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())
    torch.testing.assert_close(model.conv1.weight, adapt_input_conv(state["conv1.weight"].float(), 1), rtol=0, atol=0)
    torch.testing.assert_close(model.fc.weight, state["fc.weight"].float(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.complex64])
def test_weights_that_are_not_floating_point_numbers_are_refused_naming_the_file_and_key(tmp_path, dtype):
    """An integer or complex tensor where the model has floats was cast silently: logits off by
    1,573 and "truck 1.000" from an int64 file (int8: the same)."""
    from resnets.weights_io import WeightsError

    state = resnets.create_model("resnet20").state_dict()
    state["fc.weight"] = (state["fc.weight"] * 100).to(dtype)
    path = tmp_path / "w.safetensors"
    export_weights(path, state, {"model": "resnet20"})
    with pytest.raises(WeightsError, match=f"(?s){path}: .*not floating-point .*fc.weight.*{str(dtype)[6:]}"):
        resnets.create_model("resnet20", weights=str(path))


def test_float8_and_float64_files_are_checked_as_the_model_will_hold_them(tmp_path):
    """float8 has no norm kernel (the finite check raised NotImplementedError); a float64 1e300 is
    finite there but inf in the float32 model, and was refused as holding "0 NaN/inf value(s)"."""
    from resnets.weights_io import WeightsError

    state = resnets.create_model("resnet20").state_dict()
    small = {**state, "fc.weight": state["fc.weight"].to(torch.float8_e4m3fn)}
    export_weights(tmp_path / "f8.safetensors", small, {"model": "resnet20"})
    model = resnets.create_model("resnet20", weights=str(tmp_path / "f8.safetensors"))
    assert torch.equal(model.fc.weight, small["fc.weight"].float())
    huge = {**state, "fc.weight": state["fc.weight"].double()}
    huge["fc.weight"][0, 0] = 1e300
    export_weights(tmp_path / "f64.safetensors", huge, {"model": "resnet20"})
    with pytest.raises(WeightsError, match="fc.weight has 1 NaN/inf value"):
        resnets.create_model("resnet20", weights=str(tmp_path / "f64.safetensors"))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_written_file_gets_the_permissions_open_would_give_it(tmp_path):
    """mkstemp's temporary files are 0600, and every weights file, export and checkpoint kept that
    mode after the rename: unreadable by a server running under another account. Now a new file gets
    0666 less the umask of the moment (set here in a child process, after the import), and a replaced
    file keeps its mode."""
    code = textwrap.dedent("""
        import os, sys
        from resnets.weights_io import atomic_write
        os.umask(int(sys.argv[2], 8))
        atomic_write(sys.argv[1], b"x")
    """)
    for umask, mode in (("022", 0o644), ("077", 0o600)):
        path = tmp_path / f"w{umask}.bin"
        subprocess.run([sys.executable, "-c", code, str(path), umask], check=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": SRC})
        assert path.stat().st_mode & 0o777 == mode, (umask, oct(path.stat().st_mode))
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    atomic_write(kept, b"new")
    assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_bytes() == b"new"


def test_a_safetensors_file_under_another_name_is_read_as_safetensors(tmp_path):
    """Renamed w.pth (or given no suffix), it went to torch.load and was refused as "not a PyTorch file"."""
    from resnets.weights_io import read_weights

    for name in ("w.pth", "w"):
        export_weights(tmp_path / name, {"w": torch.ones(2)}, {"model": "resnet20"})
        state, meta = read_weights(tmp_path / name)
        assert torch.equal(state["w"], torch.ones(2)) and meta["model"] == "resnet20"


@pytest.mark.parametrize("classes", [["cat"] * 10, ["cat", ""] + [f"c{i}" for i in range(8)]])
def test_repeated_or_empty_class_names_are_refused_naming_the_file(tmp_path, classes):
    """Ten classes all named "cat" loaded, and every prediction was "cat"."""
    from resnets.weights_io import WeightsError, read_weights

    path = tmp_path / "w.safetensors"
    export_weights(path, resnets.create_model("resnet20").state_dict(), {"model": "resnet20", "classes": classes})
    with pytest.raises(WeightsError, match=f"{path}: metadata 'classes' must be .*distinct, non-empty"):
        read_weights(path)


def test_a_pth_without_batch_norm_step_counters_loads_as_torch_strict_load_does(tmp_path):
    """Checkpoints older than PyTorch 0.4.1 (and many converted ones) have no
    ``*.num_batches_tracked``; torch's strict ``load_state_dict`` takes them, and so must we,
    keeping the model's own counters."""
    source = resnets.create_model("resnet20", weights="cifar10").eval()
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) < len(source.state_dict())
    torch.save(state, tmp_path / "old.pth")
    torch.nn.Module.load_state_dict(resnets.create_model("resnet20"), state, strict=True)  # torch's own verdict
    model = resnets.create_model("resnet20", weights=str(tmp_path / "old.pth")).eval()
    assert model.load_report.ok and model.load_report.missing == []
    assert int(model.bn1.num_batches_tracked) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
