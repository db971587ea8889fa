"""Training throughput of ResNet-20 on CIFAR-10, batch 128: the resnets engine against a
torchvision-style reference loop (ImageFolder + DataLoader + per-sample transforms + eager step),
measured in the same run, plus the fraction of this machine's fp32 matmul rate the engine reaches,
and the fraction the network's convolutions alone would reach (each timed by itself: the ceiling
that these kernels put on any engine).

    python benchmarks/bench_train.py --data ../shared/datasets/cifar10-jpeg/train [--steps 40] [--device cpu]

Training FLOPs per image are taken as 3 x forward (forward, plus backward for activations and for
weights), forward FLOPs = 2 x MACs from ``resnets.profile``. A benchmark, not a test: numbers depend
on the machine and on what else runs on it (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F

import resnets
from resnets.train.host_memory import keep_freed_memory


def matmul_rate(device: torch.device, n: int = 2048, repeats: int = 4, rounds: int = 5, dtype=torch.float32) -> float:
    """Measured FLOP/s of an n x n matrix product in ``dtype`` (the machine's practical peak): the
    best of ``rounds`` timings of ``repeats`` products, as a shared CPU's other work only slows it."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _best(device, torch.matmul, a, b, rounds=rounds, repeats=repeats)


def conv_time(model: torch.nn.Module, batch: int, device: torch.device, channels_last: bool = True) -> dict[str, float]:
    """Seconds per training step that ``model``'s convolutions alone need at ``batch``: each layer's
    forward, input-gradient and weight-gradient convolution timed by itself (best of 5) on its own
    input shape, summed over the layers. The step cannot be faster than this with these kernels,
    whatever the engine does around them, so ``batch * train_flops / sum`` is the ceiling of the
    goal's ratio on this machine (issue 13)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    total = {"forward": 0.0, "input gradient": 0.0, "weight gradient": 0.0}
    for conv, shape in _inputs_of(model, torch.nn.Conv2d):
        x = torch.randn(batch, *shape[1:], device=device).contiguous(memory_format=fmt)
        w = conv.weight.detach().to(device).contiguous(memory_format=fmt)
        y = F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        g = torch.randn_like(y).contiguous(memory_format=fmt)
        back = torch.ops.aten.convolution_backward
        common = ([0], conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups)
        total["forward"] += _best(device, F.conv2d, x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        if conv is not model.conv1:  # the stem's input is the image: no gradient is computed for it
            total["input gradient"] += _best(device, back, g, x, w, *common, [True, False, False])
        total["weight gradient"] += _best(device, back, g, x, w, *common, [False, True, False])
    return total


def bn_relu_time(model: torch.nn.Module, batch: int, device: torch.device, channels_last: bool = True) -> tuple[float, float]:
    """Seconds per training step of ``model``'s batch-norm layers (training mode) each followed by a
    ReLU, forward and backward, each layer timed alone in eager mode; and of one read-and-write pass
    over the same activations (a copy): the memory traffic that any fused version still pays."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    layers = passes = 0.0
    for _, shape in _inputs_of(model, torch.nn.BatchNorm2d):
        x = torch.randn(batch, *shape[1:], device=device).contiguous(memory_format=fmt).requires_grad_()
        grad = torch.randn_like(x)
        layers += _best(device, _bn_relu_step, torch.nn.BatchNorm2d(shape[1]).to(device).train(), x, grad)
        passes += _best(device, torch.Tensor.copy_, torch.empty_like(grad), grad)
    return layers, passes


def _bn_relu_step(norm: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    torch.relu(norm(x)).backward(grad)


def _inputs_of(model: torch.nn.Module, kind: type) -> list[tuple[torch.nn.Module, torch.Size]]:
    """``model``'s layers of ``kind`` with the shapes of their inputs for one 32x32 image."""
    shapes: list[tuple[torch.nn.Module, torch.Size]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, i[0].shape)))
             for m in model.modules() if isinstance(m, kind)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    return shapes


def _best(device: torch.device, fn, *args, rounds: int = 5, repeats: int = 3) -> float:
    """Seconds of one ``fn(*args)``: the best of ``rounds`` means of ``repeats`` calls."""
    fn(*args)
    best = float("inf")
    for _ in range(rounds):
        _sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            fn(*args)
        _sync(device)
        best = min(best, (time.perf_counter() - t) / repeats)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_rate(data: str, steps: int, device: str, out: str, channels_last: bool = True, compile: bool = False,
                warmup: int = 5, precision: str = "fp32") -> float:
    """img/s of resnets.train's steps after `warmup` (data + step, no validation; compilation is
    in the warm-up steps, not in the figure)."""
    from resnets.train import train

    marks: dict[int, float] = {}

    def clock(info) -> None:
        if info.step in (warmup, warmup + steps):
            _sync(torch.device(device))
            marks[info.step] = time.perf_counter()

    train(None, overrides=[
        f"data.path={data}", "data.val_size=0", f"train.steps={warmup + steps}", "train.batch_size=128",
        f"train.device={device}", "optim.lr=0.1", "schedule.name=constant", f"out_dir={out}", "name=engine",
        # channels-last: oneDNN's NHWC convolutions are ~1.3x faster on this CPU than NCHW (measured).
        f"train.channels_last={str(channels_last).lower()}", f"train.compile={str(compile).lower()}",
        f"train.precision={precision}", "train.progress=false", "train.tensorboard=false", "train.plots=false"], callbacks=[clock])
    return steps * 128 / (marks[warmup + steps] - marks[warmup])


def reference_rate(data: str, steps: int, device: torch.device, warmup: int = 3) -> float:
    """The loop of torchvision's reference scripts and most tutorials, on the same images."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ])
    ds = datasets.ImageFolder(data, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, drop_last=True,
                                         num_workers=min(4, os.cpu_count() or 1), persistent_workers=True,
                                         pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = resnets.create_model("resnet20").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    it = iter(loader)
    n = 0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # as the usual logging does: one sync per step
        n += len(y) if i >= warmup else 0
    _sync(device)
    return n / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("RESNETS_DATA"),
                        help="CIFAR-10 image folder or archive folder (default: $RESNETS_DATA)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps of 128 images for each loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nchw", action="store_true", help="engine without channels-last (as the reference)")
    parser.add_argument("--compile", action="store_true", help="engine with train.compile=true (inductor)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                        help="the engine's train.precision (the reference stays fp32); the goal's ratio is "
                             "always against the fp32 matmul rate, and bf16's own rate is printed beside it")
    args = parser.parse_args()
    if not args.data:
        parser.error("no data: pass --data DIR (CIFAR-10 images, e.g. ../shared/datasets/cifar10-jpeg/train) "
                     "or set RESNETS_DATA")
    device = torch.device(args.device)

    model = resnets.create_model("resnet20")
    macs = resnets.profile(model, 32).macs
    train_flops = 3 * 2 * macs  # per image
    peak = matmul_rate(device)
    print(f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"resnet20: {macs / 1e6:.1f}M MACs/img forward -> {train_flops / 1e9:.3f} GFLOP/img training; "
          f"measured fp32 matmul rate {peak / 1e9:.1f} GFLOP/s")

    t = time.perf_counter()
    ref = reference_rate(args.data, args.steps, device)
    print(f"reference (ImageFolder + DataLoader + per-sample transforms): {ref:.1f} img/s "
          f"({time.perf_counter() - t:.0f}s incl. setup)")
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        eng = engine_rate(args.data, args.steps, args.device, out, channels_last=not args.nchw, compile=args.compile,
                          precision=args.precision)
    layout = ("NCHW" if args.nchw else "channels-last") + (", compiled" if args.compile else "") + f", {args.precision}"
    print(f"resnets engine (uint8 tensors on device, whole-batch augmentation, {layout}): {eng:.1f} img/s "
          f"({time.perf_counter() - t:.0f}s incl. warm-up and dataset open/decode, cached after the first run)")
    # The engine told glibc to keep freed memory (resnets/train/host_memory.py; the call is idempotent
    # and says whether it applied); the reference ran before, with glibc's defaults, as a loop written
    # by hand would. Its figure with the same setting says how much of the engine's lead that is.
    if device.type == "cpu" and keep_freed_memory():
        again = reference_rate(args.data, args.steps, device)
        print(f"reference again, after the engine set glibc to keep freed memory in this process: {again:.1f} img/s "
              f"(engine / that = {eng / again:.2f}x)")
    convs = conv_time(model, 128, device, channels_last=not args.nchw)  # and these, as the engine runs
    ceiling = 128 / sum(convs.values())
    print("the fp32 convolutions alone, per step of 128: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in convs.items())
          + f" = {ceiling:.0f} img/s if nothing else took time; the engine spends "
          f"{1 - eng / ceiling:.0%} of its step outside them")
    norm, one_pass = bn_relu_time(model, 128, device, channels_last=not args.nchw)
    # The peak is measured again after the loops, and the higher figure kept: on a shared machine one
    # measurement can be low (80.8 and 138.2 GFLOP/s on the same kind of machine, 2026-12-03).
    again = matmul_rate(device)
    print(f"fp32 matmul rate measured again after the loops: {again / 1e9:.1f} GFLOP/s; the ratio uses the "
          f"higher, {max(peak, again) / 1e9:.1f}")
    peak = max(peak, again)
    print(f"engine / reference = {eng / ref:.2f}x; engine reaches {eng * train_flops / peak:.1%} of the fp32 "
          f"matmul rate (reference {ref * train_flops / peak:.1%}); the convolutions alone would reach "
          f"{ceiling * train_flops / peak:.1%}")
    # Issue 13's goal is 75 %: what it leaves for all the work outside the convolutions, against what
    # batch-norm and ReLU take now and the memory traffic that even a fused version of them pays.
    budget = 128 * train_flops / (0.75 * peak) - sum(convs.values())
    print(f"75 % of the matmul rate leaves {budget * 1e3:.0f} ms per step outside the convolutions; batch-norm + "
          f"ReLU, forward and backward, each layer alone: {norm * 1e3:.1f} ms; one read-and-write pass over "
          f"their activations: {one_pass * 1e3:.1f} ms")
    if args.precision != "fp32":
        peak16 = matmul_rate(device, dtype=torch.bfloat16)
        print(f"measured bf16 matmul rate {peak16 / 1e9:.1f} GFLOP/s ({peak16 / peak:.2f}x fp32); the engine reaches "
              f"{eng * train_flops / peak16:.1%} of it")


if __name__ == "__main__":
    main()
