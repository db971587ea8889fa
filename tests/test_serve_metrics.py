"""``GET /metrics`` (issue 17): after real traffic on ``/v1`` and ``/v2`` with the shipped CIFAR-10
ResNet-20 and real images, accepted and refused (503 not ready, 400, 404, 413, 503 overloaded,
504, 499), prometheus-client's own parser reads counts equal to the requests sent; and ``resnets
serve`` without its extra says which to install."""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
import httpx  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from test_serve_api import (  # noqa: E402
    CountingDecoder,
    Gate,
    encoded,
    images_it_gets_right,
    make_app,
    multipart,
    started,
    until,
)

INFER = "/v2/models/resnet20/infer"


@pytest.fixture(scope="module")
def real_images(cifar_train_dir):
    return images_it_gets_right(cifar_train_dir)


def v2_body(paths) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(paths)],
                        "data": [base64.b64encode(p.read_bytes()).decode() for p in paths]}]}


def parse(text: str) -> dict:
    """{(sample name, sorted labels): value} of a Prometheus text page."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, sample: str, **labels) -> float:
    return samples.get((sample, tuple(sorted(labels.items()))), 0.0)


async def _client_leaves(app, body: bytes) -> int:
    """A raw ASGI request whose client hangs up while its images are being decoded: the status sent."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": INFER, "raw_path": INFER.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent_body, sent = False, []

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(0.3)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"]


def test_metrics_count_the_requests_sent(real_images, monkeypatch):
    app = make_app(max_bytes=64 * 1024, timeout_s=1.0, max_requests=1)
    paths = [p for p, _, _ in real_images]
    from PIL import Image

    tiny = base64.b64encode(encoded(Image.new("RGB", (8, 8)), "PNG")).decode()
    slow_body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [30],
                                        "data": [tiny] * 30}]}).encode()

    async def scenario():
        statuses = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve.test") as c:
            statuses.append(("/v1/predict", (await c.post("/v1/predict", files=multipart(paths[:1]))).status_code))
        async with started(app) as c:
            for _ in range(3):
                statuses.append(("/v1/predict", (await c.post("/v1/predict", files=multipart(paths[:2]))).status_code))
            for _ in range(4):
                statuses.append((INFER, (await c.post(INFER, json=v2_body(paths[:1]))).status_code))
            bad = await c.post("/v1/predict", files=[("images", ("x.txt", b"not an image", "text/plain"))])
            statuses.append(("/v1/predict", bad.status_code))
            large = await c.post(INFER, content=b"{" + b" " * 70_000 + b"}")
            statuses.append((INFER, large.status_code))
            statuses.append((INFER, (await c.post("/v2/models/nope/infer", json=v2_body(paths[:1]))).status_code))
            gate = Gate(app)
            late = asyncio.create_task(c.post(INFER, json=v2_body(paths[:1])))
            await until(gate.entered.is_set, "the request to reach the model")
            statuses.append(("/v1/predict", (await c.post("/v1/predict", files=multipart(paths[:1]))).status_code))
            statuses.append((INFER, (await late).status_code))
            gate.release.set()
            await until(lambda: sum(app.state.batcher.batch_sizes) == 11, "the abandoned batch to end")
            CountingDecoder(monkeypatch, delay_s=0.2)
            statuses.append((INFER, await _client_leaves(app, slow_body)))
            await asyncio.sleep(0.5)  # the decoding thread stops at its next image
            scrape = await c.get("/metrics")
            return statuses, scrape, list(app.state.batcher.batch_sizes)

    statuses, scrape, batch_sizes = asyncio.run(scenario())
    assert [s for _, s in statuses] == [503, 200, 200, 200, 200, 200, 200, 200, 400, 413, 404, 503, 504, 499]
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    samples = parse(scrape.text)

    sent: dict[tuple[str, int], int] = {}
    for route, status in statuses:
        route = "/v2/models/{name}/infer" if route.startswith("/v2/") else route
        sent[route, status] = sent.get((route, status), 0) + 1
    counted = {(dict(labels)["route"], int(dict(labels)["status"])): v for (name, labels), v in samples.items()
               if name == "resnets_http_requests_total"}
    assert counted == sent
    for route in ("/v1/predict", "/v2/models/{name}/infer"):
        assert value(samples, "resnets_http_request_duration_seconds_count", route=route) == \
            sum(n for (r, _), n in sent.items() if r == route)

    rejected = {(dict(labels)["reason"], int(dict(labels)["status"])): v for (name, labels), v in samples.items()
                if name == "resnets_rejected_requests_total"}
    assert rejected == {("not_ready", 503): 1, ("bad_image", 400): 1, ("too_large", 413): 1, ("not_found", 404): 1,
                        ("overloaded", 503): 1, ("timeout", 504): 1, ("client_closed_request", 499): 1}

    # Images through the model: 3 x 2 (v1) + 4 x 1 (v2) + the one that timed out; the 499 never got there.
    assert sum(batch_sizes) == 11
    assert value(samples, "resnets_batch_size_images_count") == len(batch_sizes)
    assert value(samples, "resnets_batch_size_images_sum") == 11
    assert value(samples, "resnets_batch_duration_seconds_count") == len(batch_sizes)
    assert value(samples, "resnets_queue_depth_images") == 0
    assert value(samples, "resnets_images_in_flight") == 0
    assert value(samples, "resnets_http_requests_in_flight") == 1  # the scrape itself
    assert value(samples, "resnets_model_load_seconds") > 0 and value(samples, "resnets_model_warmup_seconds") > 0
    service = app.state.service
    assert value(samples, "resnets_model_info", name="resnet20", weights="cifar10", sha256=service.sha256) == 1


def test_each_app_counts_its_own(real_images):
    from fastapi.testclient import TestClient

    first, second = make_app(), make_app()
    with TestClient(first) as a, TestClient(second) as b:
        assert a.post("/v1/predict", files=multipart([real_images[0][0]])).status_code == 200
        counts = [value(parse(c.get("/metrics").text), "resnets_http_requests_total", route="/v1/predict",
                        method="POST", status="200") for c in (a, b)]
    assert counts == [1, 0]


@pytest.mark.parametrize("module", ["prometheus_client", "fastapi"])
def test_serve_names_its_extra_when_a_dependency_is_missing(module, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "resnets.serve" or m.startswith("resnets.serve.")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh below; put back afterwards
    monkeypatch.setitem(sys.modules, module, None)  # what `import` of an uninstalled package meets
    from resnets.cli import main

    assert main(["serve", "--weights", "cifar10", "--model", "resnet20"]) == 2
    err = capsys.readouterr().err
    assert f"{module} is missing" in err and 'pip install -e ".[serve]"' in err
