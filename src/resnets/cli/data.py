"""``resnets data verify DIR``: decode every file of a dataset folder and report what a loader would see."""

from __future__ import annotations

import json

from ..data import verify_folder
from .options import integer


def run_verify(args) -> int:
    report = verify_folder(args.dir, class_map=args.class_map, workers=args.workers)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        console.print(f"{report['path']}: {report['format']}, {report['num_images']:,} images "
                      f"in {report['num_classes']} classes")
        if report["format"] != "image-folder":
            for split, info in report["splits"].items():
                console.print(f"  {split}: {info['images']:,} images")
        table = Table()
        table.add_column("label", justify="right")
        table.add_column("class")
        table.add_column("images", justify="right")
        for i, (name, count) in enumerate(report["classes"].items()):
            table.add_row(str(i), name, f"{count:,}")
        console.print(table)
        sizes = ", ".join(f"{k} ({v:,})" for k, v in list(report["image_sizes"].items())[:10])
        more = len(report["image_sizes"]) - 10
        console.print(f"image sizes: {sizes}" + (f" and {more} more" if more > 0 else ""), highlight=False)
        console.print("modes: " + ", ".join(f"{k} ({v:,})" for k, v in report["modes"].items()), highlight=False)
        for name in report.get("ignored_files", []):
            console.print(f"ignored (not in a class folder): {name}", highlight=False)
        bad = report["bad_files"]
        console.print(f"bad files: {len(bad) or 'none'}", highlight=False)
        for item in bad:
            console.print(f"  {item['path']}: {item['reason']}", highlight=False, markup=False)
    # Non-zero when something would be skipped, so `resnets data verify DIR && train` stops early.
    return 1 if report["bad_files"] else 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="inspect datasets")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    verify = sub.add_parser(
        "verify", help="decode every image of a folder (or CIFAR archive); report classes, sizes and bad files",
        description="Exit status: 0 when every file decodes, 1 when some would be skipped, 2 on usage errors.")
    verify.add_argument("dir", help="image folder DIR/<class>/<image>, or a CIFAR-10/100 archive folder")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--class-map", help="'natural', or a class-map file (JSON list/dict or one name per line)")
    verify.add_argument("--workers", type=integer(0), default=None,
                        help="decoding processes (default: CPU count, max 8; 0 or 1: in this process)")
    verify.set_defaults(func=run_verify)
