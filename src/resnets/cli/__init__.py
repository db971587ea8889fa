"""The ``resnets`` command: a thin layer over the library API.

Each subcommand lives in its own module with ``register(subparsers)``, which adds a parser
and sets ``func`` to a function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `resnets --help` lists them.
COMMAND_MODULES = ["models", "data", "train", "transfer", "deploy", "study", "serve"]


class UsageError(Exception):
    """Bad input from the user: printed as ``resnets: error: ...`` with exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="resnets", description="Build, train, transfer, explain, compress and serve residual networks."
    )
    parser.add_argument("--version", action="version", version=f"resnets {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, FileNotFoundError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"resnets {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnets {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
