"""Where the time of one training step goes: the engine's own pieces (BatchLoader augmentation,
``train_step``: forward, loss, backward, optimizer, EMA; the per-step finiteness check) under
``torch.profiler``, ResNet-20 on real CIFAR-10 images at batch 128 by default.

    python benchmarks/profile_train_step.py --data DIR [--steps 20] [--batch 128] [--nchw] [--compile] [--glibc-malloc]
        [--kernels N] [--inductor KEY=VALUE ...]

Each operator's self time is attributed to the step phase (``record_function`` range) it ran in and
to a kind (convolution, batch-norm, ReLU, add, ...); "Python and framework" is the wall time of the
steps not covered by any operator. ``--kernels N`` lists the N operators with the most self time,
inductor's fused kernels among them by name when compiled; ``--inductor`` sets ``torch._inductor.config``
keys (``cpp.use_two_step_variance_threshold=10**9`` is written ``1000000000``) to compare code generation
choices. A benchmark, not a test: shares depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import resnets
from resnets.data import make_loader, open_dataset, split_train_val
from resnets.train.config import OptimConfig
from resnets.train.engine import _first_nonfinite, train_step
from resnets.train.host_memory import keep_freed_memory
from resnets.train.optim import EMA, build_optimizer

KINDS = [  # (kind, operator-name pattern); first match wins
    # Compiled: inductor's kernels fuse batch-norm, ReLU and the adds (their names may say convolution_backward).
    ("inductor's fused kernels", r"^graph_\d+_cpp_fused"),
    ("convolution", r"conv|mkldnn_convolution"),
    ("batch-norm", r"batch_norm"),
    ("ReLU", r"relu|threshold_backward|clamp_min"),
    ("residual add / grad accumulation", r"^aten::add_?$"),
    ("loss", r"cross_entropy|log_softmax|nll_loss|_softmax"),
    ("pooling / fc", r"avg_pool|adaptive_avg|mean|addmm|linear|^aten::mm$|pad|cat|slice"),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other operators"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("RESNETS_DATA"), help="CIFAR-10 image folder (or RESNETS_DATA)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="profiled steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--nchw", action="store_true", help="contiguous NCHW instead of channels-last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: autocast, as train.precision=bf16 (fast only where the CPU has AVX512_BF16/AMX)")
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="leave glibc's malloc as it is (the engine keeps freed memory: train/host_memory.py)")
    parser.add_argument("--kernels", type=int, default=0, metavar="N",
                        help="also list the N operators (inductor's kernels by name, when compiled) with the most self time")
    parser.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                        help="with --compile: set a torch._inductor.config key to a Python literal, "
                             "e.g. cpp.enable_unsafe_math_opt_flag=True (repeatable)")
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data DIR or set RESNETS_DATA")
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # each fused kernel a profiler event of its own
        for item in args.inductor:
            key, _, value = item.partition("=")
            *path, name = key.split(".")
            section = inductor_config
            for part in path:
                section = getattr(section, part)
            if not hasattr(section, name):
                parser.error(f"--inductor {item}: torch._inductor.config has no key {key!r}")
            setattr(section, name, ast.literal_eval(value))
    elif args.inductor:
        parser.error("--inductor needs --compile")
    if not args.glibc_malloc:
        keep_freed_memory()  # as resnets.train does on a CPU

    dataset = open_dataset(args.data, split="train")
    train_ds, _ = split_train_val(dataset, val_size=5000, seed=0)
    channels_last = not args.nchw
    loader = make_loader(train_ds, args.batch, train=True, seed=0, channels_last=channels_last)
    torch.manual_seed(0)
    raw = resnets.create_model(args.model, num_classes=len(dataset.info.classes))
    raw.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format).train()
    model = torch.compile(raw) if args.compile else raw
    optimizer = build_optimizer(raw, OptimConfig(lr=0.1, nesterov=True, weight_decay=5e-4))
    ema = EMA(raw, 0.998)

    batches = iter(loader)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else None

    def one_step():
        with record_function("step/augment"):
            x, y = next(batches)
        train_step(model, [(x, y)], optimizer, 0.1, raw_model=raw, ema=ema, label_smoothing=0.1, autocast=autocast)
        with record_function("step/finite-check"):
            _first_nonfinite(raw, ema)

    for _ in range(args.warmup):
        one_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(args.steps):
            with record_function("step"):
                one_step()
        wall = time.perf_counter() - t

    events = prof.events()
    ranges = sorted((e.time_range.start, e.time_range.end, e.name.split("/", 1)[1])
                    for e in events if e.name.startswith("step/"))
    per = defaultdict(float)  # (phase, kind) -> self µs
    for e in events:
        if e.name.startswith("step") or e.self_cpu_time_total <= 0:
            continue
        start = e.time_range.start
        phase = next((name for lo, hi, name in ranges if lo <= start < hi), "between phases")
        per[(phase, kind_of(e.name) if phase in ("forward", "backward") else "")] += e.self_cpu_time_total
    total_us = wall * 1e6
    covered = sum(per.values())
    print(f"{args.model}, batch {args.batch}, {'NCHW' if args.nchw else 'channels-last'}"
          f"{', compiled' if args.compile else ''}, {args.precision}; {args.steps} steps, {wall / args.steps * 1e3:.1f} ms/step "
          f"({args.steps * args.batch / wall:.0f} img/s); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print("| phase | kind | ms/step | share |\n|---|---|---:|---:|")
    order = ["augment", "forward", "backward", "optimizer", "ema", "finite-check", "between phases"]
    for (phase, kind), us in sorted(per.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order
                                                                  else 99, -kv[1])):
        print(f"| {phase} | {kind or '(all)'} | {us / args.steps / 1e3:.2f} | {us / total_us:.1%} |")
    rest = total_us - covered
    print(f"| Python and framework | (wall time outside any operator) | {rest / args.steps / 1e3:.2f} | "
          f"{rest / total_us:.1%} |")
    if args.kernels:
        print("\n| operator or kernel | calls/step | ms/step | share |\n|---|---:|---:|---:|")
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:args.kernels]:
            print(f"| {e.key[:100]} | {e.count / args.steps:g} | {e.self_cpu_time_total / args.steps / 1e3:.2f} | "
                  f"{e.self_cpu_time_total / total_us:.1%} |")
    if args.inductor:
        print(f"inductor config: {', '.join(args.inductor)}")


if __name__ == "__main__":
    main()
