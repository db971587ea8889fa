"""The deployment commands as library functions returning reports (issue 18, item 5), and the
data they compare by fingerprint, not by path (item 4). Real CIFAR-10 images, the shipped weights."""

from __future__ import annotations

import json

import pytest
import torch

from resnets.deploy import (
    DataChoice,
    ExportReport,
    PruneReport,
    QuantizeReport,
    export_model,
    prune_model,
    quantize_model,
)
from resnets.errors import InputError


def test_quantize_model_reports_and_recognises_the_training_data(cifar_train_dir, real_folder):
    notes = []
    report = quantize_model("resnet20", "cifar10", data=DataChoice(str(cifar_train_dir)), calibration=64, val=200,
                            log=notes.append)
    assert isinstance(report, QuantizeReport)
    assert report.images == 200 and report.calibration_images == 64
    assert report.fp32_top1 > 70  # the shipped resnet20 (83% on the held-out 5k), here on 200 of them
    assert abs(report.drop - (report.fp32_top1 - report.int8_top1)) < 1e-9
    assert report.split["val_size"] == 5000 and "the weights' metadata" in report.normalization
    assert json.loads(json.dumps(report.to_dict()))["exceeded"] == report.exceeded
    assert "top-1 on 200 validation images" in str(report)
    # The weights' data is recognised by its fingerprint: the same images say nothing ...
    assert not [n for n in notes if "trained on" in n], notes
    # ... other images (a 300-image folder) are named as not training's.
    other = []
    with pytest.warns(UserWarning, match="fallback"):  # FX: quicker than PT2E's compilation, and the same data path
        quantize_model("resnet20", "cifar10", data=DataChoice(str(real_folder), val_size=100), calibration=32, val=50,
                       method="fx", log=other.append)
    assert [n for n in other if "trained on cifar10-jpeg/train (50000 images" in n], other


def test_quantize_model_needs_calibration_images_only_without_qat(real_folder):
    # Post-training quantization observes activation ranges on the calibration images: none is an error
    # naming the option, before any weights are read. QAT learns them while training, so
    # --calibration 0 --qat-images N is a valid request (refused by cceed86's range check; mended).
    with pytest.raises(ValueError, match="--calibration: post-training quantization needs at least one"):
        quantize_model("resnet20", "cifar10", calibration=0)
    with pytest.raises(ValueError, match="--qat-images: quantization-aware training needs at least one"):
        quantize_model("resnet20", "cifar10", calibration=0, qat_epochs=1)
    report = quantize_model("resnet20", "cifar10", data=DataChoice(str(real_folder), val_size=100), calibration=0,
                            qat_epochs=1, qat_images=32, val=50)
    assert report.method == "QAT, 1 epoch(s) on 32 images" and report.calibration_images == 0
    assert report.images == 50 and report.fp32_top1 > 50


def test_export_model_checks_with_onnxruntime(tmp_path, real_folder):
    pytest.importorskip("onnxruntime")
    report = export_model("resnet20", "cifar10", out=tmp_path / "r20.onnx", check_images=40,
                          data=DataChoice(str(real_folder), val_size=100))
    assert isinstance(report, ExportReport) and report.format == "onnx" and report.passed
    assert report.check["runtime"] == "onnxruntime" and report.check["images"] == 40
    assert "real validation images" in report.check["inputs"]
    assert json.loads(json.dumps(report.to_dict()))["passed"] is True
    assert str(report).startswith(f"wrote {tmp_path / 'r20.onnx'} (onnx,")


def test_prune_model_refuses_an_unwritable_output_first(tmp_path, real_folder):
    with pytest.raises(ValueError, match="structured pruning changes layer shapes"):
        prune_model("resnet20", "cifar10", method="structured", out=tmp_path / "p.safetensors")
    report = prune_model("resnet20", "cifar10", method="unstructured", ratio=0.5, epochs=0, train_images=32, val=50,
                         data=DataChoice(str(real_folder), val_size=100), out=tmp_path / "p.safetensors")
    assert isinstance(report, PruneReport) and (tmp_path / "p.safetensors").is_file()
    assert report.before.sparsity < 0.01 and report.pruned.sparsity == pytest.approx(0.5, abs=0.01)
    assert report.before.params == report.pruned.params == 269_722
    assert json.loads(json.dumps(report.to_dict()))["pruned"]["top1"] == report.pruned.top1
    assert "sparsity 50.0%" in str(report)


def test_prune_model_refuses_fine_tuning_on_no_images_up_front(tmp_path, real_folder):
    """--train-images 0 with the default --epochs 1 divided by zero after the pruning, and saved nothing."""
    with pytest.raises(InputError, match="--train-images 0 leaves nothing to fine-tune on for --epochs 1: pass "
                                         "--epochs 0"):
        prune_model("resnet20", "cifar10", train_images=0, val=20, out=tmp_path / "never.pt2",
                    data=DataChoice(str(real_folder), val_size=100))
    assert not (tmp_path / "never.pt2").exists()


def test_pruned_exported_file_carries_the_metadata_and_serves_alone(tmp_path, real_folder):
    """A pruned .onnx or .pt2 carried no metadata (no model name, no preprocessing), so predict, eval
    and serve could not run it."""
    from resnets.runtime import open_backend, read_file_metadata
    from resnets.train import predict

    out = tmp_path / "p.pt2"  # the metadata is written as for .onnx; torch.export alone is the quicker test
    report = prune_model("resnet20", "cifar10", ratio=0.5, epochs=0, train_images=0, val=20, out=out,
                         data=DataChoice(str(real_folder), val_size=100))
    meta = read_file_metadata(out)
    assert meta["model"] == "resnet20" and meta["parameters"] == report.pruned.params < report.before.params
    assert meta["pruning"]["ratio"] == 0.5 and meta["metrics"]["val_images"] == 20
    served = open_backend(out)
    assert served.preprocessing == open_backend("cifar10", model="resnet20").preprocessing
    images = sorted(real_folder.glob("*/*.jpg"))[:3]
    rows = predict(out, images, topk=1)
    assert [r["top"][0]["class"] in served.classes for r in rows] == [True] * 3


def test_export_static_batch_openvino_is_static_and_checks_a_single_image(tmp_path, real_folder):
    """--format openvino --static-batch wrote a fully dynamic IR ([?,3,?,?]); --static-batch
    --check-images 1 trimmed the check to no image (ZeroDivisionError after the file was written)."""
    ov = pytest.importorskip("openvino")
    from resnets.deploy import compare
    from resnets.runtime import open_backend

    out = tmp_path / "s.xml"
    report = export_model("resnet20", "cifar10", out=out, dynamic_batch=False, check_images=1,
                          data=DataChoice(str(real_folder), val_size=100))
    assert report.passed and report.check["images"] == 1 and not report.dynamic_batch
    assert list(ov.Core().read_model(str(out)).input(0).get_partial_shape().to_shape()) == [2, 3, 32, 32]
    served = open_backend(out)  # a static IR runs any batch, as a static ONNX file does
    x = torch.randn(3, 3, 32, 32)
    expected = open_backend("cifar10", model="resnet20")(x)
    for n in (1, 3):
        torch.testing.assert_close(served(x[:n]), expected[:n], atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="needs at least one input"):
        compare(torch.nn.Identity(), torch.nn.Identity(), torch.zeros(0, 3, 32, 32))


def test_quantize_model_with_one_calibration_and_one_validation_image_saves_its_program(tmp_path, real_folder,
                                                                                        monkeypatch):
    """torch.export specialises a batch-1 example to 1 and refuses the dynamic batch: --calibration 1
    failed at the export for calibration, --val 1 --out q.pt2 after all the work, at the save."""
    from resnets.deploy import PT2EInt8
    from resnets.runtime import open_backend

    # The int8 graph op by op: inductor's compilation (a minute on a busy CPU) is not what this checks.
    monkeypatch.setattr(PT2EInt8, "forward", PT2EInt8.reference)
    out = tmp_path / "q.pt2"
    report = quantize_model("resnet20", "cifar10", data=DataChoice(str(real_folder), val_size=100), calibration=1,
                            val=1, out=out)
    assert report.calibration_images == 1 and report.images == 1 and report.out == str(out)
    served = open_backend(out)
    assert served.name == "resnet20" and served(torch.randn(3, 3, 32, 32)).shape == (3, 10)
