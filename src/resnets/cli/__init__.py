"""The ``resnets`` command: a thin layer over the library API.

Each subcommand lives in its own module with ``register(subparsers)``, which adds a parser
and sets ``func`` to a function taking the parsed arguments and returning an exit code.

Exit codes: 0 success; 2 a usage error (a bad option or value, a file the user named that is not
there), printed as one line; 1 anything else, with its traceback, since it is a bug or a failure of
the machine rather than something the user can fix by retyping (issue 14, item 5), except a failed write
(a full disk, a file-size limit), which is said in one line with exit 1; 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import InputError
from ..weights_io import WriteError

# Subcommand modules, in the order `resnets --help` lists them.
COMMAND_MODULES = ["models", "data", "train", "transfer", "deploy", "study", "serve"]


class UsageError(InputError):
    """Bad input from the user: printed as ``resnets CMD: error: ...`` with exit code 2, no traceback."""


# What counts as the user's mistake. A FileNotFoundError names a file the user gave (our code checks
# the paths it is handed before opening them); a bare ValueError or KeyError is not in the list: it
# comes from a bug or a dependency, and hiding its traceback would hide the bug.
USAGE_ERRORS = (InputError, FileNotFoundError, NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__  # the installed distribution's (package metadata)

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
    except USAGE_ERRORS as exc:
        print(f"resnets {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except WriteError as exc:  # a full disk or a file-size limit: the machine's, but said in words, and the
        # previous file is intact (weights_io.atomic_write); exit 1, as `resnets train` does for its checkpoints
        print(f"resnets {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"resnets {args.command}: interrupted", file=sys.stderr)
        return 130
    # Anything else propagates: Python prints the traceback and exits 1.


if __name__ == "__main__":
    sys.exit(main())
