"""Types for the commands' numeric options: argparse refuses a bad value naming the option (exit 2)
instead of passing it on to fail far from it, or not at all. Found by probing each option: a batch
size of 0 raised range()'s ValueError and -1 scored "top-1 0.0000 on 0 images" with exit 0;
``--topk -1`` was a RuntimeError from topk; ``--timeout nan`` started a server that answered every
request 504 ("no answer within nan s"), since ``nan <= 0`` is False."""

from __future__ import annotations

import argparse
import math


def integer(minimum: int):
    """A whole number ``>= minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def number(minimum: float | None = None, *, above: bool = False, infinite: bool = False):
    """A real number, never NaN; ``>= minimum`` (``> minimum`` with ``above``); infinity only where
    it means "no limit" (``infinite``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if math.isnan(value) or (math.isinf(value) and not infinite):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if minimum is not None and (value < minimum or (above and value == minimum)):
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {minimum:g}, got {text}")
        return value
    return parse
