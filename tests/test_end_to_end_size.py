"""A network trained on images larger than CIFAR's 32 px is used at its training size everywhere
(issue 14, item 6): a ResNet-20 trained a few steps on real CIFAR-10 images upscaled to 64 px,
then `resnets eval`, `resnets predict`, `resnets serve` (FastAPI's TestClient) and the exported
ONNX model run on the same files and agree, because all of them preprocess through the
preprocessing the weights carry (64x64, the training pixels' mean/std)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnets
from resnets.cli import main
from resnets.data import load_image

SIZE = 64  # px; larger than CIFAR's 32, still decoded into memory (data.sources.SMALL_IMAGE_MAX)
PER_CLASS = 4


@pytest.fixture(scope="module")
def folder(cifar_train_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("big") / "train"
    for class_dir in sorted(p for p in cifar_train_dir.iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True)
        for f in sorted(class_dir.iterdir())[:PER_CLASS]:
            with Image.open(f) as img:  # PNG: the test's files are exactly what every path decodes
                img.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC).save(root / class_dir.name / f"{f.stem}.png")
    return root


@pytest.fixture(scope="module")
def weights(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETS_CACHE", str(out / "cache"))
        code = main(["train", "--config", "quickstart", "--data", str(folder), "--set", "model.name=resnet20",
                     "--set", "data.val_size=20", "--set", "train.batch_size=10", "--set", "train.steps=2",
                     "--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.plots=false",
                     "--set", f"out_dir={out}", "--set", "name=big", "--set", "train.channels_last=false"])
    assert code == 0
    return out / "big" / "final.safetensors"


def test_eval_predict_serve_and_onnx_agree_at_the_training_size(folder, weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    prep = resnets.transforms_for(str(weights))
    assert prep.input_size == (SIZE, SIZE) and prep.crop == "none"
    meta = resnets.load_model(str(weights)).pretrained_meta
    assert meta["image_size"] == [3, SIZE, SIZE]

    files = sorted(folder.rglob("*.png"))
    capsys.readouterr()
    assert main(["predict", "--weights", str(weights), str(folder), "--topk", "10", "--json"]) == 0
    predicted = {Path(r["path"]): {t["class"]: t["prob"] for t in r["top"]} for r in json.loads(capsys.readouterr().out)}
    assert sorted(predicted) == files

    # The exported ONNX model, fed the weights' preprocessing, gives predict's probabilities.
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(onnx), "--data", str(folder),
                 "--val-size", "20", "--check-images", "10"]) == 0
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    classes = meta["classes"]
    x = torch.stack([prep(load_image(f)) for f in files])
    assert x.shape[-2:] == (SIZE, SIZE)
    ort_probs = torch.from_numpy(session.run(None, {"input": x.numpy()})[0]).softmax(1)
    for f, row in zip(files, ort_probs):
        np.testing.assert_allclose([predicted[f][c] for c in classes], row.numpy(), atol=2e-5)

    # The server: the same files uploaded, the same probabilities.
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from resnets.serve.app import create_app

    with TestClient(create_app(str(weights))) as client:
        assert client.get("/v1/model").json()["input_size"] == [3, SIZE, SIZE]
        for f in files[::9]:
            with open(f, "rb") as fh:
                reply = client.post("/v1/predict?topk=10", files=[("images", (f.name, fh, "image/png"))])
            assert reply.status_code == 200, reply.text
            served = {t["class"]: t["prob"] for t in reply.json()["predictions"][0]["top"]}
            assert served == pytest.approx(predicted[f], abs=1e-5)  # batch of 1 vs 40: float rounding only

    # eval on the folder: its top-1 is what predict's top classes score on the same files.
    capsys.readouterr()  # what export printed
    assert main(["eval", "--weights", str(weights), "--data", str(folder), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    right = sum(max(predicted[f], key=predicted[f].get) == f.parent.name for f in files)
    assert scores["n"] == len(files) and scores["top1"] == pytest.approx(right / len(files))
