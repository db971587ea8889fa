"""``resnets export | quantize | prune | explain | bench infer``: deployment commands over
:mod:`resnets.deploy`.

Every command takes ``--model NAME`` and optionally ``--weights FILE``. Real images come from the
training engine's own train/validation split of ``--data`` (:mod:`resnets.data.split`): accuracy
is measured on the held-out part, calibration and fine-tuning use the train part. Images are
preprocessed as the weights say (:mod:`resnets.preprocessing`); ``--mean/--std`` replace the
weights' normalisation, and weights without any are refused with the missing key named.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from . import UsageError

SUFFIX_FORMATS = {".onnx": "onnx", ".pt2": "pt2", ".pt": "torchscript", ".ts": "torchscript"}


def _say(args, message: str) -> None:
    # With --json, stdout carries only the JSON document; progress goes to stderr.
    print(message, file=sys.stderr if getattr(args, "json", False) else sys.stdout)


def _loaded(args):
    from ..deploy.weights import load_model

    return load_model(args.model, args.weights, getattr(args, "num_classes", None))


def _split(args, loaded):
    """The training engine's train/validation split of the data (see :mod:`resnets.data.split`)."""
    from ..data import data_dir, open_split

    root = data_dir(args.data, loaded.metadata)
    if root is None:
        raise UsageError("no images: pass --data DIR (an image folder <DIR>/<class>/<image> or a CIFAR archive "
                         "folder) or set RESNETS_DATA")
    split = open_split(root, loaded.metadata, getattr(args, "val_size", None), getattr(args, "split_seed", None))
    for note in split.notes:
        _say(args, f"note: {note}")
    return split


def _preprocessing(args, loaded):
    """(preprocessing, where from): the weights' own, with --mean/--std replacing its normalisation;
    without any in the weights, the whole image at the model's input size normalised by --mean/--std."""
    from ..preprocessing import Preprocessing

    given = getattr(args, "mean", None) or getattr(args, "std", None)
    if given and (not (args.mean and args.std) or len(args.mean) != 3 or len(args.std) != 3):
        raise UsageError("--mean and --std take three values each (R G B, pixels in [0, 1])")
    if loaded.preprocessing is not None:
        if given:
            return loaded.preprocessing.with_normalization(args.mean, args.std), "the weights, --mean/--std"
        return loaded.preprocessing, "the weights' metadata"
    if given:
        return Preprocessing.whole_image(loaded.input_size, args.mean, args.std), "--mean/--std"
    raise UsageError(loaded.preprocessing_error)


def _samples(args, loaded, n_train: int, n_val: int):
    """Normalised (train, train labels, val, val labels) tensors, the split, and a line saying where from."""
    from ..data import sample_images

    split = _split(args, loaded)
    prep, source = _preprocessing(args, loaded)
    train_u8, train_y = sample_images(split.train, n_train, prep, seed=0)
    val_u8, val_y = sample_images(split.val, n_val, prep, seed=1)
    return (prep.normalize(train_u8), train_y, prep.normalize(val_u8), val_y, split,
            f"preprocessing from {source} ({prep.describe()}); {split.describe()}")


def _latency_ms(model, size, iters: int = 10) -> float:
    import statistics

    x = torch.randn(1, *size)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(iters):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


# ---- export -----------------------------------------------------------------------------------

def run_export(args) -> int:
    from ..deploy.export import compare, export, load_exported

    loaded = _loaded(args)
    fmt = args.format or SUFFIX_FORMATS.get(Path(args.out).suffix)
    if fmt is None:
        raise UsageError(f"cannot tell the format from {args.out!r}; pass --format onnx|torchscript|pt2")
    size = loaded.input_size
    if args.size:
        size = (size[0], args.size, args.size)
    example = torch.randn(2, *size)
    out = export(loaded.model, example, args.out, fmt, dynamic_batch=not args.static_batch)
    result = {"model": loaded.name, "format": fmt, "out": str(out), "bytes": out.stat().st_size,
              "dynamic_batch": not args.static_batch}
    _say(args, f"wrote {out} ({fmt}, {out.stat().st_size / 1e6:.1f} MB, "
               f"{'dynamic' if not args.static_batch else 'static'} batch)")
    if fmt == "onnx" and args.check:
        from ..data import data_dir, sample_images

        if data_dir(args.data, loaded.metadata) is not None:
            split = _split(args, loaded)
            prep, source = _preprocessing(args, loaded)
            if args.size:  # exported for another size: the same preprocessing, scaled to it
                resize = (args.size, args.size) if prep.crop == "none" else (round(args.size * 256 / 224),)
                prep = dataclasses.replace(prep, input_size=(args.size, args.size), resize_size=resize)
            images, _ = sample_images(split.val, args.check_images, prep, seed=1)
            inputs = prep.normalize(images)
            what = f"{len(images)} real validation images from {split.root} (preprocessing from {source})"
            result["split"] = split.to_dict()
        else:
            inputs, what = torch.randn(args.check_images, *size), f"{args.check_images} random inputs (no --data)"
        if args.static_batch:  # the file accepts only the example's batch of 2
            inputs = inputs[: len(inputs) // 2 * 2]
        # Batches of 50 on purpose: a shorter last batch exercises the dynamic batch dimension.
        parity = compare(loaded.model, load_exported(out, "onnx"), inputs, batch_size=2 if args.static_batch else 50)
        result["onnxruntime_check"] = {**parity.to_dict(), "inputs": what}
        _say(args, f"onnxruntime vs PyTorch on {what}: max |diff| {parity.max_abs_diff:.3g}, "
                   f"top-1 agreement {100 * parity.top1_agreement:.2f}%")
        if parity.top1_agreement < 0.99 or parity.max_abs_diff > args.tolerance:
            _say(args, f"WARNING: the ONNX model disagrees with PyTorch (tolerance {args.tolerance})")
            if args.json:
                print(json.dumps(result, indent=2))
            return 1
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


# ---- quantize ---------------------------------------------------------------------------------

def run_quantize(args) -> int:
    from ..deploy.quantize import compare_accuracy, quantize_aware_train, quantize_static

    loaded = _loaded(args)
    calibration_images = max(args.calibration, args.qat_images)
    train, train_y, val, val_y, split, norm = _samples(args, loaded, calibration_images, args.val)
    _say(args, f"{loaded.name}: {len(train)} calibration / {len(val)} validation images, {norm}")
    calibration = train[:args.calibration]
    start = time.perf_counter()
    if args.qat_epochs:
        int8 = quantize_aware_train(loaded.model, train, train_y, epochs=args.qat_epochs, lr=args.lr,
                                    log=lambda m: _say(args, m))
        method = f"QAT, {args.qat_epochs} epoch(s) on {len(train)} images"
    else:
        int8 = quantize_static(loaded.model, calibration)
        method = f"post-training static, calibrated on {len(calibration)} images"
    seconds = time.perf_counter() - start
    report = compare_accuracy(loaded.model, int8, val, val_y, len(calibration))
    fp32_ms, int8_ms = _latency_ms(loaded.model, loaded.input_size), _latency_ms(int8, loaded.input_size)
    result = {"model": loaded.name, "method": method, **report.to_dict(), "seconds": seconds,
              "latency_ms_fp32": fp32_ms, "latency_ms_int8": int8_ms, "max_drop": args.max_drop,
              "split": split.to_dict()}
    _say(args, f"int8 ({method}) in {seconds:.1f} s")
    _say(args, f"top-1 on {report.images} validation images: fp32 {report.fp32_top1:.2f}% -> int8 "
               f"{report.int8_top1:.2f}% (drop {report.drop:+.2f} points, agreement {100 * report.agreement:.1f}%)")
    _say(args, f"latency at batch 1: fp32 {fp32_ms:.2f} ms, int8 {int8_ms:.2f} ms")
    if args.out:
        from ..deploy.export import export_torchscript

        path = export_torchscript(int8, val[:2], args.out)
        result["out"] = str(path)
        _say(args, f"wrote {path} (TorchScript, int8)")
    status = 0
    if report.drop > args.max_drop:
        banner = "!" * 78
        print(f"{banner}\nWARNING: int8 accuracy dropped {report.drop:.2f} points, more than --max-drop "
              f"{args.max_drop}.\nTry more calibration images (--calibration) or QAT (--qat-epochs 1).\n{banner}",
              file=sys.stderr)
        status = 3 if args.strict else 0
    if args.json:
        print(json.dumps(result, indent=2))
    return status


# ---- prune ------------------------------------------------------------------------------------

def run_prune(args) -> int:
    from ..deploy.prune import fine_tune, prune_structured, prune_unstructured, sparsity
    from ..deploy.quantize import accuracy
    from ..profile import profile

    loaded = _loaded(args)
    train, train_y, val, val_y, split, norm = _samples(args, loaded, args.train_images, args.val)
    _say(args, f"{loaded.name}: {len(train)} fine-tuning / {len(val)} validation images, {norm}")
    model, size = loaded.model, loaded.input_size

    def measure(m) -> dict:
        stats = profile(m, size)
        return {"params": stats.params, "macs": stats.macs, "latency_ms": _latency_ms(m, size),
                "top1": accuracy(m, val, val_y).top1, "sparsity": sparsity(m)}

    before = measure(model)
    if args.method == "structured":
        pruned = prune_structured(model, args.ratio, torch.randn(1, *size))
    else:
        pruned = prune_unstructured(model, args.ratio)
    after_prune = measure(pruned)
    if args.epochs:
        fine_tune(pruned, train, train_y, epochs=args.epochs, lr=args.lr,
                  keep_zeros=args.method == "unstructured", log=lambda m: _say(args, m))
    after = measure(pruned)
    result = {"model": loaded.name, "method": args.method, "ratio": args.ratio, "fine_tune_epochs": args.epochs,
              "before": before, "pruned": after_prune, "after_fine_tune": after,
              "split": split.to_dict()}
    for label, row in (("before", before), ("pruned", after_prune), ("fine-tuned", after)):
        _say(args, f"{label:>10}: {row['params']:>10,} params {row['macs'] / 1e6:>9.2f}M MACs "
                   f"{row['latency_ms']:>7.2f} ms  top-1 {row['top1']:.2f}%  sparsity {100 * row['sparsity']:.1f}%")
    if args.out:
        out = Path(args.out)
        if out.suffix == ".safetensors":
            if args.method == "structured":
                raise UsageError("structured pruning changes layer shapes: save as .pt2, .onnx or .pt")
            from ..weights_io import export_weights

            # Everything the source weights carried (builder arguments, classes, recipe, preprocessing),
            # so the file reloads with create_model/load_model like any other (issue 14).
            prep, _ = _preprocessing(args, loaded)
            meta = {**loaded.metadata, "model": loaded.name, "image_size": list(size),
                    "preprocessing": prep.to_metadata(), "mean": list(prep.mean), "std": list(prep.std),
                    "metrics": {"val_top1": after["top1"] / 100, "val_images": len(val_y)},
                    "pruning": {"method": args.method, "ratio": args.ratio, "sparsity": after["sparsity"],
                                "fine_tune_epochs": args.epochs, "from": str(args.weights), **split.to_dict()}}
            export_weights(out, pruned.state_dict(), meta)
        else:
            from ..deploy.export import export

            fmt = SUFFIX_FORMATS.get(out.suffix)
            if fmt is None:
                raise UsageError(f"--out must end in .safetensors, .pt2, .onnx or .pt; got {out.name}")
            export(pruned, torch.randn(2, *size), out, fmt)
        result["out"] = str(out)
        _say(args, f"wrote {out}")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


# ---- explain ----------------------------------------------------------------------------------

def run_explain(args) -> int:
    from ..data import load_files
    from ..deploy.gradcam import default_target_layer, grad_cam, save_overlays

    loaded = _loaded(args)
    paths = [Path(p) for p in args.images]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"image not found: {p}")
    layer = args.layer or default_target_layer(loaded.model)
    prep, source = _preprocessing(args, loaded)
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
    from ..deploy.bench import bench_infer

    variants = tuple(args.variants.split(",")) if args.variants else None
    from ..data import data_dir

    data = data_dir(args.data)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    try:
        rows = bench_infer(args.model, args.size, args.batch, args.iters, args.warmup, variants, data,
                           log=lambda m: _say(args, m), device=args.device)
    except ValueError as exc:
        raise UsageError(f"bench infer: {exc}") from None
    meta = {"model": args.model, "size": args.size, "batch": args.batch, "iters": args.iters,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": _cpu_name(),
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    if args.json:
        print(json.dumps({**meta, "rows": [r.to_dict() for r in rows]}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    from ..registry import model_entry

    side = args.size or model_entry(args.model).input_size[1]
    where = meta["device"] if args.device.startswith("cuda") else f"{meta['threads']} threads, {meta['cpu']}"
    table = Table(title=f"{args.model} at {side}x{side}, {where}, "
                        f"median of {args.iters}")
    for column in ("variant", "latency b=1 (ms)", "speed-up", f"throughput b={args.batch} (img/s)", "ratio",
                   "set-up (s)", "note"):
        table.add_column(column, justify="left" if column in ("variant", "note") else "right")
    for r in rows:
        table.add_row(r.variant, f"{r.latency_ms:.1f}", f"{r.latency_speedup:.2f}x", f"{r.throughput:.1f}",
                      f"{r.throughput_ratio:.2f}x", f"{r.setup_s:.1f}", r.note)
    Console(width=200).print(table)
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


# ---- parsers ----------------------------------------------------------------------------------

def _common(parser, data: bool = True) -> None:
    from ..train.config import DataConfig  # the training engine's split defaults

    parser.add_argument("--model", help="zoo name (optional when the weights' metadata names it)")
    parser.add_argument("--weights", help=".safetensors (with metadata) or .pt/.pth state dict")
    parser.add_argument("--num-classes", type=int, help="classifier size when the weights do not say")
    parser.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="normalisation mean (default: the weights' preprocessing)")
    parser.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="normalisation std (default: the weights' preprocessing)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    if data:
        parser.add_argument("--data", help="image folder <DIR>/<class>/<image> or CIFAR archive folder (default: "
                                           "$RESNETS_DATA, else the data the weights' recipe trained on)")
        parser.add_argument("--val-size", type=int,
                            help="images the train/validation split holds out, as in training (default: the weights' "
                                 f"recipe's data.val_size, else {DataConfig.val_size})")
        parser.add_argument("--split-seed", type=int,
                            help="seed of the split (default: the weights' recipe's data.split_seed, else "
                                 f"{DataConfig.split_seed})")


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export to ONNX, TorchScript or PT2 (dynamic batch), checked")
    _common(p)
    p.add_argument("--format", choices=["onnx", "torchscript", "pt2"], help="default: from --out's suffix")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--size", type=int, help="input side (default: the model's)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch dimension")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime check")
    p.add_argument("--check-images", type=int, default=256, help="validation images for the ONNX check")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest acceptable |logit difference|")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser("quantize", help="int8 static quantization (or QAT), accuracy before/after")
    _common(p)
    p.add_argument("--calibration", type=int, default=512, help="training images for calibration")
    p.add_argument("--val", type=int, default=2000,
                   help="validation images for the accuracy check, drawn from the split's held-out part")
    p.add_argument("--max-drop", type=float, default=0.5, help="warn when top-1 drops more (points)")
    p.add_argument("--strict", action="store_true", help="exit 3 when the drop exceeds --max-drop")
    p.add_argument("--qat-epochs", type=int, default=0, help="quantization-aware training epochs (0: PTQ)")
    p.add_argument("--qat-images", type=int, default=0, help="training images for QAT")
    p.add_argument("--lr", type=float, default=1e-3, help="QAT learning rate")
    p.add_argument("--out", help="save the int8 model as TorchScript")
    p.set_defaults(func=run_quantize)

    p = subparsers.add_parser("prune", help="structured or unstructured pruning with a short fine-tune")
    _common(p)
    p.add_argument("--method", choices=["structured", "unstructured"], default="structured")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of channels / weights removed")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs over --train-images")
    p.add_argument("--train-images", type=int, default=5000, help="training images for fine-tuning")
    p.add_argument("--val", type=int, default=2000, help="validation images, drawn from the split's held-out part")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate")
    p.add_argument("--out", help=".safetensors (unstructured), .pt2, .onnx or .pt")
    p.set_defaults(func=run_prune)

    p = subparsers.add_parser("explain", help="Grad-CAM heatmap overlays (PNG) for images")
    _common(p, data=False)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="folder for the PNG overlays")
    p.add_argument("--layer", help="module to explain (default: the last stage)")
    p.add_argument("--class", dest="target_class", type=int, help="explain this class (default: the prediction)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--scale", type=int, default=4, help="enlarge overlays by this factor (32x32 is tiny)")
    p.set_defaults(func=run_explain)

    from ..deploy.bench import DEFAULT_VARIANTS, VARIANTS  # the names only: torch is imported already

    bench = subparsers.add_parser("bench", help="benchmarks")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    p = sub.add_parser("infer", help="inference: torchvision eager vs ours eager/channels-last/compiled/int8/ORT "
                                     "(CPU) or compiled/bf16 (GPU)")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, help="input side (default: the model's, 224 for resnet50)")
    p.add_argument("--batch", type=int, default=32, help="batch size for throughput")
    p.add_argument("--iters", type=int, default=10, help="timed calls per measurement (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (compilation happens here)")
    p.add_argument("--variants", help="comma-separated subset of: " + ",".join(VARIANTS) + " (default: "
                   + ",".join(DEFAULT_VARIANTS["cpu"]) + "; on cuda " + ",".join(DEFAULT_VARIANTS["cuda"]) + ")")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU figures (fp32, compiled, bf16)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--data", help="real images for int8 calibration, from the training part of the split "
                                  "(default: $RESNETS_DATA)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_bench_infer)
