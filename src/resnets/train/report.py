"""What a person sees during and after training: a progress bar per epoch, a summary line per epoch,
``metrics.csv``, TensorBoard event files and PNG plots, all in the run directory (main process only).

On a terminal the progress is a live bar. Anywhere else (a log file, CI, ``nohup``, a cluster job) a
bar would print nothing until the epoch ends, so a plain line is written every
``RESNETS_LOG_EVERY`` seconds (default 30) and at every epoch end, never wrapped (issue 18).
:class:`resnets.progress.LoopProgress` does the same for the other long loops.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..progress import duration, log_every_s, make_console

COLUMNS = ["epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "seconds",
           "img_per_s"]


class Reporter:
    def __init__(self, run_dir: Path, *, enabled: bool = True, progress: bool = True, tensorboard: bool = True,
                 purge_step: int | None = None, log_every: float | None = None):
        self.run_dir, self.enabled, self.show_progress = Path(run_dir), enabled, progress and enabled
        self.console = make_console()
        # A live bar on a terminal; plain lines every `log_every` seconds anywhere else (issue 18).
        self.live = self.console.is_terminal
        self.log_every = log_every_s(log_every)
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a previous (interrupted) process wrote after the resumed step.
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)
        self.progress: Progress | None = None
        self.task = None

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        self.epoch, self.epochs, self.steps, self.done = epoch, epochs, steps, done
        self.epoch_start, self.epoch_start_done = time.perf_counter(), done
        self.last_line = self.epoch_start
        if not self.show_progress or not self.live:
            return
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} lr {task.fields[lr]:.2e} "
                       "{task.fields[ips]:.0f} img/s"),
            TimeRemainingColumn(), console=self.console, transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, completed=done, loss=0.0, acc=0.0, lr=0.0, ips=0.0)

    def step(self, step: int, loss: float, acc: float, lr: float, stats: dict) -> None:
        if not self.enabled:
            return
        self.done = getattr(self, "done", 0) + 1
        if self.progress is not None:
            ips = stats["n"] / max(stats["seconds"], 1e-9)
            self.progress.update(self.task, advance=1, loss=stats["loss"] / max(stats["n"], 1),
                                 acc=stats["correct"] / max(stats["n"], 1), lr=lr, ips=ips)
        elif self.show_progress and hasattr(self, "epoch_start"):
            now = time.perf_counter()
            if now - self.last_line >= self.log_every and self.done < self.steps:
                self.last_line = now
                self.console.print(self.step_line(step, lr, stats, now), markup=False)
        if self.writer is not None and step % 10 == 0:
            self.writer.add_scalar("train/loss_step", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def step_line(self, step: int, lr: float, stats: dict, now: float) -> str:
        """One progress line: where in the run, the epoch's running loss and accuracy, speed, ETA."""
        n = max(stats["n"], 1)
        ran = self.done - self.epoch_start_done
        per_step = (now - self.epoch_start) / ran if ran > 0 else 0.0
        left = (self.epochs - self.epoch - 1) * self.steps + (self.steps - self.done)
        return (f"epoch {self.epoch + self.done / max(self.steps, 1):.2f}/{self.epochs}  step {step}  "
                f"loss {stats['loss'] / n:.4f}  acc {stats['correct'] / n:.4f}  lr {lr:.2e}  "
                f"{stats['n'] / max(stats['seconds'], 1e-9):.0f} img/s  ETA {duration(left * per_step)}")

    def end_epoch(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def epoch_row(self, history: list[dict], *, improved: bool, best_metric: str) -> None:
        """The last epoch of ``history``: metrics.csv rewritten whole (a few hundred rows at most; an
        append cut short by a full disk left half a row), TensorBoard, the summary line."""
        if not self.enabled:
            return
        row = history[-1]
        write_metrics(self.run_dir / "metrics.csv", history)
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step"):
                    self.writer.add_scalar(k.replace("_", "/", 1) if "_" in k else k, v, row["step"])
            self.writer.flush()
        val = (f"  val loss {row['val_loss']:.4f} acc {row['val_top1']:.4f} top5 {row['val_top5']:.4f}"
               if "val_top1" in row else "")
        mark = f"  [green]* best {best_metric}[/]" if improved else ""
        self.console.print(
            f"epoch {row['epoch']:>3}  step {row['step']:>6}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_top1']:.4f}{val}  {row['img_per_s']:.0f} img/s  {row['seconds']:.1f}s{mark}")

    def close(self) -> None:
        self.end_epoch()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self, history: list[dict], best: float | None, best_metric: str, plots: bool = True) -> None:
        self.close()
        if not self.enabled:
            return
        if plots:
            plot_metrics(self.run_dir / "metrics.csv", self.run_dir)
        if history:
            last = history[-1]
            val = f"validation accuracy {last['val_top1']:.4f} (top-5 {last['val_top5']:.4f}), " if "val_top1" in last else ""
            best_text = f"best {best_metric} {best:.4f}, " if best is not None else ""
            total = sum(r["seconds"] for r in history)
            self.console.print(f"[bold]done[/]: {val}{best_text}{last['epoch']} epochs, {last['step']} steps, "
                               f"{total:.0f}s training; weights: {self.run_dir / 'final.safetensors'}")


def write_metrics(path: Path, rows: list[dict]) -> None:
    """metrics.csv holding exactly ``rows`` (replaced atomically)."""
    import io

    from ..weights_io import atomic_write

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    atomic_write(path, text.getvalue().encode())


def read_metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def plot_metrics(csv_path: Path, out_dir: Path) -> list[Path]:
    """loss.png, accuracy.png and lr.png from metrics.csv (one point per epoch)."""
    if not Path(csv_path).exists():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..weights_io import save_figure

    rows = read_metrics(csv_path)
    epochs = [r["epoch"] for r in rows]
    written = []
    for name, keys, ylabel in (("loss", ["train_loss", "val_loss"], "cross-entropy"),
                               ("accuracy", ["train_top1", "val_top1"], "top-1 accuracy"),
                               ("lr", ["lr"], "learning rate")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            points = [(e, r[key]) for e, r in zip(epochs, rows) if key in r]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if name == "lr":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(out_dir) / f"{name}.png"
        written.append(save_figure(fig, path, dpi=100))
    return written
