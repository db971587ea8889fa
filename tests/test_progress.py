"""Progress a person can follow in a log file as on a terminal (issue 18, item 1)."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time

from rich.console import Console

from resnets.progress import LoopProgress, duration, log_every_s

NUMBER = r"-?\d+(\.\d+)?(e[+-]\d+)?"
STEP_LINE = re.compile(rf"^epoch \d+\.\d\d/2  step \d+  loss {NUMBER}  acc {NUMBER}  lr {NUMBER}  \d+ img/s  "
                       r"ETA (\d+h\d\dm|\d+m\d\ds|\d+s)$")
EPOCH_LINE = re.compile(rf"^epoch +[12]  step +\d+  lr {NUMBER}  train loss {NUMBER} acc {NUMBER}  "
                        rf"val loss {NUMBER} acc {NUMBER} top5 {NUMBER}  \d+ img/s  {NUMBER}s(  \* best val_top1)?$")


def test_training_to_a_file_writes_whole_progress_lines(tmp_path):
    # A real run (the bundled CIFAR-10 sample, 2 short epochs) with stdout redirected, as under
    # nohup or in CI; an interval of 0 s asks for a line at every step.
    log = tmp_path / "train.log"
    command = [sys.executable, "-m", "resnets", "train", "--config", "quickstart",
               "--set", "data.limit=160", "--set", "data.val_size=100", "--set", "train.batch_size=32",
               "--set", "train.epochs=2", "--set", "train.tensorboard=false", "--set", "train.plots=false",
               "--set", f"out_dir={tmp_path / 'runs'}"]
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, text=True, timeout=1200,
                              env={**os.environ, "RESNETS_LOG_EVERY": "0", "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    steps = [line for line in lines if STEP_LINE.match(line)]
    epochs = [line for line in lines if EPOCH_LINE.match(line)]
    # 160 images / 32 = 5 steps per epoch: a line after each of the first 4 (the 5th ends the epoch).
    assert len(steps) == 8, lines
    assert len(epochs) == 2, lines
    assert any(len(line) > 100 for line in epochs)  # longer than rich's 80 columns, yet on one line
    # Every line is whole: a progress or epoch line, or one of the run's own messages, never a fragment.
    for line in lines:
        assert STEP_LINE.match(line) or EPOCH_LINE.match(line) or re.match(r"^(\S+: resnet20, |done: )", line), line


def test_loop_progress_lines_outside_a_terminal():
    out = io.StringIO()
    console = Console(file=out, soft_wrap=True, highlight=False)
    assert not console.is_terminal
    with LoopProgress("eval cifar10 test set", 10, unit="images", every_s=0, console=console) as progress:
        for _ in range(5):
            progress.advance(2, top1=0.75)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # after 2, 4, 6, 8 images, and the last at the end
    assert lines[0].startswith("eval cifar10 test set: 2/10 images  top1 0.75  ")
    assert lines[-1].startswith("eval cifar10 test set: 10/10 images") and lines[-1].endswith("ETA 0s")
    quiet = io.StringIO()
    with LoopProgress("short", 3, every_s=30, console=Console(file=quiet)) as progress:
        progress.advance(3)
    assert quiet.getvalue() == ""  # a loop shorter than the interval needs no report


def test_interval_and_durations(monkeypatch):
    monkeypatch.setenv("RESNETS_LOG_EVERY", "5")
    assert log_every_s() == 5.0 and log_every_s(0) == 0.0
    monkeypatch.setenv("RESNETS_LOG_EVERY", "soon")
    try:
        log_every_s()
    except ValueError as exc:
        assert "RESNETS_LOG_EVERY='soon'" in str(exc)
    else:
        raise AssertionError("a bad interval was accepted")
    assert [duration(s) for s in (4.4, 75, 3725)] == ["4s", "1m15s", "1h02m"]


def test_bench_infer_stops_cleanly_on_ctrl_c():
    command = [sys.executable, "-m", "resnets", "bench", "infer", "--model", "resnet20", "--batch", "2",
               "--iters", "100000000", "--warmup", "1", "--variants", "eager,channels_last", "--threads", "1"]
    # A job started in the background by a non-interactive shell (nohup ... &, some CI runners) has
    # SIGINT ignored, and Python then installs no Ctrl-C handler: give the child the default back.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            if line.startswith("timing: round 1 of"):  # both variants built, the interleaved rounds begun
                break
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    # The rounds timed before Ctrl-C are reported, for every variant they covered.
    table = out.split("interrupted", 1)[1]
    assert "(interrupted: the rounds timed before Ctrl-C)" in table
    assert "\neager " in table and "\nchannels_last " in table
