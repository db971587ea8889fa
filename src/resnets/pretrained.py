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


_TRAIN = "resnets train --config configs/cifar10_cpu.yaml --data ../shared/datasets/cifar10-jpeg/train"


def _cifar10_cpu(model: str, sha256: str, top1: float, top5: float, top1_flip: float, seconds: str,
                 hardware: str, epochs: int, steps: int, overrides: str = "") -> WeightsRecord:
    """A model trained by ``configs/cifar10_cpu.yaml`` (warmup-stable-linear-decay; issue 13) on the
    45k part of CIFAR-10 (JPEG q75) train. The metrics are on the 5,000 images held out by
    split_train_val(seed 0); `resnets eval --model MODEL --weights cifar10 --data DIR --holdout`
    reproduces them (tests/test_pretrained.py). ``val_top1_flip`` is with flip test-time augmentation
    (`resnets eval ... --holdout --tta flip`); the paper's figures are without."""
    return WeightsRecord(
        model=model, tag="cifar10", file=f"{model}_cifar10.safetensors", sha256=sha256, classes=CIFAR10_CLASSES,
        mean=(0.491376, 0.482182, 0.446706), std=(0.245233, 0.242864, 0.260666),
        metrics={"val_top1": top1, "val_top5": top5, "val_top1_flip": top1_flip},
        command=_TRAIN + overrides,
        hardware=hardware, wall_time=f"{seconds} s of training ({epochs} epochs, {steps:,} steps of 128)",
    )


# From runs of the project's own recipes; RESULTS.md gives the commands and the timings.
_EPYC_BF16 = "2-core x86 CPU (AMD EPYC with AVX-512 and AVX512_BF16: the recipe's precision auto trained in bf16)"
_XEON_AMX = ("2-core x86 CPU (Intel Xeon, Emerald Rapids, with AVX-512 and AMX: the recipe's precision auto trained "
             "in bf16, compiled by inductor)")
_ZEN2_FP32 = ("2-core x86 CPU (AMD EPYC, Zen 2, AVX2 only: the recipe's precision auto trained in fp32, compiled "
              "by inductor)")
_BESIDE = ", one thread (train.threads=1) beside another training run on the other core"


def _then_distilled(run: str, model: str = "") -> str:
    """The end of a two-stage record's overrides: the first stage's run is named ``run``, then 12 epochs from its
    file at a fifth of the peak learning rate, taught by the shipped resnet56 (RESULTS, "Distilling the shipped
    resnet20")."""
    return (f" --set out_dir=runs --set name={run} && {_TRAIN}{model} --set data.cutout=16 --set train.epochs=12"
            f" --set train.compile=true --set finetune.weights=runs/{run}/final.safetensors --set optim.lr=0.02"
            " --set schedule.decay_frac=0.9 --set 'distill.teachers=[resnet56:cifar10]' --set distill.alpha=0.9")


RECORDS: list[WeightsRecord] = [
    # Two stages (RESULTS, "Distilling the shipped resnet20"): the file shipped before it (90 epochs with cutout,
    # 7,998 s in bf16 on the AVX-512 EPYC; `git show d398134:src/resnets/assets/weights/resnet20_cifar10.safetensors`,
    # sha256 53528a35...; 0.8896 / 0.9946 / 0.8978), then 12 epochs from it, taught by the shipped resnet56. The
    # times and hardware are the second stage's.
    _cifar10_cpu("resnet20", "3642030575f2cfbe11b1f9ee083a0dd2dcd7c9dc5940304c60a16159c492131a", 0.895, 0.9946,
                 0.8978, "4,972", _ZEN2_FP32 + _BESIDE + ", after the 7,998 s of the first stage", 12, 4_212,
                 overrides=" --set data.cutout=16 --set train.epochs=90" + _then_distilled("r20-e90")),
    # Two stages as resnet20's (RESULTS, "Distilling the shipped resnet32"): the file shipped before it (64 epochs with
    # cutout, 9,201 s in bf16 on the Xeon with AMX, one thread beside another run, about 1,850 s of it slowed or paused;
    # `git show 4f1f69b:src/resnets/assets/weights/resnet32_cifar10.safetensors`, sha256 8389748d...; 0.8926 / 0.996 /
    # 0.9016), then 12 epochs from it, taught by the shipped resnet56. The times and hardware are the second stage's.
    _cifar10_cpu("resnet32", "0266ec4f9836b92e28347d54125a721b55dcadd3c07d9bed22d552cc35e7d413", 0.8996, 0.9954,
                 0.9006, "5,980", _ZEN2_FP32 + _BESIDE + ", after the 9,201 s of the first stage", 12, 4_212,
                 overrides=" --set model.name=resnet32 --set data.cutout=16 --set train.epochs=64 --set train.compile=true"
                           + _then_distilled("r32-e64", " --set model.name=resnet32")),
    _cifar10_cpu("resnet44", "e31d0e7cb08b97f6d577e80eeddadb5ec593505a2e6f8577c725b3b810596e5f", 0.9068, 0.9964,
                 0.914, "17,536", _XEON_AMX + _BESIDE + "; the seconds include about 3,000 s paused (CI rehearsals in "
                 "epochs 3, 29 and 32)", 90, 31_590,
                 overrides=" --set model.name=resnet44 --set data.cutout=16 --set train.epochs=90 --set train.compile=true"),
    _cifar10_cpu("resnet56", "e11a0eda293497f2e5e0ec2effcbf73ddfbf0e6a6ccc3341e651e24f4f83cf84", 0.9124, 0.996,
                 0.9214, "19,713", _XEON_AMX + "; one thread beside another training run to epoch 72, two threads after; "
                 "the seconds include about 3,000 s paused (CI rehearsals in epochs 3, 23 and 26)", 90, 31_590,
                 overrides=" --set model.name=resnet56 --set data.cutout=16 --set train.epochs=90 --set train.compile=true"),
    # Stored in fp16 (3.5 MB; no tracked file exceeds 5 MB): the trained fp32 weights scored 0.8776 / 0.9944 /
    # 0.8894, the fp16 file 0.8774 / 0.9944 / 0.8894 (RESULTS, resnet110); loading casts them back to fp32.
    _cifar10_cpu("resnet110", "727a185369dc17765b685a6db97064ca009b3af1e7577b1a72509445f3daa9d9", 0.8774, 0.9944,
                 0.8894, "12,156", _XEON_AMX + _BESIDE + "; the seconds include about 1,400 s slowed or paused "
                 "(a CI rehearsal in epoch 7, tests beside it in epoch 12)", 28, 9_828,
                 overrides=" --set model.name=resnet110 --set data.cutout=16 --set train.epochs=28 --set train.compile=true"),
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


def identity(path: str | Path) -> dict[str, str]:
    """How a recipe names weights it started from or learned from: file name and content, never a path
    (a tag such as cifar10 names another file once newer weights ship)."""
    return {"file": Path(path).name, "sha256": sha256_of(path)}


def resolve(model: str, weights: str | Path) -> Path:
    """A path for ``weights``: an existing file as is, else a shipped record's verified file."""
    path = Path(weights)
    if path.is_file() or path.suffix.lower() in (".safetensors", ".pt", ".pth") or "/" in str(weights):
        return path
    record = find(model, str(weights))
    actual = sha256_of(record.path)
    if actual != record.sha256:
        raise ValueError(f"shipped weights {record.path} are corrupt: sha256 {actual} != {record.sha256}")
    return record.path
