"""`resnets train | eval | predict` end to end on real CIFAR-10 images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnets.cli import main
from test_train_engine import make_subset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def data(cifar_train_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    return make_subset(cifar_train_dir, tmp_path / "train", 10)  # 100 images


def test_train_eval_predict(data, tmp_path, capsys):
    # The quick-start recipe, shortened, with --data pointing at real images.
    code = main(["train", "--config", str(REPO / "configs" / "quickstart.yaml"), "--data", str(data),
                 "--set", "data.val_size=20", "--set", "train.epochs=1", "--set", "train.batch_size=16",
                 "--set", f"out_dir={tmp_path}", "--set", "name=cli", "--set", "train.progress=false", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    assert "validation accuracy" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["step"] == 5 and 0 <= summary["val_top1"] <= 1  # 80 train images / 16
    weights = tmp_path / "cli" / "final.safetensors"
    assert weights.exists() and (tmp_path / "cli" / "metrics.csv").exists()

    run_files = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert main(["eval", "--model", "resnet20", "--weights", str(weights), "--data", str(data), "--json",
                 "--tta", "flip"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"top1", "top5", "n"} and scores["n"] == 100 and scores["top1"] <= scores["top5"]
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == run_files  # eval writes nothing unasked

    confusion, result = tmp_path / "cm.png", tmp_path / "eval.json"
    assert main(["eval", "--weights", str(weights), "--data", str(data), "--confusion", str(confusion),
                 "--out", str(result)]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "airplane" in text and "truck" in text
    assert confusion.read_bytes()[:4] == b"\x89PNG"
    assert json.loads(result.read_text())["n"] == 100

    assert main(["predict", "--weights", str(weights), str(data / "dog"), "--topk", "2", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 10 and all(len(p["top"]) == 2 for p in preds)
    assert main(["predict", "--weights", str(weights), str(data / "dog" / "0000.jpg")]) == 0
    assert capsys.readouterr().out.startswith(str(data / "dog" / "0000.jpg") + ": ")

    # eval refuses weights of another architecture by name.
    assert main(["eval", "--model", "resnet56", "--weights", str(weights), "--data", str(data)]) == 2
    assert "holds weights for 'resnet20', not 'resnet56'" in capsys.readouterr().err


def test_unknown_key_is_a_usage_error(capsys):
    code = main(["train", "--config", "quickstart", "--set", "optim.momentom=0.9"])
    assert code == 2
    assert "unknown config key 'optim.momentom'; did you mean 'optim.momentum'?" in capsys.readouterr().err


def test_train_needs_a_config_or_a_run(capsys, tmp_path):
    assert main(["train"]) == 2
    assert "--config" in capsys.readouterr().err
    # An empty --data (an unset shell variable) is not the bundled sample, and leaves no run behind.
    assert main(["train", "--config", "quickstart", "--data", "", "--set", f"out_dir={tmp_path}"]) == 2
    assert "data.path is empty" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", "--config", "no-such-recipe"]) == 2
    assert "quickstart" in capsys.readouterr().err  # lists the recipes


def test_eval_threads_hold_for_the_evaluation_only(data, capsys):
    # `resnets eval --threads 1` (beside a training run: no spinning OpenMP threads) scores as the default does,
    # and a library caller's torch threads are as before afterwards.
    import torch

    from resnets.runtime import torch_threads
    from resnets.train import evaluate

    before = torch.get_num_threads()
    scores = []
    for extra in ([], ["--threads", "1"]):
        assert main(["eval", "--model", "resnet20", "--weights", "cifar10", "--data", str(data), "--json", *extra]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[1]["n"] == scores[0]["n"] == 100 and scores[1]["top1"] == pytest.approx(scores[0]["top1"], abs=0.011)
    assert evaluate("cifar10", data, model="resnet20", threads=1)["n"] == 100 and torch.get_num_threads() == before
    with pytest.raises(KeyError), torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise KeyError("inside")
    assert torch.get_num_threads() == before
