"""``resnets serve``'s Open Inference Protocol (``/v2``, issue 17), driven by the real Triton client
(``tritonclient.http``) against the app on uvicorn on a loopback port, with the shipped CIFAR-10
ResNet-20 and real CIFAR-10 images: the probabilities equal ``/v1/predict``'s for the same images,
whether the images go as encoded files (BYTES) or preprocessed tensors (FP32), as JSON or binary;
metadata carries the classes and preprocessing; bad requests get the protocol's errors."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpclient = pytest.importorskip("tritonclient.http")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from resnets.preprocessing import transforms_for  # noqa: E402
from test_serve_api import CLASSES, images_it_gets_right, make_app, multipart  # noqa: E402

MAX_BYTES = 1 << 20  # small enough that a 100-image FP32 request is over it


@pytest.fixture(scope="module")
def real_images(cifar_train_dir):
    return images_it_gets_right(cifar_train_dir)


@pytest.fixture(scope="module")
def server():
    """(app, url): the app on uvicorn in a thread, on a free loopback port."""
    app = make_app(max_bytes=MAX_BYTES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive(), "the server stopped while starting"
        assert time.monotonic() < deadline, "the server never started"
        time.sleep(0.05)
    yield app, f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(60)


@pytest.fixture(scope="module")
def triton(server):
    client = httpclient.InferenceServerClient(server[1], network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def v1(server, real_images):
    """``/v1/predict``'s probabilities (N, 10) for the real images, in class-index order."""
    r = httpx.post(f"http://{server[1]}/v1/predict?topk=10", files=multipart([p for p, _, _ in real_images]),
                   timeout=60)
    assert r.status_code == 200, r.text
    probs = np.zeros((len(real_images), len(CLASSES)), dtype=np.float64)
    for row, prediction in zip(probs, r.json()["predictions"]):
        for t in prediction["top"]:
            row[t["index"]] = t["prob"]
    return probs


def image_input(paths, binary: bool):
    files = np.array([p.read_bytes() for p in paths], dtype=np.object_)
    tensor = httpclient.InferInput("image", [len(paths)], "BYTES")
    tensor.set_data_from_numpy(files if binary else np.array([_b64(f) for f in files], dtype=np.object_),
                               binary_data=binary)
    return tensor


def _b64(data: bytes) -> bytes:
    import base64

    return base64.b64encode(data)


def preprocessed(paths) -> np.ndarray:
    """FP32 (N, 3, 32, 32) as a client would make it: the weights' own preprocessing (resnets.preprocessing)."""
    pre = transforms_for("cifar10", model="resnet20")
    return np.stack([pre(Image.open(p)).numpy() for p in paths]).astype(np.float32)


def fp32_input(x: np.ndarray, binary: bool, name: str = "input", datatype: str = "FP32"):
    tensor = httpclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def probabilities(triton, tensor, binary: bool) -> np.ndarray:
    result = triton.infer("resnet20", [tensor], outputs=[httpclient.InferRequestedOutput("probabilities",
                                                                                          binary_data=binary)])
    return result.as_numpy("probabilities")


# ---- health and metadata ------------------------------------------------------------------------

def test_health_and_metadata(triton, server):
    app, _ = server
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("resnet20")
    meta = triton.get_server_metadata()
    assert meta["name"] == "resnets" and {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    model = triton.get_model_metadata("resnet20")
    assert model["name"] == "resnet20"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]},
                               {"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    params = model["parameters"]
    assert params["classes"] == CLASSES
    assert params["preprocessing"] == transforms_for("cifar10", model="resnet20").to_metadata()
    assert params["sha256"] == app.state.service.sha256
    (version,) = model["versions"]
    assert version == app.state.service.sha256[:12]
    assert triton.get_model_metadata("resnet20", model_version=version) == model
    assert triton.is_model_ready("resnet20", model_version=version)


# ---- the answers equal /v1/predict's ----------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_encoded_images_give_v1s_probabilities(triton, real_images, v1, binary):
    paths = [p for p, _, _ in real_images]
    got = probabilities(triton, image_input(paths, binary), binary)
    assert got.shape == (len(paths), 10) and got.dtype == np.float32
    assert np.abs(got - v1).max() < 1e-5


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_preprocessed_tensors_give_v1s_probabilities(triton, real_images, v1, binary):
    x = preprocessed([p for p, _, _ in real_images])
    got = probabilities(triton, fp32_input(x, binary), binary)
    assert np.abs(got - v1).max() < 1e-5


def test_default_outputs_are_binary_probabilities(triton, real_images, v1):
    """No outputs named: tritonclient asks for every output in binary (``binary_data_output``)."""
    result = triton.infer("resnet20", [image_input([p for p, _, _ in real_images], True)], request_id="r-7")
    assert result.get_response()["id"] == "r-7"
    assert result.get_output("probabilities")["parameters"]["binary_data_size"] == 4 * 10 * len(real_images)
    assert np.abs(result.as_numpy("probabilities") - v1).max() < 1e-5


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_gives_the_top_labels(triton, real_images, v1, binary):
    paths = [p for p, _, _ in real_images]
    wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)]
    top = triton.infer("resnet20", [image_input(paths, True)], outputs=wanted).as_numpy("probabilities")
    assert top.shape == (len(paths), 3)
    for row, expected, (_, label, _) in zip(top, v1, real_images):
        fields = [(s.decode() if isinstance(s, bytes) else s).split(":", 2) for s in row]  # value:index:label
        parsed = [(float(v), int(i), name) for v, i, name in fields]
        assert [i for _, i, _ in parsed] == list(np.argsort(-expected)[:3])
        assert [name for _, _, name in parsed] == [CLASSES[i] for i in np.argsort(-expected)[:3]]
        assert parsed[0][2] == label
        assert all(abs(p - expected[i]) < 1e-5 for p, i, _ in parsed)


def test_concurrent_requests_share_the_batcher(server, triton, real_images):
    """Eight clients at once (tritonclient's async_infer): answers go to the right callers, batched."""
    app, _ = server
    paths = [p for p, _, _ in real_images]
    before = len(app.state.batcher.batch_sizes)
    client = httpclient.InferenceServerClient(server[1], concurrency=8, network_timeout=60)
    try:
        pending = [client.async_infer("resnet20", [image_input([paths[i % len(paths)]], True)]) for i in range(8)]
        answers = [p.get_result().as_numpy("probabilities") for p in pending]
    finally:
        client.close()
    assert [CLASSES[int(a.argmax())] for a in answers] == [real_images[i % len(paths)][1] for i in range(8)]
    assert sum(list(app.state.batcher.batch_sizes)[before:]) == 8


# ---- errors: the protocol's body, /v1's status codes -----------------------------------------

def _refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_unknown_model_or_version_is_404(triton, real_images):
    tensor = image_input([real_images[0][0]], True)
    exc = _refused(lambda: triton.infer("resnet50", [tensor]))
    assert exc.status() == "404" and "unknown model 'resnet50'" in exc.message() and "resnet20" in exc.message()
    exc = _refused(lambda: triton.infer("resnet20", [tensor], model_version="1"))
    assert exc.status() == "404" and "no version '1'" in exc.message()
    assert _refused(lambda: triton.get_model_metadata("resnet50")).status() == "404"
    assert not triton.is_model_ready("resnet50")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_wrong_shape_datatype_or_name_is_400(triton, real_images, binary):
    x = preprocessed([real_images[0][0]])
    cases = {
        "shape [N, 3, H, W]": fp32_input(x[:, :, :16, :16].copy(), binary),
        "datatype": fp32_input(x.astype(np.float64), binary, datatype="FP64"),
        "unknown input": fp32_input(x, binary, name="pixels"),
        "BYTES into FP32": httpclient.InferInput("input", [1], "BYTES"),  # an encoded file as the FP32 input
    }
    cases["BYTES into FP32"].set_data_from_numpy(np.array([_b64(real_images[0][0].read_bytes())], dtype=np.object_),
                                                 binary_data=binary)
    expected = {"shape [N, 3, H, W]": "the model takes [N, 3, 32, 32]", "datatype": "it must be FP32",
                "unknown input": "unknown input 'pixels'", "BYTES into FP32": "it must be FP32"}
    for case, tensor in cases.items():
        exc = _refused(lambda t=tensor: triton.infer("resnet20", [t]))
        assert exc.status() == "400", (case, exc)
        assert expected[case] in exc.message(), (case, exc.message())


def test_fp32_data_nested_other_than_its_shape_is_400(server):
    """JSON data may be flat or nested as ``shape``; nested [1, 32, 32, 3] (NHWC) under shape
    [1, 3, 32, 32] matched the count only and was answered 200 with wrong probabilities."""
    pixels = np.random.RandomState(0).randint(0, 256, (32, 32, 3), dtype=np.uint8)
    x = transforms_for("cifar10", model="resnet20")(Image.fromarray(pixels))[None].numpy()  # (1, 3, 32, 32)
    url = f"http://{server[1]}/v2/models/resnet20/infer"

    def infer(data):
        body = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": data}]}
        return httpx.post(url, json=body, timeout=30)

    flat, nested = infer(x.flatten().tolist()), infer(x.tolist())
    assert flat.status_code == nested.status_code == 200, (flat.text, nested.text)
    assert flat.json()["outputs"] == nested.json()["outputs"]
    for wrong in (x.transpose(0, 2, 3, 1), x.reshape(1, 3, 1024)):
        r = infer(wrong.tolist())
        assert r.status_code == 400, r.text
        assert r.json()["error"] == (f"input 'input': 'data' is nested as {list(wrong.shape)} but the shape is "
                                     "[1, 3, 32, 32]; nest it as the shape, or send it flat (row-major)")


def test_bad_image_and_non_finite_input_are_400(triton, real_images):
    cut = real_images[0][0].read_bytes()[:200]
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([cut], dtype=np.object_))
    exc = _refused(lambda: triton.infer("resnet20", [tensor]))
    assert exc.status() == "400" and exc.message().startswith("image[0]:")
    x = preprocessed([real_images[0][0]])
    x[0, 0, 0, 0] = np.nan
    exc = _refused(lambda: triton.infer("resnet20", [fp32_input(x, True)]))
    assert exc.status() == "400" and "NaN" in exc.message()


def test_oversized_request_is_413(triton, real_images):
    x = np.repeat(preprocessed([real_images[0][0]]), 100, axis=0)  # 100 x 12 kB > --max-bytes of 1 MiB
    exc = _refused(lambda: triton.infer("resnet20", [fp32_input(x, True)]))
    assert exc.status() == "413" and "--max-bytes" in exc.message()
    tiny = np.repeat(preprocessed([real_images[0][0]]), 2, axis=0)
    assert probabilities(triton, fp32_input(tiny, True), True).shape == (2, 10)  # and the server is fine


def test_error_bodies_are_the_protocols(server):
    url = f"http://{server[1]}"
    for body in (b"{", b"[]", b'{"inputs": []}', b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}'):
        r = httpx.post(f"{url}/v2/models/resnet20/infer", content=body, timeout=30)
        assert r.status_code == 400, r.text
        error = r.json()
        assert set(error) == {"error"} and isinstance(error["error"], str) and error["error"], error
    r = httpx.post(f"{url}/v2/models/resnet20/infer", content=b"", timeout=30)
    assert r.status_code == 400 and "empty" in r.json()["error"]
    r = httpx.post(f"{url}/v2/models/resnet20/infer", content=b'{"inputs": []}xx',
                   headers={"Inference-Header-Content-Length": "999"}, timeout=30)
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    # /v1 keeps its own shape.
    r = httpx.post(f"{url}/v1/predict", content=b"{", headers={"content-type": "application/json"}, timeout=30)
    assert r.json()["error"]["code"] == "bad_request"


def test_v2_needs_the_token_but_probes_do_not(real_images):
    from fastapi.testclient import TestClient

    with TestClient(make_app(token="s3cret")) as c:
        assert c.get("/v2/health/live").status_code == 200 and c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2").status_code == 200
        for path in ("/v2/models/resnet20", "/v2/models/resnet20/ready", "/metrics"):
            r = c.get(path)
            assert r.status_code == 401, path
        r = c.post("/v2/models/resnet20/infer", json={})
        assert r.status_code == 401 and isinstance(r.json()["error"], str)
        assert c.get("/v2/models/resnet20", headers={"Authorization": "Bearer s3cret"}).status_code == 200
