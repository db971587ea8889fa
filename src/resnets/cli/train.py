"""``resnets train``, ``resnets eval`` and ``resnets predict``: thin wrappers over :mod:`resnets.train`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import UsageError
from .options import integer

# The recipes ship inside the package (resnets/configs; the checkout's configs/ links there), so
# `resnets train --config cifar10_paper` works from a wheel install too.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _config_path(name: str | None) -> Path | None:
    """A config file path, or the name of a shipped recipe (``quickstart`` -> resnets/configs/quickstart.yaml)."""
    if name is None:
        return None
    path = Path(name)
    if path.exists():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise UsageError(f"config {name!r} not found" + (f"; recipes: {', '.join(known)}" if known else ""))


def run_train(args) -> int:
    import signal

    from ..train import TrainingError, TrainingInterrupted, train
    from ..train.checkpoint import CheckpointError

    overrides = list(args.set or [])
    if args.data is not None:  # `--data ""` reaches the engine, which refuses it (not the bundled sample)
        overrides.append(f"data.path={args.data}")
    if args.download:
        overrides.append("data.download=true")
    if args.resume and args.config:
        raise UsageError("--resume continues a run with its saved config; use --set to change keys")
    if not args.resume and not args.config:
        raise UsageError("give --config FILE (e.g. configs/quickstart.yaml) or --resume RUN_DIR")
    try:
        result = train(_config_path(args.config), overrides=overrides, resume=args.resume)
    except (TrainingError, CheckpointError) as exc:
        print(f"resnets train: error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:  # the engine said what it saved and how to resume
        return 128 + (exc.signum or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM, as the shell reports
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "best": result.best, **result.metrics}))
    return 0


def run_eval(args) -> int:
    from ..train import evaluate

    # Nothing is written unless asked for: --confusion PNG, --out JSON.
    result = evaluate(args.weights, args.data, model=args.model, tta=args.tta, batch_size=args.batch_size,
                      device=args.device, split=args.split, confusion_png=args.confusion, holdout=args.holdout,
                      val_size=args.val_size, split_seed=args.split_seed, backend=args.backend,
                      threads=args.threads)
    if args.out:
        from ..weights_io import atomic_write

        atomic_write(args.out, (json.dumps(result, indent=2) + "\n").encode())
    if args.json:
        print(json.dumps({"top1": result["top1"], "top5": result["top5"], "n": result["n"]}))
        return 0
    print(f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  on {result['n']} images"
          f"{' (flip TTA)' if args.tta == 'flip' else ''}")
    for name, acc in result["per_class"].items():
        print(f"  {name:>14}  {'-' if acc is None else f'{acc:.4f}'}")
    if args.confusion:
        print(f"confusion matrix: {args.confusion}")
    if args.out:
        print(f"result: {args.out}")
    return 0


def run_predict(args) -> int:
    from ..train import predict

    results = predict(args.weights, args.images, topk=args.topk, model=args.model, device=args.device,
                      backend=args.backend)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        top = "  ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        print(f"{r['path']}: {top}")
    return 0


def add_backend_argument(parser) -> None:
    """``--backend``, shared by eval, predict and serve."""
    from ..runtime import BACKENDS

    parser.add_argument("--backend", choices=BACKENDS,
                        help="what runs the model: torch (weights, or a .pt2), onnxruntime (an .onnx file from "
                             "resnets export) or openvino (an .xml from export --format openvino, or an .onnx); "
                             "default: torch, or the exported file's runtime; onnxruntime and openvino come with "
                             'the deploy extra (pip install "resnets[deploy]")')


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model from a YAML recipe (configs/*.yaml)",
                              description="Train from a recipe: resnets train --config configs/quickstart.yaml")
    p.add_argument("--config", help="YAML file, or a recipe name from configs/ (quickstart, cifar10_paper, ...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--data", help="training data: image folder or CIFAR archive folder (sets data.path)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data if missing")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from RUN_DIR/last.pt")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser("eval", help="accuracy of trained weights on a labelled image folder")
    p.add_argument("--weights", required=True, help=".safetensors export or .pt checkpoint, or an exported "
                                                    "model file (.onnx, .xml, .pt2)")
    add_backend_argument(p)
    p.add_argument("--model", help="model name (default: from the weights' metadata)")
    p.add_argument("--data", required=True, help="image folder (class sub-folders) or CIFAR archive folder")
    p.add_argument("--split", help="test, val or train (default: test if present, else val, else the folder)")
    p.add_argument("--tta", choices=["none", "flip"], default=None, help="test-time augmentation")
    p.add_argument("--holdout", action="store_true",
                   help="evaluate on the validation images held out in training (the weights' recipe's split)")
    p.add_argument("--val-size", type=integer(1), help="with --holdout: size of the held-out split (default: the recipe's)")
    p.add_argument("--split-seed", type=int, help="with --holdout: seed of the split (default: the recipe's)")
    p.add_argument("--batch-size", type=integer(1), default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=integer(0),
                   help="CPU threads, whatever the backend (default, or 0: the runtime's choice; beside a training "
                        "run, 1 avoids OpenMP's spinning threads slowing both)")
    p.add_argument("--confusion", metavar="PNG", help="write the confusion-matrix image there")
    p.add_argument("--out", metavar="JSON", help="write the whole result (per-class accuracy, confusion matrix) there")
    p.add_argument("--json", action="store_true", help='print {"top1", "top5", "n"} as JSON')
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser("predict", help="classify images with trained weights")
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR")
    p.add_argument("--weights", required=True, help=".safetensors export or .pt checkpoint, or an exported "
                                                    "model file (.onnx, .xml, .pt2)")
    add_backend_argument(p)
    p.add_argument("--model", help="model name (default: from the weights' metadata)")
    p.add_argument("--topk", type=integer(1), default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_predict)
