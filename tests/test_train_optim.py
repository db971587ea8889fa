"""Optimizer parameter groups, the schedules written out in resnets.train.optim, and the EMA."""

from __future__ import annotations

import math
import os

import pytest
import torch

import resnets
from resnets.train.config import OptimConfig, ScheduleConfig
from resnets.train.optim import EMA, Schedule, build_optimizer, param_groups


def test_no_weight_decay_on_batchnorm_or_bias():
    model = resnets.create_model("resnet20")
    decay, no_decay = param_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(n.endswith("weight") and "bn" not in n for n in decayed)
    assert "fc.weight" in decayed and "conv1.weight" in decayed
    assert {"fc.bias", "bn1.weight", "bn1.bias"} <= {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_optimizers(name, cls):
    opt = build_optimizer(resnets.create_model("resnet20"), OptimConfig(name=name, lr=0.01, nesterov=name == "sgd"))
    assert isinstance(opt, cls) and opt.param_groups[1]["weight_decay"] == 0.0


def test_paper_multistep():
    s = Schedule(ScheduleConfig(name="multistep", milestones=[32000, 48000], gamma=0.1), 0.1, 64000, 352)
    assert s.lr(0) == 0.1 and s.lr(31999) == 0.1
    assert math.isclose(s.lr(32000), 0.01) and math.isclose(s.lr(47999), 0.01)
    assert math.isclose(s.lr(48000), 0.001) and math.isclose(s.lr(63999), 0.001)


def test_keras_schedule_by_epoch():
    cfg = ScheduleConfig(name="multistep", unit="epoch", milestones=[81, 121, 161, 181],
                         factors=[0.1, 0.01, 0.001, 0.0005])
    per_epoch = 10
    s = Schedule(cfg, 1e-3, 200 * per_epoch, per_epoch)
    lr_of_epoch = {e: s.lr(e * per_epoch + 5) for e in (0, 80, 81, 120, 121, 160, 161, 180, 181, 199)}
    expected = {0: 1e-3, 80: 1e-3, 81: 1e-4, 120: 1e-4, 121: 1e-5, 160: 1e-5, 161: 1e-6, 180: 1e-6,
                181: 5e-7, 199: 5e-7}
    for e, lr in expected.items():
        assert math.isclose(lr_of_epoch[e], lr, rel_tol=1e-9), (e, lr_of_epoch[e], lr)
    # Within an epoch the lr does not move (Keras sets it once per epoch).
    assert s.lr(81 * per_epoch) == s.lr(81 * per_epoch + per_epoch - 1)


def test_cosine_with_warmup():
    s = Schedule(ScheduleConfig(name="cosine", warmup=10, min_lr=0.0), 1.0, 110, 10)
    assert math.isclose(s.lr(0), 0.1) and math.isclose(s.lr(9), 1.0)
    assert math.isclose(s.lr(10), 1.0) and math.isclose(s.lr(60), 0.5) and s.lr(110) < 1e-12
    assert all(s.lr(i) >= s.lr(i + 1) for i in range(10, 110))


def test_warmup_in_epochs_rises_every_step_then_milestones_hold_per_epoch():
    cfg = ScheduleConfig(name="multistep", unit="epoch", warmup=1, milestones=[3, 4], gamma=0.1)
    s = Schedule(cfg, 0.1, 6 * 78, 78)
    assert math.isclose(s.lr(0), 0.1 / 78) and math.isclose(s.lr(38), 0.1 * 39 / 78)
    assert math.isclose(s.lr(77), 0.1) and s.lr(78) == 0.1
    assert math.isclose(s.lr(3 * 78), 0.01) and math.isclose(s.lr(4 * 78 + 5), 0.001)


def test_onecycle_shape():
    cfg = ScheduleConfig(name="onecycle", pct_start=0.25, div_factor=25, final_div_factor=1e4)
    s = Schedule(cfg, 0.4, 100, 10)
    assert math.isclose(s.lr(0), 0.4 / 25) and math.isclose(s.lr(25), 0.4)
    assert math.isclose(s.lr(100), 0.4 / 25 / 1e4)
    lrs = [s.lr(i) for i in range(101)]
    assert max(lrs) == lrs[25] and lrs[10] < lrs[20] and lrs[50] > lrs[90]


def test_plateau_reduces_after_patience_and_restores():
    cfg = ScheduleConfig(name="constant", plateau_factor=0.5, plateau_patience=2, plateau_min_lr=0.01)
    s = Schedule(cfg, 0.1, 100, 10)
    for loss in (1.0, 0.9, 0.95, 0.95):  # best 0.9, then two bad epochs
        s.epoch_end(loss, higher_is_better=False)
    assert math.isclose(s.lr(50), 0.05)
    for _ in range(10):
        s.epoch_end(2.0, higher_is_better=False)
    assert s.lr(50) == 0.01  # floor
    again = Schedule(cfg, 0.1, 100, 10)
    again.load_state_dict(s.state_dict())
    assert again.lr(50) == s.lr(50) and again.state_dict() == s.state_dict()


def test_ema_averages_parameters_and_bn_statistics_and_copies_counters():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.5)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)  # decay min(0.5, 2/11) = 2/11
    d = 2 / 11
    assert torch.allclose(ema.state["0.weight"], start * d + (start + 1) * (1 - d))
    # The running statistics are averaged like the weights they normalise (timm's ModelEmaV2/V3),
    # not copied from the live network: 0 * d + 3 * (1 - d).
    assert torch.allclose(ema.state["1.running_mean"], torch.full((2,), 3.0 * (1 - d)))
    assert ema.state["1.num_batches_tracked"].item() == 7  # an integer counter: copied
    # The average lives in its own tensors: the live model is untouched.
    assert torch.equal(model[1].running_mean, torch.full((2,), 3.0))


def test_precision_auto_is_bf16_exactly_where_the_hardware_has_it():
    from resnets.train.engine import cpu_has_native_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    assert cpu_has_native_bf16() == (" avx512_bf16" in flags or " amx_bf16" in flags)
    for fixed in ("fp32", "bf16", "fp16"):
        assert resolve_precision(fixed, cpu) == fixed
    assert resolve_precision("auto", torch.device("mps")) == "fp32"


def test_linear_decay_to_zero_and_warmup_stable_decay():
    s = Schedule(ScheduleConfig(name="linear", warmup=10), 1.0, 110, 10)  # linear to zero after warm-up
    assert math.isclose(s.lr(9), 1.0) and math.isclose(s.lr(10), 1.0)
    assert math.isclose(s.lr(60), 0.5) and s.lr(110) == 0.0
    wsd = ScheduleConfig(name="linear", warmup=10, decay_frac=0.2)
    short, long = Schedule(wsd, 1.0, 110, 10), Schedule(wsd, 1.0, 210, 10)
    # The decay spans the last 20 of the 100 post-warm-up steps: held at lr0 until step 90.
    assert short.lr(90) == 1.0 and math.isclose(short.lr(100), 0.5) and short.lr(110) == 0.0
    # Before the short run's decay, both lengths give the same lr: stopping and extending is exact.
    assert [short.lr(i) for i in range(91)] == [long.lr(i) for i in range(91)]
    assert long.lr(170) == 1.0 and math.isclose(long.lr(190), 0.5)
