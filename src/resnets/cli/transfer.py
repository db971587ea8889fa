"""``resnets features``: pooled embeddings of a folder of images, with the file list beside them."""

from __future__ import annotations

import io
from pathlib import Path

from . import UsageError
from .options import integer


def run_features(args) -> int:
    import numpy as np

    from ..train.evaluate import extract_features
    from ..weights_io import atomic_write

    out = Path(args.out)
    if out.suffix != ".npy":
        raise UsageError(f"--out must end in .npy; got {out}")
    features, paths = extract_features(args.weights, args.images, model=args.model, device=args.device,
                                       batch_size=args.batch_size)
    listing = out.with_suffix(".files.txt")
    buffer = io.BytesIO()
    np.save(buffer, features)
    # Each file appears whole or not at all; the listing first, so a present .npy has its rows named.
    atomic_write(listing, "".join(f"{p}\n" for p in paths).encode("utf-8", "surrogateescape"))
    atomic_write(out, buffer.getbuffer())
    print(f"{features.shape[0]} images x {features.shape[1]} features -> {out} (files listed in {listing})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("features", help="pooled embeddings of images (.npy) with the file list beside them")
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR")
    p.add_argument("--weights", required=True, help=".safetensors / checkpoint, or a shipped tag with --model")
    p.add_argument("--model", help="model name (default: from the weights' metadata)")
    p.add_argument("--out", required=True, help="FILE.npy; FILE.files.txt gets one path per row")
    p.add_argument("--batch-size", type=integer(1), default=256)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_features)
