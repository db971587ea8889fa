"""The Open Inference Protocol (KServe v2, what Triton speaks over HTTP) beside ``/v1`` (issue 17).

Routes (the three model routes also under ``/v2/models/{name}/versions/{version}/...``; the version
is the first 12 hex digits of the weights' sha256):

- ``GET /v2``: server metadata, with the extensions supported (``binary_tensor_data``, ``classification``);
- ``GET /v2/health/live``, ``GET /v2/health/ready``: 200, or 503 while starting or shutting down;
- ``GET /v2/models/{name}``: model metadata: inputs, outputs, and under ``parameters`` the classes
  and the weights' preprocessing (:class:`resnets.preprocessing.Preprocessing`'s record), so a
  client can prepare FP32 input without being told anything else;
- ``GET /v2/models/{name}/ready``;
- ``POST /v2/models/{name}/infer``, with one input:
  ``input``, FP32 [N, 3, H, W], images already preprocessed as the metadata says; or
  ``image``, BYTES [N], encoded image files (JPEG, PNG...), decoded and preprocessed exactly as
  ``/v1/predict`` does them. The output ``probabilities`` is FP32 [N, classes]; with the output
  parameter ``classification: k`` (Triton's classification extension) it is BYTES [N, k] of
  ``"<probability>:<index>:<label>"``, best first.

Tensor data travels as JSON (``data``: row-major, flat or nested; BYTES elements as base64 strings,
since a JSON string cannot hold arbitrary bytes) or in Triton's binary tensor data extension: the
JSON header, its length in the ``Inference-Header-Content-Length`` header, then the raw tensors
(``binary_data_size`` on each such input; BYTES elements each a 4-byte little-endian length and its
bytes). An output comes back binary when it asks (``binary_data: true``) or the request does
(``binary_data_output: true``, what tritonclient sends when no output is named).

A request takes ``/v1/predict``'s path (``classify`` in ``app.py``): the body within ``--max-bytes``
and the server's byte budget, every image header within ``--max-pixels``/``--max-request-pixels``
before decoding, the batcher and its queue bound, ``--timeout``, decoding stopped when the client
leaves; errors carry ``/v1``'s status codes in the protocol's ``{"error": message}`` body.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from .errors import ApiError
from .inputs import Upload, base64_bytes, read_body
from .service import ModelService

INPUT, IMAGE, OUTPUT = "input", "image", "probabilities"
DATATYPES = {INPUT: "FP32", IMAGE: "BYTES"}
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification"]
# Model metadata's "platform", by backend (Triton's names for the runtimes it has backends for).
PLATFORMS = {"torch": "pytorch", "onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}
ONE_INPUT = (f"give one input: {INPUT!r} (FP32 [N, 3, H, W], preprocessed as the model's metadata says) or "
             f"{IMAGE!r} (BYTES [N], encoded image files)")


class V2Error(BaseModel):
    error: str


def bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


@dataclass
class InferRequest:
    id: str | None
    input: str  # INPUT or IMAGE
    tensor: np.ndarray | None  # FP32 (N, 3, H, W), for INPUT
    images: list[Upload] | None  # for IMAGE
    outputs: list[tuple[str, bool, int]]  # (name, binary, classification count; 0 for probabilities)

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.tensor)


def parse(body: bytes, header_length: str | None, input_size: list[int], num_classes: int,
          max_images: int) -> InferRequest:
    """An inference request (the JSON header and any binary tensors after it), checked."""
    if header_length is None:
        header, binary = body, b""
    else:
        n = int(header_length) if header_length.strip().isdigit() else -1
        if not 0 < n <= len(body):
            raise bad(f"{HEADER_LENGTH} is {header_length[:40]!r}; it must be the JSON header's length in bytes, "
                      f"at most the body's {len(body)}")
        header, binary = body[:n], body[n:]
    try:
        doc = json.loads(header)
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[... nested past Python's limit
        raise bad(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad("the inference request must be a JSON object with 'inputs'")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad("'id' must be a string")
    parameters = _object(doc, "parameters", "the request's 'parameters'")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad(f"'inputs' must be a list of one tensor; {ONE_INPUT}")
    if len(inputs) > 1:
        raise bad(f"{len(inputs)} inputs; {ONE_INPUT}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise bad("inputs[0] must be a JSON object with name, shape, datatype and data")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if name not in DATATYPES:
        raise bad(f"unknown input {str(name)[:50]!r}; {ONE_INPUT}")
    if datatype != DATATYPES[name]:
        raise bad(f"input {name!r} has datatype {str(datatype)[:20]!r}; it must be {DATATYPES[name]}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad(f"input {name!r}: 'shape' must be a list of non-negative integers; got {str(shape)[:80]}")
    if name == INPUT and (len(shape) != 4 or shape[1:] != list(input_size)):
        raise bad(f"input {name!r} has shape {shape}; the model takes [N, {', '.join(map(str, input_size))}]")
    if name == IMAGE and not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise bad(f"input {name!r} has shape {shape}; it must be [N] (or [N, 1]): one encoded file per image")
    if shape[0] == 0:
        raise bad(f"input {name!r} holds no images (shape {shape})")
    if shape[0] > max_images:
        raise ApiError(413, "too_large", f"{shape[0]} images in one request; at most {max_images} (--queue-size)")
    count = math.prod(shape)
    raw = _binary(tensor, name, header_length is not None, binary)
    if name == INPUT:
        x = _floats(tensor.get("data"), name, shape, count) if raw is None else _floats_binary(raw, name, shape, count)
        if not np.isfinite(x).all():
            raise bad(f"input {name!r} holds NaN or infinity")
        found = None
    else:
        items = _strings(tensor.get("data"), name, count) if raw is None else _length_prefixed(raw, name, count)
        x = None
        found = [item if isinstance(item, Upload) else Upload(f"{IMAGE}[{i}]", None, item) for i, item in enumerate(items)]
    return InferRequest(request_id, name, x, found, _outputs(doc, parameters, num_classes))


def _object(doc: dict, key: str, what: str) -> dict:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{what} must be a JSON object")
    return value


def _binary(tensor: dict, name: str, has_header: bool, binary: bytes) -> bytes | None:
    """The input's binary data, or ``None`` when it is in the JSON."""
    size = _object(tensor, "parameters", f"input {name!r}: 'parameters'").get("binary_data_size")
    if size is None:
        if binary:
            raise bad(f"{len(binary)} bytes follow the JSON header, but input {name!r} has no binary_data_size")
        if "data" not in tensor:
            raise bad(f"input {name!r} has no 'data' (nor binary_data_size)")
        return None
    if "data" in tensor:
        raise bad(f"input {name!r} has both 'data' and binary_data_size; send one")
    if not has_header:
        raise bad(f"input {name!r} has binary_data_size but the request has no {HEADER_LENGTH} header")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise bad(f"input {name!r}: binary_data_size is {str(size)[:20]}, but {len(binary)} bytes follow the JSON header")
    return binary


def _floats(data, name: str, shape: list[int], count: int) -> np.ndarray:
    try:
        x = np.asarray(data)
    except (ValueError, TypeError, RecursionError):  # ragged nesting, too deep
        raise bad(f"input {name!r}: 'data' must be numbers, flat or nested as the shape {shape}") from None
    if x.dtype.kind not in "iuf":
        raise bad(f"input {name!r}: 'data' must hold numbers only")
    if x.size != count:
        raise bad(f"input {name!r}: {x.size} values for shape {shape} ({count})")
    # The protocol takes the data flat (row-major) or nested as the shape itself. Nested any other
    # way, the count alone matched: images nested [N, H, W, C] under shape [N, 3, H, W] were read as
    # NCHW and answered 200 with wrong probabilities.
    if x.ndim > 1 and list(x.shape) != shape:
        raise bad(f"input {name!r}: 'data' is nested as {list(x.shape)} but the shape is {shape}; nest it as "
                  "the shape, or send it flat (row-major)")
    return x.astype(np.float32).reshape(shape)


def _floats_binary(raw: bytes, name: str, shape: list[int], count: int) -> np.ndarray:
    if len(raw) != 4 * count:
        raise bad(f"input {name!r}: {len(raw)} bytes of binary data; shape {shape} of FP32 takes {4 * count}")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)  # a copy, writable, native order


def _strings(data, name: str, count: int) -> list[Upload]:
    if not isinstance(data, list):
        raise bad(f"input {name!r}: 'data' must be a list of base64 strings")
    flat = [v for item in data for v in (item if isinstance(item, list) else [item])]  # [N, 1] nested
    if len(flat) != count:
        raise bad(f"input {name!r}: {len(flat)} elements for {count} images")
    found = []
    for i, item in enumerate(flat):
        label = f"{IMAGE}[{i}]"
        if not isinstance(item, str):
            raise bad(f"{label}: expected a base64 string, got {type(item).__name__}")
        found.append(Upload(label, None, base64_bytes(item, label)))
    return found


def _length_prefixed(raw: bytes, name: str, count: int) -> list[bytes]:
    out, at = [], 0
    while at < len(raw) and len(out) < count:
        if at + 4 > len(raw):
            raise bad(f"input {name!r}: binary element {len(out)} is cut short (no 4-byte length)")
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + n > len(raw):
            raise bad(f"input {name!r}: binary element {len(out)} declares {n} bytes; {len(raw) - at} remain")
        out.append(raw[at:at + n])
        at += n
    if len(out) != count or at != len(raw):
        raise bad(f"input {name!r}: the binary data holds {len(out)} elements{' and more bytes' if at != len(raw) else ''}; "
                  f"the shape says {count}")
    return out


def _outputs(doc: dict, parameters: dict, num_classes: int) -> list[tuple[str, bool, int]]:
    binary_all = parameters.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise bad("parameter 'binary_data_output' must be true or false")
    requested = doc.get("outputs")
    if requested is None or requested == []:  # none named: all of them (the spec)
        return [(OUTPUT, binary_all, 0)]
    if not isinstance(requested, list):
        raise bad("'outputs' must be a list")
    outputs = []
    for i, output in enumerate(requested):
        name = output.get("name") if isinstance(output, dict) else None
        if name != OUTPUT:
            raise bad(f"outputs[{i}]: unknown output {str(name)[:50]!r}; this model gives {OUTPUT!r}")
        params = _object(output, "parameters", f"outputs[{i}]: 'parameters'")
        binary, k = params.get("binary_data", binary_all), params.get("classification", 0)
        if not isinstance(binary, bool):
            raise bad(f"outputs[{i}]: 'binary_data' must be true or false")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= num_classes:
            raise bad(f"outputs[{i}]: 'classification' must be a count of classes, 1..{num_classes} (0: off); "
                      f"got {str(k)[:20]}")
        outputs.append((name, binary, k))
    if len(outputs) > 1:
        raise bad(f"{len(outputs)} outputs named {OUTPUT!r}; name it once")
    return outputs


def respond(request: InferRequest, probs: torch.Tensor, service: ModelService, version: str) -> Response:
    """The inference response: JSON, or JSON then binary tensors (``Inference-Header-Content-Length``)."""
    outputs, chunks = [], []
    for name, binary, k in request.outputs:
        if k:  # Triton's classification extension: "<value>:<index>:<label>", highest first
            top = probs.topk(k, 1)
            values = [f"{p}:{i}:{service.classes[i]}" for ps, idx in zip(top.values.tolist(), top.indices.tolist())
                      for p, i in zip(ps, idx)]
            entry = {"name": name, "datatype": "BYTES", "shape": [len(probs), k]}
            raw = b"".join(struct.pack("<I", len(b)) + b for b in (v.encode() for v in values)) if binary else None
            data = values
        else:
            entry = {"name": name, "datatype": "FP32", "shape": list(probs.shape)}
            raw = probs.numpy().astype("<f4").tobytes() if binary else None
            data = probs.flatten().tolist() if not binary else None
        if binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = data
        outputs.append(entry)
    doc = {"model_name": service.name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    header = json.dumps(doc).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


def register(app: FastAPI, service: ModelService, classify, decode, guard: list, *, max_bytes: int,
             max_images: int) -> None:
    """The ``/v2`` routes on ``app``. ``classify(request, read, prepare)`` and ``decode(found, stop)``
    are ``/v1/predict``'s own (``app.py``); ``guard`` its token check."""
    from .. import __version__
    from .app import EXAMPLE_PNG  # app.py is loaded by the time it calls this

    model_version = service.sha256[:12]
    errors = {s: {"model": V2Error} for s in (400, *([401] if guard else []), 404, 413, 503, 504)}
    infer_body = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                "type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
                    "name": {"type": "string", "enum": [INPUT, IMAGE]}, "datatype": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "parameters": {"type": "object"}, "data": {"type": "array"}}}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "parameters": {"type": "object"}}}}}},
        "example": {"inputs": [{"name": IMAGE, "shape": [1], "datatype": "BYTES", "data": [EXAMPLE_PNG]}],
                    "outputs": [{"name": OUTPUT, "parameters": {"classification": 3}}]}}}}}

    def ready() -> bool:
        return app.state.status == "ready" and app.state.batcher is not None

    def check(name: str, asked: str | None) -> None:
        if name != service.name:
            raise ApiError(404, "not_found", f"unknown model {name[:50]!r}; this server serves {service.name!r}")
        if asked is not None and asked != model_version:
            raise ApiError(404, "not_found", f"model {name!r} has no version {asked[:50]!r}; it has {model_version!r}")

    def metadata() -> dict:
        return {"name": service.name, "versions": [model_version], "platform": PLATFORMS[service.backend],
                "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, *service.input_size]},
                           {"name": IMAGE, "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, service.num_classes]}],
                "parameters": {"classes": service.classes, "preprocessing": service.preprocessing.to_metadata(),
                               "weights": service.weights, "sha256": service.sha256, "metrics": service.metrics}}

    def model_ready(name: str) -> JSONResponse:
        return JSONResponse({"name": name, "ready": ready()}, status_code=200 if ready() else 503)

    async def infer(request: Request, name: str, asked: str | None) -> Response:
        check(name, asked)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ApiError(415, "unsupported_media_type", f"Content-Encoding {encoding[:20]!r}: send the request "
                                                          "uncompressed")

        async def read(held):
            try:
                body = await read_body(request, max_bytes, held)
            except ApiError as exc:
                if exc.code != "empty_body":
                    raise
                raise ApiError(400, "empty_body", "the request body is empty; send an inference request (JSON, "
                                                  "then any binary tensors)") from None
            header = request.headers.get(HEADER_LENGTH)
            # In a thread: a large FP32 request is megabytes of JSON numbers.
            return await asyncio.to_thread(parse, body, header, service.input_size, service.num_classes, max_images)

        def prepare(parsed: InferRequest, stop):
            if parsed.images is not None:
                return parsed, decode(parsed.images, stop)[1]
            return parsed, torch.from_numpy(parsed.tensor)

        parsed, probs = await classify(request, read, prepare)
        if not torch.isfinite(probs).all():
            raise bad(f"input {parsed.input!r} gave non-finite probabilities: is it preprocessed as the model's "
                      "metadata says?")
        return respond(parsed, probs, service, model_version)

    tags = ["v2 (Open Inference Protocol)"]

    @app.get("/v2", tags=tags)
    async def server_metadata():
        return {"name": "resnets", "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/health/live", tags=tags)
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=tags)
    async def server_ready():
        return JSONResponse({"ready": ready()}, status_code=200 if ready() else 503)

    @app.get("/v2/models/{name}", tags=tags, dependencies=guard, responses=errors)
    async def model_metadata(name: str):
        check(name, None)
        return metadata()

    @app.get("/v2/models/{name}/versions/{version}", tags=tags, dependencies=guard, responses=errors)
    async def model_version_metadata(name: str, version: str):
        check(name, version)
        return metadata()

    @app.get("/v2/models/{name}/ready", tags=tags, dependencies=guard, responses=errors)
    async def model_is_ready(name: str):
        check(name, None)
        return model_ready(name)

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=tags, dependencies=guard, responses=errors)
    async def model_version_is_ready(name: str, version: str):
        check(name, version)
        return model_ready(name)

    @app.post("/v2/models/{name}/infer", tags=tags, dependencies=guard, responses=errors, openapi_extra=infer_body)
    async def model_infer(request: Request, name: str):
        return await infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", tags=tags, dependencies=guard, responses=errors,
              openapi_extra=infer_body)
    async def model_version_infer(request: Request, name: str, version: str):
        return await infer(request, name, version)
