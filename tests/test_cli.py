"""The command itself (issue 18 items 2-3, issue 14 item 5): `python -m resnets`, `--version`,
exit codes, and what `import resnets` costs."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest

from resnets.cli import main


def _run(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "resnets", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def test_python_dash_m_runs_the_cli_and_version_comes_from_the_metadata():
    done = _run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"resnets {metadata.version('resnets')}"
    done = _run("models", "resnet2*", "--json")
    assert done.returncode == 0, done.stderr
    assert [row["name"] for row in json.loads(done.stdout)] == ["resnet20"]


def test_usage_errors_are_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "none.safetensors"
    assert main(["eval", "--weights", str(missing), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnets eval: error: ") and str(missing) in err
    assert main(["train", "--config", "quickstart", "--set", "model.name=resnet21"]) == 2
    assert "unknown model 'resnet21'; did you mean" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage errors
        main(["models", "--family", "mobile"])
    assert exit_.value.code == 2


def test_unexpected_errors_show_their_traceback_and_exit_1():
    # A bug (here a ValueError from a broken function) is not a usage error: its traceback is shown.
    code = ("import sys, resnets.cli.models as m\n"
            "def broken(*a): raise ValueError('a bug, not a typo')\n"
            "m.model_table = broken\n"
            "from resnets.cli import main\n"
            "sys.exit(main(['models']))")
    done = _run(code=code)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "in broken" in done.stderr
    assert "ValueError: a bug, not a typo" in done.stderr


def test_import_resnets_loads_no_heavy_optional_module():
    # Issue 18: `resnets --help` paid 2.6 s for torchvision.models (and torch._dynamo) through the
    # detection backbones; the commands that need them import them themselves.
    heavy = ["torchvision", "torch._dynamo", "matplotlib", "tensorboard", "torch.utils.tensorboard",
             "onnx", "onnxruntime", "fastapi", "uvicorn", "torch_pruning", "triton"]
    code = ("import sys, json, resnets, resnets.cli\n"
            "resnets.cli.build_parser()\n"
            f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))")
    done = _run(code=code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_recorded_model_counts_are_current():
    from resnets.profile import COUNTS_FILE, measure_zoo, model_code_hash

    record = json.loads(COUNTS_FILE.read_text())
    assert record["model_code_sha256"] == model_code_hash(), (
        f"{COUNTS_FILE.name} was measured on other model code; rewrite it with "
        'python -c "from resnets.profile import write_zoo_counts; write_zoo_counts()"')
    import resnets

    assert sorted(record["counts"]) == sorted(resnets.list_models())
    cheap = ["resnet20", "plain20", "preact_resnet164", "resnet18", "resnet50"]
    assert {n: record["counts"][n] for n in cheap} == measure_zoo(cheap)


def test_zoo_profiles_measure_what_the_record_lacks(tmp_path, monkeypatch):
    import importlib

    prof = importlib.import_module("resnets.profile")  # `resnets.profile` the attribute is the function

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "data"))
    monkeypatch.setattr(prof, "COUNTS_FILE", tmp_path / "none.json")
    stats = prof.zoo_profiles(["resnet20"])["resnet20"]
    assert (stats.params, stats.macs) == (269_722, 40_551_040)
    cached = json.loads(next(tmp_path.glob("model_counts-*.json")).read_text())
    assert cached["counts"]["resnet20"]["params"] == 269_722
