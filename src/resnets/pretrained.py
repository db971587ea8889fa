"""Pretrained weights shipped inside the package, in torchvision's spirit: a record per file with
what is needed to use and to trust it (classes, normalisation, accuracy, the command that made it,
the file's sha256). ``create_model("resnet20", weights="cifar10")`` resolves through here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class WeightsRecord:
    model: str
    tag: str  # what users type: weights="cifar10"
    file: str  # under resnets/assets/weights/
    sha256: str
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    metrics: dict[str, float] = field(default_factory=dict)  # on the 5k validation split
    command: str = ""  # reproduces the file
    hardware: str = ""
    wall_time: str = ""

    @property
    def path(self) -> Path:
        return Path(str(files("resnets") / "assets" / "weights" / self.file))


# From runs of the project's own recipes; RESULTS.md gives the commands and the timings.
RECORDS: list[WeightsRecord] = [
    WeightsRecord(
        model="resnet20",
        tag="cifar10",
        file="resnet20_cifar10.safetensors",
        sha256="6fa1de9bde2e4f4bd882f6907d3a2cdfac836fa3a00b77b88cd89a123ffaaa54",
        classes=CIFAR10_CLASSES,
        mean=(0.491376, 0.482182, 0.446706),
        std=(0.245233, 0.242864, 0.260666),
        # On the 5,000 images held out of CIFAR-10 (JPEG q75) train by split_train_val(seed 0);
        # `resnets eval --model resnet20 --weights cifar10 --data DIR --holdout` reproduces them.
        metrics={"val_top1": 0.83, "val_top5": 0.99},
        command="resnets train --config configs/cifar10_fast.yaml --data ../shared/datasets/cifar10-jpeg/train",
        hardware="2-core x86 CPU (shared with other jobs during the run), no GPU",
        wall_time="2,699 s of training (10 epochs, 1,750 steps of 256)",
    ),
    WeightsRecord(
        model="resnet32",
        tag="cifar10",
        file="resnet32_cifar10.safetensors",
        sha256="e8952e7f73beb9bd3a88cec7726a4fadeef2dff6b2d95b464751de5380a2acc9",
        classes=CIFAR10_CLASSES,
        mean=(0.491376, 0.482182, 0.446706),
        std=(0.245233, 0.242864, 0.260666),
        # Same split and check as resnet20's: `resnets eval --model resnet32 --weights cifar10 --data DIR --holdout`.
        metrics={"val_top1": 0.8372, "val_top5": 0.9898},
        command="resnets train --config configs/cifar10_fast.yaml --data ../shared/datasets/cifar10-jpeg/train "
                "--set model.name=resnet32",
        hardware="2-core x86 CPU (AMD EPYC, AVX2), otherwise idle",
        wall_time="2,260 s of training (10 epochs, 1,750 steps of 256)",
    ),
    WeightsRecord(
        model="resnet56",
        tag="cifar10",
        file="resnet56_cifar10.safetensors",
        sha256="829f1ddfdb3993a313edc71c5530562f3d21285168ce6884f6458f6c1bde1df0",
        classes=CIFAR10_CLASSES,
        mean=(0.491376, 0.482182, 0.446706),
        std=(0.245233, 0.242864, 0.260666),
        # Same split and check as resnet20's: `resnets eval --model resnet56 --weights cifar10 --data DIR --holdout`.
        metrics={"val_top1": 0.8436, "val_top5": 0.9912},
        command="resnets train --config configs/cifar10_fast.yaml --data ../shared/datasets/cifar10-jpeg/train "
                "--set model.name=resnet56",
        hardware="2-core x86 CPU (AMD EPYC, AVX2); other jobs ran on it during the first two epochs",
        wall_time="5,136 s of training (10 epochs, 1,750 steps of 256)",
    ),
]


def available(model: str | None = None) -> list[WeightsRecord]:
    return [r for r in RECORDS if model is None or r.model == model]


def find(model: str, tag: str) -> WeightsRecord:
    for record in RECORDS:
        if record.model == model and record.tag == tag:
            return record
    tags = [r.tag for r in available(model)]
    have = f"available for {model}: {', '.join(tags)}" if tags else f"no pretrained weights are shipped for {model} yet"
    raise FileNotFoundError(f"no weights file {tag!r} and no pretrained weights named {tag!r} for {model}; {have}")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(model: str, weights: str | Path) -> Path:
    """A path for ``weights``: an existing file as is, else a shipped record's verified file."""
    path = Path(weights)
    if path.is_file() or path.suffix in (".safetensors", ".pt", ".pth") or "/" in str(weights):
        return path
    record = find(model, str(weights))
    actual = sha256_of(record.path)
    if actual != record.sha256:
        raise ValueError(f"shipped weights {record.path} are corrupt: sha256 {actual} != {record.sha256}")
    return record.path
