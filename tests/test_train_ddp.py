"""Two gloo processes on CPU train to the same weights as one process with the same global batch."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from resnets.train import train
from resnets.train.config import load_config
from test_train_engine import _nan_once, make_subset


def _config(data, out, name):
    # BatchNorm normalises with statistics of the batch it sees: two processes of 16 images each would
    # use other statistics than one process of 32, so the runs could not agree. SyncBatchNorm fixes that
    # on GPUs only (torch has no CPU kernel for it), so here BN is frozen (eval mode: running statistics,
    # affine parameters still trained) and every other part of the computation is per-image; then
    # DDP's averaged gradient equals the one-process gradient of the global batch up to float rounding.
    # 96 train images / global batch 32: every step is full, so no rank gets padding.
    return load_config(None, [
        f"data.path={data}", "data.val_size=24", f"out_dir={out}", f"name={name}", "train.batch_size=32",
        "train.epochs=2", "train.freeze_bn=true", "model.kwargs={zero_init_last: true}", "optim.lr=0.02",
        "train.label_smoothing=0.1", "train.progress=false", "train.tensorboard=false", "train.plots=false",
        "train.threads=1", "train.device=cpu"])


def _worker(rank: int, world: int, port: int, data: str, out: str, name: str = "ddp",
            nan_on_rank: int | None = None) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        cfg = _config(data, out, name)
        if nan_on_rank is not None:
            cfg.train.skip_nonfinite = True
        train(cfg, callbacks=[_nan_once] if rank == nan_on_rank else [])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(cifar_train_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_subset(cifar_train_dir, tmp_path / "train", 12)  # 120 images: 96 train + 24 val
    one = train(_config(data, tmp_path, "one"))
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(tmp_path)), nprocs=2, join=True)

    a = load_file(str(one.run_dir / "final.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "final.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    # Metrics are reduced over both processes: same numbers of images, nearly the same loss.
    rows_one = (one.run_dir / "metrics.csv").read_text().splitlines()
    rows_ddp = (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()
    assert len(rows_one) == len(rows_ddp) == 3
    last_one, last_ddp = one.history[-1], dict(zip(rows_ddp[0].split(","), rows_ddp[-1].split(",")))
    assert int(last_ddp["step"]) == last_one["step"] == 6
    assert float(last_ddp["train_loss"]) == pytest.approx(last_one["train_loss"], rel=1e-4)
    assert float(last_ddp["val_top1"]) == pytest.approx(last_one["val_top1"], abs=1 / 24 + 1e-9)


def test_a_nonfinite_loss_on_one_process_is_skipped_by_all(cifar_train_dir, tmp_path, monkeypatch):
    """Rank 1 alone sees a NaN loss at step 3. Every rank must skip that batch together: a rank
    skipping alone leaves DDP's gradient all-reduce out of step, and the run hangs or desyncs."""
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_subset(cifar_train_dir, tmp_path / "train", 12)
    context = mp.start_processes(_worker, args=(2, _free_port(), str(data), str(tmp_path), "nan", 1),
                                 nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP run with a NaN loss on one rank did not finish in 240 s (ranks out of step)")
    rows = (tmp_path / "nan" / "metrics.csv").read_text().splitlines()
    last = dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert int(last["step"]) == 5  # 2 epochs of 3 steps, the NaN step skipped by both ranks
    weights = load_file(str(tmp_path / "nan" / "final.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
