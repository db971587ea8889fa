"""``resnets study degradation``: plain vs residual networks on one schedule (He et al. 2015, Fig. 6);
``resnets study brain-seg``: a ResNet-UNet segmenting a real brain scan; ``resnets study detection``:
two-stage and one-stage detectors on residual and plain backbones, on composed CIFAR-10 scenes (issue 16)."""

from __future__ import annotations

import argparse
import json
import os

from ..errors import InputError
from .options import integer, number


def run_degradation(args) -> int:
    from ..study import degradation_study

    data = args.data or os.environ.get("RESNETS_DATA")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    result = degradation_study(
        data, args.out, models=models, epochs=args.epochs, limit=args.limit, full=args.full,
        grad_every=args.grad_every, warmup=args.warmup, zero_init=args.zero_init, seed=args.seed,
    )
    print(result.report.read_text())
    print(f"figures: {', '.join(str(p) for p in result.figures)}")
    return 0


def run_brain_seg(args) -> int:
    from ..study import brain_segmentation_study

    result = brain_segmentation_study(args.out, encoder=args.encoder, epochs=args.epochs, batch_size=args.batch_size,
                                      lr=args.lr, seed=args.seed, limit=args.limit, threads=args.threads)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result, flush=True)
    if not args.json:
        print(f"wrote {result.out_dir / 'report.json'}, {result.figure}, {result.out_dir / 'weights.safetensors'}")
    return 0


def run_detection(args) -> int:
    from ..study import detection_study

    data = args.data or os.environ.get("RESNETS_DATA")
    if not data:
        raise InputError("resnets study detection: pass --data DIR (the CIFAR-10 image folder) or set RESNETS_DATA")
    result = detection_study(
        data, args.out, detectors=_names(args.detectors), backbones=_names(args.backbones), steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, pretrain_epochs=args.pretrain_epochs, held_out=args.held_out,
        seed=args.seed, threads=args.threads, limit=args.limit,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result, flush=True)
    if not args.json:
        print(f"wrote {result.out_dir / 'report.json'}, {result.figure}")
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def register(subparsers) -> None:
    parser = subparsers.add_parser("study", help="experiments: the degradation problem, brain-scan segmentation, "
                                                 "detection")
    studies = parser.add_subparsers(dest="study", metavar="STUDY", required=True)
    deg = studies.add_parser(
        "degradation", help="train plain20/56 and resnet20/56 on one schedule; curves, gradient norms, report"
    )
    deg.add_argument("--data", help="CIFAR-10 image folder or archive (default: $RESNETS_DATA, else the bundled sample)")
    deg.add_argument("--out", default="runs/degradation", help="output folder (default: %(default)s)")
    deg.add_argument("--models", default="plain20,plain56,resnet20,resnet56", help="comma-separated (default: %(default)s)")
    deg.add_argument("--epochs", type=integer(1), default=6, help="reduced schedule: epochs (default: %(default)s)")
    deg.add_argument("--limit", type=integer(0), default=10000, help="reduced schedule: training images (default: %(default)s)")
    deg.add_argument("--full", action="store_true", help="the paper's schedule: 64k iterations on 45k images")
    deg.add_argument("--grad-every", type=integer(1), default=20, help="record gradient norms every N steps")
    deg.add_argument("--warmup", type=integer(0), help="linear lr warm-up for every model: epochs of the reduced schedule "
                     "(default 1), steps of the full one (default 400)")
    deg.add_argument("--zero-init", action=argparse.BooleanOptionalAction, default=None,
                     help="start ResNets' residual branches at zero (default: on for the reduced schedule, "
                     "off for --full, the paper's initialisation)")
    deg.add_argument("--seed", type=int, default=0)
    deg.set_defaults(func=run_degradation)

    seg = studies.add_parser(
        "brain-seg", help="a ResNet-UNet segments grey/white matter and CSF in the MNI152 brain template "
                          "(nilearn, no download); Dice on a held-out slab"
    )
    seg.add_argument("--out", default="runs/brain-seg", help="output folder (default: %(default)s)")
    seg.add_argument("--encoder", default="resnet18", help="zoo network under the decoder (default: %(default)s)")
    seg.add_argument("--epochs", type=integer(1), default=40, help="(default: %(default)s)")
    seg.add_argument("--batch-size", type=integer(1), default=8, help="(default: %(default)s)")
    seg.add_argument("--lr", type=number(0, above=True), default=2e-3, help="AdamW peak lr, cosine to zero (default: %(default)s)")
    seg.add_argument("--limit", type=integer(0), default=0, help="keep this many training slices (0: all)")
    seg.add_argument("--threads", type=integer(0), default=0, help="torch threads (0: torch's default)")
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--json", action="store_true", help="print the result as JSON")
    seg.set_defaults(func=run_brain_seg)

    det = studies.add_parser(
        "detection", help="Faster R-CNN and FCOS on resnet18 vs plain18 FPN backbones, trained on scenes composed "
                          "from real CIFAR-10 images; COCO mAP on held-out scenes ([detection] extra)"
    )
    det.add_argument("--data", help="CIFAR-10 image folder (default: $RESNETS_DATA)")
    det.add_argument("--out", default="runs/detection", help="output folder (default: %(default)s)")
    det.add_argument("--detectors", default="fcos,fasterrcnn",
                     help="comma-separated, among fcos, retinanet, fasterrcnn (default: %(default)s)")
    det.add_argument("--backbones", default="resnet18,plain18", help="comma-separated zoo networks (default: %(default)s)")
    det.add_argument("--steps", type=integer(1), default=300, help="training steps per detector (default: %(default)s)")
    det.add_argument("--batch-size", type=integer(1), default=16, help="scenes per step (default: %(default)s)")
    det.add_argument("--lr", type=number(0, above=True), default=1e-3, help="AdamW peak lr, cosine to zero (default: %(default)s)")
    det.add_argument("--pretrain-epochs", type=number(0), default=1.0,
                     help="epochs of CIFAR-10 classification (the training part) for each backbone before detection; "
                          "0: detectors from scratch (default: %(default)s)")
    det.add_argument("--held-out", type=integer(1), default=500, help="held-out scenes scored (default: %(default)s)")
    det.add_argument("--limit", type=integer(0), default=0, help="source images kept in each part of the split (0: all)")
    det.add_argument("--threads", type=integer(0), default=0, help="torch threads (0: torch's default)")
    det.add_argument("--seed", type=int, default=0)
    det.add_argument("--json", action="store_true", help="print the result as JSON")
    det.set_defaults(func=run_detection)
