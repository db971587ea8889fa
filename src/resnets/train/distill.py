"""Knowledge distillation (Hinton et al. 2015, "Distilling the knowledge in a neural network"): the
student learns from the labels and from fixed teachers' softened predictions on the same images.

The teachers see exactly the augmented batch the student sees ("consistent" teaching, Beyer et al.
2022, "Knowledge distillation: A good teacher is patient and consistent"), so no teacher output can
be precomputed. Why it is here (issue 13): on the 45k CIFAR-10 JPEGs plain training over-fits
(RESULTS.md, "The 160-epoch run"), and averaging networks scored 0.9-1.3 points above their best
member ("An ensemble bound"); distillation moves toward that without changing the student's
architecture. Several teachers are an ensemble: their probabilities are averaged.

The step is the engine's one training step; this is its ``criterion`` (``engine.Criterion``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..pretrained import find, identity
from ..registry import load_model, model_entry
from .evaluate import check_classes


@dataclass
class Teacher:
    net: nn.Module
    columns: torch.Tensor | None  # the teacher's output index of each of the student's classes (None: the same)
    scale: torch.Tensor | None  # student-normalised input -> the teacher's normalisation: x * scale + shift
    shift: torch.Tensor | None
    description: dict[str, Any]  # what the weights file's recipe records of it (file name, sha256, model, accuracy)


def _open(spec: str, key: str) -> tuple[nn.Module, dict[str, str]]:
    """A teacher from a weights file, or from shipped weights written ``MODEL:TAG`` (``resnet56:cifar10``);
    any failure names the config key."""
    path = Path(spec).expanduser()
    shipped = not path.is_file() and ":" in spec and "/" not in spec
    if not shipped and not path.is_file():
        raise InputError(f"{key}: teacher weights {spec} not found (a weights file, or shipped weights as "
                         f"MODEL:TAG, e.g. resnet56:cifar10)")
    try:
        if shipped:
            model, tag = spec.split(":", 1)
            model_entry(model)  # an unknown name says so, with the closest one
            record = find(model, tag)
            return load_model(tag, model), identity(record.path)
        return load_model(str(path)), identity(path)
    except (InputError, FileNotFoundError, ValueError) as exc:
        raise InputError(f"{key}: teacher weights {spec}: {exc}") from None


def load_teachers(specs: list[str], *, classes: list[str], mean, std, input_size, recipe_data: dict,
                  device: torch.device, channels_last: bool = False) -> list[Teacher]:
    """The teachers of ``distill.teachers``, checked against the student's data: the same classes
    (in any order; the outputs are reordered), the same input size; inputs renormalised to each
    teacher's mean and std. A teacher not trained on the student's training part alone (another
    split, or its validation images included) makes the student's validation figure optimistic:
    that is said, not refused (it is what a user distilling a stronger network may want)."""
    teachers = []
    for i, spec in enumerate(specs):
        key = f"distill.teachers[{i}]"
        net, source = _open(str(spec), key)
        meta = dict(getattr(net, "pretrained_meta", None) or {})
        # The class checks of `resnets eval` (count and names); then a teacher must have no class the
        # student lacks either, for its probabilities to be over the student's classes.
        named = check_classes(net, meta, list(classes), weights=f"{key} ({spec})", data="the student's data")
        if len(named) != len(classes):
            raise InputError(f"{key}: {spec} has {len(named)} classes, the data {len(classes)}: a teacher's "
                             f"probabilities must be over the student's classes")
        order = [named.index(c) for c in classes]
        columns = None if order == list(range(len(order))) else torch.tensor(order, device=device)
        size = list(meta.get("image_size") or [])[1:]
        if size and list(size) != list(input_size):
            raise InputError(f"{key}: {spec} takes {size[0]}x{size[1]} images, the student {input_size[0]}x"
                             f"{input_size[1]}: the teacher must see the student's images")
        t_mean, t_std = meta.get("mean") or mean, meta.get("std") or std
        if list(t_mean) == list(mean) and list(t_std) == list(std):
            scale = shift = None
        else:  # (raw - mean_t) / std_t from x = (raw - mean_s) / std_s
            s, m = torch.tensor(std), torch.tensor(mean)
            ts, tm = torch.tensor(t_std), torch.tensor(t_mean)
            scale = (s / ts).view(1, -1, 1, 1).to(device)
            shift = ((m - tm) / ts).view(1, -1, 1, 1).to(device)
        _warn_if_not_held_out(meta.get("recipe") or {}, recipe_data, key, spec)
        net.requires_grad_(False)
        net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format).eval()
        metrics = meta.get("metrics") or {}
        teachers.append(Teacher(net, columns, scale, shift, {
            **source, "model": meta.get("model"),
            **({"val_top1": metrics["val_top1"]} if "val_top1" in metrics else {})}))
    return teachers


def _warn_if_not_held_out(teacher_recipe: dict, student_data: dict, key: str, spec: str) -> None:
    if not student_data.get("val_size"):
        return  # nothing held out: nothing to keep the teacher from
    data = teacher_recipe.get("data") or {}
    same = (data.get("val_size") == student_data.get("val_size")
            and data.get("split_seed") == student_data.get("split_seed")
            and (data.get("dataset") or {}).get("fingerprint") == (student_data.get("dataset") or {}).get("fingerprint"))
    if not same:
        warnings.warn(f"{key}: {spec} was not trained on this run's training part alone (its recipe records "
                      f"{'another split or other images' if data else 'no data'}): it may have seen the "
                      f"{student_data.get('val_size')} validation images, and the student's validation figures "
                      f"would then be optimistic", stacklevel=3)


class Distillation:
    """``(model, x, y) -> (loss, correct)``: ``(1 - alpha)`` x cross-entropy on the labels (with
    label smoothing) plus ``alpha`` x ``T``² x KL(teachers || student) at temperature ``T``
    (Hinton et al. 2015: the T² keeps the soft term's gradients at the scale of the hard one's as T
    changes). With ``flip``, each teacher's probabilities are averaged over the image and its mirror
    (the flip test-time augmentation, a better teacher for one more forward pass)."""

    def __init__(self, teachers: list[Teacher], alpha: float, temperature: float, label_smoothing: float = 0.0,
                 flip: bool = False):
        self.teachers, self.alpha, self.t, self.smoothing, self.flip = teachers, alpha, temperature, label_smoothing, flip

    @torch.no_grad()
    def soft_targets(self, x: torch.Tensor) -> torch.Tensor:
        total = 0
        for teacher in self.teachers:
            xt = x if teacher.scale is None else x * teacher.scale + teacher.shift
            views = (xt, xt.flip(3)) if self.flip else (xt,)
            for view in views:
                logits = teacher.net(view).float()
                if teacher.columns is not None:
                    logits = logits[:, teacher.columns]
                total = total + (logits / self.t).softmax(1)
        return total / (len(self.teachers) * len(views))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = self.soft_targets(x)
        logits = model(x).float()
        hard = F.cross_entropy(logits, y, label_smoothing=self.smoothing)
        soft = F.kl_div((logits / self.t).log_softmax(1), targets, reduction="batchmean") * self.t ** 2
        loss = (1 - self.alpha) * hard + self.alpha * soft
        return loss, (logits.argmax(1) == y).sum()
