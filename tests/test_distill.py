"""Knowledge distillation (``distill.*``, resnets.train.distill) on real CIFAR-10 images."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open

from resnets.errors import InputError
from resnets.pretrained import sha256_of
from resnets.train import train
from resnets.train.config import load_config
from resnets.train.distill import Distillation, Teacher, load_teachers
from resnets.weights_io import export_weights, read_metadata
from test_train_engine import make_subset


@pytest.fixture(scope="module")
def subset(cifar_train_dir, tmp_path_factory):
    return make_subset(cifar_train_dir, tmp_path_factory.mktemp("cifar") / "train", 12)  # 120 images


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def config(subset, out, *extra):
    """resnet20, 96 train / 24 val images, batch 16: 6 steps per epoch, fp32."""
    return load_config(None, [
        f"data.path={subset}", "data.val_size=24", f"out_dir={out}", "train.batch_size=16", "train.epochs=1",
        "optim.lr=0.05", "train.progress=false", "train.tensorboard=false", "train.plots=false", *extra])


@pytest.fixture(scope="module")
def teacher_file(subset, tmp_path_factory):
    """A network trained one epoch on the subset's training part: the teacher of the tests."""
    out = tmp_path_factory.mktemp("teacher")
    return train(config(subset, out, "name=teacher", "train.ema_decay=0.9")).weights


def test_distillation_is_hintons_loss():
    """(1 - alpha) x cross-entropy + alpha x T^2 x KL(teacher || student) at temperature T, the
    teachers' probabilities averaged; gradients reach the student only."""
    torch.manual_seed(0)
    student, t1, t2 = (torch.nn.Linear(6, 4) for _ in range(3))
    x, y = torch.randn(5, 6, 1, 1), torch.tensor([0, 1, 2, 3, 0])
    net = lambda lin: torch.nn.Sequential(torch.nn.Flatten(), lin)  # noqa: E731
    teachers = [Teacher(net(t).requires_grad_(False), None, None, None, {}) for t in (t1, t2)]
    loss, correct = Distillation(teachers, alpha=0.3, temperature=2.0, label_smoothing=0.1)(net(student), x, y)
    s = student(x.flatten(1))
    p = ((t1(x.flatten(1)) / 2).softmax(1) + (t2(x.flatten(1)) / 2).softmax(1)) / 2
    kl = (p * (p.log() - (s / 2).log_softmax(1))).sum(1).mean()
    expected = 0.7 * F.cross_entropy(s, y, label_smoothing=0.1) + 0.3 * 4 * kl
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert int(correct) == int((s.argmax(1) == y).sum())
    loss.backward()
    assert student.weight.grad is not None and t1.weight.grad is None
    # alpha = 0 is plain cross-entropy; a teacher that agrees with the student adds nothing.
    same = Distillation([Teacher(net(copy.deepcopy(student)), None, None, None, {})], 1.0, 4.0)
    assert float(same(net(student), x, y)[0].detach()) == pytest.approx(0.0, abs=1e-6)
    plain = Distillation(teachers, 0.0, 4.0)(net(student), x, y)[0]
    assert float(plain) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-6)


def _first_step_loss(cfg) -> tuple[float, object]:
    losses = []
    result = train(cfg, callbacks=[lambda info: losses.append(info.loss)])
    return losses[0], result


def test_a_student_started_from_its_teacher_learns_nothing_from_it_at_the_first_step(subset, tmp_path, teacher_file):
    """End to end through the engine's one training step: a student that starts as its teacher
    (batch-norm frozen, so both compute the same function on the same augmented batch) has a
    distillation loss of 0 at step 1, also when the teacher's file lists the classes in another
    order (its outputs are reordered to the student's). The weights' recipe names the teacher by
    file name and sha256, not by this machine's path."""
    common = [f"finetune.weights={teacher_file}", "train.freeze_bn=true", "train.ema_decay=0", "train.steps=1",
              "distill.alpha=1", "distill.temperature=2"]
    loss, result = _first_step_loss(config(subset, tmp_path, "name=same", f"distill.teachers=[{teacher_file}]", *common))
    assert loss == pytest.approx(0.0, abs=1e-5)
    recipe = read_metadata(result.weights)["recipe"]
    assert recipe["distill"]["teachers"] == [{"file": teacher_file.name, "sha256": sha256_of(teacher_file),
                                              "model": "resnet20",
                                              "val_top1": read_metadata(teacher_file)["metrics"]["val_top1"]}]
    assert str(tmp_path) not in json.dumps(recipe)

    # The same network with its classes (and classifier rows) reversed.
    state = load_file(str(teacher_file))
    meta = read_metadata(teacher_file)
    state["fc.weight"], state["fc.bias"] = state["fc.weight"].flip(0), state["fc.bias"].flip(0)
    reversed_file = tmp_path / "reversed.safetensors"
    export_weights(reversed_file, state, {**meta, "classes": meta["classes"][::-1]})
    loss, _ = _first_step_loss(config(subset, tmp_path, "name=reversed", f"distill.teachers=[{reversed_file}]", *common))
    assert loss == pytest.approx(0.0, abs=1e-5)

    # With the labels' term on, the first step's loss is the cross-entropy alone, scaled.
    half, _ = _first_step_loss(config(subset, tmp_path, "name=half", f"distill.teachers=[{teacher_file}]",
                                      *common[:-2], "distill.alpha=0.5"))
    plain, _ = _first_step_loss(config(subset, tmp_path, "name=plain", *common[:-2]))
    assert half == pytest.approx(0.5 * plain, rel=1e-4) and plain > 1.0


def test_teachers_inputs_are_renormalised_to_their_own_mean_and_std(subset, teacher_file, tmp_path):
    meta = read_metadata(teacher_file)
    other = tmp_path / "other-norm.safetensors"
    export_weights(other, load_file(str(teacher_file)), {**meta, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]})
    mean, std = meta["mean"], meta["std"]
    (teacher,) = load_teachers([str(other)], classes=meta["classes"], mean=mean, std=std, input_size=[32, 32],
                               recipe_data=meta["recipe"]["data"], device=torch.device("cpu"))
    raw = torch.rand(2, 3, 32, 32)
    x = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    expected = (raw - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(x * teacher.scale + teacher.shift, expected, rtol=1e-5, atol=1e-5)
    (same,) = load_teachers([str(teacher_file)], classes=meta["classes"], mean=mean, std=std, input_size=[32, 32],
                            recipe_data=meta["recipe"]["data"], device=torch.device("cpu"))
    assert same.scale is None and same.columns is None


def test_a_teacher_that_may_have_seen_the_validation_images_is_said(teacher_file):
    meta = read_metadata(teacher_file)
    args = {"classes": meta["classes"], "mean": meta["mean"], "std": meta["std"], "input_size": [32, 32],
            "device": torch.device("cpu")}
    data = meta["recipe"]["data"]
    with pytest.warns(UserWarning, match=r"distill.teachers\[0\].*may have seen the 24 validation images"):
        load_teachers([str(teacher_file)], recipe_data={**data, "split_seed": 1}, **args)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_teachers([str(teacher_file)], recipe_data=data, **args)  # the same split: nothing said
        load_teachers([str(teacher_file)], recipe_data={**data, "val_size": 0}, **args)  # nothing held out


def test_bad_teachers_are_refused_before_anything_is_written(subset, tmp_path, teacher_file):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(InputError, match=r"distill.teachers\[0\]: teacher weights .*nope.safetensors not found"):
        train(config(subset, tmp_path, "name=a", f"distill.teachers=[{missing}]"))
    # A teacher of other classes (the shipped CIFAR-10 resnet20 knows no class of a renamed folder).
    renamed = tmp_path / "renamed"
    for i, d in enumerate(sorted(p for p in subset.iterdir() if p.is_dir())):
        (renamed / f"c{i}").mkdir(parents=True)
        for f in sorted(d.iterdir()):
            (renamed / f"c{i}" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(InputError, match=r"class\(es\) that distill.teachers\[0\] \(resnet20:cifar10\) does not know: c0, c1"):
        train(config(renamed, tmp_path, "name=b", "distill.teachers=[resnet20:cifar10]"))
    with pytest.raises(InputError, match=r"distill.teachers\[0\]: teacher weights resnet20:nope"):
        train(config(subset, tmp_path, "name=c", "distill.teachers=[resnet20:nope]"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not weights")
    with pytest.raises(InputError, match=r"distill.teachers\[0\]: teacher weights .*garbage.safetensors: .*not a valid"):
        train(config(subset, tmp_path, "name=d", f"distill.teachers=[{garbage}]"))
    assert not any((tmp_path / name).exists() for name in "abcd")
    with pytest.raises(InputError, match="distill.alpha, distill.tta need distill.teachers"):
        config(subset, tmp_path, "distill.alpha=0.9", "distill.tta=flip")
    with pytest.raises(InputError, match=r"distill.temperature must be > 0; got 0.0"):
        config(subset, tmp_path, f"distill.teachers=[{teacher_file}]", "distill.temperature=0")
    with pytest.raises(InputError, match="distill.tta must be one of"):
        config(subset, tmp_path, f"distill.teachers=[{teacher_file}]", "distill.tta=mirror")


def test_shipped_weights_teach_by_their_tag(subset, tmp_path):
    """``MODEL:TAG`` names shipped weights; their recipe (the 45k/5k split of the full folder) is
    not this subset's split, which is said."""
    with pytest.warns(UserWarning, match="may have seen the 24 validation images"):
        result = train(config(subset, tmp_path, "name=tag", "distill.teachers=[resnet20:cifar10]", "train.steps=2",
                              "train.epochs=0"))
    (described,) = read_metadata(result.weights)["recipe"]["distill"]["teachers"]
    from resnets.pretrained import find
    assert described["file"] == "resnet20_cifar10.safetensors" and described["sha256"] == find("resnet20", "cifar10").sha256
    with safe_open(str(result.weights), "pt") as f:
        assert "fc.weight" in f.keys()


def test_a_resumed_distillation_keeps_its_teachers(subset, tmp_path, teacher_file):
    """--resume refuses other teachers: a changed distill.* key, or the same name holding another file
    by now (a tag once newer weights ship, a path overwritten); with the same file back it resumes."""
    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes(teacher_file.read_bytes())
    run = train(config(subset, tmp_path, "name=taught", f"distill.teachers=[{teacher}]", "distill.alpha=0.5")).weights.parent
    with pytest.raises(InputError, match=r"distill\.alpha=0\.9: .*was trained with distill\.alpha=0\.5"):
        train(resume=run, overrides=["train.epochs=2", "distill.alpha=0.9"])
    original = teacher.read_bytes()
    state, meta = load_file(teacher), read_metadata(teacher)
    export_weights(teacher, {k: v + 1e-3 if v.is_floating_point() else v for k, v in state.items()}, meta)
    with pytest.raises(InputError, match=r"distill\.teachers\[0\] .*teacher\.safetensors.*was taught by teacher\.safetensors"):
        train(resume=run, overrides=["train.epochs=2"])
    teacher.write_bytes(original)
    resumed = train(resume=run, overrides=["train.epochs=2"])
    assert read_metadata(resumed.weights)["recipe"]["distill"]["teachers"][0]["sha256"] == sha256_of(teacher)
