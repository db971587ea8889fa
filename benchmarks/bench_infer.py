"""CPU inference benchmark; the same as ``resnets bench infer`` (this file passes its arguments on).

    python benchmarks/bench_infer.py --model resnet50 --iters 5 [--json]

See :mod:`resnets.deploy.bench` for what each variant is and how it is timed.
"""

from __future__ import annotations

import sys

from resnets.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "infer", *sys.argv[1:]]))
