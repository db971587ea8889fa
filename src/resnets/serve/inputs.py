"""Request bodies to model inputs, with every limit checked before the expensive step.

The body's size is checked from Content-Length before anything is read, and the read stops at
``max_bytes`` whatever the header said. Each image's pixel count is read from its header before
decoding (a 50 kB PNG can declare 20000x20000 and expand to 1.2 GB: a decompression bomb).
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
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from PIL import Image, UnidentifiedImageError
from starlette.formparsers import MultiPartException, MultiPartParser

from ..data.images import BadImageError, decode_with_mode
from ..preprocessing import Preprocessing
from .errors import ApiError


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


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "too_large", f"request body of {int(declared)} bytes; the limit is {max_bytes} "
                                         "bytes (--max-bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:  # no or a lying Content-Length (chunked uploads)
            raise ApiError(413, "too_large", f"request body over the limit of {max_bytes} bytes (--max-bytes)")
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty; send multipart/form-data or JSON with images")
    return bytes(body)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def uploads(request: Request, field: str, *, max_bytes: int, max_images: int) -> list[Upload]:
    """The images of a request: multipart parts named ``field``, or JSON ``{field: [base64, ...]}``
    (``field`` "image" takes a single string)."""
    kind = media_type(request)
    body = await read_body(request, max_bytes)
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
        found.append(Upload(label, None, _base64(item, label)))
    return found


def _base64(text: str, label: str) -> bytes:
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


def check_pixels(upload: Upload, max_pixels: int) -> None:
    """413 when the header declares more than ``max_pixels``; nothing is decoded here."""
    try:
        with Image.open(io.BytesIO(upload.data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:  # Pillow's own, larger limit
        raise ApiError(413, "too_many_pixels", f"{upload.label}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, EOFError):
        return  # not an image: decoding reports it as such
    if width * height > max_pixels:
        raise ApiError(413, "too_many_pixels", f"{upload.label}: {width}x{height} = {width * height} pixels; "
                                               f"the limit is {max_pixels} (--max-pixels)")


def decode(upload: Upload, preprocessing: Preprocessing, max_pixels: int) -> Decoded:
    check_pixels(upload, max_pixels)
    try:
        image, mode = decode_with_mode(upload.data, upload.label)
    except BadImageError as exc:
        raise ApiError(400, "bad_image", f"{upload.label}: {exc.reason}") from None
    array = preprocessing.resize(image).permute(1, 2, 0).numpy()
    return Decoded(upload, image.width, image.height, mode, array)


def decode_all(found: list[Upload], preprocessing: Preprocessing, max_pixels: int) -> list[Decoded]:
    """Every upload decoded (runs in a worker thread: decoding is CPU work)."""
    return [decode(u, preprocessing, max_pixels) for u in found]
