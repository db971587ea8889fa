"""Config files, overrides and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from resnets.errors import InputError
from resnets.train.config import Config, config_from_dict, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_recipes_exist_and_load():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "cifar10_paper", "keras_example", "cifar10_fast"} <= names
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.train.epochs > 0 or cfg.train.steps > 0, path


def test_paper_recipe_is_the_papers():
    cfg = load_config(Path(CONFIGS[0]).parent / "cifar10_paper.yaml")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (cfg.train.batch_size, cfg.train.steps, cfg.data.val_size) == (128, 64000, 5000)
    assert cfg.schedule.milestones == [32000, 48000] and cfg.schedule.unit == "step"
    assert (cfg.data.crop_padding, cfg.data.flip) == (4, True)


@pytest.mark.parametrize("assignment, unknown, suggestion", [
    ("optim.weight_dcay=1e-4", "optim.weight_dcay", "optim.weight_decay"),
    ("train.epoch=3", "train.epoch", "train.epochs"),
    ("lr=0.1", "lr", "optim.lr"),
    ("optimizer.lr=0.1", "optimizer", "optim"),  # the first unknown part is the one reported
    ("schedule.milestone=[1]", "schedule.milestone", "schedule.milestones"),
])
def test_unknown_key_names_it_and_the_closest(assignment, unknown, suggestion):
    with pytest.raises(KeyError) as info:
        load_config(None, ["train.epochs=1", assignment])
    assert info.value.args[0] == f"unknown config key {unknown!r}; did you mean {suggestion!r}?"


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 2\n  label_smoothin: 0.1\n")
    with pytest.raises(KeyError, match="train.label_smoothing"):
        load_config(path)


def test_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=3", "optim.lr=1e-3", "optim.nesterov=true", "optim.betas=[0.8, 0.9]",
                             "schedule.milestones=[2, 4]", "model.kwargs={shortcut: B}", "data.path=/x"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.nesterov is True and cfg.optim.betas == (0.8, 0.9)
    assert cfg.schedule.milestones == [2, 4] and cfg.model.kwargs == {"shortcut": "B"}
    with pytest.raises(ValueError, match="train.epochs"):
        load_config(None, ["train.epochs=two"])
    with pytest.raises(ValueError, match="did you mean 'bf16'"):
        load_config(None, ["train.epochs=1", "train.precision=bf61"])
    with pytest.raises(ValueError, match="train.epochs or train.steps"):
        load_config(None, [])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "optim.name=adamw", "schedule.name=cosine"])
    cfg.save(tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg and isinstance(again, Config)


@pytest.mark.parametrize("assignment, message", [
    ("train.epochs=2.5e0", "'train.epochs': expected a whole number, got '2.5e0'"),  # not truncated to 2
    ("train.epochs=2.5", "'train.epochs': expected a whole number, got 2.5"),
    ("data.val_size=false", "'data.val_size': expected a whole number, got False"),  # not 0
    ("optim.lr=true", "'optim.lr': expected a number, got True"),  # not 1.0
    ("optim.lr=abc", "'optim.lr': expected a number, got 'abc'"),  # the same words
    ("data.flip=2", "'data.flip': expected true or false, got 2"),  # not True
    ("data.flip=[]", "'data.flip': expected true or false, got []"),  # not False
    ("train.steps=1e999", "'train.steps': expected a whole number, got '1e999'"),  # not an OverflowError
    ("train.steps=.inf", "'train.steps': expected a whole number, got inf"),
    ("schedule.milestones=[10, 2.55e1]", "'schedule.milestones': expected a whole number, got '2.55e1'"),
    ("finetune.lr_mult={conv1: true}", "'finetune.lr_mult.conv1': expected a number, got True"),
])
def test_values_are_not_coerced_into_another_meaning(assignment, message):
    with pytest.raises(InputError) as info:
        load_config(None, ["train.epochs=3", assignment])
    assert message in str(info.value)


def test_whole_numbers_and_yaml_spellings_still_read():
    cfg = load_config(None, ["train.steps=6.4e4", "data.val_size=1e3", "data.limit=3.0", "data.flip=0",
                             "train.progress=no", "schedule.milestones=[1.0e1, 2e1]", "finetune.weights=w",
                             "finetune.lr_mult={conv1: 1e-1}"])
    assert (cfg.train.steps, cfg.data.val_size, cfg.data.limit) == (64000, 1000, 3)
    assert all(isinstance(v, int) for v in (cfg.train.steps, cfg.data.val_size, cfg.data.limit))
    assert cfg.data.flip is False and cfg.train.progress is False
    assert cfg.schedule.milestones == [10, 20] and cfg.finetune.lr_mult == {"conv1": 0.1}


def test_validation_metrics_need_validation_images():
    # The default best_metric with data.val_size=0 (train on everything): allowed, no best.pt.
    assert load_config(None, ["train.epochs=1", "data.val_size=0"]).train.best_metric == "val_top1"
    for path in CONFIGS:  # every shipped recipe names val_top1, and still trains on everything
        if path.stem != "keras_example":  # its plateau schedule needs held-out images (refused below)
            load_config(path, ["data.val_size=0"])
    with pytest.raises(InputError, match=r"train.best_metric=val_loss .*data.val_size=0"):
        load_config(None, ["train.epochs=1", "data.val_size=0", "train.best_metric=val_loss"])
    # Plateau on, watching a val_* metric (its own, or best_metric's when empty): it would never fire.
    with pytest.raises(InputError, match=r"schedule.plateau_metric=val_loss .*data.val_size=0"):
        load_config(None, ["train.epochs=1", "data.val_size=0", "schedule.plateau_factor=0.5",
                           "schedule.plateau_metric=val_loss", "train.best_metric=train_loss"])
    with pytest.raises(InputError, match=r"schedule.plateau_metric \(empty: train.best_metric=val_top1\)"):
        load_config(None, ["train.epochs=1", "data.val_size=0", "schedule.plateau_factor=0.5"])
    with pytest.raises(InputError, match="data.val_size=0"):
        load_config(CONFIGS[0].parent / "keras_example.yaml", ["data.val_size=0"])
    load_config(None, ["train.epochs=1", "data.val_size=0", "schedule.plateau_factor=0.5",
                       "schedule.plateau_metric=train_loss"])


@pytest.mark.parametrize("overrides, message", [
    (["train.epochs=3", "schedule.name=onecycle", "schedule.warmup=2"],
     "schedule.warmup=2 has no effect with schedule.name=onecycle, whose warm-up is schedule.pct_start"),
    (["train.steps=100", "schedule.milestones=[50, 100]"],
     "schedule.milestones [100] are not before the end of training (train.steps=100, schedule.unit=step)"),
    (["train.epochs=10", "schedule.unit=epoch", "schedule.milestones=[5, 12]"],
     "schedule.milestones [12] are not before the end of training (train.epochs=10, schedule.unit=epoch)"),
    (["train.steps=100", "schedule.warmup=101"],
     "schedule.warmup=101 is longer than training (train.steps=100, schedule.unit=step)"),
    (["train.epochs=2", "schedule.unit=epoch", "schedule.name=cosine", "schedule.warmup=3"],
     "schedule.warmup=3 is longer than training (train.epochs=2, schedule.unit=epoch)"),
])
def test_schedule_keys_without_effect_are_refused(overrides, message):
    with pytest.raises(InputError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_schedule_lengths_unknown_to_the_config_are_left_to_the_run():
    # Steps per epoch depend on the data: milestones/warm-up in steps of a run counted in epochs
    # (and the reverse) cannot be checked here.
    load_config(None, ["train.epochs=2", "schedule.milestones=[500]", "schedule.warmup=300"])
    load_config(None, ["train.steps=10", "schedule.unit=epoch", "schedule.milestones=[3]"])
    load_config(None, ["train.steps=100", "schedule.milestones=[99]", "schedule.warmup=100"])


@pytest.mark.parametrize("key", ["num_classes", "in_chans", "weights"])
def test_model_kwargs_refuse_what_the_engine_sets(key):
    with pytest.raises(InputError, match=rf"model.kwargs.{key} cannot be set"):
        load_config(None, ["train.epochs=1", f"model.kwargs={{{key}: 1}}"])
