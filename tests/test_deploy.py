"""Deployment on real CIFAR-10 images: export parity, BN folding, int8 accuracy, pruning, Grad-CAM.

No trained weights ship yet, so a session fixture trains CIFAR ResNet-8 briefly on a few thousand
real training images; that is enough for accuracy far above chance (10%), which makes the int8
accuracy and agreement checks meaningful. Images come from the training engine's own split
(``split_train_val``, 45k/5k, seed 0): the model trains on part of the train side and every
accuracy is measured on the held-out side.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from PIL import Image
from torch import nn

import resnets
from resnets.data import open_dataset, open_split, sample_images, split_settings, split_train_val
from resnets.deploy import (
    compare,
    compare_accuracy,
    conv_bn_pairs,
    default_target_layer,
    export,
    fine_tune,
    fold_bn,
    grad_cam,
    load_exported,
    load_model,
    predict,
    prune_structured,
    prune_unstructured,
    quantize_static,
    save_overlays,
    sparsity,
    to_channels_last,
)
from resnets.errors import InputError
from resnets.preprocessing import Preprocessing
from resnets.pretrained import RECORDS

TRAIN_IMAGES, VAL_IMAGES, EPOCHS = 2500, 1000, 3
# Worst int8 result accepted on the 1,000-image validation sample (weakly trained model, so
# predictions sit near decision boundaries more often than a converged model's would).
MAX_INT8_DROP_POINTS = 2.0
MIN_INT8_AGREEMENT = 0.90


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These 32x32 models are too small for intra-op parallelism to pay; on shared CI cores a
    second thread mostly waits (measured: one thread trained ResNet-8 3.4x faster under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cifar(cifar_train_dir):
    split = open_split(cifar_train_dir)  # no recipe: the training engine's defaults
    assert (split.val_size, split.seed) == (5000, 0) and (len(split.train), len(split.val)) == (45000, 5000)
    # CIFAR's own statistics, from the train part, as training computes them
    mean, std = split.train.info.mean, split.train.info.std
    prep = Preprocessing.whole_image((32, 32), mean, std)
    train_u8, train_y = sample_images(split.train, TRAIN_IMAGES, prep, seed=0)
    val_u8, val_y = sample_images(split.val, VAL_IMAGES, prep, seed=1)
    return {
        "classes": split.train.info.classes, "mean": mean, "std": std, "val_u8": val_u8,
        "train": prep.normalize(train_u8), "train_y": train_y,
        "val": prep.normalize(val_u8), "val_y": val_y,
    }


@pytest.fixture(scope="session")
def trained(cifar):
    """CIFAR ResNet-8 (option A shortcuts), a few epochs on 2,500 real images (~20-30 s)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session scope outlives the module's one-thread fixture; see there
    start = time.perf_counter()
    # Channels-last trains ~20% faster on CPU; the returned model is in the default layout.
    model = resnets.cifar_resnet(8).to(memory_format=torch.channels_last)
    images = cifar["train"].contiguous(memory_format=torch.channels_last)
    fine_tune(model, images, cifar["train_y"], epochs=EPOCHS, lr=0.2, batch_size=128)
    model = model.to(memory_format=torch.contiguous_format)
    torch.set_num_threads(threads)
    top1 = 100 * (predict(model, cifar["val"]) == cifar["val_y"]).float().mean().item()
    print(f"\ntrained resnet8 in {time.perf_counter() - start:.1f} s: {top1:.1f}% on {VAL_IMAGES} val images")
    assert top1 > 25, "the fixture model must be far above chance for the accuracy tests to mean anything"
    return model.eval()


@pytest.fixture(scope="session")
def zoo_weights(cifar, cifar_train_dir, tmp_path_factory):
    """A registered model (resnet20, untrained but with BN statistics measured on real images)
    saved as the training engine writes weights: safetensors + JSON metadata, with the recipe's
    data section (a 4000-image split, seed 1). It exercises the CLI's plumbing; the trained
    ResNet-8 above (not a registry name) carries the accuracy tests."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = resnets.create_model("resnet20")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for start in range(0, 512, 128):
            model(cifar["train"][start:start + 128])
    model.eval()
    path = tmp_path_factory.mktemp("weights") / "resnet20.safetensors"
    meta = {"model": "resnet20", "model_kwargs": {}, "classes": cifar["classes"],
            "mean": list(cifar["mean"]), "std": list(cifar["std"]), "image_size": [3, 32, 32],
            "recipe": {"data": {"path": str(cifar_train_dir), "val_size": 4000, "split_seed": 1}}}
    save_file(model.state_dict(), str(path), metadata={k: json.dumps(v) for k, v in meta.items()})
    return path, model


# ---- export ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torch_exports_match_with_dynamic_batch(trained, cifar, tmp_path, fmt):
    path = export(trained, cifar["val"][:2], tmp_path / f"m.{fmt}", fmt)
    run = load_exported(path, fmt)
    parity = compare(trained, run, cifar["val"][:200], batch_size=37)
    assert parity.max_abs_diff < 1e-4
    assert parity.top1_agreement == 1.0
    assert run(cifar["val"][:1]).shape == (1, 10)


def test_export_rejects_unknown_format(trained, tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        export(trained, torch.zeros(1, 3, 32, 32), tmp_path / "m.x", "tflite")


# ---- BN folding ----------------------------------------------------------------------------------

def test_fold_bn_is_equivalent_and_removes_every_post_conv_bn(trained, cifar):
    folded = fold_bn(trained)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in trained.modules()), "the original is untouched"
    with torch.no_grad():
        ref, out = trained(cifar["val"][:200]), folded(cifar["val"][:200])
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_fold_bn_keeps_preactivation_bns_that_follow_additions(cifar):
    model = resnets.cifar_resnet(11, bottleneck=True, preact=True).eval()
    for m in model.modules():  # non-trivial statistics, so folding has something to get wrong
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    pairs = conv_bn_pairs(model)
    # v2 bottleneck: bn2 after conv1 and bn3 after conv2 fold; bn1 (after the addition) and the
    # final norm cannot.
    assert {bn.rsplit(".", 1)[-1] for _, bn in pairs} == {"bn2", "bn3"}
    folded = fold_bn(model)
    remaining = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert remaining and all(n.endswith(("bn1", "norm")) for n in remaining)
    x = cifar["val"][:64]
    torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


# ---- int8 ----------------------------------------------------------------------------------------

def test_int8_static_quantization_keeps_accuracy_on_real_validation(trained, cifar):
    int8 = quantize_static(trained, cifar["train"][:256])
    # Conv2d, or ConvReLU2d where a ReLU was fused in: torch.ao.nn(.intrinsic).quantized modules.
    quantized_convs = [m for m in int8.modules() if ".quantized" in type(m).__module__
                       and "Conv" in type(m).__name__]
    assert len(quantized_convs) == sum(isinstance(m, nn.Conv2d) for m in trained.modules())
    report = compare_accuracy(trained, int8, cifar["val"], cifar["val_y"], 256)
    print(f"\nint8 on {report.images} real val images: {report}")
    assert report.fp32_top1 > 25
    assert report.drop <= MAX_INT8_DROP_POINTS
    assert report.agreement >= MIN_INT8_AGREEMENT


def test_int8_pt2e_lowers_every_conv_to_fused_int8_kernels_and_keeps_accuracy(trained, cifar):
    """PT2E (issue 17, item 2): torch.export + X86InductorQuantizer + inductor. Every convolution
    is quantized (one per-channel weight dequantization each) and lowered to a oneDNN int8 kernel,
    those before an addition with the addition and ReLU fused in; top-1 on real held-out images
    stays within the same bounds as FX's."""
    pytest.importorskip("torchao")
    from collections import Counter

    from torch._dynamo.utils import counters

    from resnets.deploy import PT2EInt8, quantize_pt2e

    torch._dynamo.reset()
    counters.clear()
    int8 = quantize_pt2e(trained, cifar["train"][:256])
    assert isinstance(int8, PT2EInt8)
    ops = Counter(n.target for n in int8.graph.graph.nodes if n.op == "call_function")
    convs = sum(isinstance(m, nn.Conv2d) for m in trained.modules())
    # Conv-BN folded, one per-channel weight per conv plus the classifier's.
    assert ops[torch.ops.quantized_decomposed.dequantize_per_channel.default] == convs + 1
    report = compare_accuracy(trained, int8, cifar["val"], cifar["val_y"], 256)
    print(f"\nint8 (PT2E) on {report.images} real val images: {report}")
    compiled = counters["inductor"]
    blocks = sum(1 for name, _ in trained.named_modules() if name.count(".") == 1 and name.startswith("layer"))
    assert compiled["qconv_weight_prepack_matcher_count"] >= convs  # per compiled shape
    assert compiled["qconv2d_binary_matcher_count"] >= blocks  # conv + add + ReLU, one per block
    assert report.drop <= MAX_INT8_DROP_POINTS
    assert report.agreement >= MIN_INT8_AGREEMENT
    # The lowered kernels and the reference quantize/dequantize graph choose the same classes.
    x = cifar["val"][:128]
    assert (int8(x).argmax(1) == int8.reference(x).argmax(1)).float().mean() >= 0.97


def test_fx_is_the_fallback_and_says_so(monkeypatch):
    from resnets.deploy import quantize as quantize_module
    from resnets.deploy import resolve_method

    with pytest.warns(UserWarning, match="FX graph mode.*fallback"):
        assert resolve_method("fx") == "fx"
    monkeypatch.setattr(quantize_module, "torchao_available", lambda: False)
    with pytest.warns(UserWarning, match='torchao is not installed \\(pip install "resnets\\[deploy\\]"\\)'):
        assert resolve_method("pt2e") == "fx"
    with pytest.raises(ValueError, match="one of pt2e, fx"):
        resolve_method("qnnpack")


def test_cli_quantize_pt2e_saves_a_program_that_serves_alone(cifar_train_dir, cifar, tmp_path, capsys):
    """``resnets quantize`` (PT2E, the default) --out .pt2: a torch.export archive with the weights'
    metadata, which ``predict``/``serve`` open with the torch backend, no weights needed."""
    pytest.importorskip("torchao")
    from resnets.cli import main
    from resnets.runtime import open_backend

    out = tmp_path / "int8.pt2"
    rc = main(["quantize", "--model", "resnet20", "--weights", "cifar10", "--data", str(cifar_train_dir),
               "--calibration", "64", "--val", "128", "--json", "--out", str(out)])  # one batch: one compilation
    q = json.loads(capsys.readouterr().out)
    assert rc == 0 and q["flow"] == "pt2e" and q["out"] == str(out) and q["images"] == 128
    # On 128 images one image is 0.78 points: on an AVX-512 VNNI CPU (2026-12-04) these 64 calibration
    # images gave a 3-image drop (2.34 points, 97.7 % agreement), on AVX2 ones less. The half-point goal
    # is checked on the whole 5k split below; here a broken program would show as a large drop.
    assert q["drop"] <= 4.0 and q["agreement"] >= 0.95
    served = open_backend(out)
    assert served.backend == "torch" and served.name == "resnet20" and served.classes[0] == "airplane"
    assert served.exported_from["weights"] == "cifar10" and served.prepared().input_size == (32, 32)
    reference = open_backend("cifar10", model="resnet20")
    x = cifar["val"][:50]  # other statistics than the weights', but the same network input for both
    assert (served(x).argmax(1) == reference(x).argmax(1)).float().mean() >= 0.9


# The quantizer and the lowering are one path for every file: resnet20 in the default suite, the deeper files
# (31-103 s each in CI, 218 s together) under -m slow, to keep the suite near 10 minutes; RESULTS lists every row.
@pytest.mark.parametrize("record", [pytest.param(r, id=f"{r.model}-{r.tag}", marks=() if r.model == "resnet20"
                                                 else pytest.mark.slow) for r in RECORDS])
def test_int8_of_shipped_weights_meets_the_half_point_goal(record, cifar_train_dir, capsys):
    """Issue 7's goal, on converged weights and the whole 5k held-out split: post-training int8
    loses at most 0.5 points of top-1 (``--strict`` makes the command fail above ``--max-drop``)."""
    from resnets.cli import main

    rc = main(["quantize", "--model", record.model, "--weights", record.tag, "--data", str(cifar_train_dir),
               "--val", "5000", "--max-drop", "0.5", "--strict", "--json"])
    result = json.loads(capsys.readouterr().out)
    print(f"\n{record.model}: fp32 {result['fp32_top1']:.2f}% -> int8 {result['int8_top1']:.2f}%")
    assert rc == 0 and result["images"] == 5000
    assert result["fp32_top1"] == pytest.approx(100 * record.metrics["val_top1"], abs=0.01)
    assert result["drop"] <= 0.5


# ---- pruning -------------------------------------------------------------------------------------

def _check_additions(model: nn.Module, x: torch.Tensor) -> int:
    """Run ``model`` with a hook on every block asserting the branch and the shortcut agree."""
    from resnets.blocks import _Block

    checked = []

    def hook(block, inputs, output):
        (inp,) = inputs
        shortcut = block.downsample(inp) if block.downsample is not None else inp
        assert shortcut.shape == output.shape, f"residual addition mismatch in {type(block).__name__}"
        checked.append(block)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _Block)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    assert out.shape == (len(x), 10)
    return len(checked)


def test_structured_pruning_prunes_coupled_channels_together(cifar):
    # Projection shortcuts (option B): the channels joined by each addition are one group.
    model = resnets.cifar_resnet(14, shortcut="B").eval()
    before = resnets.profile(model, (3, 32, 32))
    pruned = prune_structured(model, 0.5, torch.randn(1, 3, 32, 32))
    after = resnets.profile(pruned, (3, 32, 32))
    assert after.params < 0.45 * before.params and after.macs < 0.45 * before.macs
    assert _check_additions(pruned, cifar["val"][:8]) == 6
    # Every block of a stage writes the same (reduced) residual width.
    for stage in (pruned.layer1, pruned.layer2, pruned.layer3):
        widths = {b.conv2.out_channels for b in stage}
        assert len(widths) == 1
    assert pruned.layer3[-1].conv2.out_channels == pruned.fc.in_features < 64
    assert pruned.feature_info[-1]["num_chs"] == pruned.fc.in_features


def test_structured_pruning_of_trained_option_a_model_then_fine_tune(trained, cifar):
    pruned = prune_structured(trained, 0.5, torch.randn(1, 3, 32, 32))
    # The zero-padded option-A shortcut fixes the residual stream: its widths are kept.
    assert [s[-1].conv2.out_channels for s in (pruned.layer1, pruned.layer2, pruned.layer3)] == [16, 32, 64]
    assert pruned.layer1[0].conv1.out_channels == 8 and pruned.layer3[0].conv1.out_channels == 32
    assert _check_additions(pruned, cifar["val"][:8]) == 3
    before, after = resnets.profile(trained, (3, 32, 32)), resnets.profile(pruned, (3, 32, 32))
    assert after.params < 0.6 * before.params and after.macs < 0.6 * before.macs
    val, y = cifar["val"], cifar["val_y"]
    acc = lambda m: 100 * (predict(m, val) == y).float().mean().item()  # noqa: E731
    pruned_acc = acc(pruned)
    fine_tune(pruned, cifar["train"][:1500], cifar["train_y"][:1500], epochs=1, lr=0.05, batch_size=128)
    tuned_acc = acc(pruned)
    print(f"\npruned 50% of inner channels: {acc(trained):.1f}% -> {pruned_acc:.1f}% -> fine-tuned {tuned_acc:.1f}%")
    assert tuned_acc > 20


def test_structured_pruning_at_high_ratios_follows_the_request():
    """torch-pruning skips a layer whose rounded count would remove all its channels: the shipped
    resnet20 lost 90% of its parameters at ratio 0.95 and none at 0.99 (the saved file unchanged).
    Each layer now keeps at least one channel, so a higher ratio never prunes less, and says so."""
    model = load_model("resnet20", "cifar10").model
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with pytest.warns(UserWarning, match="pruning ratio 0.99 would leave no channel in 9 layer"):
        at_99 = prune_structured(model, 0.99, torch.randn(1, 3, 32, 32))
    # 97.2% fewer: all that can go while the residual stream keeps its widths (0.95 gives 94.9%).
    assert params(at_99) < 0.03 * params(model)
    # Every block's inner conv keeps one channel at 0.99: the residual stream (option A) is untouched.
    assert {b.conv1.out_channels for s in (at_99.layer1, at_99.layer2, at_99.layer3) for b in s} == {1}
    assert at_99(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # Global ranking cannot be capped per layer: a result short of the request is refused, not returned.
    with pytest.raises(InputError, match="global pruning at ratio 0.99 removed only"):
        prune_structured(model, 0.99, torch.randn(1, 3, 32, 32), global_pruning=True)


def test_unstructured_pruning_zeros_smallest_weights_and_fine_tune_keeps_them(trained, cifar):
    pruned = prune_unstructured(trained, 0.6)
    assert sparsity(trained) < 0.01
    assert abs(sparsity(pruned) - 0.6) < 0.01
    assert resnets.profile(pruned, (3, 32, 32)).params == resnets.profile(trained, (3, 32, 32)).params
    # Global magnitude: every surviving weight is at least as large as every removed one.
    kept = torch.cat([m.weight[m.weight != 0].abs() for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    removed_max = max(
        t.weight[p.weight == 0].abs().max().item()
        for t, p in zip(trained.modules(), pruned.modules())
        if isinstance(t, (nn.Conv2d, nn.Linear)) and (p.weight == 0).any()
    )
    assert kept.min().item() >= removed_max
    fine_tune(pruned, cifar["train"][:256], cifar["train_y"][:256], epochs=1, lr=0.01, keep_zeros=True)
    assert abs(sparsity(pruned) - 0.6) < 0.01


# ---- Grad-CAM ------------------------------------------------------------------------------------

def test_grad_cam_batched_heatmaps_and_png_overlays(trained, cifar, tmp_path):
    x, images = cifar["val"][:12], cifar["val_u8"][:12]
    assert default_target_layer(trained) == "layer3"
    heatmaps, classes, logits = grad_cam(trained, x)
    assert heatmaps.shape == (12, 32, 32)
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    peaks = heatmaps.flatten(1).amax(1)
    assert ((peaks == 0) | ((peaks - 1).abs() < 1e-5)).all() and (peaks > 0).sum() >= 10
    assert torch.equal(classes, logits.argmax(1))
    # Batched equals one image at a time.
    single, _, _ = grad_cam(trained, x[3:4])
    torch.testing.assert_close(heatmaps[3:4], single, atol=1e-4, rtol=1e-4)
    # A different class gives a different explanation.
    other = (classes[0] + 1) % 10
    alt, alt_classes, _ = grad_cam(trained, x[:1], target=int(other))
    assert alt_classes.item() == other and not torch.allclose(alt, heatmaps[:1])
    names = [f"val/{i}.png" for i in range(12)]
    paths = save_overlays(images, heatmaps, tmp_path, names, scale=2)
    assert len({p.name for p in paths}) == 12
    for p in paths:
        with Image.open(p) as img:
            assert img.format == "PNG" and img.size == (64, 64) and img.mode == "RGB"


def test_grad_cam_on_an_imagenet_model_defaults_to_layer4():
    model = resnets.create_model("resnet18", num_classes=5).eval()
    assert default_target_layer(model) == "layer4"
    heatmaps, _, _ = grad_cam(model, torch.randn(2, 3, 64, 64))
    assert heatmaps.shape == (2, 64, 64)


# ---- weights and CLI -----------------------------------------------------------------------------

def test_load_model_reads_safetensors_metadata_and_prefixed_state_dicts(zoo_weights, cifar, tmp_path):
    path, model = zoo_weights
    loaded = load_model(None, path)
    assert loaded.name == "resnet20" and loaded.classes == cifar["classes"]
    assert loaded.mean == pytest.approx(cifar["mean"]) and loaded.input_size == (3, 32, 32)
    x = cifar["val"][:16]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))
        pt = tmp_path / "ddp.pt"
        torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, pt)
        torch.testing.assert_close(load_model("resnet20", pt).model(x), model(x))
    with pytest.raises(ValueError, match="weights for 'resnet20', not 'resnet32'"):
        load_model("resnet32", path)
    with pytest.raises(ValueError, match="10-class classifier"):
        load_model(None, path, num_classes=5)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_model("resnet20", tmp_path / "missing.safetensors")


def test_split_is_the_training_engines_and_follows_the_recipe(cifar_train_dir):
    """Validation images are exactly what ``split_train_val`` holds out for training (so never
    trained on), with the recipe's val_size/split_seed when the weights record them."""
    meta = {"recipe": {"data": {"path": str(cifar_train_dir), "val_size": 1000, "split_seed": 3}}}
    assert split_settings(None)[:3] == (5000, 0, "the training defaults")
    assert split_settings(meta)[:3] == (1000, 3, "the weights' recipe")
    assert split_settings(meta, val_size=2000)[:3] == (2000, 3, "--val-size/--split-seed")
    no_val = split_settings({"recipe": {"data": {"val_size": 0}}})
    assert no_val[0] == 5000 and "not unseen" in no_val[3][0]
    split = open_split(cifar_train_dir, meta)
    train, val = split_train_val(open_dataset(cifar_train_dir), val_size=1000, seed=3)
    assert torch.equal(split.val.images, val.images) and torch.equal(split.val.labels, val.labels)
    assert len(split.train) == len(train) == 49000 and split.train.info.mean == tuple(train.info.mean)
    assert not split.notes
    images, labels = sample_images(split.val, 120, Preprocessing.whole_image((40, 40), [0.5] * 3, [0.2] * 3), seed=1)
    assert images.shape == (120, 3, 40, 40) and images.dtype == torch.uint8
    assert labels.bincount(minlength=10).tolist() == [12] * 10


def test_cli_export_onnx_checks_against_pytorch(zoo_weights, cifar, cifar_train_dir, tmp_path, capsys):
    """ONNX parity: the command's own onnxruntime check on real images, then the file directly."""
    from resnets.cli import main

    out = tmp_path / "m.onnx"
    rc = main(["export", "--weights", str(zoo_weights[0]), "--out", str(out), "--data", str(cifar_train_dir),
               "--check-images", "120", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and out.is_file()
    check = result["check"]
    assert check["runtime"] == "onnxruntime"
    assert check["images"] == 120 and "real validation images" in check["inputs"]
    assert result["split"] == {"data": str(cifar_train_dir), "val_size": 4000, "split_seed": 1,
                               "from": "the weights' recipe"}
    assert check["max_abs_diff"] < 1e-3 and check["top1_agreement"] == 1.0
    run, model = load_exported(out, "onnx"), zoo_weights[1]
    for n in (1, 7):  # the export's example batch was 2: the batch dimension is dynamic
        parity = compare(model, run, cifar["val"][:n])
        assert parity.max_abs_diff < 1e-3 and parity.top1_agreement == 1.0


def test_export_openvino_checks_against_pytorch_and_carries_metadata(cifar_train_dir, cifar, tmp_path, capsys):
    """OpenVINO IR (issue 17, item 1): the command's parity check by OpenVINO on real images, as ONNX's
    by onnxruntime; fp32 weights in the .bin; the weights' metadata in the IR's rt_info."""
    pytest.importorskip("openvino")
    from resnets.cli import main
    from resnets.pretrained import find
    from resnets.runtime import read_file_metadata

    out = tmp_path / "r20.xml"
    rc = main(["export", "--model", "resnet20", "--weights", "cifar10", "--format", "openvino", "--out", str(out),
               "--data", str(cifar_train_dir), "--check-images", "120", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["passed"] and result["format"] == "openvino"
    check = result["check"]
    assert check["runtime"] == "openvino" and check["images"] == 120 and "real validation images" in check["inputs"]
    assert check["max_abs_diff"] < 1e-4 and check["top1_agreement"] == 1.0
    # fp32 weights (save_model would halve them to fp16): about 4 bytes per parameter.
    assert out.with_suffix(".bin").stat().st_size > 4 * 269_722 * 0.95
    meta = read_file_metadata(out)
    assert meta["source_sha256"] == find("resnet20", "cifar10").sha256 and meta["classes"][0] == "airplane"
    assert "source_sha256" in result["metadata"]
    run = load_exported(out, "openvino")
    model = resnets.create_model("resnet20", weights="cifar10").eval()
    for n in (1, 7):  # the batch dimension is dynamic
        assert compare(model, run, cifar["val"][:n]).max_abs_diff < 1e-4


def test_cli_quantize_prune_explain(zoo_weights, cifar_train_dir, cifar, tmp_path, capsys, monkeypatch):
    from resnets.cli import main

    data = ["--data", str(cifar_train_dir)]
    weights_file = zoo_weights[0]
    with pytest.warns(UserWarning, match="FX graph mode.*fallback"):
        rc = main(["quantize", "--weights", str(weights_file), *data, "--calibration", "128", "--val", "300",
                   "--json", "--method", "fx", "--out", str(tmp_path / "int8.pt")])
    q = json.loads(capsys.readouterr().out)
    assert rc == 0 and q["images"] == 300 and q["calibration_images"] == 128 and q["flow"] == "fx"
    # The saved int8 TorchScript runs on its own, with a batch size other than the example's.
    saved = torch.jit.load(q["out"])
    assert saved(cifar["val"][:5]).shape == (5, 10)
    assert q["split"] == {"data": str(cifar_train_dir), "val_size": 4000, "split_seed": 1, "from": "the weights' recipe"}
    # Accuracy is the library test's job (trained model); here the report must be self-consistent.
    assert abs(q["fp32_top1"] - q["int8_top1"] - q["drop"]) < 1e-9 and 0 <= q["agreement"] <= 1

    monkeypatch.delenv("RESNETS_DATA", raising=False)  # no --data: the data the recipe names
    rc = main(["prune", "--weights", str(weights_file), "--val-size", "3000", "--ratio", "0.5", "--epochs", "0",
               "--train-images", "100", "--val", "100", "--json", "--out", str(tmp_path / "p.pt2")])
    p = json.loads(capsys.readouterr().out)
    assert p["split"] == {"data": str(cifar_train_dir), "val_size": 3000, "split_seed": 1,
                          "from": "--val-size/--split-seed"}
    assert rc == 0 and p["pruned"]["params"] < p["before"]["params"] and p["pruned"]["macs"] < p["before"]["macs"]
    program = torch.export.load(str(tmp_path / "p.pt2")).module()
    assert program(cifar["val"][:3]).shape == (3, 10)

    images = []
    for i, pixels in enumerate(cifar["val_u8"][:3]):
        images.append(str(tmp_path / f"val{i}.png"))
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(images[-1])
    rc = main(["explain", "--weights", str(weights_file), *images, "--out", str(tmp_path / "cam"), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(rows) == 3
    assert all(r["class_name"] in cifar["classes"] for r in rows)
    for r in rows:
        with Image.open(r["overlay"]) as img:
            assert img.size == (128, 128)


@pytest.mark.parametrize("old_bin", [b"the previous export's weights", None], ids=["old-pair", "no-old-pair"])
def test_export_openvino_puts_the_old_bin_back_when_the_xml_cannot_be_written(tmp_path, old_bin):
    # The two IR files cannot be replaced at once: the .bin goes first. Here the .xml's place is
    # taken by a directory (a real failure of the final rename, after the new .bin is in place):
    # the folder must be left with the old .bin, or with no .bin where there was none.
    pytest.importorskip("openvino")
    from resnets.deploy.export import export_openvino
    from resnets.weights_io import WriteError

    out = tmp_path / "m.xml"
    (out / "in-the-way").mkdir(parents=True)
    if old_bin is not None:
        out.with_suffix(".bin").write_bytes(old_bin)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(WriteError, match="m.xml"):
        export_openvino(model, torch.randn(2, 3, 8, 8), out)
    if old_bin is None:
        assert not out.with_suffix(".bin").exists()
    else:
        assert out.with_suffix(".bin").read_bytes() == old_bin
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"][old_bin is None:], "a temporary file left"


def test_cli_errors_are_usage_errors(tmp_path, capsys):
    from resnets.cli import main

    assert main(["export", "--model", "resnet20", "--out", str(tmp_path / "m.xyz")]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert main(["export", "--model", "resnet20", "--format", "openvino", "--out", str(tmp_path / "m.ir")]) == 2
    assert "--out m.xml" in capsys.readouterr().err
    # Refused before any work: the PT2E model is a torch.export archive, FX's is TorchScript.
    assert main(["quantize", "--model", "resnet20", "--weights", "cifar10", "--out", str(tmp_path / "q.pt")]) == 2
    assert "saved as .pt2" in capsys.readouterr().err
    assert main(["quantize", "--model", "resnet20", "--weights", str(tmp_path / "none.safetensors")]) == 2
    assert "weights file not found" in capsys.readouterr().err


def test_bench_infer_json(capsys):
    from resnets.cli import main

    rc = main(["bench", "infer", "--model", "resnet18", "--size", "64", "--batch", "4", "--iters", "2",
               "--warmup", "1", "--variants", "torchvision,eager,channels_last,bf16,int8_fx", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["device"] == "cpu"
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["torchvision", "eager", "channels_last", "bf16", "int8_fx"]
    assert result["notes"] == [] and result["goals"] == []  # named variants; no int8 (PT2E) row, no runtime row
    assert rows["torchvision"]["throughput_ratio"] == 1.0
    for r in rows.values():
        assert r["latency_ms"] > 0 and r["throughput"] > 0
        assert r["throughput_ratio"] == pytest.approx(r["throughput"] / rows["torchvision"]["throughput"])


def test_bench_infer_device_errors_name_the_problem(capsys):
    from resnets.cli import main
    from resnets.deploy.bench import bench_infer

    with pytest.raises(ValueError, match="int8, onnxruntime, openvino run on the CPU only"):
        bench_infer("resnet18", variants=("eager", "int8", "onnxruntime", "openvino"), device="cuda")
    with pytest.raises(ValueError, match="runs on cpu or cuda"):
        bench_infer("resnet18", device="mps")
    if not torch.cuda.is_available():
        assert main(["bench", "infer", "--model", "resnet18", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_compile_for_inference_freezes_and_prepacks_weights():
    """The compiled model must really be frozen: oneDNN weight pre-packing only happens then."""
    from torch._dynamo.utils import counters

    from resnets.deploy import compile_for_inference

    torch._dynamo.reset()
    counters.clear()
    model = fold_bn(resnets.create_model("resnet20").eval())
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    compiled = compile_for_inference(to_channels_last(model))
    out = compiled(x.contiguous(memory_format=torch.channels_last))
    assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] > 0
    assert not out.requires_grad
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_bench_infer_compiled_int8_and_the_runtimes(cifar_train_dir, capsys):
    """Every CPU variant builds and runs (the default set, everything installed), with the goal lines."""
    from resnets.cli import main

    rc = main(["bench", "infer", "--model", "resnet20", "--batch", "8", "--iters", "2", "--warmup", "1",
               "--data", str(cifar_train_dir), "--json"])
    result = json.loads(capsys.readouterr().out)
    rows = {r["variant"]: r for r in result["rows"]}
    assert rc == 0 and set(rows) == {"torchvision", "eager", "channels_last", "folded_compiled", "int8", "int8_fx",
                                     "onnxruntime", "onnxruntime_int8", "openvino", "openvino_int8"}
    assert "real images" in rows["openvino_int8"]["note"] and "NNCF" in rows["openvino_int8"]["note"]
    assert result["notes"] == [] and any(line.startswith("fp32, fastest path") for line in result["goals"])


@pytest.mark.slow
def test_quantization_aware_training_runs_and_keeps_accuracy(trained, cifar):
    from resnets.deploy import quantize_aware_train

    int8 = quantize_aware_train(trained, cifar["train"][:1000], cifar["train_y"][:1000], epochs=1, lr=1e-3)
    report = compare_accuracy(trained, int8, cifar["val"], cifar["val_y"], 0)
    assert report.drop <= MAX_INT8_DROP_POINTS + 1
