"""Every command that writes weights writes a file that reloads (issue 14, item 4): training's
exports and checkpoints, a fine-tune's, the checkpoint-to-safetensors export of the best epoch,
and pruning's. Each is rebuilt from the file alone with create_model/load_model (strict loading,
the builder arguments from the metadata: a shortcut="B" network here) and gives the logits of
the weights that were written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import resnets
from resnets.cli import main
from resnets.data import load_image
from resnets.deploy import prune_unstructured
from test_train_engine import make_subset

QUICK = ["--set", "data.val_size=20", "--set", "train.batch_size=16", "--set", "train.steps=2",
         "--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.plots=false"]
FULL_METADATA = ("model", "model_kwargs", "classes", "preprocessing", "mean", "std", "recipe", "metrics")


@pytest.fixture(scope="module")
def data(cifar_train_dir, tmp_path_factory) -> Path:
    return make_subset(cifar_train_dir, tmp_path_factory.mktemp("reload") / "train", 10)  # 100 real JPEGs


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def _images(data: Path, model) -> torch.Tensor:
    prep = resnets.transforms_for(model)
    files = [sorted((data / c).iterdir())[0] for c in ("cat", "dog", "ship", "truck")]
    return torch.stack([prep(load_image(f)) for f in files])


def _logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return resnets.load_model(str(path))(x)


def _full(path: Path) -> dict:
    meta = resnets.load_model(str(path)).pretrained_meta
    assert all(meta.get(k) is not None for k in FULL_METADATA), (path, sorted(meta))
    assert meta["model_kwargs"] == {"shortcut": "B"} and len(meta["classes"]) == 10
    assert resnets.Preprocessing.from_metadata(meta).input_size == (32, 32)
    return meta


def test_train_finetune_and_prune_outputs_reload_with_the_same_logits(data, tmp_path, capsys):
    assert main(["train", "--config", "quickstart", "--data", str(data), *QUICK, "--set", "out_dir=" + str(tmp_path),
                 "--set", "name=src", "--set", "model.kwargs={shortcut: B}"]) == 0
    run = tmp_path / "src"
    final, last, best_st, best_pt = (run / n for n in ("final.safetensors", "last.pt", "best.safetensors", "best.pt"))
    x = _images(data, resnets.load_model(str(final)))
    for path in (final, last, best_st, best_pt):
        _full(path)
    torch.testing.assert_close(_logits(final, x), _logits(last, x), rtol=0, atol=0)  # no EMA: the same weights
    torch.testing.assert_close(_logits(best_st, x), _logits(best_pt, x), rtol=0, atol=0)  # exported from best.pt
    # create_model with the name only: the architecture comes from the file.
    rebuilt = resnets.create_model("resnet20", weights=str(last)).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), _logits(final, x), rtol=0, atol=0)

    # A fine-tune that does not repeat the builder arguments keeps the source's shortcut="B".
    assert main(["train", "--config", "quickstart", "--data", str(data), *QUICK, "--set", "out_dir=" + str(tmp_path),
                 "--set", "name=ft", "--set", f"finetune.weights={final}", "--set", "finetune.freeze=[conv1]"]) == 0
    ft = tmp_path / "ft"
    ft_meta = _full(ft / "final.safetensors")
    assert ft_meta["preprocessing"]["mean"] == _full(final)["preprocessing"]["mean"]  # the source's normalisation
    torch.testing.assert_close(_logits(ft / "final.safetensors", x), _logits(ft / "last.pt", x), rtol=0, atol=0)

    # Unstructured pruning writes safetensors with the source's metadata and the pruned weights.
    pruned = tmp_path / "pruned.safetensors"
    capsys.readouterr()
    assert main(["prune", "--weights", str(final), "--data", str(data), "--val-size", "20", "--method",
                 "unstructured", "--ratio", "0.5", "--epochs", "0", "--train-images", "20", "--val", "20",
                 "--json", "--out", str(pruned)]) == 0
    report = json.loads(capsys.readouterr().out)
    meta = _full(pruned)
    assert meta["pruning"]["method"] == "unstructured" and meta["recipe"] == _full(final)["recipe"]
    expected = prune_unstructured(resnets.load_model(str(final)), 0.5).eval()
    with torch.no_grad():
        torch.testing.assert_close(_logits(pruned, x), expected(x), rtol=0, atol=0)
    reloaded = resnets.load_model(str(pruned))
    assert report["after_fine_tune"]["sparsity"] == pytest.approx(
        sum(int((m.weight == 0).sum()) for m in reloaded.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        / sum(m.weight.numel() for m in reloaded.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))))
