"""The layering contract of pyproject.toml ([tool.importlinter]) holds: imports point down only
(issue 14). Run through import-linter's own command, so CI fails on a new upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import resnets

REPO = Path(__file__).resolve().parents[1]


def test_imports_point_down_only():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    src = str(Path(resnets.__file__).resolve().parents[1])  # the checkout's code, not another install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([exe, "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout


def test_one_atomic_write_implementation():
    """Every file the package puts in place goes through resnets.weights_io.atomic_write."""
    src = REPO / "src" / "resnets"
    renames = [str(p.relative_to(src)) for p in src.rglob("*.py") if "os.replace(" in p.read_text()]
    assert renames == ["weights_io.py"], renames
