"""Where the fp32 gap to onnxruntime comes from: every convolution of a network timed in
oneDNN (PyTorch's CPU convolution library, as used by ``resnets bench infer``'s compiled
variant) and in onnxruntime's own kernels (MLAS, NCHWc layout), shape by shape.

    python benchmarks/bench_conv_kernels.py --model resnet50 --batch 8 --threads 1

oneDNN: the BN-folded network with weights pre-packed and activations in oneDNN's blocked layout
(``torch.utils.mkldnn``, so no reorder between layers), per-conv times from PyTorch's profiler.
onnxruntime: its profiler's per-node kernel times for the same network (BN folded by ORT's own
graph optimiser, ReLU and additions fused into the conv as ORT does). Both sides: each conv's
fastest of ``--iters`` whole passes after one warm-up pass.
Convolutions are grouped by shape (in, out, kernel, stride, output size); GFLOP/s counts a
multiply-add as 2.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import tempfile
from pathlib import Path

import torch
import torch.utils.mkldnn
from torch import nn

from resnets import create_model
from resnets.deploy import export_onnx, fold_bn


def conv_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each conv's input on one forward pass, by module name."""
    seen, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(
                lambda _m, args, _out, name=name: seen.__setitem__(name, args[0].detach().clone())))
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


def shape_key(in_ch: int, out_ch: int, kernel: int, stride: int, out_hw: int) -> str:
    return f"{in_ch:>4}->{out_ch:<4} k{kernel} s{stride} out {out_hw}x{out_hw}"


def conv_shape(conv: nn.Conv2d, inp: torch.Tensor) -> tuple[str, int]:
    """The conv's group key and its FLOPs (a multiply-add counts 2) on input ``inp``."""
    out_hw = (inp.size(-1) + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    key = shape_key(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], out_hw)
    return key, 2 * inp.size(0) * conv.in_channels * conv.out_channels * out_hw**2 * conv.kernel_size[0] ** 2


def time_onednn(model: nn.Module, x: torch.Tensor, iters: int) -> dict[str, list[float]]:
    """Per-conv times from the profiler over whole forward passes of the blocked-layout model, so
    caches hold what they would in real use (as in onnxruntime's profile); each conv's fastest of
    ``iters`` passes after a warm-up one (the machine is shared: the minimum is the least noisy)."""
    inputs = conv_inputs(model, x)  # insertion order = call order
    blocked = torch.utils.mkldnn.to_mkldnn(copy.deepcopy(model))
    with torch.no_grad():
        blocked(x.to_mkldnn())
        with torch.profiler.profile() as prof:
            for _ in range(iters):
                blocked(x.to_mkldnn())
    events = [e for e in prof.events() if e.name == "aten::mkldnn_convolution"]
    if len(events) != iters * len(inputs):
        raise RuntimeError(f"profiled {len(events)} oneDNN convolutions for {iters} x {len(inputs)} Conv2d calls")
    times = collections.defaultdict(list)
    for i, (name, inp) in enumerate(inputs.items()):
        key, _ = conv_shape(model.get_submodule(name), inp)
        times[key].append(min(e.cpu_time_total for e in events[i::len(inputs)]) / 1e3)
    return times


def time_onnxruntime(model: nn.Module, x: torch.Tensor, iters: int, threads: int) -> dict[str, list[float]]:
    import onnxruntime as ort

    folder = Path(tempfile.mkdtemp())
    path = export_onnx(model, x[:1], folder / "model.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(iters + 1):
        session.run(None, {"input": x.numpy()})
    events = json.loads(Path(session.end_profiling()).read_text())
    convs = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
             and e["args"].get("op_name") == "Conv"]
    per_run = len(convs) // (iters + 1)
    convs = convs[per_run:]  # the first run warms up, as for oneDNN
    times = collections.defaultdict(list)
    for i, event in enumerate(convs[:per_run]):
        event = {**event, "dur": min(e["dur"] for e in convs[i::per_run])}  # fastest of the runs
        inputs, output = event["args"]["input_type_shape"], event["args"]["output_type_shape"][0]
        weight = next(iter(inputs[1].values()))
        # Activations may be NCHW or ORT's NCHWc ([N, C/8, H, W, 8]): H is dimension 2 in both.
        in_hw, out_hw = next(iter(inputs[0].values()))[2], next(iter(output.values()))[2]
        key = shape_key(weight[1], weight[0], weight[-1], max(1, round(in_hw / out_hw)), out_hw)
        times[key].append(event["dur"] / 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = create_model(args.model).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    onednn = time_onednn(fold_bn(model), x, args.iters)
    ort_times = time_onnxruntime(model, x, args.iters, args.threads)

    flops = dict(conv_shape(model.get_submodule(name), inp) for name, inp in conv_inputs(model, x).items())

    print(f"{args.model}, batch {args.batch}, {args.threads} thread(s), {args.size}x{args.size}; "
          f"ms per shape group (all its convs), GFLOP/s per conv")
    print(f"{'conv':32} {'n':>3} {'oneDNN ms':>10} {'GFLOP/s':>8} {'ORT ms':>8} {'GFLOP/s':>8} {'ORT/oneDNN speed':>17}")
    total_dnn = total_ort = 0.0
    for key in sorted(onednn, key=lambda k: -sum(onednn[k])):
        dnn, ort_ms = sum(onednn[key]), sum(ort_times.get(key, [float("nan")]))
        n = len(onednn[key])
        total_dnn += dnn
        total_ort += ort_ms
        print(f"{key:32} {n:>3} {dnn:>10.1f} {n * flops[key] / dnn / 1e6:>8.1f} {ort_ms:>8.1f} "
              f"{n * flops[key] / ort_ms / 1e6:>8.1f} {dnn / ort_ms:>16.2f}x")
    unmatched = set(ort_times) - set(onednn)
    if unmatched:
        print(f"onnxruntime shapes not matched: {sorted(unmatched)}")
    print(f"{'all convolutions':32} {'':>3} {total_dnn:>10.1f} {sum(n * f for k, f in flops.items() for n in [len(onednn[k])]) / total_dnn / 1e6:>8.1f} "
          f"{total_ort:>8.1f} {'':>8} {total_dnn / total_ort:>16.2f}x")


if __name__ == "__main__":
    main()
