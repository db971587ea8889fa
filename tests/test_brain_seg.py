"""Segmentation of a real brain scan (issue 16, item 4): the MNI152 template nilearn ships, a
ResNet-UNet, Dice on a held-out slab. The miniature trains a few steps; the full run is
``resnets study brain-seg`` (RESULTS.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from resnets.data.brain import CLASSES, brain_slices, dice_scores, tissue_labels
from resnets.study import brain_segmentation_study
from resnets.study.brain_segmentation import confusion_matrix, segment
from resnets.transfer.segmentation import UNet


def test_dice_on_known_cases():
    truth = torch.tensor([[0, 1, 1, 2]])
    assert dice_scores(confusion_matrix(truth, truth, 4))[:3] == [1.0, 1.0, 1.0]
    assert math.isnan(dice_scores(confusion_matrix(truth, truth, 4))[3])  # class 3 in neither
    pred = torch.tensor([[0, 1, 2, 2]])  # one class-1 pixel called 2: Dice(1) = 2*1/(2+1), Dice(2) = 2*1/(1+2)
    d = dice_scores(confusion_matrix(truth, pred, 4))
    assert d[0] == 1.0 and d[1] == pytest.approx(2 / 3) and d[2] == pytest.approx(2 / 3)


def test_tissue_labels_follow_the_probability_maps():
    gm = np.array([0.7, 0.2, 0.1, 0.9])
    wm = np.array([0.2, 0.7, 0.1, 0.0])
    mask = np.array([1.0, 1.0, 1.0, 0.0])
    assert tissue_labels(gm, wm, mask).tolist() == [2, 3, 1, 0]  # GM, WM, CSF/other (0.8), outside


@pytest.fixture(scope="module")
def slices():
    return brain_slices()


def test_the_held_out_slab_is_separate_from_training(slices):
    train, held_out = slices
    assert len(train) > 40 and len(held_out) > 5
    assert min(abs(a - b) for a in train.z for b in held_out.z) > 3  # a gap of 3 slices each side
    assert held_out.z == list(range(held_out.z[0], held_out.z[-1] + 1))  # one contiguous slab
    assert train.images.shape[1:] == (1, 112, 128) and train.labels.shape[1:] == (112, 128)
    counts = torch.bincount(held_out.labels.flatten(), minlength=len(CLASSES))
    assert (counts > 0).all(), counts  # every class present in the held-out slab
    inside = train.images[:, 0][train.labels > 0]
    assert abs(float(inside.mean())) < 0.5 and 0.5 < float(inside.std()) < 1.5  # z-scored over the brain


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50d"])
def test_unet_gives_logits_at_the_input_size(encoder):
    model = UNet(encoder, num_classes=4, in_chans=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 48, 64))
    assert out.shape == (2, 4, 48, 64)


def test_miniature_study_learns_and_reports(tmp_path):
    result = brain_segmentation_study(tmp_path, epochs=4, batch_size=4, limit=8, seed=0)
    assert result.losses[-1] < 0.9 * result.losses[0], result.losses
    assert all(0 <= v <= 1 for v in result.dice.values()), result.dice  # every class is in the slab: no NaN
    assert 0 <= result.mean_tissue_dice <= 1
    for name in ("report.json", "segmentation.png", "weights.safetensors"):
        assert (tmp_path / name).stat().st_size > 0
    # The written weights are the trained network: reloaded, they predict the same labels.
    model = UNet("resnet18", num_classes=4, in_chans=1)
    model.load_state_dict(load_file(str(tmp_path / "weights.safetensors")))
    _, held_out = brain_slices()
    pred = segment(model, held_out.images)
    scores = dice_scores(confusion_matrix(held_out.labels, pred, 4))
    assert scores == pytest.approx(list(result.dice.values()), nan_ok=True)
