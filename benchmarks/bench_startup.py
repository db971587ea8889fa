"""Start-up time of the command line against the floor, ``import torch`` (issue 18, item 2).

Each command runs in a fresh interpreter, the commands interleaved so that a machine busy with
other work slows them alike; the median of ``--runs`` wall-clock times is printed, and its ratio
to ``python -c "import torch"``. The goal: ``resnets --help`` and ``resnets models`` within 1.3x.

    nice -n 19 python benchmarks/bench_startup.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

COMMANDS = {
    "import torch": ["-c", "import torch"],
    "import resnets": ["-c", "import resnets"],
    "resnets --help": ["-m", "resnets", "--help"],
    "resnets models": ["-m", "resnets", "models"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (median)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # This checkout's code, whatever is installed; one thread as for any short command on a shared machine.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, argv in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, *argv], env=env, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    floor = statistics.median(times["import torch"])
    rows = {name: {"median_s": statistics.median(t), "ratio": statistics.median(t) / floor, "runs_s": t}
            for name, t in times.items()}
    if args.json:
        print(json.dumps({"runs": args.runs, "load_average": os.getloadavg(), "commands": rows}, indent=2))
        return 0
    print(f"median of {args.runs} runs each; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for name, row in rows.items():
        print(f"{name:>16}: {row['median_s']:6.2f} s  {row['ratio']:.2f}x import torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
