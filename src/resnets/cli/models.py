"""``resnets models``: the registry as a table or JSON."""

from __future__ import annotations

import json

from ..profile import zoo_profiles
from ..registry import list_models, model_entry


def model_table(pattern: str | None = None, family: str | None = None) -> list[dict]:
    """One row per registered model: name, family, parameters, MACs at its default input size."""
    rows = []
    names = list_models(pattern, family)
    for name, stats in zoo_profiles(names).items():
        entry = model_entry(name)
        rows.append({
            "name": name, "family": entry.family, "params": stats.params, "macs": stats.macs,
            "input_size": list(entry.input_size), "num_classes": entry.num_classes,
            "description": entry.description,
        })
    return rows


def _human(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def run(args) -> int:
    rows = model_table(args.pattern, args.family)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} models")
    for column in ("name", "family", "params", "MACs", "input"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left")
    for row in rows:
        table.add_row(row["name"], row["family"], f"{row['params']:,}", _human(row["macs"]),
                      "x".join(map(str, row["input_size"][1:])))
    Console().print(table)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the registered models with parameters and MACs")
    parser.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    parser.add_argument("--family", choices=["cifar", "imagenet"], help="only this family")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)
