"""A miniature of the degradation study on real images: it trains, records gradients and writes
the figures and the report."""

from __future__ import annotations

import json

import pytest

from resnets.cli import main
from resnets.study import degradation_study


def test_degradation_study_miniature(cifar_train_dir, tmp_path, monkeypatch):
    args = dict(models=("plain20", "resnet20"), epochs=2, limit=384, val_size=200, batch_size=64, grad_every=3,
                progress=False)
    result = degradation_study(str(cifar_train_dir), tmp_path / "deg", **args)
    assert set(result.final) == {"plain20", "resnet20"}
    for row in result.final.values():
        assert 0.0 <= row["train_error"] < 1.0 and 0.0 <= row["val_error"] <= 1.0
    for figure in result.figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gradients = json.loads((tmp_path / "deg" / "gradients.json").read_text())
    for name in ("plain20", "resnet20"):
        layers, history = gradients[name]["layers"], gradients[name]["history"]
        assert len(layers) == 19  # stem conv + 18 block convs; option A adds none
        # 384 images (data.limit) / batch 64 = 6 steps an epoch, 12 in all; kept at 2, 3, 6, 9, 12
        assert [step for step, _ in history] == [2, 3, 6, 9, 12]
        assert all(len(norms) == 19 and all(n > 0 for n in norms) for _, norms in history)
    report = result.report.read_text()
    assert "| plain20 |" in report and "| resnet20 |" in report and "curves.png" in report
    assert (tmp_path / "deg" / "curves.csv").read_text().count("\n") == 1 + 2 * 2

    # The reduced schedule starts the ResNet's residual branches at zero; a plain net cannot.
    records = {n: json.loads((tmp_path / "deg" / n / "study.json").read_text()) for n in ("plain20", "resnet20")}
    assert records["resnet20"]["schedule"]["zero_init"] is True and "zero_init" not in records["plain20"]["schedule"]
    assert "start at zero" in report

    # Run again on the same schedule: every model's finished run is reused, nothing retrains.
    def no_training(*_a, **_k):
        raise AssertionError("a finished model was trained again")

    monkeypatch.setattr("resnets.study.degradation.train", no_training)
    again = degradation_study(str(cifar_train_dir), tmp_path / "deg", **args)
    assert again.final == result.final
    # Another schedule in the same folder, or an interrupted run, is refused with the folder named.
    with pytest.raises(ValueError, match="another schedule"):
        degradation_study(str(cifar_train_dir), tmp_path / "deg", **{**args, "epochs": 3})
    (tmp_path / "deg2" / "plain20").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"deg2/plain20 holds an unfinished run"):
        degradation_study(str(cifar_train_dir), tmp_path / "deg2", **args)


def test_study_cli_rejects_unknown_model(tmp_path, capsys):
    code = main(["study", "degradation", "--models", "plain21", "--out", str(tmp_path), "--epochs", "1"])
    assert code == 2
    assert "plain20" in capsys.readouterr().err
