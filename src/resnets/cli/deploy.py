"""``resnets export | quantize | prune | explain | bench infer``: parse the arguments, call one function
of :mod:`resnets.deploy` (``export_model``, ``quantize_model``, ``prune_model``, ``bench_infer``),
print its report (``--json``: its ``to_dict()``), and say with the exit code whether its check passed.
Where the images and the normalisation come from is said in :mod:`resnets.deploy.api`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .options import integer, number


def _say(args, message: str) -> None:
    # With --json, stdout carries only the JSON document; progress goes to stderr.
    print(message, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)


def _data(args):
    from ..deploy.api import DataChoice

    return DataChoice(getattr(args, "data", None), getattr(args, "val_size", None), getattr(args, "split_seed", None),
                      args.mean, args.std)


def _print(args, report) -> None:
    print(report.to_json() if args.json else report, flush=True)


# ---- export, quantize, prune ------------------------------------------------------------------

def run_export(args) -> int:
    from ..deploy.api import export_model

    report = export_model(args.model, args.weights, out=args.out, format=args.format, size=args.size,
                          dynamic_batch=not args.static_batch, check=args.check, check_images=args.check_images,
                          tolerance=args.tolerance, data=_data(args), num_classes=args.num_classes,
                          log=lambda m: _say(args, m))
    _print(args, report)
    return 0 if report.passed else 1


def run_quantize(args) -> int:
    from ..deploy.api import quantize_model

    report = quantize_model(args.model, args.weights, data=_data(args), calibration=args.calibration, val=args.val,
                            max_drop=args.max_drop, qat_epochs=args.qat_epochs, qat_images=args.qat_images,
                            lr=args.lr, out=args.out, num_classes=args.num_classes, method=args.method,
                            log=lambda m: _say(args, m))
    _print(args, report)
    return 3 if report.exceeded and args.strict else 0


def run_prune(args) -> int:
    from ..deploy.api import prune_model

    report = prune_model(args.model, args.weights, method=args.method, ratio=args.ratio, epochs=args.epochs,
                         train_images=args.train_images, val=args.val, lr=args.lr, out=args.out, data=_data(args),
                         num_classes=args.num_classes, log=lambda m: _say(args, m))
    _print(args, report)
    return 0


# ---- explain ----------------------------------------------------------------------------------

def run_explain(args) -> int:
    from ..data import load_files
    from ..deploy.api import preprocessing_for
    from ..deploy.gradcam import default_target_layer, grad_cam, save_overlays
    from ..deploy.weights import load_model

    loaded = load_model(args.model, args.weights, args.num_classes)
    paths = [Path(p) for p in args.images]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"image not found: {p}")
    layer = args.layer or default_target_layer(loaded.model)
    prep, source = preprocessing_for(loaded, _data(args))  # the weights' own; nothing is guessed (issue 14)
    written, rows = [], []
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        images = load_files(chunk, prep)
        heatmaps, classes, logits = grad_cam(loaded.model, prep.normalize(images), args.target_class, layer)
        probs = logits.softmax(1)
        written += save_overlays(images, heatmaps, args.out, [str(p) for p in chunk], scale=args.scale)
        for p, c, pr in zip(chunk, classes.tolist(), probs, strict=True):
            name = loaded.classes[c] if loaded.classes and c < len(loaded.classes) else str(c)
            rows.append({"image": str(p), "class": c, "class_name": name, "probability": pr[c].item()})
    for row, path in zip(rows, written, strict=True):
        row["overlay"] = str(path)
        _say(args, f"{row['image']}: {row['class_name']} ({100 * row['probability']:.1f}%) -> {path}")
    _say(args, f"Grad-CAM at {layer}, preprocessing from {source}; {len(written)} overlays in {args.out}")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


# ---- bench infer ------------------------------------------------------------------------------

def run_bench_infer(args) -> int:
    from ..data import data_dir
    from ..deploy.bench import bench_infer

    variants = tuple(args.variants.split(",")) if args.variants else None
    report = bench_infer(args.model, args.size, args.batch, args.iters, args.warmup, variants, data_dir(args.data),
                         log=lambda m: _say(args, m), device=args.device, threads=args.threads)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report, flush=True)
    return 130 if report.interrupted else 0


# ---- parsers ----------------------------------------------------------------------------------

def _common(parser, data: bool = True) -> None:
    from ..train.config import DataConfig  # the training engine's split defaults

    parser.add_argument("--model", help="zoo name (optional when the weights' metadata names it)")
    parser.add_argument("--weights", help=".safetensors (with metadata) or .pt/.pth state dict")
    parser.add_argument("--num-classes", type=integer(1), help="classifier size when the weights do not say")
    parser.add_argument("--mean", type=number(), nargs=3, metavar=("R", "G", "B"),
                        help="normalisation mean (default: the weights' preprocessing)")
    parser.add_argument("--std", type=number(0, above=True), nargs=3, metavar=("R", "G", "B"),
                        help="normalisation std (default: the weights' preprocessing)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    if data:
        parser.add_argument("--data", help="image folder <DIR>/<class>/<image> or CIFAR archive folder (default: "
                                           "$RESNETS_DATA, else the data the weights' recipe trained on)")
        parser.add_argument("--val-size", type=integer(1),
                            help="images the train/validation split holds out, as in training (default: the weights' "
                                 f"recipe's data.val_size, else {DataConfig.val_size})")
        parser.add_argument("--split-seed", type=int,
                            help="seed of the split (default: the weights' recipe's data.split_seed, else "
                                 f"{DataConfig.split_seed})")


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export to ONNX, OpenVINO IR, TorchScript or PT2 (dynamic batch), "
                                             "checked, with the weights' metadata")
    _common(p)
    p.add_argument("--format", choices=["onnx", "openvino", "torchscript", "pt2"],
                   help="default: from --out's suffix (.onnx, .xml, .pt, .pt2)")
    p.add_argument("--out", required=True, help="output file (OpenVINO: the .xml; its .bin is written beside it)")
    p.add_argument("--size", type=integer(1), help="input side (default: the model's)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch dimension")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the check of an ONNX (onnxruntime) or OpenVINO file against PyTorch")
    p.add_argument("--check-images", type=integer(1), default=256, help="validation images for the check")
    p.add_argument("--tolerance", type=number(0, infinite=True), default=1e-3, help="largest acceptable |logit difference|")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser("quantize", help="int8 static quantization (PT2E; or QAT), accuracy before/after")
    _common(p)
    p.add_argument("--method", choices=["pt2e", "fx"], default="pt2e",
                   help="pt2e: torch.export + torchao's X86InductorQuantizer, lowered by inductor (the default; "
                        "torchao is in the deploy extra); fx: FX graph mode, torch's deprecated path, the fallback")
    p.add_argument("--calibration", type=integer(0), default=512,
                   help="training images for calibration (0 with --qat-epochs: QAT alone)")
    p.add_argument("--val", type=integer(1), default=2000,
                   help="validation images for the accuracy check, drawn from the split's held-out part")
    p.add_argument("--max-drop", type=number(infinite=True), default=0.5, help="warn when top-1 drops more (points)")
    p.add_argument("--strict", action="store_true", help="exit 3 when the drop exceeds --max-drop")
    p.add_argument("--qat-epochs", type=integer(0), default=0, help="quantization-aware training epochs (0: PTQ)")
    p.add_argument("--qat-images", type=integer(0), default=0, help="training images for QAT")
    p.add_argument("--lr", type=number(0, above=True), default=1e-3, help="QAT learning rate")
    p.add_argument("--out", help="save the int8 model: .pt2 (pt2e: a torch.export archive with the weights' "
                                 "metadata) or .pt (fx, QAT: TorchScript)")
    p.set_defaults(func=run_quantize)

    p = subparsers.add_parser("prune", help="structured or unstructured pruning with a short fine-tune")
    _common(p)
    p.add_argument("--method", choices=["structured", "unstructured"], default="structured")
    p.add_argument("--ratio", type=number(0), default=0.3, help="fraction of channels / weights removed")
    p.add_argument("--epochs", type=integer(0), default=1, help="fine-tuning epochs over --train-images")
    p.add_argument("--train-images", type=integer(0), default=5000, help="training images for fine-tuning")
    p.add_argument("--val", type=integer(1), default=2000, help="validation images, drawn from the split's held-out part")
    p.add_argument("--lr", type=number(0, above=True), default=0.01, help="fine-tuning peak learning rate")
    p.add_argument("--out", help=".safetensors (unstructured), .pt2, .onnx or .pt")
    p.set_defaults(func=run_prune)

    p = subparsers.add_parser("explain", help="Grad-CAM heatmap overlays (PNG) for images")
    _common(p, data=False)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="folder for the PNG overlays")
    p.add_argument("--layer", help="module to explain (default: the last stage)")
    p.add_argument("--class", dest="target_class", type=integer(0), help="explain this class (default: the prediction)")
    p.add_argument("--batch-size", type=integer(1), default=64)
    p.add_argument("--scale", type=integer(1), default=4, help="enlarge overlays by this factor (32x32 is tiny)")
    p.set_defaults(func=run_explain)

    from ..deploy.bench import DEFAULT_VARIANTS, VARIANTS  # the names only: torch is imported already

    bench = subparsers.add_parser("bench", help="benchmarks")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    p = sub.add_parser("infer", help="inference: torchvision eager vs ours eager/channels-last/compiled/int8, "
                                     "onnxruntime and OpenVINO fp32/int8 (CPU), or compiled/bf16 (GPU)")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=integer(1), help="input side (default: the model's, 224 for resnet50)")
    p.add_argument("--batch", type=integer(1), default=32, help="batch size for throughput")
    p.add_argument("--iters", type=integer(1), default=10, help="timed calls per measurement (median)")
    p.add_argument("--warmup", type=integer(0), default=2, help="untimed calls first (compilation happens here)")
    p.add_argument("--variants", help="comma-separated subset of: " + ",".join(VARIANTS) + " (default: "
                   + ",".join(DEFAULT_VARIANTS["cpu"]) + ", less the runtimes not installed; on cuda "
                   + ",".join(DEFAULT_VARIANTS["cuda"]) + ")")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU figures (fp32, compiled, bf16)")
    p.add_argument("--threads", type=integer(0),
                   help="threads for torch, onnxruntime and OpenVINO alike (default, or 0: torch's choice)")
    p.add_argument("--data", help="real images for int8 calibration, from the training part of the split "
                                  "(default: $RESNETS_DATA)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_bench_infer)
