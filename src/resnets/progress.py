"""Progress that a person can follow anywhere (issue 18): a live bar on a terminal; in a log file,
CI, ``nohup`` or a cluster job a plain line every ``RESNETS_LOG_EVERY`` seconds (default 30), never
wrapped. Training's own report is :class:`resnets.train.report.Reporter`; :class:`LoopProgress` is
for the other long loops (evaluation, calibration, fine-tuning, benchmarks) and writes to stderr, so
that stdout keeps only a command's result (its JSON, its table)."""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .errors import InputError

LOG_EVERY_ENV = "RESNETS_LOG_EVERY"
DEFAULT_LOG_EVERY_S = 30.0


def log_every_s(value: float | None = None) -> float:
    """Seconds between progress lines outside a terminal: ``value``, else ``$RESNETS_LOG_EVERY``, else 30."""
    if value is None:
        text = os.environ.get(LOG_EVERY_ENV)
        if not text:
            return DEFAULT_LOG_EVERY_S
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"{LOG_EVERY_ENV}={text!r}: expected seconds between progress lines, e.g. 30") from None
    if not value >= 0:
        raise InputError(f"progress interval must be 0 or more seconds; got {value}")
    return float(value)


def make_console(**kwargs) -> Console:
    """A console that never wraps: outside a terminal rich assumes 80 columns and would split a line
    (``val loss`` at the end of one, its value on the next), which breaks reading logs and grep."""
    return Console(highlight=False, soft_wrap=True, **kwargs)


def duration(seconds: float) -> str:
    """``1h02m``, ``12m34s``, ``42s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class LoopProgress:
    """Progress of a loop of known length: a live bar on a terminal; elsewhere a plain line every
    ``every_s`` seconds (default: :func:`log_every_s`) and one at the end. ``with LoopProgress(...) as p:
    ... p.advance(n, acc=0.91)``; ``fields`` are shown after the count."""

    def __init__(self, what: str, total: int, *, unit: str = "", every_s: float | None = None,
                 console: Console | None = None, enabled: bool = True):
        self.what, self.total, self.unit, self.enabled = what, max(int(total), 0), unit, enabled
        self.every_s = log_every_s(every_s)
        self.console = console or make_console(stderr=True)
        self.done, self.fields = 0, {}
        self.start = self.last = time.perf_counter()
        self.bar: Progress | None = None
        if enabled and self.console.is_terminal:
            self.bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[text]}"),
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(what, total=self.total, text="")

    def __enter__(self) -> LoopProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close(finished=exc[0] is None)

    def _text(self) -> str:
        return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items())

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        unit = f" {self.unit}" if self.unit else ""
        text = self._text()
        return (f"{self.what}: {self.done}/{self.total}{unit}" + (f"  {text}" if text else "")
                + f"  {rate:.3g}{unit or ' it'}/s  elapsed {duration(elapsed)}  ETA {duration(eta)}")

    def advance(self, n: int = 1, **fields) -> None:
        self.done += n
        self.fields.update(fields)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, advance=n, text=self._text())
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            self.console.print(self.line(), markup=False)

    def close(self, finished: bool = True) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        elif (self.enabled and finished and self.done and self.done >= self.total
              and time.perf_counter() - self.start >= self.every_s):  # a short loop needs no report
            self.console.print(self.line(), markup=False)
        self.enabled = False
