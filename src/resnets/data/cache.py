"""The on-disk uint8 tensor cache for small-image folders.

Decoding 50,000 JPEGs takes seconds; loading their pixels back takes a fraction of one. The
cache file is named by a fingerprint of the folder's content (every file's relative path,
label, size and modification time, the class order, and the decoder version), so adding,
removing, replacing or relabelling an image, or upgrading Pillow, gives a new key instead of
stale pixels. Reading every byte to hash it would cost as much as decoding, which is what the
cache is there to avoid; size + mtime is what make and rsync trust for the same question.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import PIL
import torch

# Raised whenever decoding changes what an image becomes (2: a PNG's tRNS transparent colour is
# composited onto white like alpha), so no cache built before serves the old pixels.
FORMAT_VERSION = 2


def default_cache_dir() -> Path:
    if os.environ.get("RESNETS_CACHE"):
        return Path(os.environ["RESNETS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resnets" / "data"


def fingerprint(root: Path, samples: list[tuple[str, int]], classes: list[str], settings: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "pillow": PIL.__version__, "classes": classes,
                         "settings": settings}, sort_keys=True).encode())
    prefix = len(os.path.join(str(root), ""))  # paths are listed under root: strip it (relpath is 5x slower)
    for path, label in samples:
        st = os.stat(path)
        rel = path[prefix:]
        h.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def save(path: Path, images: torch.Tensor, labels: torch.Tensor, meta: dict) -> None:
    from safetensors.torch import save as st_save

    from ..weights_io import atomic_write

    # Atomic: several DDP ranks may build the same cache; readers see the old file or the new one.
    data = st_save({"images": images.contiguous(), "labels": labels.contiguous()},
                   metadata={"resnets": json.dumps(meta)})
    atomic_write(path, data)


def load(path: Path):
    """(images, labels, meta), or None when the file is absent or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = json.loads(fh.metadata()["resnets"])
            images, labels = fh.get_tensor("images"), fh.get_tensor("labels")
    except Exception:  # noqa: BLE001 - a damaged cache is only a cache: decode again
        return None
    if images.dtype != torch.uint8 or labels.dtype != torch.int64 or len(images) != len(labels):
        return None
    return images, labels, meta
