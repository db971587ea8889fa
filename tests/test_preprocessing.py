"""The preprocessing weights carry (resnets.preprocessing), the held-out split's refusal and the
metric names (issue 14)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnets
from resnets.data import NoHeldOutImages, build_transforms, holdout_split, load_image
from resnets.data.info import DatasetInfo
from resnets.preprocessing import Preprocessing, PreprocessingError
from resnets.pretrained import find
from resnets.weights_io import canonical_metadata, export_weights

TESTS = Path(__file__).resolve().parent


def test_shipped_weights_preprocessing_is_derived_from_their_metadata(cifar_train_dir):
    record = find("resnet20", "cifar10")
    model = resnets.create_model("resnet20", weights="cifar10")
    prep = resnets.transforms_for(model)
    assert prep == resnets.transforms_for("cifar10", model="resnet20") == resnets.transforms_for(record.path)
    assert prep.input_size == (32, 32) and prep.crop == "none" and prep.mean == pytest.approx(record.mean)
    # On a 32-px CIFAR image it is exactly what those networks were trained on: pixels / 255, normalised.
    image = load_image(cifar_train_dir / "cat" / "0000.jpg")
    pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float() / 255
    expected = (pixels - torch.tensor(record.mean).view(3, 1, 1)) / torch.tensor(record.std).view(3, 1, 1)
    torch.testing.assert_close(prep(image), expected)


def test_pil_images_and_tensors_get_identical_inputs(cifar_train_dir):
    image = load_image(cifar_train_dir / "ship" / "0001.jpg").resize((100, 80), Image.BICUBIC)
    prep = Preprocessing.center_crop(64, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2])
    assert prep.resize_size == (73,)  # 256/224 of the crop
    from_pil = prep(image)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    assert from_pil.shape == (3, 64, 64)
    torch.testing.assert_close(prep(tensor), from_pil, rtol=0, atol=0)
    torch.testing.assert_close(prep.normalize(prep.resize(tensor[None]))[0], from_pil, rtol=0, atol=0)


def test_an_elongated_image_is_refused_before_its_shorter_side_is_resized():
    """Resizing the shorter side of a 1 x 2000 image to 36 made a 36 x 72000 intermediate (a 1 x
    200000 PNG of 667 bytes: 1.1 GB at 36, terabytes at ImageNet's 256) for a 32 x 32 crop."""
    from torchvision.transforms.v2 import functional as F

    from resnets.preprocessing import ImageTooLargeError

    prep = Preprocessing.center_crop(32, [0.5] * 3, [0.25] * 3, resize_size=36)
    strip = Image.new("RGB", (2000, 1), (120, 30, 200))
    assert prep.resized_size(1, 2000) == (36, 72000)
    with pytest.raises(ImageTooLargeError, match=r"2000x1 image .* 72000x36 = 2592000 pixels .* limit is 1000000 "
                                         r"\(resnets.preprocessing.MAX_RESIZED_PIXELS\)"):
        prep.resize(strip, max_pixels=1_000_000)
    with pytest.raises(ImageTooLargeError):
        prep.check_size(1, 200_000)  # the default limit: 36 x 7.2M pixels
    # Ordinary images, elongated ones within the limit included, get exactly what they got before.
    rng = np.random.RandomState(0)
    for h, w in ((48, 40), (40, 64), (3, 400)):
        image = torch.from_numpy(rng.randint(0, 256, (3, h, w), dtype=np.uint8))
        before = F.center_crop(F.resize(image, [36], antialias=True), [32, 32])
        assert torch.equal(prep.resize(image, max_pixels=1_000_000), before)
    whole = Preprocessing.whole_image((32, 32), [0.5] * 3, [0.25] * 3)  # a fixed size: no intermediate to bound
    assert whole.resize(strip, max_pixels=1).shape == (3, 32, 32)


def test_predict_and_features_name_an_image_too_elongated_for_the_resize(tmp_path):
    # predict stops naming the file (it raised the limit's error without the file); features skips
    # it with a warning, as it skips any bad image. A 1 x 20000 strip: 36 x 720000 pixels at 36.
    from resnets.data.images import BadImageError
    from resnets.pretrained import resolve
    from resnets.train.evaluate import extract_features, predict
    from resnets.weights_io import read_weights

    state, meta = read_weights(resolve("resnet20", "cifar10"))
    meta["preprocessing"] = Preprocessing.center_crop(32, meta["mean"], meta["std"], resize_size=36).to_metadata()
    export_weights(tmp_path / "crop.safetensors", state, meta)
    Image.new("RGB", (20000, 1), (120, 30, 200)).save(tmp_path / "strip.png")
    Image.new("RGB", (40, 48), (20, 90, 10)).save(tmp_path / "ordinary.png")
    with pytest.raises(BadImageError, match=r"strip.png: a 20000x1 image .*MAX_RESIZED_PIXELS"):
        predict(tmp_path / "crop.safetensors", [tmp_path / "strip.png"])
    with pytest.warns(UserWarning, match="skipped .*strip.png"):
        features, paths = extract_features(tmp_path / "crop.safetensors", [tmp_path / "strip.png", tmp_path / "ordinary.png"])
    assert paths == [str(tmp_path / "ordinary.png")] and features.shape == (1, 64)


def test_the_folder_loaders_evaluation_transform_is_the_weights_preprocessing():
    info = DatasetInfo(["a", "b"], (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), "test")
    transform = build_transforms(False, info, 96)
    assert transform == Preprocessing.center_crop(96, info.mean, info.std)
    assert Preprocessing.from_metadata({"preprocessing": transform.to_metadata()}) == transform


def test_missing_preprocessing_is_an_error_naming_the_key(tmp_path):
    record = Preprocessing.whole_image((32, 32), [0.5] * 3, [0.25] * 3).to_metadata()
    del record["crop"]
    with pytest.raises(PreprocessingError, match="lacks 'crop'"):
        Preprocessing.from_metadata({"preprocessing": record})
    with pytest.raises(PreprocessingError, match="nor the older image_size, std"):
        Preprocessing.from_metadata({"mean": [0.5] * 3})
    # No 0.5 fallback: weights without the record cannot be used for prediction.
    weights = tmp_path / "bare.safetensors"
    export_weights(weights, resnets.create_model("resnet20").state_dict(), {"model": "resnet20"})
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (120, 30, 200)).save(image)
    with pytest.raises(PreprocessingError, match="carry no 'preprocessing' record"):
        resnets.predict(weights, image)
    with pytest.raises(PreprocessingError, match="built without weights"):
        resnets.transforms_for(resnets.create_model("resnet20"))


@pytest.mark.parametrize("key, value, message", [
    ("input_size", "32", "input_size must be a list of whole numbers"),  # was (3, 2): every answer wrong
    ("input_size", [32.9, 32], "input_size must be a list of whole numbers"),  # was 32, silently
    ("input_size", [True, True], "input_size must be a list of whole numbers"),  # was 1x1, then an assert in torch
    ("resize_size", [None], "resize_size must be a list of whole numbers"),
    ("std", [float("inf"), 1.0, 0.26], "mean/std must be three finite values"),  # was accepted: all-zero inputs
    ("mean", [float("nan"), 0.5, 0.5], "mean/std must be three finite values"),
    ("mean", "0.5", "mean/std must be a list of numbers"),
])
def test_a_malformed_preprocessing_record_is_refused_naming_the_key(key, value, message):
    record = {**Preprocessing.whole_image((32, 32), [0.5] * 3, [0.25] * 3).to_metadata(), key: value}
    with pytest.raises(PreprocessingError, match=f"w.safetensors: .*{message}"):
        Preprocessing.from_metadata({"preprocessing": record}, source="w.safetensors")
    if key in ("mean", "std"):  # files older than the record: top-level image_size, mean, std
        with pytest.raises(PreprocessingError, match=f"old.safetensors: .*{message}"):
            Preprocessing.from_metadata({"image_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, key: value},
                                        source="old.safetensors")
    with pytest.raises(PreprocessingError, match="image_size must be a list of whole numbers"):
        Preprocessing.from_metadata({"image_size": "3,32,32", "mean": [0.5] * 3, "std": [0.25] * 3})


def test_holdout_refuses_weights_trained_on_all_the_data(tmp_path):
    with pytest.raises(NoHeldOutImages, match=r"the recipe's data.val_size is 0"):
        holdout_split(tmp_path, {"recipe": {"data": {"val_size": 0, "split_seed": 0}}})
    with pytest.raises(NoHeldOutImages, match="no training recipe"):
        holdout_split(tmp_path, {})


def test_old_metric_names_read_as_the_current_ones():
    from resnets.train.config import Config, validate

    assert canonical_metadata({"metrics": {"val_acc": 0.8, "val_top5": 0.9}})["metrics"] == {
        "val_top1": 0.8, "val_top5": 0.9}
    cfg = Config()
    cfg.train.epochs, cfg.train.best_metric, cfg.schedule.plateau_metric = 1, "val_acc", "train_acc"
    validate(cfg)
    assert (cfg.train.best_metric, cfg.schedule.plateau_metric) == ("val_top1", "train_top1")


def test_a_missing_dataset_fails_under_ci_and_skips_elsewhere(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_needs_data.py").write_text("def test_x(cifar_train_dir):\n    pass\n")
    base = {k: v for k, v in os.environ.items() if k != "CI"}
    base["RESNETS_DATA"] = str(tmp_path / "nowhere")
    for ci, code, said in (("true", 1, "must run, not skip"), (None, 0, "1 skipped")):
        env = {**base, **({"CI": ci} if ci else {})}
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
        assert run.returncode == code and said in run.stdout, run.stdout[-2000:]
