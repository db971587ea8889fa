"""Decoding real-world image files into RGB, and reporting the ones that cannot be decoded.

Folders collected from the web or from cameras hold grayscale, palette, transparent, CMYK and
16-bit files, phone photos stored sideways with an EXIF orientation tag, and the occasional
truncated download or stray text file. Every image becomes 8-bit RGB here; a file that cannot be
decoded raises :class:`BadImageError` naming it, which the dataset code turns into a warning.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError

# Extensions that Pillow decodes; others in a class folder are reported as "not an image file"
# rather than silently dropped, so a folder of .heic or .txt files does not look empty by accident.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Transparent pixels carry whatever colour the encoder left (often black); images with alpha are
# meant to be seen on a light page, so they are composited onto white.
BACKGROUND = (255, 255, 255)


class BadImageError(InputError):
    """An image file that cannot be decoded. ``path`` and ``reason`` are kept for reports."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class BadImageWarning(UserWarning):
    """A file was skipped because it could not be decoded."""


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if "transparency" in img.info and mode in ("P", "L", "1", "RGB", "I;16", "I;16L", "I;16B", "I;16N", "I"):
        # One colour (PNG tRNS of a grayscale or RGB image) or palette entries marked transparent:
        # composited onto white like an alpha channel, not left as the colour it marks (often black).
        img = _with_alpha(img)
        mode = "RGBA"
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's convert() clips 16-bit values to 255 instead of scaling them (a 16-bit PNG
        # would come out nearly white), so scale explicitly: 65535 -> 255.
        arr = np.asarray(img).astype(np.float64)
        if mode == "I" and arr.max(initial=0) <= 255:
            scaled = arr
        else:
            scaled = arr / 257.0
        arr8 = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK (Pillow undoes Adobe's inverted CMYK JPEGs on open), YCbCr, LAB, HSV.
    return img.convert("RGB")


def _with_alpha(img: Image.Image) -> Image.Image:
    """RGBA of an image whose ``info["transparency"]`` marks its transparent colour or palette entries."""
    if not img.mode.startswith("I"):
        return img.convert("RGBA")  # Pillow applies the transparent colour / palette alpha
    # Pillow cannot convert 16-bit grayscale to RGBA: compare with the transparent value at full
    # depth, and scale the rest as any 16-bit image.
    opaque = np.asarray(img) != img.info["transparency"]
    plain = img.copy()
    del plain.info["transparency"]
    rgba = np.array(_to_rgb(plain).convert("RGBA"))
    rgba[..., 3] = np.where(opaque, 255, 0)
    return Image.fromarray(rgba, "RGBA")


def decode_image(data: bytes, path="<bytes>") -> Image.Image:
    """Decode encoded bytes to an RGB image, honouring EXIF orientation."""
    return decode_with_mode(data, path)[0]


def decode_with_mode(data: bytes, path="<bytes>") -> tuple[Image.Image, str]:
    """(RGB image, the file's own mode such as 'L', 'P', 'CMYK' or 'I;16'), for reports."""
    if len(data) == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            mode = img.mode
            img.load()  # decode now: a truncated file fails here, not later in a worker
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img), mode
    except BadImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImageError(path, f"image too large ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise BadImageError(path, "not an image file (Pillow cannot identify it)") from exc
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as exc:
        # Truncated JPEG/PNG data raises OSError("image file is truncated ..."), broken
        # headers raise SyntaxError in some Pillow plugins.
        raise BadImageError(path, f"cannot decode: {exc}") from exc


def read_bytes(path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"image file not found: {path}") from exc
    except OSError as exc:
        raise BadImageError(path, f"cannot read: {exc.strerror or exc}") from exc


def load_image(path) -> Image.Image:
    """Open an image file as RGB, EXIF-transposed; raises BadImageError naming the path."""
    return decode_image(read_bytes(path), path)


def image_size(path) -> tuple[int, int] | None:
    """(H, W) from the header alone, after EXIF rotation; None when the header is unreadable."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # the bomb: reported as a bad file later
        return None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def warn_bad_files(bad: list[BadFile], where: str, limit: int = 20) -> None:
    """One warning per bad file (up to ``limit``), then a summary with the count."""
    for item in bad[:limit]:
        warnings.warn(f"skipping {item.path}: {item.reason}", BadImageWarning, stacklevel=3)
    if bad:
        more = f" ({len(bad) - limit} not listed above)" if len(bad) > limit else ""
        warnings.warn(
            f"{len(bad)} bad file(s) skipped in {where}{more}; run `resnets data verify {where}` for the list, "
            "or pass strict=True to stop instead",
            BadImageWarning, stacklevel=3,
        )


def is_hidden(name: str) -> bool:
    # .DS_Store, ._AppleDouble, .ipynb_checkpoints, Thumbs.db: filesystem litter, not data.
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini")


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
