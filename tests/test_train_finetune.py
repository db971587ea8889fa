"""Fine-tuning through the training config: start from the shipped CIFAR-10 weights on a new
three-class task, with frozen stages, a linear probe, per-stage learning rates and gradual
unfreezing; the preprocessing follows the weights."""

from __future__ import annotations

import pytest
import torch

import resnets
from resnets.pretrained import find
from resnets.train import Config, train
from resnets.train.checkpoint import read_metadata
from resnets.weights_io import export_weights


@pytest.fixture(scope="module")
def three_classes(cifar_train_dir, tmp_path_factory):
    """A new task: 3 CIFAR classes renamed, 40 real images each."""
    root = tmp_path_factory.mktemp("three")
    for new, old in (("boat", "ship"), ("lorry", "truck"), ("pony", "horse")):
        (root / new).mkdir()
        for i in range(40):
            (root / new / f"{i:03d}.jpg").write_bytes((cifar_train_dir / old / f"{i:04d}.jpg").read_bytes())
    return root


def _config(data, out, **finetune) -> Config:
    cfg = Config()
    cfg.model.name = "resnet20"
    cfg.data.path, cfg.data.val_size = str(data), 30
    cfg.optim.lr, cfg.schedule.name = 0.05, "constant"
    cfg.train.batch_size, cfg.train.epochs, cfg.train.progress = 30, 2, False
    cfg.train.tensorboard = cfg.train.plots = False
    cfg.out_dir, cfg.name = str(out), "ft"
    cfg.finetune.weights = "cifar10"
    for key, value in finetune.items():
        setattr(cfg.finetune, key, value)
    return cfg


def _changed(before: torch.nn.Module, after: dict) -> set[str]:
    return {k.split(".")[0] for k, v in before.state_dict().items()
            if not k.startswith("fc.") and not torch.equal(v, after[k])}


def test_finetune_freezes_stages_and_uses_the_weights_preprocessing(three_classes, tmp_path):
    source = resnets.create_model("resnet20", weights="cifar10")
    result = train(_config(three_classes, tmp_path, freeze=["conv1", "layer1"], lr_mult={"layer2": 0.1}))
    model = resnets.load_model(str(result.weights))
    assert model.fc.out_features == 3
    changed = _changed(source, model.state_dict())
    assert changed == {"layer2", "layer3"}  # stem (conv1, bn1) and layer1 untouched
    meta = read_metadata(result.weights)
    assert meta["classes"] == ["boat", "lorry", "pony"]
    assert meta["mean"] == pytest.approx(source.pretrained_meta["mean"])
    assert meta["recipe"]["finetune"]["freeze"] == ["conv1", "layer1"]
    # The file it started from, by content: the tag names another file once newer weights ship.
    shipped = find("resnet20", "cifar10")
    assert meta["recipe"]["finetune"]["source"] == {"file": shipped.path.name, "sha256": shipped.sha256}


def test_linear_probe_trains_only_the_classifier(three_classes, tmp_path):
    source = resnets.create_model("resnet20", weights="cifar10")
    result = train(_config(three_classes, tmp_path, linear_probe=True))
    after = resnets.load_model(str(result.weights)).state_dict()
    assert _changed(source, after) == set()  # BN running statistics included
    assert result.metrics["val_top1"] > 1 / 3  # pretrained features separate the new classes


def test_gradual_unfreezing_thaws_from_the_top(three_classes, tmp_path):
    source = resnets.create_model("resnet20", weights="cifar10")
    result = train(_config(three_classes, tmp_path, unfreeze_every=1))
    # epoch 0 trains fc, epoch 1 adds layer3; frozen stages keep their BN statistics as well
    assert _changed(source, resnets.load_model(str(result.weights)).state_dict()) == {"layer3"}


def test_finetune_options_need_weights():
    cfg = Config()
    cfg.finetune.freeze = ["layer1"]
    cfg.train.epochs = 1
    from resnets.train.config import validate

    with pytest.raises(ValueError, match="need finetune.weights"):
        validate(cfg)


def test_a_resumed_finetune_keeps_the_source_it_started_from(three_classes, tmp_path):
    # The recipe names the starting weights by content; when the file behind finetune.weights changes before a
    # --resume, the weights written at the end still name the file the run really started from.
    start = tmp_path / "start.safetensors"
    start.write_bytes(find("resnet20", "cifar10").path.read_bytes())
    cfg = _config(three_classes, tmp_path)
    cfg.finetune.weights, cfg.train.epochs = str(start), 1
    first = train(cfg)
    original = read_metadata(first.weights)["recipe"]["finetune"]["source"]
    assert original == {"file": "start.safetensors", "sha256": find("resnet20", "cifar10").sha256}
    start.write_bytes(first.weights.read_bytes())  # another resnet20 file under the same name
    resumed = train(resume=first.weights.parent, overrides=["train.epochs=2"])
    assert read_metadata(resumed.weights)["recipe"]["finetune"]["source"] == original


def test_a_resumed_finetune_needs_neither_its_start_file_nor_what_it_inherited_from_it(three_classes, tmp_path):
    # --resume builds the network from the checkpoint: the file finetune.weights named may be gone by then,
    # and the builder arguments the run inherited from it (shortcut="B", not resnet20's default) still hold.
    start = tmp_path / "start.safetensors"
    net = resnets.create_model("resnet20", num_classes=10, shortcut="B")
    export_weights(start, net.state_dict(), {"model": "resnet20", "model_kwargs": {"shortcut": "B"},
                                             "classes": [f"c{i}" for i in range(10)]})
    cfg = _config(three_classes, tmp_path)
    cfg.finetune.weights, cfg.train.epochs = str(start), 1
    first = train(cfg)
    start.unlink()
    resumed = train(resume=first.weights.parent, overrides=["train.epochs=2"])
    assert read_metadata(resumed.weights)["model_kwargs"]["shortcut"] == "B"
    assert len((first.weights.parent / "metrics.csv").read_text().splitlines()) == 3  # header, epochs 1 and 2
    resnets.create_model("resnet20", weights=str(resumed.weights))  # strict: the projection shortcuts are there
