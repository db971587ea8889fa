"""Transfer learning: foreign weights load strictly and give the same logits, files are never
executed, heads and input channels adapt, and the backbones plug into torchvision's detectors
and segmenters."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import resnets
from resnets.train.checkpoint import export_weights
from resnets.transfer import (
    FeatureExtractor,
    GradualUnfreezer,
    WeightsError,
    dilated_backbone,
    fpn_backbone,
    freeze,
    linear_probe,
    lr_multipliers,
)


def _same_logits(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    a.eval(), b.eval()
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


def test_torchvision_pth_file_loads_directly(tmp_path):
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    ours = resnets.create_model("resnet18", weights=str(tmp_path / "resnet18.pth"))
    assert ours.load_report.ok
    assert _same_logits(ours, reference, torch.randn(1, 3, 64, 64)) <= 1e-5


@pytest.mark.parametrize("name", ["resnet50", "seresnet50", "resnetv2_50", "resnet50d"])
def test_timm_state_dicts_map_onto_ours(tmp_path, name):
    timm = pytest.importorskip("timm")
    reference = timm.create_model(name, pretrained=False)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong mapping cannot hide
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    torch.save(reference.state_dict(), tmp_path / f"{name}.pth")
    ours = resnets.create_model(name, weights=str(tmp_path / f"{name}.pth"))
    assert _same_logits(ours, reference, torch.randn(1, 3, 64, 64)) <= 1e-4


def test_a_pickle_that_runs_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "weights.pth"
    evil.write_bytes(pickle.dumps({"conv1.weight": Payload()}))
    with pytest.raises(WeightsError, match="refused to load .*weights.pth"):
        resnets.create_model("resnet20", weights=str(evil))
    assert not marker.exists()


@pytest.mark.parametrize("suffix,content", [(".pth", b"not a checkpoint"), (".safetensors", b"\x00" * 64),
                                            (".pth", b"")])
def test_files_that_are_not_weights_get_clear_errors(tmp_path, suffix, content):
    path = tmp_path / f"fake{suffix}"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="fake"):
        resnets.create_model("resnet20", weights=str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        resnets.create_model("resnet20", weights=str(tmp_path / "missing.pth"))


def test_wrong_architecture_is_never_a_silent_partial_load(tmp_path):
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsError) as err:
        resnets.create_model("resnet18", weights=str(tmp_path / "r34.pth"))
    assert "unexpected keys" in str(err.value) and "layer1.2.conv1.weight" in str(err.value)
    model = resnets.create_model("resnet18", weights=str(tmp_path / "r34.pth"), strict=False)
    assert not model.load_report.ok and model.load_report.unexpected


def test_new_head_and_adapted_input_channels(tmp_path):
    source = resnets.create_model("resnet20").eval()
    export_weights(tmp_path / "r20.safetensors", source.state_dict(),
                   {"model": "resnet20", "model_kwargs": {}, "classes": [f"c{i}" for i in range(10)],
                    "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]})
    with pytest.warns(UserWarning, match="re-initialised: fc.weight"):
        five = resnets.create_model("resnet20", weights=str(tmp_path / "r20.safetensors"), num_classes=5)
    assert five.fc.out_features == 5 and five.pretrained_meta["mean"] == [0.49, 0.48, 0.45]
    torch.testing.assert_close(five.layer3[2].conv2.weight, source.layer3[2].conv2.weight)

    x = torch.rand(2, 3, 32, 32)
    gray = x[:, :1]
    with pytest.warns(UserWarning, match="adapted"):
        one = resnets.create_model("resnet20", weights=str(tmp_path / "r20.safetensors"), in_chans=1).eval()
        six = resnets.create_model("resnet20", weights=str(tmp_path / "r20.safetensors"), in_chans=6).eval()
    with torch.no_grad():
        # summed weights on one channel == the RGB model on that channel repeated three times
        torch.testing.assert_close(one(gray), source(gray.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)
        # repeated and rescaled weights: an image given twice gives the RGB model's output
        torch.testing.assert_close(six(torch.cat([x, x], 1)), source(x), atol=1e-5, rtol=1e-4)


def test_own_safetensors_rebuild_the_architecture_from_metadata(tmp_path):
    source = resnets.create_model("resnet20", shortcut="B", num_classes=3)
    meta = {"model": "resnet20", "model_kwargs": {"shortcut": "B"}, "classes": ["a", "b", "c"],
            "mean": [0.5] * 3, "std": [0.25] * 3}
    export_weights(tmp_path / "w.safetensors", source.state_dict(), meta)
    model = resnets.create_model("resnet20", weights=str(tmp_path / "w.safetensors"))
    assert model.fc.out_features == 3 and model.pretrained_meta["classes"] == ["a", "b", "c"]
    assert _same_logits(model, source, torch.randn(2, 3, 32, 32)) == 0
    with pytest.raises(WeightsError, match="'resnet20', not 'resnet32'"):
        resnets.create_model("resnet32", weights=str(tmp_path / "w.safetensors"))


@pytest.mark.parametrize("name,size", [("resnet50", 64), ("resnet20", 32), ("resnetv2_50", 64), ("resnet50d", 64),
                                       ("densenet121", 32), ("densenet_bc100_k12", 32)])
def test_features_only_matches_feature_info(name, size):
    full = resnets.create_model(name).eval()
    head = resnets.model_entry(name).classifier
    extractor = resnets.create_model(name, features_only=True).eval()  # every stage by default
    assert len(extractor.out_indices) == len(full.feature_info) - 1
    extractor.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith(f"{head}.")})
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        maps = extractor(x)
        final = full.forward_features(x)
    assert [m.shape[1] for m in maps] == extractor.channels()
    assert [size // m.shape[-1] for m in maps] == extractor.reductions()
    torch.testing.assert_close(maps[-1], final)
    stem = resnets.create_model(name, features_only=True, out_indices=(0,))
    assert stem(x)[0].shape[-1] == size // full.feature_info[0]["reduction"]
    with pytest.raises(ValueError, match="out_indices"):
        FeatureExtractor(resnets.create_model(name), out_indices=(7,))


def test_torchvision_densenet_file_loads_with_new_head_and_input_channels(tmp_path):
    reference = torchvision.models.densenet121().eval()
    torch.save(reference.state_dict(), tmp_path / "densenet121.pth")
    ours = resnets.create_model("densenet121", weights=str(tmp_path / "densenet121.pth"))
    assert ours.load_report.ok
    x = torch.randn(1, 3, 32, 32)
    assert _same_logits(ours, reference, x) <= 1e-5
    with pytest.warns(UserWarning, match="re-initialised: classifier.weight"):
        five = resnets.create_model("densenet121", weights=str(tmp_path / "densenet121.pth"), num_classes=5)
    assert five.classifier.out_features == 5
    with pytest.warns(UserWarning, match="adapted to the input channels: features.conv0.weight"):
        gray = resnets.create_model("densenet121", weights=str(tmp_path / "densenet121.pth"), in_chans=1).eval()
    with torch.no_grad():
        torch.testing.assert_close(gray(x[:, :1]), reference(x[:, :1].repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)


def test_timm_resnet_d_file_adapts_its_deep_stem(tmp_path):
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model("resnet18d", pretrained=False).state_dict(), tmp_path / "r18d.pth")
    with pytest.warns(UserWarning, match="conv1.0.weight"):
        model = resnets.create_model("resnet18d", weights=str(tmp_path / "r18d.pth"), in_chans=1)
    assert model.conv1[0].in_channels == 1


def _detection_batch():
    images = [torch.rand(3, 96, 128), torch.rand(3, 112, 96)]
    targets = []
    for i in range(2):
        boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 20.0, 90.0, 80.0]])[: i + 1]
        masks = torch.zeros(len(boxes), *images[i].shape[1:], dtype=torch.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[j, y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2])[: i + 1], "masks": masks})
    return images, targets


@pytest.mark.parametrize("detector", ["fasterrcnn", "retinanet", "maskrcnn"])
def test_fpn_backbone_trains_torchvision_detectors(detector):
    from torchvision.models import detection
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    if detector == "retinanet":
        backbone = fpn_backbone("resnet18", returned_layers=(2, 3, 4), extra_blocks=LastLevelP6P7(256, 256))
        model = detection.RetinaNet(backbone, num_classes=3, min_size=96, max_size=128)
    else:
        backbone = fpn_backbone("resnet18", trainable_layers=3)
        cls = detection.FasterRCNN if detector == "fasterrcnn" else detection.MaskRCNN
        model = cls(backbone, num_classes=3, min_size=96, max_size=128)
    assert backbone.out_channels == 256
    # trainable_layers=3: layer2..4 train, the stem and layer1 are frozen
    trainable = {k.split(".")[0] for k, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert not backbone.body.conv1.weight.requires_grad

    images, targets = _detection_batch()
    model.train()
    losses = model(images, targets)
    expected = {"fasterrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
                "retinanet": {"classification", "bbox_regression"},
                "maskrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"}}
    assert set(losses) == expected[detector]
    total = sum(losses.values())
    assert torch.isfinite(total)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.01)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params))

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2 and {"boxes", "labels", "scores"} <= set(outputs[0])
    if detector == "maskrcnn":
        assert "masks" in outputs[0]


def test_pretrained_fpn_backbone_freezes_batchnorm(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    backbone = fpn_backbone("resnet18", weights=str(tmp_path / "r18.pth"))
    assert isinstance(backbone.body.bn1, FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.body.modules())


@pytest.mark.parametrize("head", ["deeplabv3", "fcn"])
def test_dilated_encoder_trains_torchvision_segmenters(head):
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    encoder = dilated_backbone("resnet18", output_stride=8)
    assert (encoder.out_channels, encoder.aux_channels) == (512, 256)
    main = DeepLabHead(encoder.out_channels, 4) if head == "deeplabv3" else FCNHead(encoder.out_channels, 4)
    model = (DeepLabV3 if head == "deeplabv3" else FCN)(encoder, main, FCNHead(encoder.aux_channels, 4))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = encoder.eval()(x)
    assert feats["out"].shape[-1] == 64 // 8 and feats["aux"].shape[-1] == 64 // 8
    model.train()
    out = model(x)
    assert out["out"].shape == (2, 4, 64, 64) and out["aux"].shape == (2, 4, 64, 64)
    target = torch.randint(0, 4, (2, 64, 64))
    loss = nn.functional.cross_entropy(out["out"], target) + 0.5 * nn.functional.cross_entropy(out["aux"], target)
    loss.backward()
    assert encoder.layer4[1].conv2.weight.grad is not None
    with pytest.raises(ValueError, match="output_stride"):
        dilated_backbone("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="four-stage"):
        dilated_backbone("resnet20", output_stride=8)


def test_freeze_by_name_linear_probe_multipliers_and_gradual_unfreezing():
    model = resnets.create_model("resnet20")
    freeze(model, "conv1,layer1")
    assert not model.conv1.weight.requires_grad and not model.bn1.weight.requires_grad
    assert not model.layer1[0].conv1.weight.requires_grad and model.layer2[0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match="unknown stage 'layer9'.*layer3"):
        freeze(model, ["layer9"])

    probe = resnets.create_model("resnet20")
    linear_probe(probe)
    assert {k for k, p in probe.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    stats = probe.layer1[0].bn1.running_mean.clone()
    probe.train()(torch.randn(4, 3, 32, 32))
    assert isinstance(probe.layer1[0].bn1, FrozenBatchNorm2d) and torch.equal(stats, probe.layer1[0].bn1.running_mean)

    factors = lr_multipliers(model, {"conv1": 0.01, "layer1": 0.1})
    assert factors["bn1.weight"] == 0.01 and factors["layer1.0.conv1.weight"] == 0.1 and factors["fc.bias"] == 1.0

    unfreezer = GradualUnfreezer(resnets.create_model("resnet20"), every=2)
    assert unfreezer.step(0) == ["fc"]
    assert unfreezer.step(2) == ["fc", "layer3"]
    trainable = {k.split(".")[0] for k, p in unfreezer.model.named_parameters() if p.requires_grad}
    assert trainable == {"fc", "layer3"}
    assert unfreezer.step(10)[-1] == "conv1"


def _trainable(model: nn.Module) -> set[str]:
    return {k for k, p in model.named_parameters() if p.requires_grad}


def test_fine_tuning_stages_are_the_models_own_on_a_densenet():
    """A DenseNet's modules are features.* and classifier: the stages were ResNet names (conv1, fc),
    so the engine's linear probe trained everything, linear_probe() nothing, and freezing 'conv1'
    or its learning-rate factor did nothing, all silently."""
    from resnets.transfer import set_trainable, stage_names

    model = resnets.create_model("densenet_bc100_k12")
    stages = stage_names(model)
    assert stages[0] == "features.conv0" and stages[-1] == "classifier" and "features.denseblock3" in stages
    everything = {k for k, _ in model.named_parameters()}
    set_trainable(model, stages[:-1], False)  # the engine's linear probe
    assert _trainable(model) == {"classifier.weight", "classifier.bias"}
    set_trainable(model, stages, True)
    assert _trainable(model) == everything
    with pytest.raises(ValueError, match=r"unknown stage 'conv1': DenseNet has the stages features\.conv0, .*classifier"):
        freeze(model, "conv1")
    assert freeze(model, "stem, features.denseblock1") > 0
    assert {k.rsplit(".", 1)[0].split(".")[1] for k in everything - _trainable(model)} == {"conv0", "denseblock1"}

    probe = resnets.create_model("densenet_bc100_k12")
    linear_probe(probe)
    assert _trainable(probe) == {"classifier.weight", "classifier.bias"}

    factors = lr_multipliers(model, {"stem": 0.1, "features.denseblock1": 0.5})
    assert factors["features.conv0.weight"] == 0.1 and factors["features.denseblock1.denselayer3.conv2.weight"] == 0.5
    assert factors["features.transition1.conv.weight"] == factors["classifier.bias"] == 1.0

    fresh = resnets.create_model("densenet_bc100_k12")
    freeze(fresh, "stem")
    unfreezer = GradualUnfreezer(fresh, every=1, frozen=["stem"])
    assert unfreezer.step(1) == ["classifier", "features.norm5"]
    assert _trainable(unfreezer.model) == {"classifier.weight", "classifier.bias", "features.norm5.weight",
                                           "features.norm5.bias"}


def test_one_name_parser_strips_names_and_maps_stem_everywhere():
    """'stem' was accepted but ignored by lr_multipliers and GradualUnfreezer (which then thawed the
    stem), and 'conv1, layer1' (a space after the comma) froze layer1 but let the unfreezer thaw it."""
    from resnets.transfer import set_trainable

    model = resnets.create_model("resnet20")
    factors = lr_multipliers(model, {"stem": 0.1, " layer1 ": 0.5})
    assert factors["conv1.weight"] == factors["bn1.bias"] == 0.1 and factors["layer1.0.conv1.weight"] == 0.5
    with pytest.raises(ValueError, match="two factors"):
        lr_multipliers(model, {"stem": 0.1, "conv1": 0.2})

    set_trainable(model, ["stem"], False)
    GradualUnfreezer(model, 1, frozen=["stem"]).step(10)
    assert not model.conv1.weight.requires_grad and not model.bn1.weight.requires_grad
    assert model.layer1[0].conv1.weight.requires_grad

    model = resnets.create_model("resnet20")
    set_trainable(model, "conv1, layer1", False)
    assert GradualUnfreezer(model, 1, frozen="conv1, layer1").step(10) == ["fc", "layer3", "layer2"]
    assert not model.conv1.weight.requires_grad and not model.layer1[0].conv1.weight.requires_grad
    assert model.layer2[0].conv1.weight.requires_grad


def test_features_command_writes_embeddings_and_file_list(cifar_train_dir, tmp_path):
    import numpy as np

    from resnets.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for cls in ("cat", "ship"):
        for i in range(3):
            (folder / f"{cls}{i}.jpg").write_bytes((cifar_train_dir / cls / f"{i:04d}.jpg").read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "emb" / "features.npy"
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert main(["features", "--model", "resnet20", "--weights", "cifar10", str(folder), "--out", str(out)]) == 0
    features = np.load(out)
    paths = (tmp_path / "emb" / "features.files.txt").read_text().splitlines()
    assert features.shape == (6, 64) and features.dtype == np.float32 and len(paths) == 6
    assert all("broken" not in p for p in paths)
    model = resnets.create_model("resnet20", weights="cifar10").eval()
    # the rows are the classifier's input: the shipped head applied to them gives its predictions
    logits = model.fc(torch.from_numpy(features))
    from resnets.train import predict

    top = [p["top"][0]["class"] for p in predict("cifar10", paths, model="resnet20")]
    assert [model.pretrained_meta["classes"][i] for i in logits.argmax(1).tolist()] == top
