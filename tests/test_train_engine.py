"""The training engine on real CIFAR-10 images: resume exactness, checkpoints, failures, outputs."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from resnets.errors import InputError
from resnets.train import (
    NonFiniteLossError,
    NonFiniteStateError,
    TrainingError,
    evaluate,
    load_checkpoint,
    predict,
    read_metadata,
    train,
)
from resnets.train.config import load_config


def make_subset(src: Path, dst: Path, per_class: int) -> Path:
    """An image folder with the first ``per_class`` real JPEGs of every class."""
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / class_dir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy(f, dst / class_dir.name / f.name)
    return dst


@pytest.fixture(scope="module")
def subset(cifar_train_dir, tmp_path_factory) -> Path:
    return make_subset(cifar_train_dir, tmp_path_factory.mktemp("cifar") / "train", 12)  # 120 images


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def base(subset: Path, out: Path, *extra: str):
    """resnet20, 96 train / 24 val images, batch 16: 6 steps per epoch."""
    return load_config(None, [
        f"data.path={subset}", "data.val_size=24", f"out_dir={out}", "train.batch_size=16", "train.epochs=2",
        "optim.nesterov=true", "optim.lr=0.05", "schedule.name=cosine", "schedule.warmup=2",
        "train.label_smoothing=0.1", "train.ema_decay=0.9", "train.progress=false", "train.tensorboard=false",
        "train.plots=false", *extra])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final.safetensors"))


def test_interrupted_and_resumed_run_ends_with_identical_weights(subset, tmp_path):
    full = train(base(subset, tmp_path, "name=full"))

    # First interruption: a real Ctrl-C (SIGINT) during step 3: the step finishes, a checkpoint is written.
    def ctrl_c_at_3(info):
        if info.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(base(subset, tmp_path, "name=cut"), callbacks=[ctrl_c_at_3])
    ckpt = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (ckpt["step"], ckpt["loader"]) == (3, {"epoch": 0, "batch": 3})
    assert not (tmp_path / "cut" / "final.safetensors").exists()

    # Second interruption, in the second epoch, by a callback raising KeyboardInterrupt.
    def stop_at_10(info):
        if info.step == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(resume=tmp_path / "cut", callbacks=[stop_at_10])
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["loader"] == {"epoch": 1, "batch": 4}

    resumed = train(resume=tmp_path / "cut")
    a, b = weights(full.run_dir), weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    raw_a = load_checkpoint(full.run_dir / "last.pt")["model"]
    raw_b = load_checkpoint(resumed.run_dir / "last.pt")["model"]
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)
    assert full.history == [{**r, "seconds": full.history[i]["seconds"], "img_per_s": full.history[i]["img_per_s"]}
                            for i, r in enumerate(resumed.history)]


def test_outputs_of_a_run(subset, tmp_path):
    cfg = base(subset, tmp_path, "name=run", "train.tensorboard=true", "train.plots=true", "train.epochs=2",
               "train.ema_decay=0")
    result = train(cfg)
    run = result.run_dir
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.to_dict()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss,train_top1,val_loss,val_top1") and len(rows) == 3
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for png in ("loss.png", "accuracy.png", "lr.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    meta = read_metadata(run / "final.safetensors")
    assert meta["model"] == "resnet20" and meta["classes"][0] == "airplane" and len(meta["mean"]) == 3
    assert meta["metrics"]["step"] == 12 and meta["recipe"]["optim"]["lr"] == 0.05
    best = load_checkpoint(run / "best.pt")
    assert best["best"] == max(r["val_top1"] for r in result.history)
    for key in ("model", "optimizer", "schedule", "scaler", "ema", "epoch", "step", "rng", "loader", "config", "meta"):
        assert key in best
    assert (run / "best.safetensors").exists()

    # Evaluation and prediction from the exported weights, preprocessing from their metadata.
    scores = evaluate(run / "final.safetensors", subset, tta="flip")
    assert scores["n"] == 120 and 0 <= scores["top1"] <= scores["top5"] <= 1
    assert sum(row[i] for i, row in enumerate(scores["confusion"])) == round(scores["top1"] * 120)
    images = sorted((subset / "cat").iterdir())[:3]
    preds = predict(run / "final.safetensors", images, topk=3)
    assert [p["path"] for p in preds] == [str(p) for p in images]
    assert all(len(p["top"]) == 3 and sum(t["prob"] for t in p["top"]) <= 1 + 1e-6 for p in preds)

    with pytest.raises(TrainingError, match="already holds a run"):
        train(cfg)


def _nan_once(info):
    """After step 2, make the model's next forward pass return NaN (once)."""
    if info.step == 2:
        handle = None

        def hook(module, args, output):
            handle.remove()
            return output * math.nan

        handle = info.model.register_forward_hook(hook)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_a_good_checkpoint(subset, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 \(epoch 1, batch 3/6\)") as info:
        train(base(subset, tmp_path, "name=nan"), callbacks=[_nan_once])
    assert str(tmp_path / "nan" / "last.pt") in str(info.value) and "skip_nonfinite" in str(info.value)
    ckpt = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert ckpt["step"] == 2 and ckpt["loader"] == {"epoch": 0, "batch": 2}
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_nonfinite_batch_skipped_when_asked(subset, tmp_path):
    result = train(base(subset, tmp_path, "name=skip", "train.skip_nonfinite=true", "train.epochs=1"),
                   callbacks=[_nan_once])
    assert result.metrics["step"] == 5  # 6 batches, one skipped
    assert all(torch.isfinite(v).all() for v in weights(result.run_dir).values() if v.is_floating_point())


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="not a readable resnets checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_out_of_memory_and_batch_of_one_are_explained(subset, tmp_path):
    def oom_at_2(info):
        if info.step == 2:
            def hook(module, args):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            info.model.register_forward_pre_hook(hook)

    with pytest.raises(TrainingError, match=r"out of memory at step 3 .* train.accumulate=2"):
        train(base(subset, tmp_path, "name=oom"), callbacks=[oom_at_2])
    with pytest.raises(TrainingError, match="batches of one image"):
        train(base(subset, tmp_path, "name=one", "train.batch_size=2", "train.accumulate=2"))


def test_gradient_accumulation_matches_the_full_batch(subset, tmp_path):
    # Same 16 images per optimizer step either way; augmentation off (its draws depend on the loader's
    # batch size) and BN frozen (batch statistics of 8 differ from those of 16), so only float rounding differs.
    common = ("train.epochs=1", "data.crop_padding=0", "data.flip=false", "train.freeze_bn=true",
              "train.ema_decay=0", "model.kwargs={zero_init_last: true}")
    one = train(base(subset, tmp_path, "name=acc1", *common))
    two = train(base(subset, tmp_path, "name=acc2", "train.accumulate=2", *common))
    assert one.metrics["step"] == two.metrics["step"] == 6
    a, b = weights(one.run_dir), weights(two.run_dir)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_checkpoints_its_scaler(subset, tmp_path, precision):
    result = train(base(subset, tmp_path, f"name={precision}", f"train.precision={precision}", "train.steps=2",
                        "train.channels_last=true"))
    assert result.metrics["step"] == 2 and math.isfinite(result.metrics["train_loss"])
    scaler = load_checkpoint(result.run_dir / "last.pt")["scaler"]
    assert (scaler is not None) == (precision == "fp16")


def test_compiled_run_resumes_exactly_and_writes_plain_weights(subset, tmp_path):
    # train.compile=true is how the resnet32/56 files were trained on the AMX machine (issue 13): the
    # checkpoint and the final file must hold the module names without compile's `_orig_mod.`, load into
    # an uncompiled network, and a resume (which compiles again) must end where an unbroken run ends.
    from resnets import create_model

    common = ("train.compile=true", "train.channels_last=true")
    full = train(base(subset, tmp_path, "name=full", *common))

    def stop_at_8(info):
        if info.step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(base(subset, tmp_path, "name=cut", *common), callbacks=[stop_at_8])
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["loader"] == {"epoch": 1, "batch": 2}
    resumed = train(resume=tmp_path / "cut")
    a, b = weights(full.run_dir), weights(resumed.run_dir)
    assert not [k for k in a if "_orig_mod" in k] and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    model = create_model("resnet20", weights=str(full.run_dir / "final.safetensors")).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.isfinite(model(x)).all() and full.metrics["val_top1"] == read_metadata(
        full.run_dir / "final.safetensors")["metrics"]["val_top1"]


def test_precision_auto_is_resolved_once_and_saved(subset, tmp_path):
    # A resumed run must keep the arithmetic it started with, whatever machine it resumes on.
    from resnets.train.engine import resolve_precision

    result = train(base(subset, tmp_path, "name=auto", "train.precision=auto", "train.steps=2"))
    expected = resolve_precision("auto", torch.device("cpu"))
    assert load_config(result.run_dir / "config.yaml").train.precision == expected
    assert load_checkpoint(result.run_dir / "last.pt")["config"]["train"]["precision"] == expected
    assert math.isfinite(result.metrics["train_loss"])


def test_diverging_weights_stop_the_run_and_never_replace_a_good_checkpoint(subset, tmp_path):
    # issue 15: with lr 1e8 the loss can stay finite for a while (batch-norm in training mode) while
    # running_var and the weights overflow. The first bad state stops the run, naming the tensor.
    run = tmp_path / "diverge"
    good = train(base(subset, tmp_path, "name=diverge", "train.epochs=1"))
    before = (run / "last.pt").read_bytes()
    with pytest.raises(NonFiniteStateError, match=r"(parameter/buffer|EMA tensor) \S+ is not finite after step \d+ "
                       r"\(epoch 2, batch \d+/6\)") as info:
        train(None, overrides=["optim.lr=1e8", "train.epochs=3", "schedule.name=constant"], resume=run)
    assert f"(step {good.metrics['step']})" in str(info.value) and str(run / "last.pt") in str(info.value)
    assert (run / "last.pt").read_bytes() == before  # the good epoch-1 checkpoint is untouched
    assert not list(run.glob("*.safetensors")) or all(
        torch.isfinite(v).all() for v in weights(run).values() if v.is_floating_point())


def test_resume_after_a_failed_end_of_epoch_save_keeps_one_metrics_row_per_epoch(subset, tmp_path):
    run = tmp_path / "dup"
    train(base(subset, tmp_path, "name=dup", "train.epochs=1"))
    # The end-of-epoch row of epoch 2 reached metrics.csv but its checkpoint did not (e.g. disk full).
    rows = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text("\n".join([*rows, rows[-1].replace("1,6,", "2,12,", 1)]) + "\n")
    train(None, overrides=["train.epochs=2"], resume=run)
    epochs = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2"]


def test_sigterm_to_a_real_training_process_saves_a_resumable_checkpoint(subset, tmp_path):
    # What schedulers and container runtimes send: handled like the first Ctrl-C (issue 15).
    run = tmp_path / "term"
    (tmp_path / "recipe.yaml").write_text("model: {name: resnet20}\n")
    cmd = [sys.executable, "-m", "resnets.cli", "train", "--config", str(tmp_path / "recipe.yaml"),
           "--data", str(subset), "--set", f"out_dir={tmp_path}",
           "--set", "name=term", "--set", "train.batch_size=16", "--set", "data.val_size=24",
           "--set", "train.epochs=200", "--set", "train.progress=false", "--set", "train.tensorboard=false",
           "--set", "train.plots=false", "--set", "optim.lr=0.01", "--set", "schedule.name=constant"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RESNETS_CACHE": str(tmp_path / "cache")})
    deadline = time.monotonic() + 240
    while not (run / "metrics.csv").exists():  # an epoch done: the loop is running
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM" in out and f"resume with: resnets train --resume {run}" in out
    ckpt = load_checkpoint(run / "last.pt")
    # Mid-epoch: the batches done; at an epoch's end the epoch was validated and saved first.
    assert ckpt["step"] >= 6 and ckpt["loader"]["batch"] in (ckpt["step"] % 6, 6)
    result = train(None, overrides=[f"train.epochs={ckpt['epoch'] + 2}"], resume=run)
    assert result.metrics["step"] == 6 * (ckpt["epoch"] + 2)


def test_a_second_ctrl_c_inside_a_step_saves_nothing_from_it(subset, tmp_path, capsys):
    # Two real SIGINTs from inside step 8's forward pass (after batch-norm updated its statistics,
    # before the step is counted): stop at once; last.pt stays the end of epoch 1 (step 6), whose
    # batch-norm has seen exactly 6 batches, so a resume applies no batch twice.
    def double_ctrl_c_in_step_8(info):
        if info.step == 7:
            def hook(module, args, output):
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            info.model.register_forward_hook(hook)

    with pytest.raises(KeyboardInterrupt):
        train(base(subset, tmp_path, "name=twice", "train.ema_decay=0"), callbacks=[double_ctrl_c_in_step_8])
    out = capsys.readouterr().out
    assert "at once in step 8, saving nothing from it" in out
    assert f"the last good state is {tmp_path / 'twice' / 'last.pt'} (step 6)" in out
    ckpt = load_checkpoint(tmp_path / "twice" / "last.pt")
    assert ckpt["step"] == 6 and int(ckpt["model"]["bn1.num_batches_tracked"]) == 6


def test_resuming_a_finished_run_trains_no_further_step(subset, tmp_path):
    # A run that ended mid-epoch (train.steps=3 of 6 per epoch), resumed as a failed export's message
    # says to: the exports are written again, and no step is added.
    first = train(base(subset, tmp_path, "name=done", "train.steps=3"))
    before = weights(first.run_dir)
    again = train(resume=first.run_dir)
    assert again.metrics["step"] == 3 and len(again.history) == len(first.history) == 1
    after = weights(again.run_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_keeps_the_model_split_and_images_of_the_run(subset, tmp_path):
    run = train(base(subset, tmp_path, "name=keep", "train.steps=2")).run_dir
    saved = (run / "config.yaml").read_text()
    for key, value in (("model.name", "resnet32"), ("train.batch_size", "8"), ("data.val_size", "12")):
        with pytest.raises(InputError, match=rf"--set {key}={value}: .*last.pt was trained with {key}="):
            train(None, overrides=[f"{key}={value}"], resume=run)
    assert (run / "config.yaml").read_text() == saved  # not rewritten by a refused resume
    # The same images in another folder resume; one image more is another split, refused.
    moved = shutil.copytree(subset, tmp_path / "moved")
    assert train(None, overrides=[f"data.path={moved}", "train.steps=3"], resume=run).metrics["step"] == 3
    # Other content, the same images per class (another decoder's pixels, an edited file): a warning.
    first, second = sorted((moved / "dog").iterdir())[:2]
    shutil.copy(second, first)
    with pytest.warns(UserWarning, match="the same classes and images per class .* but other content"):
        assert train(None, overrides=[f"data.path={moved}", "train.steps=4"], resume=run).metrics["step"] == 4
    shutil.copy(next((moved / "cat").iterdir()), moved / "cat" / "extra.jpg")
    with pytest.raises(InputError, match=rf"data.path {moved}: not the images {run} was trained on \(120 images"):
        train(None, overrides=[f"data.path={moved}", "train.steps=5"], resume=run)


def test_data_limit_validates_with_the_normalisation_the_weights_carry(subset, tmp_path):
    from torch.nn import functional as F

    from resnets.data import make_loader, open_dataset, split_train_val
    from resnets.registry import load_model

    result = train(base(subset, tmp_path, "name=limit", "data.limit=48", "train.steps=2", "train.ema_decay=0"))
    meta = read_metadata(result.weights)
    _, val = split_train_val(open_dataset(subset), val_size=24, seed=0)
    info = dataclasses.replace(val.info, mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    x, y = next(iter(make_loader(val, 64, train=False, info=info)))
    with torch.no_grad():
        loss = F.cross_entropy(load_model(result.weights).eval()(x), y).item()
    assert result.history[-1]["val_loss"] == pytest.approx(loss, rel=1e-4)


def test_cutout_on_a_folder_of_large_images_is_refused(tmp_path):
    # Such folders are augmented by random-resized crops (FolderLoader): cutout was dropped silently.
    for c in ("a", "b"):
        (tmp_path / "big" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (72, 72), (40 * i, 90, 200)).save(tmp_path / "big" / c / f"{i}.png")
    with pytest.raises(InputError, match=r"data.cutout=8: the pad-and-crop and cutout augmentations"):
        train(None, overrides=[f"data.path={tmp_path / 'big'}", "data.val_size=2", "data.cutout=8",
                               f"out_dir={tmp_path / 'runs'}", "train.steps=1", "train.batch_size=2"])
    assert not (tmp_path / "runs").exists()


def test_a_criterion_replaces_the_cross_entropy_in_the_one_training_step(subset):
    """``train_step(criterion=...)`` (the hook the detection study trains through) computes the loss
    instead of the built-in cross-entropy: twice the loss at half the lr is, in floating point
    exactly, the built-in step (scaling by a power of two commutes with rounding)."""
    import copy

    import torch.nn.functional as F
    from torchvision.io import decode_image

    from resnets import create_model
    from resnets.train.engine import train_step

    files = sorted(subset.rglob("*.jpg"))[::8]
    classes = sorted({f.parent.name for f in files})
    x = torch.stack([decode_image(str(f)) for f in files]).float().div(255)
    y = torch.tensor([classes.index(f.parent.name) for f in files])
    a = create_model("resnet20", num_classes=len(classes)).train()
    b, start = copy.deepcopy(a), copy.deepcopy(a.state_dict())
    loss_a, correct_a, n = train_step(a, [(x, y)], torch.optim.SGD(a.parameters(), lr=0), 0.1, raw_model=a)
    loss_b, correct_b, _ = train_step(b, [(x, y)], torch.optim.SGD(b.parameters(), lr=0), 0.05, raw_model=b,
                                      criterion=lambda model, x, y: (2 * F.cross_entropy(model(x), y), 7))
    assert n == len(files) == 15 and float(loss_b) == 2 * float(loss_a) and correct_b == 7
    assert 0 <= int(correct_a) <= n
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(a.conv1.weight, start["conv1.weight"])  # the step moved the weights
