"""OpenMP's wait policy on a shared CPU: ResNet-20 training steps and batch-1 inference with libgomp's
default (spin about 3 ms at each barrier before sleeping) and with ``OMP_WAIT_POLICY=PASSIVE`` (sleep at
once), on an idle machine and beside busy processes, measured in the same run.

    python benchmarks/bench_omp_wait.py [--busy N] [--int8] [--rounds 2]

Why: PyTorch's CPU kernels run on OpenMP threads that meet at a barrier after every parallel
region. When another process holds a core, a thread that reaches the barrier first spins for its
whole time slice waiting for one that is not running, so every operator costs a scheduler slice:
beside two busy processes this benchmark measured 207.6 img/s for a 2-thread training step with the
default and 321.6 img/s passive (RESULTS.md also gives worse, ad-hoc cases). On an idle machine, though,
passive waiting costs ~9 % of a training step and 3.5x on batch-1 inference (RESULTS.md, "OpenMP's
wait policy"), so the default is left alone and this measures the trade (with a short spin,
``GOMP_SPINCOUNT=10000``, as a third row).

The policy is read once, when libgomp loads (with ``import torch``), so each measurement runs in a
fresh process with the environment set. ``--busy N`` starts N single-threaded processes multiplying
matrices (default: one per core) for the loaded rows. A benchmark, not a test: the figures depend on
the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# libgomp's wait before a thread sleeps: ~300,000 spins (~3 ms) by default, none when passive, ~0.1 ms
# with GOMP_SPINCOUNT=10000 (libgomp's env.c; the spin rate depends on the CPU).
POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin 10k": {"GOMP_SPINCOUNT": "10000"}}

# A neighbour like another training job: one thread multiplying matrices without end.
BUSY = "import torch; torch.set_num_threads(1); a = torch.randn(512, 512)\nwhile True: a @ a"


def measure(int8: bool) -> dict[str, float]:
    """In this process (its OpenMP policy already fixed): training img/s of ResNet-20 at batch 128 in
    fp32 channels-last through the engine's own step, and batch-1 forward milliseconds, eager fp32 and
    (``int8``) PT2E int8, each the median of repeated timings after warm-up calls."""
    import torch

    import resnets
    from resnets.deploy.api import latency_ms
    from resnets.train.engine import train_step
    from resnets.train.host_memory import keep_freed_memory

    keep_freed_memory()  # as the engine does, so both policies see the same allocator
    torch.manual_seed(0)
    model = resnets.create_model("resnet20").to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, fused=True)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    times = []
    for i in range(13):
        start = time.perf_counter()
        train_step(model, [(x, y)], opt, 0.1, raw_model=model)
        if i >= 3:  # three warm-up steps
            times.append(time.perf_counter() - start)
    out = {"train img/s": 128 / statistics.median(times)}
    model.eval()
    out["fp32 batch-1 ms"] = latency_ms(model, (3, 32, 32), iters=30)
    if int8:
        from resnets.deploy.quantize import quantize_int8

        q = quantize_int8(model, torch.randn(64, 3, 32, 32), "pt2e")
        out["int8 batch-1 ms"] = latency_ms(q, (3, 32, 32), iters=30)
    return out


def child(policy: str, int8: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy])
    cmd = [sys.executable, __file__, "--child"] + (["--int8"] if int8 else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # say why (torchao missing for --int8, say) instead of a bare exit status
        sys.exit(f"the {policy} measurement failed (exit status {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=os.cpu_count(), help="busy processes for the loaded rows")
    parser.add_argument("--int8", action="store_true", help="also time PT2E int8 inference (needs torchao)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of them is shown")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.int8)))
        return
    import torch

    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for load in ("idle", f"{args.busy} busy"):
        hogs = [] if load == "idle" else [
            subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
        try:
            for _ in range(args.rounds):
                for policy in POLICIES:
                    results.setdefault((load, policy), []).append(child(policy, args.int8))
        finally:
            for h in hogs:
                h.kill()
                h.wait()
    metrics = list(next(iter(results.values()))[0])

    def best(load: str, policy: str, metric: str) -> float:
        # the best of the rounds: other work on a shared machine only slows a measurement down
        values = [r[metric] for r in results[(load, policy)]]
        return max(values) if metric.endswith("/s") else min(values)

    print("| machine | policy | " + " | ".join(metrics) + " |")
    print("|---|---|" + "---:|" * len(metrics))
    for load, policy in results:
        cells = []
        for m in metrics:
            value, base = best(load, policy, m), best(load, "default", m)
            gain = value / base if m.endswith("/s") else base / value  # > 1: better than the default
            cells.append(f"{value:.1f}" if policy == "default" else f"{value:.1f} ({gain:.2f}x)")
        print(f"| {load} | {policy} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
