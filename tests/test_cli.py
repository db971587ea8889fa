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
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


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
