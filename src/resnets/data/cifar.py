"""CIFAR-10 / CIFAR-100 "python version" archives, read without trusting the pickles.

The archives torchvision and Keras users already have on disk are Python-2 pickles of dicts
holding a uint8 ``data`` array (N x 3072: 1024 red, 1024 green, 1024 blue values, row-major)
and a list of labels. ``pickle.load`` on such a file would run any callable the file names, so
:class:`CifarUnpickler` resolves only the few globals these files need and refuses the rest.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..weights_io import atomic_write
from .info import DatasetInfo, compute_normalization

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta"}
CIFAR100_FILES = {"train": ["train"], "test": ["test"], "meta": "meta"}
URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


def _numpy_core():
    # NumPy 2 renamed numpy.core to numpy._core; the files name the old module.
    try:
        from numpy import _core as core
    except ImportError:  # NumPy 1.x
        from numpy import core
    return core


def _allowed_globals() -> dict[tuple[str, str], object]:
    core = _numpy_core()
    import _codecs

    allowed = {
        # ndarray reconstruction: _reconstruct(ndarray, shape, dtype) then __setstate__ with raw bytes.
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
        # Protocol-5 pickles written by recent NumPy rebuild arrays from a buffer instead.
        ("numpy.core.numeric", "_frombuffer"): core.numeric._frombuffer,
        ("numpy._core.numeric", "_frombuffer"): core.numeric._frombuffer,
        # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): _codecs.encode,
    }
    for module in ("builtins", "__builtin__"):
        allowed[(module, "bytes")] = bytes
        allowed[(module, "bytearray")] = bytearray
    return allowed


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the CIFAR allow-list."""


class CifarUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` knows only numpy arrays, dtypes and a few builtins."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as the files were written
        self.path = path
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.path}: refusing to load global {module}.{name}; a CIFAR archive holds only numpy "
                "arrays, lists and strings, so this file is not one (or has been tampered with)"
            ) from None


def read_pickle(path) -> dict[str, object]:
    """Safely unpickle a CIFAR file; keys come back as str whether they were stored as bytes or str."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = CifarUnpickler(fh, str(path)).load()
    except UnsafePickleError:
        raise
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"CIFAR file not found: {path}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise InputError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _names(values, path) -> list[str]:
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    except (TypeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: class names are not strings ({exc})") from exc


def find_cifar_root(path) -> tuple[str, Path] | None:
    """('cifar10' | 'cifar100', archive folder) if ``path`` is an extracted archive or its parent."""
    path = Path(path)
    candidates = []
    for kind, dirname, files in (("cifar10", CIFAR10_DIR, CIFAR10_FILES), ("cifar100", CIFAR100_DIR, CIFAR100_FILES)):
        for folder in (path, path / dirname):
            if (folder / files["meta"]).is_file() and (folder / files["train"][0]).is_file():
                candidates.append((kind, folder))
                break
    if len(candidates) > 1:
        raise InputError(
            f"{path} holds both a CIFAR-10 and a CIFAR-100 archive; pass {candidates[0][1]} or {candidates[1][1]}"
        )
    return candidates[0] if candidates else None


def read_cifar(folder, kind: str, split: str = "train", label_set: str = "fine"):
    """Images (N, 3, 32, 32) uint8, labels int64 and class names from an extracted archive."""
    folder = Path(folder)
    files = CIFAR10_FILES if kind == "cifar10" else CIFAR100_FILES
    if split not in ("train", "test"):
        raise InputError(f"CIFAR archives have splits 'train' and 'test', not {split!r}")
    if kind == "cifar100" and label_set not in ("fine", "coarse"):
        raise InputError(f"CIFAR-100 label_set must be 'fine' or 'coarse', not {label_set!r}")
    meta_path = folder / files["meta"]
    meta = read_pickle(meta_path)
    name_key = "label_names" if kind == "cifar10" else f"{label_set}_label_names"
    if name_key not in meta:
        raise InputError(f"{meta_path}: no {name_key!r} entry (found {sorted(meta)})")
    classes = _names(meta[name_key], meta_path)
    label_key = "labels" if kind == "cifar10" else f"{label_set}_labels"
    images, labels = [], []
    for name in files[split]:
        path = folder / name
        batch = read_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise InputError(f"{path}: expected 'data' and {label_key!r} entries, found {sorted(batch)}")
        data = batch["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = getattr(data, "shape", None)
            raise InputError(f"{path}: 'data' must be a uint8 array N x 3072, found {type(data).__name__} {shape}")
        lab = np.asarray(batch[label_key], dtype=np.int64)
        if lab.shape != (data.shape[0],):
            raise InputError(f"{path}: {len(lab)} labels for {data.shape[0]} images")
        if lab.size and (lab.min() < 0 or lab.max() >= len(classes)):
            raise InputError(f"{path}: labels outside 0..{len(classes) - 1}")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(lab))
    return torch.cat(images), torch.cat(labels), classes


def open_cifar(folder, kind: str, split: str = "train", label_set: str = "fine"):
    from .tensor_dataset import TensorImageDataset

    images, labels, classes = read_cifar(folder, kind, split, label_set)
    # Normalisation comes from the training split even when the test split is opened.
    train_images = images if split == "train" else read_cifar(folder, kind, "train", label_set)[0]
    mean, std = compute_normalization(train_images)
    info = DatasetInfo(classes=classes, mean=mean, std=std, source=f"{kind}:{folder}:{split}", image_size=(32, 32))
    return TensorImageDataset(images, labels, info)


def download_cifar(root, kind: str) -> Path:
    """Fetch and extract an archive with torchvision's downloader (checksummed) into ``root``."""
    import urllib.error

    from torchvision.datasets import CIFAR10, CIFAR100

    root = Path(root)
    cls, dirname = (CIFAR10, CIFAR10_DIR) if kind == "cifar10" else (CIFAR100, CIFAR100_DIR)
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(root=str(root), train=True, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        tarball = URLS[kind].rsplit("/", 1)[1]
        raise FileNotFoundError(
            f"could not download {kind.upper().replace('CIFAR', 'CIFAR-')} from {URLS[kind]} ({exc}). "
            f"Offline? Fetch {tarball} elsewhere and either put it in {root} (rerun with --download: it is "
            f"checksummed and extracted without the network) or extract it so that {root / dirname} exists."
        ) from exc
    return root / dirname


# --- writing archives in the original format ------------------------------------------------

class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote: protocol 2, str-typed bytes, ``numpy.core`` names.

    The pure-Python pickler is used so bytes can be emitted with the Python 2 string opcodes,
    which Python 3 reads back as bytes (``encoding='bytes'``) without calling ``_codecs.encode``.
    """

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        qualname = name or obj.__qualname__
        if module.startswith("numpy._core"):
            module = "numpy.core" + module[len("numpy._core"):]
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[type] = save_global


def _dump_py2(obj, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    atomic_write(path, buf.getbuffer())


def write_cifar_archive(root, kind: str, train: tuple, test: tuple, classes: list[str],
                        coarse: tuple | None = None) -> Path:
    """Write ``(images uint8 (N,3,32,32), labels)`` pairs as an extracted archive under ``root``.

    Useful to hand a dataset to tools that read only the CIFAR format, and how the tests check
    the reader against files in the real layout. For CIFAR-100, ``coarse`` is
    ``(coarse_train_labels, coarse_test_labels, coarse_names)``; by default every class is its own
    superclass.
    """
    root = Path(root)
    folder = root / (CIFAR10_DIR if kind == "cifar10" else CIFAR100_DIR)
    folder.mkdir(parents=True, exist_ok=True)

    def as_arrays(images, labels):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, 32, 32):
            raise InputError(f"CIFAR images must be uint8 (N, 3, 32, 32), got {images.dtype} {tuple(images.shape)}")
        return images.reshape(len(images), 3072).numpy(), [int(v) for v in torch.as_tensor(labels)]

    names = [c.encode("utf-8") for c in classes]
    if kind == "cifar10":
        data, labels = as_arrays(*train)
        chunks = np.array_split(np.arange(len(labels)), 5)
        for i, idx in enumerate(chunks, 1):
            _dump_py2({b"batch_label": f"training batch {i} of 5".encode(), b"labels": [labels[j] for j in idx],
                       b"data": np.ascontiguousarray(data[idx]),
                       b"filenames": [f"image_{j:05d}.png".encode() for j in idx]}, folder / f"data_batch_{i}")
        data, labels = as_arrays(*test)
        _dump_py2({b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data,
                   b"filenames": [f"test_{j:05d}.png".encode() for j in range(len(labels))]}, folder / "test_batch")
        _dump_py2({b"num_cases_per_batch": max(1, len(train[1]) // 5), b"label_names": names, b"num_vis": 3072},
                  folder / "batches.meta")
    elif kind == "cifar100":
        coarse = coarse or ([int(v) for v in train[1]], [int(v) for v in test[1]], list(classes))
        for split, pair, coarse_labels in (("train", train, coarse[0]), ("test", test, coarse[1])):
            data, labels = as_arrays(*pair)
            _dump_py2({b"filenames": [f"{split}_{j:05d}.png".encode() for j in range(len(labels))],
                       b"batch_label": f"{split}ing batch 1 of 1".encode(), b"fine_labels": labels,
                       b"coarse_labels": [int(v) for v in coarse_labels], b"data": data}, folder / split)
        _dump_py2({b"fine_label_names": names, b"coarse_label_names": [c.encode() for c in coarse[2]]},
                  folder / "meta")
    else:
        raise InputError(f"kind must be 'cifar10' or 'cifar100', not {kind!r}")
    return folder
