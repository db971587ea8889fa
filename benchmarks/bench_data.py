"""Data-loading benchmark: one epoch of augmented CIFAR-10 batches, images per second.

Compares, on the same machine in the same run:
  reference  torchvision ImageFolder + DataLoader(workers) + per-sample transforms
             (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize)
  cold       resnets: open_dataset (decode every JPEG, write the uint8 cache) + one BatchLoader epoch
  warm       resnets: open_dataset (cache hit: fingerprint the folder, map the cache) + one epoch
  epoch      resnets: one more epoch from memory (what every epoch after the first costs)
Same augmentation in all (the ResNet paper's pad-4 crop + flip), same batch size.

    python benchmarks/bench_data.py --data ../shared/datasets/cifar10-jpeg/train
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RESNETS_DATA", REPO.parent / "shared" / "datasets" / "cifar10-jpeg" / "train"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_reference(root: Path, batch_size: int, workers: int, mean, std) -> dict:
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(mean, std),
    ])
    ds = datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += len(x)
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def bench_resnets(root: Path, batch_size: int, cache_dir: Path, device: torch.device) -> dict:
    from resnets.data import BatchLoader, open_dataset

    def epoch(loader) -> int:
        n = 0
        for x, _ in loader:
            n += len(x)
        _sync(device)
        return n

    out = {}
    for phase in ("cold", "warm"):
        t0 = time.perf_counter()
        ds = open_dataset(root, cache_dir=cache_dir)
        t_open = time.perf_counter() - t0
        loader = BatchLoader(ds, batch_size, train=True, device=device, seed=0)
        _sync(device)
        n = epoch(loader)
        seconds = time.perf_counter() - t0
        out[phase] = {"images": n, "seconds": seconds, "open_seconds": t_open, "images_per_s": n / seconds}
    t0 = time.perf_counter()
    n = epoch(loader)
    seconds = time.perf_counter() - t0
    out["epoch"] = {"images": n, "seconds": seconds, "images_per_s": n / seconds}
    out["mean"], out["std"] = ds.info.mean, ds.info.std
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 image folder (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers for the reference")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temporary folder (cold start)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not (args.data / "airplane").is_dir():
        print(f"bench_data: no CIFAR-10 image folder at {args.data} (pass --data or set RESNETS_DATA)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="resnets-bench-") as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        ours = bench_resnets(args.data, args.batch_size, cache_dir, device)
    ref = bench_reference(args.data, args.batch_size, args.workers, ours["mean"], ours["std"])
    result = {
        "data": str(args.data), "batch_size": args.batch_size, "device": str(device),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "workers": args.workers,
        "torch": torch.__version__, "python": platform.python_version(),
        "reference": ref, "cold": ours["cold"], "warm": ours["warm"], "epoch": ours["epoch"],
        "ratio_warm": ours["warm"]["images_per_s"] / ref["images_per_s"],
        "ratio_epoch": ours["epoch"]["images_per_s"] / ref["images_per_s"],
    }
    print(f"data: {args.data}  batch {args.batch_size}  device {device}  "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, reference workers {args.workers}")
    rows = [("torchvision ImageFolder+DataLoader", ref, ""),
            ("resnets cold (decode + cache + epoch)", ours["cold"], f"open {ours['cold']['open_seconds']:.2f}s"),
            ("resnets warm (cache load + epoch)", ours["warm"], f"open {ours['warm']['open_seconds']:.2f}s"),
            ("resnets epoch from memory", ours["epoch"], "")]
    for name, r, note in rows:
        print(f"  {name:<40} {r['images']:>6} images {r['seconds']:>8.2f} s {r['images_per_s']:>12,.0f} img/s  {note}")
    print(f"warm / torchvision: {result['ratio_warm']:.1f}x   epoch / torchvision: {result['ratio_epoch']:.1f}x   "
          f"(goal: warm >= 20x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
