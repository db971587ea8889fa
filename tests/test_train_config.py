"""Config files, overrides and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
