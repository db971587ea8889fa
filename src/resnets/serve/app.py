"""The HTTP API (``resnets serve``): FastAPI routes over :class:`ModelService` and :class:`Batcher`.

The contract (routes, bodies, error codes) is the one documented at ``/openapi.json`` and in
README's "Serving" section. Request bodies are read by hand rather than by FastAPI's parameter
parsing: one route takes multipart *or* JSON, and the size limit must apply before the body is
in memory; ``openapi_extra`` documents both forms so that clients and fuzzers can build them.
"""

from __future__ import annotations

import asyncio
import hmac
import mimetypes
import threading
import time
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from ..errors import InputError
from . import limits, v2
from .batcher import Batcher, Closed, QueueFull
from .errors import ApiError, ErrorBody, answer_error, install, overloaded, timed_out
from .inputs import ByteBudget, Stopped, decode_all, uploads
from .metrics import CONTENT_TYPE_LATEST, Measure, Metrics
from .service import EXPLAIN_MIN_SIDE, ModelService, explain_refusal

STATIC = Path(str(files("resnets") / "serve" / "static"))
# Grad-CAM needs a backward pass and runs outside the batcher; a few may wait for the model.
EXPLAIN_SLOTS = 4


# The routes whose requests count against --max-requests: the API, not the probes or the page.
ADMITTED = ("/v1/", "/v2/models/")


class Admission:
    """ASGI middleware: at most ``limit`` requests to ``/v1/`` and ``/v2/models/`` in flight; the
    next is answered 503 with Retry-After at once, before its body is read (issue 15: connections
    in flight had no cap). Probes (``/healthz``, ``/readyz``, ``/v2/health/*``), ``/metrics`` and
    the page are always answered."""

    def __init__(self, app, limit: int):
        self.app, self.limit, self.in_flight = app, limit, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(ADMITTED):
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            response = answer_error(scope.get("app"), scope["path"], 503, "overloaded",
                                    f"server busy: {self.in_flight} requests in flight; it takes {self.limit} at "
                                    "once (--max-requests)", {"Retry-After": "1"})
            return await response(scope, receive, send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects. Only once the body has been read: after it, the only
    message an ASGI server sends is ``http.disconnect``."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _while_connected(request: Request, stop: threading.Event, work):
    """``await work`` unless the client leaves first; then ``stop`` tells the decoding thread to
    give up and the work is cancelled (a request nobody waits for costs nothing more)."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(_client_gone(request))
    done: set = set()
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if task not in done:  # the client left, or the deadline (our own cancellation) came first
            stop.set()
            task.cancel()
        gone.cancel()
    if task in done:
        return task.result()
    raise ApiError(499, "client_closed_request", "the client went away; the request was abandoned")


class TopClass(BaseModel):
    class_: str = Field(alias="class")
    index: int
    prob: float


class Prediction(BaseModel):
    filename: str | None
    width: int
    height: int
    mode: str = Field(description="the file's own mode before conversion to RGB: RGB, L, P, RGBA, CMYK, I;16...")
    top: list[TopClass]


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class BatchingInfo(BaseModel):
    max_batch: int
    max_wait_ms: float
    queue_size: int


class ModelInfo(BaseModel):
    name: str
    classes: list[str]
    num_classes: int
    input_size: list[int]
    mean: list[float] | None
    std: list[float] | None
    preprocessing: dict[str, Any]  # the weights' record (resnets.preprocessing): size, resize, crop, mean/std
    metrics: dict[str, Any]
    weights: str  # the file's name or the shipped tag
    sha256: str  # of the file served
    parameters: int | None  # of the PyTorch model (an exported file records it)
    backend: Literal["torch", "onnxruntime", "openvino"]
    runtime: str  # the runtime and its version
    exported_from: dict[str, str] | None  # an exported file's source weights: name and sha256
    batching: BatchingInfo


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "starting", "shutting_down"]


# An 8x8 red PNG: the documented example, so that an OpenAPI viewer's "Try it out" (and a fuzzer's explicit
# phase) sends a request that gets an answer.
EXAMPLE_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8ISfHgA0wMeAAg1MCANDKARQfGKMRAAAAAElFTkSuQmCC"


def _body(field: str, many: bool) -> dict:
    binary = {"type": "string", "format": "binary"}
    b64 = {"type": "string", "description": "base64 of an image file (a data: URL is accepted)"}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": [field],
            "properties": {field: {"type": "array", "items": binary, "minItems": 1} if many else binary}}},
        "application/json": {"schema": {
            "type": "object", "required": [field],
            "properties": {field: {"type": "array", "items": b64, "minItems": 1} if many else b64}},
            "example": {field: [EXAMPLE_PNG] if many else EXAMPLE_PNG}},
    }}}


def _errors(*statuses: int) -> dict:
    what = {400: "bad_image, empty_body or bad_request", 401: "unauthorized (Authorization: Bearer <token>)",
            413: "too_large or too_many_pixels", 415: "unsupported_media_type", 422: "invalid_parameter",
            501: "not_implemented (Grad-CAM of a model served by onnxruntime or OpenVINO)",
            503: "overloaded (with Retry-After) or not_ready", 504: "timeout"}
    return {s: {"model": ErrorBody, "description": what[s]} for s in statuses}


def create_app(weights: str | Path, *, model: str | None = None, device: str = "cpu",
               max_batch: int = limits.MAX_BATCH, max_wait_ms: float = limits.MAX_WAIT_MS,
               queue_size: int = limits.QUEUE_SIZE, timeout_s: float = limits.TIMEOUT_S,
               max_bytes: int = limits.MAX_BYTES, max_pixels: int = limits.MAX_PIXELS,
               max_request_pixels: int | None = None, max_requests: int = limits.MAX_REQUESTS,
               max_inflight_bytes: int | None = None, token: str | None = None,
               batching: bool = True, backend: str | None = None, threads: int | None = None) -> FastAPI:
    """The serving app for ``weights`` (a file, or a shipped tag such as "cifar10" with ``model``), run by
    ``backend`` (torch, onnxruntime or openvino; default: torch, or an exported file's runtime) with
    ``threads`` threads for onnxruntime/OpenVINO.

    The model is loaded here (a bad file fails now, not at the first request) and warmed up at
    startup; ``app.state.service`` and, while running, ``app.state.batcher`` are reachable for
    tests and embedding. Work per request is bounded: ``max_pixels`` per image and
    ``max_request_pixels`` (default 4 x ``max_pixels``) per request, both read from the headers
    before decoding; ``timeout_s`` over reading, decoding and the model, decoding stopping when it
    passes or the client leaves; ``max_requests`` in flight and ``max_inflight_bytes`` of bodies
    (default 8 x ``max_bytes``) held at once, 503 with Retry-After beyond.
    """
    if max_request_pixels is None:
        max_request_pixels = limits.REQUEST_PIXELS_PER_MAX_PIXELS * max_pixels
    if max_inflight_bytes is None:
        max_inflight_bytes = limits.INFLIGHT_BYTES_PER_MAX_BYTES * max_bytes
    for name, value in (("max_batch", max_batch), ("queue_size", queue_size), ("max_bytes", max_bytes),
                        ("max_pixels", max_pixels), ("timeout_s", timeout_s),
                        ("max_request_pixels", max_request_pixels), ("max_requests", max_requests),
                        ("max_inflight_bytes", max_inflight_bytes)):
        if not value > 0:  # so that NaN is refused: `nan <= 0` is False, and --timeout nan answered every request 504
            option = "--" + name.removesuffix("_s").replace("_", "-")
            raise InputError(f"{name} ({option}) must be positive; got {value}")
    if not max_wait_ms >= 0:
        raise InputError(f"max_wait_ms (--max-wait-ms) must be 0 or more; got {max_wait_ms}")
    metrics = Metrics(max_batch)
    start = time.perf_counter()
    service = ModelService(weights, model, device, backend, threads)
    metrics.model_load.set(time.perf_counter() - start)
    metrics.model.info({"name": service.name, "weights": service.weights, "sha256": service.sha256})
    settings = {"max_batch": max_batch, "max_wait_ms": float(max_wait_ms), "queue_size": queue_size}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        start = time.perf_counter()
        await asyncio.to_thread(service.warm_up, max_batch)
        metrics.model_warmup.set(time.perf_counter() - start)
        # service.forward looked up per call, so a test may wrap it after create_app.
        batcher = Batcher(lambda x: app.state.service.forward(x), batching=batching, on_batch=metrics.batch,
                          **settings)
        metrics.queue_depth.set_function(lambda: batcher.queued)
        batcher.start()
        app.state.batcher, app.state.status = batcher, "ready"
        try:
            yield
        finally:
            # Stop taking work (readyz says so), finish what is queued or running, then stop.
            app.state.status = "shutting_down"
            await batcher.close()

    # No /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN, which an offline
    # machine cannot reach (issue 8: everything the server shows ships in the package).
    # /openapi.json is the description; any OpenAPI viewer or client generator reads it.
    app = FastAPI(title="resnets serve", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"Image classification with {service.name} ({service.weights}).")
    app.state.service, app.state.status, app.state.batcher = service, "starting", None
    app.state.metrics = metrics
    app.state.explaining = 0
    app.state.bodies = ByteBudget(max_inflight_bytes)
    app.add_middleware(Admission, limit=max_requests)
    app.add_middleware(Measure, metrics=metrics)  # added last: outermost, so it sees Admission's 503s
    install(app)
    guard = [Depends(_bearer(token))] if token else []

    def ready_batcher() -> Batcher:
        if app.state.status != "ready" or app.state.batcher is None:
            headers = {"Retry-After": "1"}
            if app.state.status == "shutting_down":  # this connection will not be served again
                headers["Connection"] = "close"
            raise ApiError(503, "not_ready", f"the server is {app.state.status.replace('_', ' ')}", headers)
        return app.state.batcher

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, tags=["health"],
             responses={503: {"model": Readiness, "description": "starting or shutting_down"}})
    async def readyz():
        status = app.state.status
        return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)

    @app.get("/v1/model", response_model=ModelInfo, dependencies=guard, responses=_errors(401) if token else {})
    async def model_info():
        return {**service.describe(), "batching": settings}

    def decode(found, stop: threading.Event):
        """Uploads to (decoded images, model input) by the weights' preprocessing, in a worker thread."""
        decoded = decode_all(found, service.preprocessing, max_pixels, max_request_pixels, stop)
        return decoded, service.inputs([d.array for d in decoded])

    async def classify(request: Request, read, prepare):
        """The path of every prediction (``/v1/predict``, ``/v2/.../infer``): ``await read(held)``
        takes the body within the byte budget and returns what it holds (``len`` of it: its
        images); ``prepare(found, stop)`` turns that into ``(kept, model input)`` in a thread while
        the client is connected; then the batcher. All within ``timeout_s``. Returns ``(kept, probabilities)``."""
        batcher = ready_batcher()
        stop = threading.Event()  # read by the decoding thread: set when the answer no longer matters
        images = 0
        try:
            async with asyncio.timeout(timeout_s):
                with app.state.bodies.account() as held, batcher.arriving():
                    found = await read(held)
                    images = len(found)
                    metrics.images_in_flight.inc(images)
                    kept, x = await _while_connected(request, stop, asyncio.to_thread(prepare, found, stop))
                # Nothing awaits between arriving() and submit (see Batcher.arriving). The model's
                # share is bounded by the queue; a client that leaves now is answered all the same.
                probs = await batcher.submit(x)
        except TimeoutError:
            raise timed_out(timeout_s) from None
        except QueueFull as exc:
            raise overloaded(f"server busy: {exc}") from None
        except Closed as exc:
            raise ApiError(503, "not_ready", str(exc), {"Retry-After": "1"}) from None
        finally:
            stop.set()
            metrics.images_in_flight.dec(images)
        return kept, probs

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=guard,
              openapi_extra=_body("images", many=True),
              responses=_errors(400, *([401] if token else []), 413, 415, 422, 503, 504))
    async def predict(request: Request,
                      topk: int = Query(5, ge=1, le=service.num_classes, description="classes per image")):
        """Top-k classes with probabilities for each image: multipart parts named "images", or
        JSON {"images": [base64, ...]}."""

        async def read(held):
            return await uploads(request, "images", max_bytes=max_bytes, max_images=queue_size, held=held)

        decoded, probs = await classify(request, read, decode)
        top = probs.topk(topk, 1)
        return {"model": service.name, "predictions": [
            {"filename": d.upload.filename, "width": d.width, "height": d.height, "mode": d.mode,
             "top": [{"class": service.classes[i], "index": i, "prob": round(p, 6)} for p, i in zip(ps, idx)]}
            for d, ps, idx in zip(decoded, top.values.tolist(), top.indices.tolist())]}

    @app.post("/v1/explain", dependencies=guard, response_class=Response,
              openapi_extra=_body("image", many=False),
              responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                               "description": "the Grad-CAM overlay; X-Predicted-Class (top-1 name), "
                                              "X-Class-Index and X-Class-Probability (the explained class)"},
                         **_errors(400, *([401] if token else []), 413, 415, 422, 501, 503, 504)})
    async def explain(request: Request,
                      target: str | None = Query(None, alias="class", description="class name or index "
                                                 "(default: the prediction)"),
                      scale: int | None = Query(None, ge=1, le=16, description="enlargement (default: to at "
                                                f"least {EXPLAIN_MIN_SIDE} px)")):
        """Grad-CAM (where the evidence for a class lies) over one image: a multipart part named
        "image", or JSON {"image": base64}. 501 when the model is served by onnxruntime or OpenVINO."""
        ready_batcher()
        if not service.can_explain:  # before the body is read: nothing it holds would change the answer
            raise ApiError(501, "not_implemented", explain_refusal(service))
        index = service.class_index(target)
        if app.state.explaining >= EXPLAIN_SLOTS:
            raise overloaded(f"{EXPLAIN_SLOTS} explanations already running")
        app.state.explaining += 1
        stop = threading.Event()

        def work(found):
            (decoded,) = decode_all(found, service.preprocessing, max_pixels, max_request_pixels, stop)
            if stop.is_set():
                raise Stopped("stopped before Grad-CAM")
            return service.explain(decoded.array, index, scale)

        try:
            async with asyncio.timeout(timeout_s):
                with app.state.bodies.account() as held:
                    found = await uploads(request, "image", max_bytes=max_bytes, max_images=1, held=held)
                    result = await _while_connected(request, stop, asyncio.to_thread(work, found))
        except TimeoutError:
            raise timed_out(timeout_s) from None
        finally:
            stop.set()
            app.state.explaining -= 1
        names = service.classes
        return Response(result["png"], media_type="image/png", headers={
            "X-Predicted-Class": quote(names[result["predicted"]], safe=" "),
            "X-Explained-Class": quote(names[result["explained"]], safe=" "),
            "X-Class-Index": str(result["explained"]),
            "X-Class-Probability": f"{result['probability']:.6f}",
        })

    v2.register(app, service, classify, decode, guard, max_bytes=max_bytes, max_images=queue_size)

    @app.get("/metrics", dependencies=guard, response_class=Response, tags=["health"],
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}, **(_errors(401) if token else {})})
    async def prometheus_metrics():
        """Requests by route and status, latencies, batch sizes, queue depth, images in flight,
        rejections by reason, model load time."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index():
        return _static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        return _static(name)

    return app


def _static(name: str):
    # Only the files that are there, by name: no paths, so nothing outside static/ can be reached.
    shipped = {p.name for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else set()
    if name not in shipped:
        raise ApiError(404, "not_found", f"no such page: {name}")
    return FileResponse(STATIC / name, media_type=mimetypes.guess_type(name)[0] or "application/octet-stream")


# Module level: FastAPI resolves the (string) annotation below in this module's namespace.
_BEARER = HTTPBearer(auto_error=False, description="the server's --token")


def _bearer(token: str):
    expected = token.encode()

    async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]):
        given = credentials.credentials.encode() if credentials else b""
        # Constant time: how long a comparison takes must not tell how much of a guess was right.
        if not (credentials and hmac.compare_digest(given, expected)):
            raise ApiError(401, "unauthorized", "missing or wrong token: send Authorization: Bearer <token>",
                           {"WWW-Authenticate": "Bearer"})

    return check


def _version() -> str:
    from .. import __version__

    return __version__
