"""The preprocessing that weights carry, and the one function that applies it (issue 14).

As torchvision's ``weights.transforms()``: training writes into every weights file and checkpoint
the input size, resize size, crop, interpolation, mean and std it used (metadata key
``"preprocessing"``), and :class:`Preprocessing` built from that record turns an image into the
network's input. ``resnets eval``, ``predict``, ``features``, ``serve``, ``export``'s parity
check, ``quantize``'s calibration, ``prune`` and ``explain`` all go through it, so one file gives
the same probabilities everywhere::

    model = resnets.load_model("runs/x/final.safetensors")
    preprocess = resnets.transforms_for(model)        # or transforms_for("runs/x/final.safetensors")
    probs = model(preprocess(PIL.Image.open("cat.jpg"))[None]).softmax(1)

Every image, PIL or uint8 tensor, is first made a uint8 tensor, so files, in-memory datasets and
uploads take exactly the same resize (torchvision's antialiased tensor resize) and crop.
Nothing is guessed: weights without the record raise :class:`PreprocessingError` naming the
missing key and how to supply it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import InputError

KEY = "preprocessing"
FIELDS = ("input_size", "resize_size", "crop", "interpolation", "mean", "std")
INTERPOLATIONS = ("bilinear", "bicubic")
CROPS = ("center", "none")
# The ImageNet evaluation convention (He et al. 2015 sec. 3.4; torchvision): resize the shorter
# side to 256/224 of the crop, then centre-crop the training size.
RESIZE_RATIO = 256 / 224

# The most pixels the resize step may make, before the crop. Resizing the shorter side to S makes
# an S x (S * aspect) image: for a 1 x 200000 PNG (667 bytes) and S = 256, 256 x 51,200,000 pixels
# (39 GB of uint8), though the crop keeps S x S of it. No ordinary photograph comes near the limit
# (at S = 256 it takes an aspect ratio past 256:1); `resnets serve` uses its --max-pixels instead.
MAX_RESIZED_PIXELS = 4096 * 4096

HOW_TO_SUPPLY = ("weights written by `resnets train` carry it; for other files pass --mean R G B --std R G B "
                 "where the command takes them, or write the record with resnets.weights_io.export_weights(path, "
                 "state_dict, {'preprocessing': Preprocessing(...).to_metadata(), ...})")


class PreprocessingError(InputError):
    """Weights without (part of) the preprocessing record; the message names the key."""


class ImageTooLargeError(InputError):
    """An image whose resize step would make more than the pixel limit (see ``MAX_RESIZED_PIXELS``)."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input.

    - ``input_size``: (H, W) the network sees.
    - ``resize_size``: (H, W) resizes the whole image to it; (S,) resizes its shorter side to S.
    - ``crop``: ``"center"`` crops ``input_size`` out of the resized image; ``"none"`` takes it whole
      (then ``resize_size`` is ``input_size``).
    - ``interpolation``: ``"bilinear"`` or ``"bicubic"``, antialiased.
    - ``mean``/``std``: per channel, of pixels scaled to [0, 1] (the training pixels' statistics).
    """

    input_size: tuple[int, int]
    resize_size: tuple[int, ...]
    crop: str
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise PreprocessingError(f"preprocessing input_size must be [H, W] > 0; got {list(self.input_size)}")
        if len(self.resize_size) not in (1, 2) or min(self.resize_size) < 1:
            raise PreprocessingError(f"preprocessing resize_size must be [S] or [H, W] > 0; got {list(self.resize_size)}")
        if self.crop not in CROPS:
            raise PreprocessingError(f"preprocessing crop must be one of {', '.join(CROPS)}; got {self.crop!r}")
        if self.crop == "none" and tuple(self.resize_size) != tuple(self.input_size):
            raise PreprocessingError(f"preprocessing crop 'none' needs resize_size == input_size; got "
                                     f"{list(self.resize_size)} and {list(self.input_size)}")
        if self.interpolation not in INTERPOLATIONS:
            raise PreprocessingError(f"preprocessing interpolation must be one of {', '.join(INTERPOLATIONS)}; "
                                     f"got {self.interpolation!r}")
        if (len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in self.mean + self.std)
                or min(self.std) <= 0):
            raise PreprocessingError(f"preprocessing mean/std must be three finite values each, std > 0; got "
                                     f"{list(self.mean)}, {list(self.std)}")

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def whole_image(cls, size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> Preprocessing:
        """The whole frame resized to ``size`` (H, W): what small-image (CIFAR) training sees."""
        h, w = _sizes(size, "image_size")[-2:]
        return cls((h, w), (h, w), "none", "bilinear", _floats(mean), _floats(std))

    @classmethod
    def center_crop(cls, size: int, mean: Sequence[float], std: Sequence[float],
                    resize_size: int | None = None) -> Preprocessing:
        """Shorter side resized to ``resize_size`` (default 256/224 of ``size``), centre crop of ``size``:
        the evaluation transform of a network trained with random-resized crops of ``size``."""
        resize = int(resize_size or round(size * RESIZE_RATIO))
        return cls((int(size), int(size)), (resize,), "center", "bilinear", _floats(mean), _floats(std))

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any] | None, source: str = "the weights") -> Preprocessing:
        """The record in a weights file's metadata. Files written before the record existed (the
        shipped CIFAR-10 weights of pretrained.py among them) carry ``image_size`` [3, H, W], ``mean``
        and ``std``: for them it is the whole image resized to (H, W), which is how those networks
        were trained (32x32 CIFAR images, no crop). This is the one place that derives it."""
        meta = meta or {}
        record = meta.get(KEY)
        if record is None:
            missing = [k for k in ("image_size", "mean", "std") if not meta.get(k)]
            if missing:
                raise PreprocessingError(f"{source} carry no {KEY!r} record (nor the older {', '.join(missing)}); "
                                         f"{HOW_TO_SUPPLY}")
            try:
                return cls.whole_image(meta["image_size"], meta["mean"], meta["std"])
            except PreprocessingError as exc:
                raise PreprocessingError(f"{source}: {exc}") from None
        if not isinstance(record, Mapping):
            raise PreprocessingError(f"{source}: metadata {KEY!r} must be a mapping of {', '.join(FIELDS)}")
        missing = [k for k in FIELDS if k not in record]
        if missing:
            raise PreprocessingError(f"{source}: metadata {KEY!r} lacks {', '.join(repr(k) for k in missing)}; "
                                     f"{HOW_TO_SUPPLY}")
        try:
            return cls(_sizes(record["input_size"], "input_size"), _sizes(record["resize_size"], "resize_size"),
                       str(record["crop"]), str(record["interpolation"]), _floats(record["mean"]),
                       _floats(record["std"]))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, PreprocessingError):
                raise PreprocessingError(f"{source}: {exc}") from None
            raise PreprocessingError(f"{source}: metadata {KEY!r} is malformed ({exc}): {dict(record)!r}") from None

    def to_metadata(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "resize_size": list(self.resize_size), "crop": self.crop,
                "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std)}

    def with_normalization(self, mean: Sequence[float], std: Sequence[float]) -> Preprocessing:
        return Preprocessing(self.input_size, self.resize_size, self.crop, self.interpolation,
                             _floats(mean), _floats(std))

    # ---- application -----------------------------------------------------------------------------

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of a ``height`` x ``width`` image after the resize step, before the crop
        (torchvision's rule: the shorter side to S, the longer in proportion, truncated)."""
        if len(self.resize_size) == 2:
            return self.resize_size[0], self.resize_size[1]
        short, long = sorted((height, width))
        resized = (self.resize_size[0], int(self.resize_size[0] * long / max(short, 1)))
        return resized if height <= width else resized[::-1]

    def check_size(self, height: int, width: int, max_pixels: int = MAX_RESIZED_PIXELS,
                   limit_name: str = "resnets.preprocessing.MAX_RESIZED_PIXELS") -> None:
        """Raise :class:`ImageTooLargeError` when the resize step would make more than ``max_pixels``
        (called ``limit_name`` in the message) of a ``height`` x ``width`` image: with the size read
        from a header, it refuses an image before decoding it."""
        if len(self.resize_size) == 2:  # a fixed size, the weights' own: no image makes it larger
            return
        h, w = self.resized_size(height, width)
        if h * w > max_pixels:
            raise ImageTooLargeError(f"a {width}x{height} image with its shorter side resized to {self.resize_size[0]} "
                                     f"would be {w}x{h} = {w * h} pixels before the centre crop; the limit is "
                                     f"{max_pixels} ({limit_name}): crop the image nearer to square first")

    def resize(self, image, max_pixels: int = MAX_RESIZED_PIXELS,
               limit_name: str = "resnets.preprocessing.MAX_RESIZED_PIXELS") -> Tensor:
        """uint8 at ``input_size``: a PIL image or (H, W, 3) array gives (3, H, W); a uint8 tensor
        (3, H, W) or (N, 3, H, W) keeps its leading dimensions. An image whose resize step would make
        more than ``max_pixels`` raises :class:`ImageTooLargeError` (:meth:`check_size`)."""
        from torchvision.transforms.v2 import functional as F

        x = _as_uint8_tensor(image)
        self.check_size(x.shape[-2], x.shape[-1], max_pixels, limit_name)
        x = F.resize(x, list(self.resize_size), interpolation=F.InterpolationMode(self.interpolation), antialias=True)
        if self.crop == "center":
            x = F.center_crop(x, list(self.input_size))
        return x

    def normalize(self, images: Tensor, device: str | torch.device | None = None) -> Tensor:
        """float32 network input from uint8 images at ``input_size`` ((N, 3, H, W) or (3, H, W))."""
        x = images.to(device or images.device, torch.float32)
        shape = (1,) * (x.dim() - 3) + (3, 1, 1)
        mean = torch.tensor(self.mean, device=x.device).view(shape)
        std = torch.tensor(self.std, device=x.device).view(shape)
        return (x / 255 - mean) / std

    def __call__(self, image) -> Tensor:
        """Resize, crop and normalise: torchvision's ``weights.transforms()(img)``."""
        return self.normalize(self.resize(image))

    def transforms(self):
        """Itself: callable on a PIL image or uint8 tensor, as ``weights.transforms()`` is."""
        return self

    def describe(self) -> str:
        size = "x".join(map(str, self.input_size))
        how = (f"whole image resized to {size}" if self.crop == "none" else
               f"shorter side to {self.resize_size[0]}, centre crop {size}" if len(self.resize_size) == 1 else
               f"resized to {'x'.join(map(str, self.resize_size))}, centre crop {size}")
        return f"{how} ({self.interpolation}), mean {list(self.mean)}, std {list(self.std)}"


def _plain_numbers(values) -> list[float] | None:
    """``values`` as floats when it is a sequence of numbers (not a string, mapping or booleans), else None."""
    try:
        if isinstance(values, str | bytes | Mapping) or any(isinstance(v, str | bytes | bool) for v in values):
            return None
        return [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        return None


def _sizes(values: Sequence[int], key: str) -> tuple[int, ...]:
    """Whole numbers, as written: int(v) of each character of the string "32" gave (3, 2), and 32.9
    became 32 (both silently: every image then went in at the wrong size)."""
    numbers = _plain_numbers(values)
    if numbers is None or not all(v.is_integer() for v in numbers):
        raise PreprocessingError(f"preprocessing {key} must be a list of whole numbers; got {values!r}")
    return tuple(int(v) for v in numbers)


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    numbers = _plain_numbers(values)
    if numbers is None:
        raise PreprocessingError(f"preprocessing mean/std must be a list of numbers; got {values!r}")
    return tuple(numbers)


def _as_uint8_tensor(image) -> Tensor:
    import numpy as np

    if isinstance(image, Tensor):
        x = image
    elif isinstance(image, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    else:  # PIL
        from torchvision.transforms.v2 import functional as F

        x = F.pil_to_tensor(image.convert("RGB") if image.mode != "RGB" else image)
    if x.dtype != torch.uint8 or x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected an RGB image or uint8 (3, H, W) / (N, 3, H, W) tensor; got "
                         f"{x.dtype} {tuple(x.shape)}")
    return x


def transforms_for(weights, model: str | None = None) -> Preprocessing:
    """The preprocessing of ``weights``: a model from :func:`resnets.create_model`/``load_model``
    (its ``pretrained_meta``), a weights file or a shipped tag (with ``model``), or a metadata dict."""
    if isinstance(weights, Mapping):
        return Preprocessing.from_metadata(weights)
    meta = getattr(weights, "pretrained_meta", None)
    if meta is not None:
        return Preprocessing.from_metadata(meta, f"the weights of this {type(weights).__name__}")
    if isinstance(weights, torch.nn.Module):
        raise PreprocessingError("this model was built without weights (create_model(..., weights=W)), so it "
                                 "carries no preprocessing")
    from .pretrained import resolve
    from .weights_io import read_metadata_only

    path = resolve(model, weights) if model else weights
    return Preprocessing.from_metadata(read_metadata_only(path), str(weights))
