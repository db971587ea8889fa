"""Request bodies to model inputs, with every limit checked before the expensive step.

The body's size is checked from Content-Length before anything is read, and the read stops at
``max_bytes`` whatever the header said; the bytes of every body being received count against one
server-wide budget (:class:`ByteBudget`), so stalled uploads cannot pile up memory. Each image's pixel
count is read from its header before decoding (a 50 kB PNG can declare 20000x20000 and expand to
1.2 GB: a decompression bomb), and so is the request's total: every header is read before the first
image is decoded, so a request of 256 large PNGs (issue 15: each within ``--max-pixels``, together
minutes of CPU) is refused without decoding any of them. Decoding stops between images when the
request's deadline passes or its client goes away (``stop``).
Decoding and mode conversion (grayscale, palette, RGBA, CMYK, 16-bit) are the project's own
(:func:`resnets.data.images.decode_with_mode`), and preprocessing is the weights' own
(:class:`resnets.preprocessing.Preprocessing`, as in ``resnets predict``), so the server and the
command line agree.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from PIL import Image, UnidentifiedImageError
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from ..data.images import BadImageError, decode_with_mode
from ..preprocessing import MAX_RESIZED_PIXELS, ImageTooLargeError, Preprocessing
from .errors import ApiError, overloaded


@dataclass
class Upload:
    label: str  # how messages name it: "images[1] (cat.jpg)"
    filename: str | None
    data: bytes


@dataclass
class Decoded:
    upload: Upload
    width: int
    height: int
    mode: str  # the file's own mode ("L", "P", "CMYK", "I;16"...), before conversion to RGB
    array: np.ndarray  # uint8 (H, W, 3) at the model's input size, resized and cropped as the weights say


class Stopped(Exception):
    """The request's deadline passed or its client went away: the work for it stops here."""


class ByteBudget:
    """Bytes of request bodies held by the server at once, over all requests (``--max-inflight-bytes``).
    A request beyond it is answered 503 with Retry-After (issue 15: 100 stalled 9.9 MB uploads
    held 955 MB)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    @contextmanager
    def account(self) -> Iterator[_Held]:
        """Around one request: what it took is given back when it ends, however it ends."""
        held = _Held(self)
        try:
            yield held
        finally:
            self.used -= held.n


class _Held:
    def __init__(self, budget: ByteBudget):
        self.budget, self.n = budget, 0

    def take(self, n: int) -> None:
        b = self.budget
        if b.used + n > b.limit:
            raise overloaded(f"server busy: {b.used} bytes of request bodies being received; it holds "
                             f"{b.limit} at once (--max-inflight-bytes)")
        b.used += n
        self.n += n


async def read_body(request: Request, max_bytes: int, held: _Held | None = None) -> bytes:
    declared = request.headers.get("content-length")
    declared = int(declared) if declared is not None and declared.strip().isdigit() else None
    if declared is not None and declared > max_bytes:
        raise ApiError(413, "too_large", f"request body of {declared} bytes; the limit is {max_bytes} "
                                         "bytes (--max-bytes)")
    if held is not None and declared:
        held.take(declared)  # before reading: a stalled body holds its place from the start
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:  # no or a lying Content-Length (chunked uploads)
                raise ApiError(413, "too_large", f"request body over the limit of {max_bytes} bytes (--max-bytes)")
            if held is not None and len(body) > held.n:
                held.take(len(body) - held.n)
    except ClientDisconnect:
        raise ApiError(499, "client_closed_request", "the client went away while sending its body") from None
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty; send multipart/form-data or JSON with images")
    return bytes(body)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def uploads(request: Request, field: str, *, max_bytes: int, max_images: int,
                  held: _Held | None = None) -> list[Upload]:
    """The images of a request: multipart parts named ``field``, or JSON ``{field: [base64, ...]}``
    (``field`` "image" takes a single string)."""
    kind = media_type(request)
    body = await read_body(request, max_bytes, held)
    if kind == "multipart/form-data":
        found = await _multipart(request, body, field, max_bytes, max_images)
    elif kind == "application/json" or kind.endswith("+json"):
        found = _json(body, field)
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {kind or '(none)'!r}: send multipart/form-data (parts named {field!r}) "
                       f"or application/json ({{{field!r}: base64}})")
    if len(found) > max_images:
        raise ApiError(413, "too_large", f"{len(found)} images in one request; at most {max_images}")
    return found


async def _multipart(request: Request, body: bytes, field: str, max_bytes: int, max_images: int) -> list[Upload]:
    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_images + 1, max_fields=64,
                             max_part_size=max_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "Too many files" in exc.message:
            raise ApiError(413, "too_large", f"too many parts: at most {max_images} images") from None
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc.message}") from None
    try:
        found = []
        for i, value in enumerate(form.getlist(field)):
            if isinstance(value, str):  # a text field: kept, so that decoding says what is wrong with it
                name, data = None, value.encode("utf-8", "surrogateescape")
            else:
                name, data = value.filename, await value.read()
            found.append(Upload(_label(field, i, name, single=field == "image"), name, data))
    finally:
        await form.close()
    if not found:
        others = ", ".join(sorted({k for k in form.keys()})) or "none"
        raise ApiError(400, "bad_request", f"no multipart part named {field!r} (parts: {others})")
    if field == "image" and len(found) > 1:
        raise ApiError(400, "bad_request", f"{len(found)} parts named 'image'; send one image")
    return found


def _json(body: bytes, field: str) -> list[Upload]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[... nested past Python's limit
        raise ApiError(400, "bad_request", f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or field not in doc:
        raise ApiError(400, "bad_request", f"the JSON body needs a field {field!r}")
    items = doc[field]
    if field == "image":
        if not isinstance(items, str):
            raise ApiError(400, "bad_request", "'image' must be a base64 string")
        items = [items]
    elif not isinstance(items, list) or not items:
        raise ApiError(400, "bad_request", f"{field!r} must be a non-empty list of base64 strings")
    found = []
    for i, item in enumerate(items):
        label = _label(field, i, None, single=field == "image")
        if not isinstance(item, str):
            raise ApiError(400, "bad_request", f"{label}: expected a base64 string, got {type(item).__name__}")
        found.append(Upload(label, None, base64_bytes(item, label)))
    return found


def base64_bytes(text: str, label: str) -> bytes:
    if text.startswith("data:"):  # a data URL: data:image/png;base64,....
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(400, "bad_request", f"{label}: a data URL must be base64 (data:<type>;base64,...)")
    # Accept what browsers and tools produce: line breaks, URL-safe letters, missing padding.
    text = "".join(text.split()).replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "bad_request", f"{label}: not valid base64 ({exc})") from None


def _label(field: str, i: int, filename: str | None, single: bool) -> str:
    where = field if single else f"{field}[{i}]"
    return f"{where} ({filename})" if filename else where


def _resize_limit(max_pixels: int) -> tuple[int, str]:
    """The bound on the resize step's output: --max-pixels, but never below MAX_RESIZED_PIXELS, so
    a low --max-pixels does not refuse an ordinary non-square image that the resize enlarges."""
    if max_pixels >= MAX_RESIZED_PIXELS:
        return max_pixels, "--max-pixels"
    return MAX_RESIZED_PIXELS, "resnets.preprocessing.MAX_RESIZED_PIXELS, above --max-pixels"


def check_pixels(upload: Upload, max_pixels: int, preprocessing: Preprocessing | None = None) -> int:
    """The pixels the header declares (0 for what is not an image: decoding reports it); 413 when
    more than ``max_pixels``, or when ``preprocessing``'s resize would make more than
    :func:`_resize_limit` (a 667-byte 1 x 200000 PNG, its shorter side resized to 256, is 13
    gigapixels). Nothing is decoded here."""
    try:
        with Image.open(io.BytesIO(upload.data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:  # Pillow's own, larger limit
        raise ApiError(413, "too_many_pixels", f"{upload.label}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, EOFError):
        return 0
    if width * height > max_pixels:
        raise ApiError(413, "too_many_pixels", f"{upload.label}: {width}x{height} = {width * height} pixels; "
                                               f"the limit is {max_pixels} (--max-pixels)")
    if preprocessing is not None:
        try:
            preprocessing.check_size(height, width, *_resize_limit(max_pixels))
        except ImageTooLargeError as exc:
            raise _resized_too_large(upload, exc) from None
    return width * height


def _resized_too_large(upload: Upload, exc: ImageTooLargeError) -> ApiError:
    return ApiError(413, "too_many_pixels", f"{upload.label}: {exc}")


def check_request_pixels(found: list[Upload], max_pixels: int, max_request_pixels: int | None,
                         preprocessing: Preprocessing | None = None) -> int:
    """Every header read, each image and their sum checked, before the first is decoded."""
    total = 0
    for upload in found:
        total += check_pixels(upload, max_pixels, preprocessing)
        if max_request_pixels is not None and total > max_request_pixels:
            raise ApiError(413, "too_many_pixels", f"the images of this request declare more than {total} pixels "
                                                   f"(by {upload.label}); the limit per request is "
                                                   f"{max_request_pixels} (--max-request-pixels)")
    return total


def decode(upload: Upload, preprocessing: Preprocessing, max_pixels: int) -> Decoded:
    check_pixels(upload, max_pixels, preprocessing)
    try:
        image, mode = decode_with_mode(upload.data, upload.label)
    except BadImageError as exc:
        raise ApiError(400, "bad_image", f"{upload.label}: {exc.reason}") from None
    try:
        array = preprocessing.resize(image, *_resize_limit(max_pixels)).permute(1, 2, 0).numpy()
    except ImageTooLargeError as exc:  # the header checked above said otherwise
        raise _resized_too_large(upload, exc) from None
    return Decoded(upload, image.width, image.height, mode, array)


def decode_all(found: list[Upload], preprocessing: Preprocessing, max_pixels: int,
               max_request_pixels: int | None = None, stop: threading.Event | None = None) -> list[Decoded]:
    """Every upload decoded (runs in a worker thread: decoding is CPU work). ``stop`` is looked at
    before each image: a request past its deadline, or whose client left, costs at most the image
    being decoded (itself bounded by ``max_pixels``)."""
    check_request_pixels(found, max_pixels, max_request_pixels, preprocessing)
    out = []
    for upload in found:
        if stop is not None and stop.is_set():
            raise Stopped(f"stopped before {upload.label}")
        out.append(decode(upload, preprocessing, max_pixels))
    return out
