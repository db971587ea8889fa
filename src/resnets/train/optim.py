"""Optimizers and learning-rate schedules, written out as plain functions of the step.

The schedule is a pure function ``lr(step)`` times a ReduceLROnPlateau multiplier whose whole state
is three numbers, so a checkpoint restores it exactly and the curve can be read off this file.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError
from .config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float, lr_mult: dict[str, float] | None = None) -> list[dict]:
    """Weight decay on conv and linear weights only. BN scales/shifts and biases are excluded: decaying
    them only fights the normalisation (Goyal et al. 2017, "Accurate, Large Minibatch SGD", sec. 5.1;
    He et al. 2019, "Bag of Tricks", sec. 3.1). ``lr_mult`` gives per-stage learning-rate factors
    (fine-tuning), kept in each group's ``lr_mult`` for the schedule to apply.

    Frozen parameters are included: the optimizers skip a parameter without a gradient (decay
    included), and gradual unfreezing needs them in place when they thaw."""
    from ..transfer.finetune import lr_multipliers

    factors = lr_multipliers(model, lr_mult) if lr_mult else {}
    names = {id(p): n for n, p in model.named_parameters()}
    groups: dict[tuple[bool, float], list] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
            decays = not (is_norm or name == "bias" or p.ndim <= 1)
            groups.setdefault((decays, factors.get(names[id(p)], 1.0)), []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_mult": mult}
            for (decays, mult), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr_mult: dict[str, float] | None = None,
                    thawing: bool = False) -> torch.optim.Optimizer:
    """``thawing``: the set of trained parameters grows during training (gradual unfreezing)."""
    groups = param_groups(model, cfg.weight_decay, lr_mult)
    # One fused kernel over all tensors instead of a Python loop per tensor: torch's default on a
    # CPU is the per-tensor loop, 6x slower for ResNet-20's 65 tensors (benchmarks/bench_train.py).
    # Not when stages thaw: torch's fused SGD refuses a step in which some momentum buffers exist
    # and others do not yet (CI failure of 2026-12-02); the foreach path handles that case.
    fusable = not thawing and all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32
                                  for g in groups for p in g["params"])
    fused = {"fused": True} if fusable else {"foreach": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)
    if cfg.name == "adam":  # L2 penalty added to the gradient, as Keras' Adam with kernel_regularizer
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **fused)
    if cfg.name == "adamw":  # decoupled weight decay (Loshchilov & Hutter 2019)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **fused)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum)
    raise InputError(f"unknown optimizer {cfg.name!r}")


class Schedule:
    """``lr(step)`` for the configured schedule, times a plateau multiplier updated once per epoch.

    ``steps_per_epoch`` converts epoch units to steps; ``total_steps`` is the length of training.
    """

    def __init__(self, cfg: ScheduleConfig, base_lr: float, total_steps: int, steps_per_epoch: int):
        self.cfg, self.base_lr, self.total = cfg, base_lr, max(1, total_steps)
        self.per_epoch = max(1, steps_per_epoch)
        # ReduceLROnPlateau state (Keras' defaults: compare with the best so far, wait `patience` epochs).
        self.plateau_scale, self.best, self.bad_epochs, self.cooldown = 1.0, None, 0, 0

    def _in_steps(self, n: float) -> float:
        return n * self.per_epoch if self.cfg.unit == "epoch" else n

    def _position(self, step: int) -> float:
        # Epoch units change the lr at epoch boundaries (as Keras' LearningRateScheduler does).
        return step // self.per_epoch * self.per_epoch if self.cfg.unit == "epoch" else step

    def lr(self, step: int) -> float:
        c, lr0 = self.cfg, self.base_lr
        t = self._position(step)
        if c.name == "onecycle":
            # Smith & Topin 2017: cosine rise from lr0/div to lr0 over pct_start, then cosine fall to
            # lr0/(div*final_div) -- the shape of torch.optim.lr_scheduler.OneCycleLR.
            start, end = lr0 / c.div_factor, lr0 / c.div_factor / c.final_div_factor
            rise = max(1.0, c.pct_start * self.total)
            if t < rise:
                lr = start + (lr0 - start) * (1 - math.cos(math.pi * t / rise)) / 2
            else:
                p = min(1.0, (t - rise) / max(1.0, self.total - rise))
                lr = end + (lr0 - end) * (1 + math.cos(math.pi * p)) / 2
            return max(lr * self.plateau_scale, c.plateau_min_lr)
        warmup = self._in_steps(c.warmup)
        if step < warmup:
            # Linear warm-up (Goyal et al. 2017) rises every step, even when `unit` is epoch: held
            # at each epoch's start it would stay at lr0/steps_per_epoch for a whole 1-epoch warm-up.
            # The paper's resnet110 used 0.01 for its first 400 steps (He et al. 2015, sec. 4.2).
            return lr0 * (step + 1) / warmup * self.plateau_scale
        if c.name == "constant":
            lr = lr0
        elif c.name == "multistep":
            # He et al. 2015, sec. 4.2: 0.1, divided by 10 at 32k and 48k iterations, 64k in all.
            # Keras example: 1e-3, x0.1 after epochs 80, 120, 160 and x0.5 after 180 (explicit factors).
            lr = lr0
            for i, m in enumerate(c.milestones):
                if t >= self._in_steps(m):
                    lr = lr0 * c.factors[i] if c.factors else lr * c.gamma
        elif c.name == "cosine":  # Loshchilov & Hutter 2017 (SGDR), a single cycle after warm-up
            p = min(1.0, (t - warmup) / max(1.0, self.total - warmup))
            lr = c.min_lr + (lr0 - c.min_lr) * (1 + math.cos(math.pi * p)) / 2
        elif c.name == "linear":
            # Hold lr0 after the warm-up, then fall linearly to min_lr over the last `decay_frac` of
            # training. decay_frac=1 is linear-to-zero, the best fixed-budget shape in Li et al. 2020
            # ("Budgeted training"); a short decay is warmup-stable-decay (Hägele et al. 2024): every
            # step before the decay is independent of the length, so a run stopped there can be
            # resumed with a larger train.epochs and is then exactly a run planned that long.
            decay_start = max(warmup, self.total - c.decay_frac * (self.total - warmup))
            p = min(1.0, max(0.0, t - decay_start) / max(1.0, self.total - decay_start))
            lr = lr0 + (c.min_lr - lr0) * p
        else:
            raise InputError(f"unknown schedule {c.name!r}")
        return max(lr * self.plateau_scale, c.plateau_min_lr) if c.plateau_factor else lr

    def epoch_end(self, metric: float | None, higher_is_better: bool) -> None:
        """ReduceLROnPlateau, as in the Keras example (factor sqrt(0.1), patience 5, min_lr 0.5e-6)."""
        c = self.cfg
        if not c.plateau_factor or metric is None:
            return
        improved = self.best is None or (metric > self.best if higher_is_better else metric < self.best)
        if improved:
            self.best, self.bad_epochs = metric, 0
        elif self.cooldown > 0:
            self.cooldown -= 1
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= c.plateau_patience:
                self.plateau_scale *= c.plateau_factor
                self.bad_epochs, self.cooldown = 0, c.plateau_cooldown

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad_epochs": self.bad_epochs,
                "cooldown": self.cooldown}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale, self.best = state["plateau_scale"], state["best"]
        self.bad_epochs, self.cooldown = state["bad_epochs"], state["cooldown"]


class EMA:
    """Exponential moving average of the weights (Polyak & Juditsky 1992), floating-point buffers
    (BN running statistics) included, as timm's ModelEmaV2/V3 do; integer buffers
    (``num_batches_tracked``) are copied. Copying the live running statistics beside averaged
    weights pairs each BN with statistics of other weights: while the lr is high the averaged
    network then sees mis-normalised activations (seen as the noisy held-out curve of the issue-13
    30-epoch run). The decay warms up as min(decay, (1+t)/(10+t)) so early averages are not dominated
    by the random initialisation (the TensorFlow ExponentialMovingAverage convention). One fused
    ``_foreach_lerp_`` over all averaged tensors per step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._averaged = [k for k, v in self.state.items() if v.is_floating_point()]
        self._copied = [k for k, v in self.state.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = model.state_dict()
        torch._foreach_lerp_([self.state[k] for k in self._averaged], [live[k].detach() for k in self._averaged], 1 - d)
        for k in self._copied:
            self.state[k].copy_(live[k])

    def state_dict(self) -> dict:
        return {"updates": self.updates, "state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        for k, v in state["state"].items():
            self.state[k].copy_(v)
