"""What the EMA of the weights is worth, and why its BN statistics must be averaged too: one training
checkpoint evaluated three ways on the 5k held-out split (issue 13's ablation, at no training cost).

    python benchmarks/ema_variants.py --checkpoint RUN/last.pt --data DIR

- live: the network being trained (``model`` in the checkpoint);
- EMA weights + live BN statistics: what ``resnets.train.optim.EMA`` did before (it copied buffers);
- EMA weights and BN statistics: what it does now (timm's ModelEmaV2/V3 average buffers too).

Evaluated in fp32 on the held-out images of ``split_train_val(val_size, seed)`` from the checkpoint's
own recipe, exactly as ``resnets eval --holdout`` does.
"""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext

import torch

import resnets
from resnets.data import make_loader, open_dataset, split_train_val
from resnets.train.checkpoint import load_checkpoint
from resnets.train.engine import validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint (RUN/last.pt) with an EMA")
    parser.add_argument("--data", default=os.environ.get("RESNETS_DATA"), help="the image folder (or RESNETS_DATA)")
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data DIR or set RESNETS_DATA")
    ckpt = load_checkpoint(args.checkpoint)
    if not ckpt.get("ema"):
        parser.error(f"{args.checkpoint} holds no EMA (trained with train.ema_decay=0)")
    cfg = ckpt["config"]
    _, val = split_train_val(open_dataset(args.data, split="train"), val_size=cfg["data"]["val_size"],
                             seed=cfg["data"]["split_seed"])
    loader = make_loader(val, 500, train=False, channels_last=True)
    model = resnets.create_model(cfg["model"]["name"], num_classes=len(val.info.classes), **cfg["model"]["kwargs"])
    model.to(memory_format=torch.channels_last)
    params = {k for k, _ in model.named_parameters()}
    live, ema = ckpt["model"], ckpt["ema"]["state"]
    variants = {
        "live weights": live,
        "EMA weights + live BN statistics": {k: ema[k] if k in params else live[k] for k in live},
        "EMA weights and BN statistics": ema,
    }
    print(f"{args.checkpoint}: step {ckpt['step']}, epoch {ckpt['epoch'] + 1}; {len(val)} held-out images")
    print("| variant | val top-1 | val loss |\n|---|---:|---:|")
    for name, state in variants.items():
        model.load_state_dict(state)
        r = validate(model, loader, torch.device("cpu"), nullcontext())
        print(f"| {name} | {r['val_top1']:.2%} | {r['val_loss']:.4f} |")


if __name__ == "__main__":
    main()
