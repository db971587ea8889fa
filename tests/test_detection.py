"""Detection on composed CIFAR-10 scenes (issue 16, item 3): the scenes (exact boxes, disjoint
sources, determinism), the COCO evaluator on known cases, and a miniature of ``resnets study
detection`` on real images that must learn. The full run is in RESULTS.md."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from resnets.data.scenes import SceneSettings, coco_map, compose_scenes, scene_sources
from resnets.errors import InputError

pytest.importorskip("pycocotools", reason='the detection extra: pip install "resnets[detection]"')


@pytest.fixture(scope="module")
def sources(cifar_train_dir):
    return scene_sources(cifar_train_dir, limit=200)


def _one(boxes, labels, scores=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    out = {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64)}
    if scores is not None:
        out["scores"] = torch.tensor(scores, dtype=torch.float32)
    return out


def test_coco_map_on_known_cases():
    truth = [_one([[10, 10, 30, 30], [40, 5, 60, 25]], [1, 2]), _one([[0, 0, 20, 40]], [3])]
    perfect = [dict(t, scores=torch.ones(len(t["labels"]))) for t in truth]
    assert coco_map(perfect, truth, 10) == pytest.approx({"map": 1, "map_50": 1, "map_75": 1, "map_50_agnostic": 1})
    # Right places, wrong classes: nothing is detected, though every object is found.
    wrong = [dict(p, labels=p["labels"] % 10 + 1) for p in perfect]
    assert coco_map(wrong, truth, 10) == pytest.approx({"map": 0, "map_50": 0, "map_75": 0, "map_50_agnostic": 1})
    # Every box shifted 4 px right of its 20-px object: IoU 16*20/(24*20) = 0.667 passes the
    # thresholds .50, .55, .60, .65 of the ten, so mAP@[.5:.95] is 0.4 and mAP@.5 is 1.
    shifted = [_one([[14, 10, 34, 30], [44, 5, 64, 25]], [1, 2], [0.9, 0.8])]
    m = coco_map(shifted, truth[:1], 10)
    assert m == pytest.approx({"map": 0.4, "map_50": 1, "map_75": 0, "map_50_agnostic": 1})
    # A false positive scored above the true one halves precision at the first recall point only...
    extra = [_one([[10, 10, 30, 30], [40, 40, 60, 60]], [1, 1], [0.5, 0.9])]
    assert 0.4 < coco_map(extra, [_one([[10, 10, 30, 30]], [1])], 10)["map_50"] < 1.0
    assert coco_map([_one([], [], [])], truth[:1], 10)["map"] == 0.0  # no detections at all
    with pytest.raises(InputError):
        coco_map(perfect, truth[:1], 10)


def test_missing_pycocotools_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(InputError, match=r'pip install "resnets\[detection\]"'):
        coco_map([_one([[0, 0, 5, 5]], [1], [1.0])], [_one([[0, 0, 5, 5]], [1])])


def test_scene_boxes_are_exact(sources):
    from resnets.data.scenes import _resize

    settings = SceneSettings()
    scenes = compose_scenes(sources.train.images, sources.train.labels, 40, seed=3, settings=settings)
    counts = [len(b) for b in scenes.boxes]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1, counts
    for image, boxes, labels, used in zip(scenes.images, scenes.boxes, scenes.labels, scenes.sources, strict=True):
        assert len(set(used)) == len(used) == 1 + len(boxes)  # a background and objects, all different images
        assert labels.tolist() == (sources.train.labels[used[1:]] + 1).tolist()
        for (x1, y1, x2, y2), src in zip(boxes.long().tolist(), used[1:], strict=True):
            assert 0 <= x1 < x2 <= settings.size and 0 <= y1 < y2 <= settings.size
            side = ((x2 - x1) * (y2 - y1)) ** 0.5
            assert settings.object_size[0] - 1 <= side <= settings.object_size[1] + 1
            pasted = _resize(sources.train.images[src].float(), y2 - y1, x2 - x1).round().clamp(0, 255)
            assert torch.equal(image[:, y1:y2, x1:x2], pasted.to(torch.uint8))  # the box is the object, exactly
        for i in range(len(boxes)):  # objects do not overlap: no object hides part of another
            for j in range(i):
                a, b = boxes[i], boxes[j]
                assert a[0] >= b[2] or a[2] <= b[0] or a[1] >= b[3] or a[3] <= b[1]


def test_scenes_are_deterministic_by_seed_and_index(sources):
    images, labels = sources.train.images, sources.train.labels
    a = compose_scenes(images, labels, 6, seed=1)
    b = compose_scenes(images, labels, 6, seed=1)
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes))
    tail = compose_scenes(images, labels, 3, seed=1, start=3)  # scene i is the same however it is asked for
    assert torch.equal(tail.images, a.images[3:]) and tail.sources == a.sources[3:]
    assert not torch.equal(compose_scenes(images, labels, 6, seed=2).images, a.images)


def test_training_and_held_out_scenes_use_disjoint_images(sources):
    # split_train_val's two parts: no image of the held-out part is in the training part.
    train = {bytes(x.numpy()) for x in sources.train.images}
    assert not any(bytes(x.numpy()) in train for x in sources.held_out.images)
    assert sources.classes[0] == "airplane" and len(sources.classes) == 10


def test_miniature_study_learns_and_reports(cifar_train_dir, tmp_path):
    from resnets.study import detection_study

    result = detection_study(cifar_train_dir, tmp_path, detectors=("fcos", "fasterrcnn"), backbones=("resnet18",),
                             steps=20, batch_size=4, lr=1e-3, pretrain_epochs=0.1, held_out=8, limit=400,
                             threads=1, fpn_channels=64, head_convs=1)
    assert [(r.detector, r.backbone) for r in result.runs] == [("fcos", "resnet18"), ("fasterrcnn", "resnet18")]
    for run in result.runs:
        first, last = run.losses[:5], run.losses[-5:]  # per step (20 steps): means of five, as batches of 4 are noisy
        assert sum(last) < 0.9 * sum(first), (run.detector, run.losses)
        assert all(0.0 <= v <= 1.0 for v in run.metrics.values()), run.metrics
        assert run.residual
    assert result.pretraining[0].backbone == "resnet18" and 0.0 <= result.pretraining[0].val_top1 <= 1.0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["figure"] == "detections.png" and report["command"].startswith("resnets study detection")
    assert (tmp_path / "detections.png").stat().st_size > 0
    assert (tmp_path / "resnet18_cifar10.safetensors").stat().st_size > 0


def test_nonfinite_detector_loss_stops_naming_the_step(sources):
    """The detectors train through the engine's one training step (its ``criterion`` hook), so a
    NaN stops the run with the engine's error, naming the step, as classification training does."""
    from resnets.study.detection import train_detector
    from resnets.train.engine import NonFiniteLossError
    from resnets.transfer.detection import detector

    torch.manual_seed(0)
    model = detector("fcos", "resnet18", fpn_channels=32, head_convs=1)
    with torch.no_grad():
        model.head.classification_head.cls_logits.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="loss is nan at detection training step 1"):
        train_detector(model, sources, 2, batch_size=2)


def test_detector_normalises_as_its_backbone_weights_were_trained(tmp_path):
    """``weights=FILE`` gave the detector ImageNet's mean/std whatever the file's preprocessing said."""
    import resnets
    from resnets.preprocessing import Preprocessing
    from resnets.transfer.detection import detector
    from resnets.weights_io import export_weights

    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    path = tmp_path / "r18.safetensors"
    export_weights(path, resnets.create_model("resnet18", num_classes=10).state_dict(),
                   {"model": "resnet18", "classes": [str(i) for i in range(10)],
                    "preprocessing": Preprocessing.whole_image((64, 64), mean, std).to_metadata()})
    model = detector("fcos", "resnet18", weights=str(path), fpn_channels=32, head_convs=1)
    assert model.transform.image_mean == list(mean) and model.transform.image_std == list(std)
    # Given explicitly (as `resnets study detection` does): kept.
    model = detector("fcos", "resnet18", weights=str(path), fpn_channels=32, head_convs=1, image_std=(0.5,) * 3)
    assert model.transform.image_mean == list(mean) and model.transform.image_std == [0.5] * 3
    scratch = detector("fcos", "resnet18", fpn_channels=32, head_convs=1)
    assert scratch.transform.image_mean == [0.485, 0.456, 0.406]  # without weights: ImageNet's, torchvision's default
