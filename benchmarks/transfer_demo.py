"""Transfer learning, measured (issue 6): pretrain resnet20 on five CIFAR-10 classes, then learn the
other five from 100 images per class three ways (fine-tune, linear probe, from scratch) and report
top-1 on 500 held-out images per class of those five.

    python benchmarks/transfer_demo.py --data ../shared/datasets/cifar10-jpeg/train --out runs/transfer

Image folders are built from symbolic links into --data; nothing is copied.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from resnets.train import Config, evaluate, train

SOURCE = ("airplane", "automobile", "bird", "cat", "deer")
TARGET = ("dog", "frog", "horse", "ship", "truck")


def link_folder(data: Path, root: Path, classes, start: int, count: int | None) -> Path:
    for name in classes:
        files = sorted((data / name).iterdir())
        chosen = files[start:] if count is None else files[start:start + count]
        (root / name).mkdir(parents=True, exist_ok=True)
        for f in chosen:
            link = root / name / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return root


def config(data: Path, out: Path, name: str, epochs: int, batch: int, lr: float, val_size: int) -> Config:
    cfg = Config()
    cfg.model.name = "resnet20"
    cfg.data.path, cfg.data.val_size = str(data), val_size
    cfg.optim.name, cfg.optim.lr, cfg.optim.nesterov, cfg.optim.weight_decay = "sgd", lr, True, 5e-4
    cfg.schedule.name = "onecycle"
    cfg.train.batch_size, cfg.train.epochs, cfg.train.label_smoothing = batch, epochs, 0.1
    cfg.train.channels_last, cfg.train.progress, cfg.train.tensorboard = True, False, False
    cfg.out_dir, cfg.name = str(out), name
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 image folder (class sub-folders)")
    parser.add_argument("--out", default="runs/transfer")
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30, help="epochs on the 500 target images")
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    source = link_folder(data, out / "data" / "source", SOURCE, 0, None)
    # Target: the first `per-class` images of each class to learn from, the last 500 to test on.
    target_train = link_folder(data, out / "data" / "target_train", TARGET, 0, args.per_class)
    target_test = link_folder(data, out / "data" / "target_test", TARGET, 4500, 500)

    tick = time.time()
    pretrained = train(config(source, out, "pretrain", args.pretrain_epochs, 256, 0.4, 1000))
    pretrain_s = time.time() - tick
    rows = {"pretrain (5 source classes, val 1000)": {"top1": pretrained.metrics["val_top1"], "seconds": pretrain_s}}
    ways = {
        "fine-tune (all layers)": {"weights": str(pretrained.weights)},
        "linear probe": {"weights": str(pretrained.weights), "linear_probe": True},
        "from scratch": {},
    }
    for label, finetune in ways.items():
        cfg = config(target_train, out, label.split()[0].replace("-", ""), args.epochs, 64, 0.1, 0)
        for key, value in finetune.items():
            setattr(cfg.finetune, key, value)
        tick = time.time()
        result = train(cfg)
        scores = evaluate(result.weights, target_test, confusion_png=out / f"{cfg.name}.confusion.png")
        rows[label] = {"top1": scores["top1"], "seconds": time.time() - tick, "n": scores["n"]}
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print("| setting | top-1 on held-out target images | wall time (s) |\n|---|---:|---:|")
    for label, row in rows.items():
        print(f"| {label} | {100 * row['top1']:.1f} % | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
