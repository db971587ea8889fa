"""The degradation problem (He et al. 2015, section 4.2, Figure 6): a deeper plain network trains
*worse* than a shallower one, while residual networks get better with depth.

``degradation_study`` trains plain20/plain56 and resnet20/resnet56 on one schedule with the project's
engine, records the gradient norm of every convolution (the vanishing-gradient picture), and writes
``curves.png`` (Figure 6), ``gradients.png`` and ``report.md`` with the numbers behind them.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..registry import model_entry
from ..train import Config, StepInfo, train
from ..weights_io import atomic_write, save_figure

DEFAULT_MODELS = ("plain20", "plain56", "resnet20", "resnet56")
# Written in each model's run folder once it has trained: a re-run of the study reuses it.
STUDY_RECORD = "study.json"


@dataclass
class DegradationResult:
    out_dir: Path
    final: dict[str, dict[str, float]]  # model -> last epoch's train/val error
    report: Path
    figures: list[Path] = field(default_factory=list)


class GradientRecorder:
    """Norm of the gradient of every conv weight, captured by tensor hooks during backward and
    kept every ``every`` optimizer steps (and at step 1, i.e. at initialisation)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.names: list[str] = []
        self.latest: dict[str, float] = {}
        self.history: list[tuple[int, list[float]]] = []
        self._attached = False

    def _attach(self, model: nn.Module) -> None:
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                self.names.append(name)
                module.weight.register_hook(self._hook(name))
        self._attached = True

    def _hook(self, name: str):
        def record(grad: torch.Tensor) -> None:
            self.latest[name] = float(grad.detach().norm())

        return record

    def __call__(self, info: StepInfo) -> None:
        if not self._attached:  # the first call sees the model after step 1: hooks from step 2 on
            self._attach(info.model)
            return
        if info.step == 2 or info.step % self.every == 0:
            self.history.append((info.step, [self.latest.get(n, float("nan")) for n in self.names]))


def study_config(name: str, data: str | None, out_dir: Path, *, epochs: int, limit: int, full: bool,
                 batch_size: int = 128, seed: int = 0, progress: bool = True, val_size: int = 5000,
                 warmup: int | None = None) -> Config:
    """One run of the study: the paper's SGD recipe; the full schedule is the paper's 64k iterations,
    the reduced one ``epochs`` epochs on ``limit`` images with the same /10 drops at 50% and 75%.

    Every model gets the same linear warm-up (``warmup`` steps for the full schedule, default 400;
    epochs for the reduced one, default 1). Without it resnet56 diverged here at lr 0.1 within its
    first 10 steps (loss 8.0, then stuck at chance, 16% training accuracy after 4 epochs); the paper
    warms its 110-layer net up the same way (0.01 for about 400 iterations, He et al. 2015 sec. 4.2).
    """
    cfg = Config()
    cfg.name = name
    cfg.out_dir = str(out_dir)
    cfg.recipe = "degradation study (He et al. 2015, Fig. 6): SGD 0.1/0.9/1e-4, batch 128"
    cfg.model.name = name
    cfg.data.path = data
    cfg.data.val_size = val_size
    cfg.data.limit = 0 if full else limit
    cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay = "sgd", 0.1, 0.9, 1e-4
    cfg.schedule.name = "multistep"
    cfg.train.batch_size = batch_size
    cfg.train.seed = seed
    cfg.train.progress = progress
    cfg.train.tensorboard = False
    if full:
        cfg.schedule.unit, cfg.schedule.milestones, cfg.train.steps = "step", [32000, 48000], 64000
        cfg.schedule.warmup = 400 if warmup is None else warmup
    else:
        cfg.schedule.unit = "epoch"
        cfg.schedule.warmup = 1 if warmup is None else warmup
        # A drop at the last epoch's end would change nothing (and the config refuses it): a
        # one-epoch smoke run has none.
        cfg.schedule.milestones = [m for m in (max(1, epochs // 2), max(1, (3 * epochs) // 4)) if m < epochs]
        cfg.train.epochs = epochs
    return cfg


def degradation_study(
    data: str | None,
    out_dir: str | Path = "runs/degradation",
    *,
    models: tuple[str, ...] = DEFAULT_MODELS,
    epochs: int = 6,
    limit: int = 10000,
    full: bool = False,
    grad_every: int = 20,
    warmup: int | None = None,
    zero_init: bool | None = None,
    seed: int = 0,
    progress: bool = True,
    val_size: int = 5000,
    batch_size: int = 128,
) -> DegradationResult:
    """Train ``models`` on one schedule and write the figures and report to ``out_dir``.

    ``zero_init`` (default: on for the reduced schedule, off for the paper's full one) starts every
    residual branch at zero, its last BN's scale zeroed (Goyal et al. 2017), so that a deep ResNet
    begins as a shallow one. Without it, resnet56 here trailed resnet20 after the reduced schedule's
    468 steps (55.4% against 49.8% training error): too few steps for its depth to pay off. Plain
    networks cannot do the same (a zeroed branch there zeroes the network), which is the point.
    """
    zero_init = (not full) if zero_init is None else zero_init
    for name in models:  # fail before hours of training, not after
        model_entry(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    histories: dict[str, list[dict[str, float]]] = {}
    gradients: dict[str, dict] = {}
    schedule = {"data": data, "epochs": epochs, "limit": limit, "full": full, "seed": seed,
                "val_size": val_size, "batch_size": batch_size, "grad_every": grad_every, "warmup": warmup}
    for name in models:
        residual_zero_init = zero_init and not _is_plain(name)
        schedule_of = {**schedule, "zero_init": True} if residual_zero_init else schedule
        done = _finished_run(out_dir / name, schedule_of)
        if done is not None:  # a study interrupted after this model: keep its run, train the rest
            histories[name], gradients[name] = done["history"], done["gradients"]
            continue
        recorder = GradientRecorder(grad_every)
        cfg = study_config(name, data, out_dir, epochs=epochs, limit=limit, full=full, seed=seed,
                           progress=progress, val_size=val_size, batch_size=batch_size, warmup=warmup)
        if residual_zero_init:
            cfg.model.kwargs = {**cfg.model.kwargs, "zero_init_last": True}
        result = train(cfg, callbacks=[recorder])
        histories[name] = result.history
        gradients[name] = {"layers": recorder.names, "history": recorder.history}
        record = {"schedule": schedule_of, "history": result.history, "gradients": gradients[name]}
        atomic_write(out_dir / name / STUDY_RECORD, json.dumps(record).encode())
    atomic_write(out_dir / "gradients.json", json.dumps(gradients).encode())
    curves = io.StringIO(newline="")
    writer = csv.writer(curves)
    writer.writerow(["model", "epoch", "train_error", "val_error"])
    for name, rows in histories.items():
        for row in rows:
            writer.writerow([name, row["epoch"], 1 - row["train_top1"], 1 - row.get("val_top1", float("nan"))])
    atomic_write(out_dir / "curves.csv", curves.getvalue().encode())
    figures = [plot_curves(histories, out_dir / "curves.png"), plot_gradients(gradients, out_dir / "gradients.png")]
    final = {n: {"train_error": 1 - h[-1]["train_top1"], "val_error": 1 - h[-1].get("val_top1", float("nan"))}
             for n, h in histories.items()}
    report = write_report(out_dir, final, gradients, full=full, epochs=epochs, limit=limit, data=data,
                          warmup=warmup, batch_size=batch_size, zero_init=zero_init)
    return DegradationResult(out_dir, final, report, figures)


def _finished_run(run_dir: Path, schedule: dict) -> dict | None:
    """The record of a model this study already trained on the same schedule, or ``None`` when
    there is no run yet. A run folder without a matching record (an interrupted run, or another
    schedule's) is refused rather than overwritten or silently mixed into the figures."""
    record_path = run_dir / STUDY_RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("schedule") == schedule:
            return record
        raise InputError(f"{run_dir} holds a run of another schedule ({record.get('schedule')}); "
                         "choose another --out or remove that folder")
    if run_dir.exists():
        raise InputError(f"{run_dir} holds an unfinished run (no {STUDY_RECORD}); remove that folder "
                         "to train the model again, or choose another --out")
    return None


def _is_plain(name: str) -> bool:
    return name.startswith("plain")


def _pairs(names) -> list[tuple[str, list[str]]]:
    plain = [n for n in names if _is_plain(n)]
    residual = [n for n in names if not _is_plain(n)]
    return [(title, group) for title, group in (("plain networks", plain), ("ResNets", residual)) if group]


def plot_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> Path:
    """Figure 6 of the paper: training error dashed, validation error solid, plain left, ResNets right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = _pairs(histories)
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.2), sharey=True, squeeze=False)
    for ax, (title, names) in zip(axes[0], pairs):
        for i, name in enumerate(names):
            rows = histories[name]
            epochs = [r["epoch"] for r in rows]
            color = f"C{i}"
            ax.plot(epochs, [100 * (1 - r["train_top1"]) for r in rows], "--", color=color, label=f"{name} train")
            if "val_top1" in rows[0]:
                ax.plot(epochs, [100 * (1 - r["val_top1"]) for r in rows], "-", color=color, label=f"{name} val")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("error (%)")
    fig.suptitle("CIFAR-10 (JPEG q75): dashed = training error, solid = validation error")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def plot_gradients(gradients: dict[str, dict], path: Path) -> Path:
    """Per-layer gradient norms, input (left) to output (right), at initialisation and at the end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, (title, pick) in zip(axes, (("at initialisation (step 2)", 0), ("end of training", -1))):
        for i, (name, g) in enumerate(gradients.items()):
            if not g["history"]:
                continue
            step, norms = g["history"][pick]
            style = "--" if name.startswith("plain") else "-"
            ax.semilogy(range(1, len(norms) + 1), norms, style, color=f"C{i}", label=f"{name} (step {step})")
        ax.set_title(f"gradient norm per conv layer, {title}")
        ax.set_xlabel("conv layer (input → output)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    axes[0].set_ylabel("‖∂L/∂W‖")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def _first_last_ratio(norms: list[float]) -> float:
    return norms[0] / norms[-1] if len(norms) > 1 and norms[-1] > 0 else float("nan")


def write_report(out_dir: Path, final: dict, gradients: dict, *, full: bool, epochs: int, limit: int,
                 data: str | None, warmup: int | None = None, batch_size: int = 128,
                 zero_init: bool = False) -> Path:
    if full:
        schedule = f"full (64k iterations, 45k/5k split, {400 if warmup is None else warmup}-step warm-up)"
    else:
        schedule = f"reduced ({epochs} epochs on {limit} training images, {1 if warmup is None else warmup}-epoch warm-up)"
    schedule += f"; SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch {batch_size}, lr /10 at 50% and 75%"
    if zero_init:
        schedule += "; ResNets' residual branches start at zero (last BN scale 0, Goyal et al. 2017)"
    lines = [
        "# Degradation study", "",
        f"Schedule: {schedule}; data: {data or 'the bundled CIFAR-10 sample'}. "
        "Command: `resnets study degradation" + (" --full" if full else f" --epochs {epochs} --limit {limit}")
        + ("" if zero_init == (not full) else (" --zero-init" if zero_init else " --no-zero-init"))
        + (f" --data {data}`" if data else "`"), "",
        "| model | final training error (%) | final validation error (%) |",
        "|---|---:|---:|",
    ]
    for name, row in final.items():
        lines.append(f"| {name} | {100 * row['train_error']:.2f} | {100 * row['val_error']:.2f} |")
    lines += ["", "Gradient norm of the first conv divided by that of the last conv before the classifier. "
              "Near 1, the gradient reaches the input layers intact; far above 1 it explodes on the way "
              "back, far below 1 it vanishes (a deep plain net with batch norm can do both: "
              "explode at initialisation, vanish later in training):", "",
              "| model | at initialisation | end of training |", "|---|---:|---:|"]
    for name, g in gradients.items():
        if g["history"]:
            lines.append(f"| {name} | {_first_last_ratio(g['history'][0][1]):.3g} | "
                         f"{_first_last_ratio(g['history'][-1][1]):.3g} |")
    if zero_init:
        lines += ["", "With residual branches started at zero, every branch conv begins with a near-zero "
                  "gradient (its output is scaled by a zero BN weight) while the stem's gradient arrives "
                  "through the skips, so the ResNets' ratio at initialisation is large by construction; "
                  "`--no-zero-init` gives the paper's initialisation."]
    ordering = []
    if {"plain20", "plain56"} <= final.keys():
        ok = final["plain56"]["train_error"] > final["plain20"]["train_error"]
        ordering.append(f"- plain56 trains {'worse' if ok else 'NOT worse'} than plain20 (degradation {'shown' if ok else 'not shown'}).")
    if {"resnet20", "resnet56"} <= final.keys():
        ok = final["resnet56"]["train_error"] < final["resnet20"]["train_error"]
        ordering.append(f"- resnet56 trains {'better' if ok else 'NOT better'} than resnet20.")
    lines += ["", "## Ordering", "", *ordering, "", "![curves](curves.png)", "", "![gradients](gradients.png)", ""]
    path = out_dir / "report.md"
    return atomic_write(path, "\n".join(lines).encode())
