"""Backends (issue 17, item 1): the shipped CIFAR-10 ResNet-20 exported to ONNX and OpenVINO IR gives
the same probabilities as PyTorch on real CIFAR-10 images (within 1e-4) through ``resnets predict`` and
``resnets eval`` with ``--backend``; the exported files carry the weights' metadata, so the file alone
is enough; a missing runtime names the extra to install (item 5)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from resnets.cli import main
from resnets.errors import InputError, MissingExtraError
from resnets.pretrained import find, sha256_of
from resnets.runtime import BACKENDS, open_backend, read_file_metadata
from resnets.train import evaluate, predict

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHIPPED = find("resnet20", "cifar10")
# Which exported file each backend runs in these tests; OpenVINO also reads the ONNX file.
FILES = {"onnxruntime": ("onnx",), "openvino": ("xml", "onnx")}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # resnet20 at 32x32 gains nothing from a second thread on shared cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """The shipped weights exported as `resnets export` writes them (no check here: test_deploy's)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from resnets.deploy import export_model

    out = tmp_path_factory.mktemp("exported")
    files = {}
    for suffix in ("onnx", "xml"):
        report = export_model("resnet20", "cifar10", out=out / f"resnet20.{suffix}", check=False)
        files[suffix] = Path(report.out)
    return files


@pytest.fixture(scope="module")
def static_pt2(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A random-weights resnet20 as `resnets export --static-batch --out static.pt2` writes it (the batch
    fixed to the example's 2), and the PyTorch model it came from: the same seed builds the same weights."""
    from resnets import create_model
    from resnets.deploy import export_model

    out = tmp_path_factory.mktemp("pt2") / "static.pt2"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        report = export_model("resnet20", out=out, dynamic_batch=False, check=False)
        torch.manual_seed(0)
        model = create_model("resnet20").eval()
    return Path(report.out), model


@pytest.fixture(scope="module")
def images(cifar_train_dir) -> list[Path]:
    """Two real JPEGs per class."""
    return [cifar_train_dir / c / f"{i:04d}.jpg" for c in CLASSES for i in (0, 1)]


def probabilities(rows) -> torch.Tensor:
    out = torch.zeros(len(rows), len(CLASSES))
    for i, row in enumerate(rows):
        for top in row["top"]:
            out[i, CLASSES.index(top["class"])] = top["prob"]
    return out


@pytest.fixture(scope="module")
def torch_probabilities(images) -> torch.Tensor:
    return probabilities(predict("cifar10", images, model="resnet20", topk=10))


@pytest.mark.parametrize("backend,suffix", [(b, s) for b, ss in FILES.items() for s in ss])
def test_predict_gives_pytorchs_probabilities_on_every_backend(backend, suffix, exported, images,
                                                                torch_probabilities):
    rows = predict(exported[suffix], images, topk=10, backend=backend)
    assert [Path(r["path"]) for r in rows] == images
    probs = probabilities(rows)
    assert (probs - torch_probabilities).abs().max().item() <= 1e-4
    assert torch.equal(probs.argmax(1), torch_probabilities.argmax(1))


def test_backend_objects_agree_on_logits(exported, images):
    """Below the CLI: the same normalised batch, logits from each backend, odd batch sizes included."""
    reference = open_backend("cifar10", model="resnet20")
    from resnets.data import load_files

    x = reference.prepared().normalize(load_files(images, reference.prepared()))
    expected = reference(x)
    for backend, suffix in [("onnxruntime", "onnx"), ("openvino", "xml"), ("openvino", "onnx")]:
        runner = open_backend(exported[suffix], backend, threads=1)
        assert runner.backend == backend and runner.module is None
        for n in (1, 7, len(x)):
            torch.testing.assert_close(runner(x[:n]), expected[:n], atol=1e-4, rtol=1e-4)


def test_eval_with_each_backend_matches_torch(exported, real_folder):
    reference = evaluate("cifar10", real_folder, model="resnet20")
    assert reference["backend"] == "torch"
    for backend, suffix in [("onnxruntime", "onnx"), ("openvino", "xml")]:
        result = evaluate(exported[suffix], real_folder, backend=backend)
        assert result["backend"] == backend and result["n"] == reference["n"]
        # Equal counts: a prediction may flip only where two logits are within 1e-4, which 300 real
        # images do not hit with these weights.
        assert result["confusion"] == reference["confusion"], backend


def test_exported_files_carry_the_weights_metadata(exported):
    weights = open_backend("cifar10", model="resnet20")
    for suffix, path in exported.items():
        meta = read_file_metadata(path)
        assert meta["model"] == "resnet20" and meta["classes"] == CLASSES
        assert meta["preprocessing"] == weights.prepared().to_metadata()
        assert meta["source_weights"] == "cifar10" and meta["source_sha256"] == SHIPPED.sha256
        assert meta["metrics"]["val_top1"] == pytest.approx(SHIPPED.metrics["val_top1"])
        assert "format" not in meta and meta["recipe"]["data"]["val_size"] == 5000
        runner = open_backend(path)  # the file alone: backend from its suffix, no --model
        assert runner.backend == {"onnx": "onnxruntime", "xml": "openvino"}[suffix]
        assert runner.name == "resnet20" and runner.classes == CLASSES
        assert runner.preprocessing == weights.preprocessing
        assert runner.sha256 == sha256_of(path) != SHIPPED.sha256
        assert runner.exported_from == {"weights": "cifar10", "sha256": SHIPPED.sha256}


def test_cli_predict_with_a_backend(exported, images, capsys):
    rc = main(["predict", str(images[0]), "--weights", str(exported["xml"]), "--backend", "openvino",
               "--topk", "3", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(rows) == 1 and len(rows[0]["top"]) == 3 and rows[0]["top"][0]["class"] in CLASSES


def test_wrong_file_for_a_backend_says_what_to_do(exported, capsys):
    with pytest.raises(ValueError, match="resnets export --weights cifar10 --model resnet20 --format onnx"):
        open_backend("cifar10", "onnxruntime", model="resnet20")
    with pytest.raises(ValueError, match="--backend onnxruntime cannot run resnet20.xml"):
        open_backend(exported["xml"], "onnxruntime")
    with pytest.raises(ValueError, match="holds 'resnet20', not 'resnet56'"):
        open_backend(exported["onnx"], model="resnet56")
    with pytest.raises(ValueError, match="runs on the CPU"):
        open_backend(exported["onnx"], device="cuda")
    assert main(["predict", "x.jpg", "--weights", "cifar10", "--model", "resnet20", "--backend", "openvino"]) == 2
    assert "resnets export" in capsys.readouterr().err
    assert set(BACKENDS) == {"torch", "onnxruntime", "openvino"}


def test_upper_case_suffixes_are_exported_files(exported, static_pt2, tmp_path):
    """model.ONNX or model.PT2 was taken for weights (the suffix compared as written) and refused as
    "not a PyTorch file", or "weights file not found" for a missing one; the suffix says the kind in any case."""
    import shutil

    from resnets.deploy import export_model

    onnx = shutil.copy(exported["onnx"], tmp_path / "model.ONNX")
    pt2 = shutil.copy(static_pt2[0], tmp_path / "model.PT2")
    for path, backend in [(onnx, "onnxruntime"), (pt2, "torch")]:
        runner = open_backend(path)
        assert runner.backend == backend and runner.name == "resnet20" and runner.module is None
        assert read_file_metadata(path)["model"] == "resnet20"
    with pytest.raises(FileNotFoundError, match="model file not found: .*missing.PT2"):
        open_backend(tmp_path / "missing.PT2")
    # export reads the format from the suffix in any case too; OpenVINO itself writes only a lower-case .xml.
    with pytest.raises(InputError, match="OpenVINO IR is an .xml file .*--out model.xml; got model.XML"):
        export_model("resnet20", out=tmp_path / "model.XML", check=False)


def edited_onnx(source: Path, out: Path, *, metadata: dict[str, str] | None = None, fixed_batch: int | None = None,
                nan: str | None = None) -> Path:
    """A copy of an exported ONNX file with metadata entries replaced, the batch dimension fixed (what
    `resnets export --static-batch` writes) or an initializer set to NaN."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_model(str(source))
    for prop in proto.metadata_props:
        prop.value = (metadata or {}).get(prop.key, prop.value)
    if fixed_batch:
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = fixed_batch
    for init in proto.graph.initializer:
        if init.name == nan:
            init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), np.nan), nan))
    onnx.save_model(proto, str(out))
    return out


def test_exported_class_names_must_match_the_models_outputs(exported, tmp_path):
    """Corrupt metadata: three names for ten outputs once gave predictions an IndexError or another
    class's name, and a string gave its letters as the class names."""
    few = edited_onnx(exported["onnx"], tmp_path / "few.onnx", metadata={"classes": json.dumps(["a", "b", "c"])})
    with pytest.raises(InputError, match="few.onnx: its metadata 'classes' names 3 classes but the model has 10"):
        open_backend(few)
    text = edited_onnx(exported["onnx"], tmp_path / "text.onnx", metadata={"classes": "cat,dog"})
    with pytest.raises(InputError, match="text.onnx: metadata 'classes' must be a JSON list"):
        open_backend(text)


def test_exported_parameter_count_must_be_an_integer(exported, tmp_path):
    """A string gave a bare ValueError from int() naming neither file nor key; a float was truncated;
    a negative count was taken as given."""
    for value in ('"many"', "1.5", "true", "-3"):
        bad = edited_onnx(exported["onnx"], tmp_path / "bad.onnx", metadata={"parameters": value})
        with pytest.raises(InputError, match="bad.onnx: metadata 'parameters' must be a non-negative JSON integer"):
            open_backend(bad)


def test_a_static_batch_onnx_file_runs_any_batch(exported, images, tmp_path):
    """onnxruntime refuses any batch but the exported one (OpenVINO takes it): predict with one image,
    or eval's odd last batch, failed with onnxruntime's INVALID_ARGUMENT."""
    static = open_backend(edited_onnx(exported["onnx"], tmp_path / "static.onnx", fixed_batch=2))
    dynamic = open_backend(exported["onnx"])
    from resnets.data import load_files

    x = dynamic.prepared().normalize(load_files(images[:5], dynamic.prepared()))
    for n in (0, 1, 2, 5):  # 0: torch.cat of no chunks failed; an empty batch gives no rows
        torch.testing.assert_close(static(x[:n]), dynamic(x[:n]), atol=1e-5, rtol=1e-5)


def test_a_static_batch_onnx_file_runs_any_batch_on_openvino(exported, tmp_path):
    """OpenVINO refused any batch but the one a static-batch ONNX file fixes, with its own RuntimeError
    traceback (onnxruntime's runner already took any batch)."""
    static = open_backend(edited_onnx(exported["onnx"], tmp_path / "static.onnx", fixed_batch=2), "openvino")
    dynamic = open_backend(exported["onnx"], "openvino")
    x = torch.randn(5, 3, 32, 32)
    for n in (0, 1, 2, 5):
        torch.testing.assert_close(static(x[:n]), dynamic(x[:n]), atol=1e-5, rtol=1e-5)


def test_metadata_whose_input_size_disagrees_with_the_graph_is_named(exported, tmp_path):
    """A file whose preprocessing says 64x64 on a 32x32 graph gave onnxruntime's (or OpenVINO's) raw
    error from the probe run, naming neither the file nor the sizes."""
    prep = dict(read_file_metadata(exported["onnx"])["preprocessing"], input_size=[64, 64], resize_size=[64, 64])
    bad = edited_onnx(exported["onnx"], tmp_path / "meta64.onnx", metadata={"preprocessing": json.dumps(prep)})
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(InputError, match="meta64.onnx: its metadata's preprocessing gives 64x64 inputs, but the "
                                             "model takes 32x32"):
            open_backend(bad, backend)


def test_a_static_batch_pt2_file_runs_any_batch(static_pt2):
    """As the ONNX file above: the exported program's guard refused any batch but its own 2
    ("Guard failed: x.size()[0] == 2"), so predict with one image or eval's odd last batch failed."""
    path, model = static_pt2
    static = open_backend(path)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    # load_exported (export's parity check) runs the file as the backend does.
    from resnets.deploy import load_exported

    for run in (static, load_exported(path, "pt2")):
        for n in (2, 1, 3, 4, 5, 0):  # the fixed batch, less, a partial last chunk, whole chunks, both, none
            torch.testing.assert_close(run(x[:n]), expected[:n], atol=1e-5, rtol=1e-5)


def test_predict_refuses_nan_logits(exported, images, tmp_path):
    path = edited_onnx(exported["onnx"], tmp_path / "nan.onnx", nan="fc.bias")
    with pytest.raises(InputError, match=f"nan.onnx: the model produced NaN/inf logits on {images[0]}"):
        predict(path, images[:2])


@pytest.mark.parametrize("module,backend", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_a_missing_runtime_names_its_extra(module, backend, exported, images, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` of an uninstalled package meets
    path = exported["onnx"]
    with pytest.raises(MissingExtraError, match=f'{module} is missing.*pip install "resnets\\[deploy\\]"'):
        open_backend(path, backend)
    assert main(["predict", str(images[0]), "--weights", str(path), "--backend", backend]) == 2
    err = capsys.readouterr().err
    assert f"{module} is missing" in err and 'pip install "resnets[deploy]"' in err


def test_bench_default_set_leaves_out_missing_runtimes_with_a_note(monkeypatch):
    from resnets.deploy.bench import DEFAULT_VARIANTS, default_variants

    for module in ("openvino", "nncf"):
        monkeypatch.setitem(sys.modules, module, None)
    variants, notes = default_variants("cpu")
    assert "openvino" not in variants and "openvino_int8" not in variants
    assert "onnxruntime" in variants and "int8" in variants
    assert variants == tuple(v for v in DEFAULT_VARIANTS["cpu"] if not v.startswith("openvino"))
    assert len(notes) == 2 and all('pip install "resnets[deploy]"' in n for n in notes)
    assert "openvino left out: openvino not installed" in notes[0]
