"""Shipped weights: every record matches its file, the weights load by tag and classify real
images, and `resnets eval` reproduces the recorded validation accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import resnets
from resnets.cli import main
from resnets.data import open_dataset, split_train_val
from resnets.pretrained import RECORDS, find, sha256_of
from resnets.train import read_metadata


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: f"{r.model}-{r.tag}")
def test_record_matches_its_file(record):
    assert record.path.is_file(), record.path
    # The file holds the weights and buffers and nothing else (no optimizer state, no second copy): bounded
    # by the model's own fp32 size, which a checkpoint with momentum (2x) exceeds at every depth, and by the
    # repository's 5 MB per tracked file (resnet110 is stored in fp16 to fit: 3.5 MB against 7.0 MB in fp32).
    tensors = resnets.create_model(record.model, num_classes=len(record.classes)).state_dict().values()
    size = record.path.stat().st_size
    assert size < sum(t.numel() * t.element_size() for t in tensors) + 2**16 and size < 5_000_000, size
    assert sha256_of(record.path) == record.sha256
    meta = read_metadata(record.path)
    assert meta["model"] == record.model
    assert tuple(meta["classes"]) == record.classes
    assert meta["mean"] == pytest.approx(record.mean) and meta["std"] == pytest.approx(record.std)
    assert meta["metrics"]["val_top1"] == pytest.approx(record.metrics["val_top1"])
    assert record.command.startswith("resnets train")


def test_shipped_resnet20_classifies_real_images(cifar_train_dir):
    model = resnets.create_model("resnet20", weights="cifar10").eval()
    _, val = split_train_val(open_dataset(cifar_train_dir), val_size=5000, seed=0)
    x, y = val.images[:500], val.labels[:500]
    mean = torch.tensor(model.pretrained_meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        accuracy = (model((x.float() / 255 - mean) / std).argmax(1) == y).float().mean().item()
    assert accuracy > 0.75


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: f"{r.model}-{r.tag}")
def test_eval_reproduces_recorded_accuracy_on_the_5k_split(record, cifar_train_dir, capsys, tmp_path):
    code = main(["eval", "--model", record.model, "--weights", record.tag, "--data", str(cifar_train_dir),
                 "--holdout", "--json", "--confusion", str(tmp_path / "cm.png")])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 5000
    assert result["top1"] == pytest.approx(record.metrics["val_top1"], abs=1e-4)
    assert result["top5"] == pytest.approx(record.metrics["val_top5"], abs=1e-4)


def test_unknown_tag_says_what_is_available():
    with pytest.raises(FileNotFoundError, match="available for resnet20: cifar10"):
        resnets.create_model("resnet20", weights="imagenet")


def _flip_cases():
    # The flip-TTA path is one code path for every file: resnet20 proves it in the default suite, the deeper
    # files (two forward passes each, 3-6x resnet20's cost) under -m slow, to keep the suite near 10 minutes.
    return [pytest.param(r, id=f"{r.model}-{r.tag}", marks=() if r.model == "resnet20" else pytest.mark.slow)
            for r in RECORDS if "val_top1_flip" in r.metrics]


@pytest.mark.parametrize("record", _flip_cases())
def test_eval_with_flip_tta_reproduces_the_recorded_accuracy(record, cifar_train_dir, capsys, tmp_path):
    code = main(["eval", "--model", record.model, "--weights", record.tag, "--data", str(cifar_train_dir),
                 "--holdout", "--tta", "flip", "--json", "--confusion", str(tmp_path / "cm.png")])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(record.metrics["val_top1_flip"], abs=1e-4)


def test_ensemble_benchmark_reproduces_each_records_accuracy(cifar_train_dir):
    """benchmarks/ensemble_holdout.py (RESULTS "An ensemble bound") scores each file alone as `resnets eval
    --holdout` does, with and without flip TTA, and adds the averaged-softmax ensemble of the two."""
    records = [find("resnet20", "cifar10"), find("resnet32", "cifar10")]
    script = Path(__file__).parents[1] / "benchmarks" / "ensemble_holdout.py"
    out = subprocess.run([sys.executable, str(script), "--data", str(cifar_train_dir), *(str(r.path) for r in records)],
                         capture_output=True, text=True, timeout=900, check=True).stdout
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ") and "%" in line}
    for record in records:
        cells = rows[record.path.name].strip("| ").split(" | ")
        assert [float(c.rstrip("%")) for c in cells[1:3]] == pytest.approx(
            [100 * record.metrics["val_top1"], 100 * record.metrics["val_top1_flip"]], abs=0.006)
    assert f"{records[0].path.name} + {records[1].path.name}" in rows
