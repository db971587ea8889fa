"""``open_dataset``: one entry point for CIFAR archives and image folders, and the val split."""

from __future__ import annotations

import random
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from . import cache
from .cifar import CIFAR10_DIR, CIFAR100_DIR, download_cifar, find_cifar_root, open_cifar
from .folder import decode_files, list_files, resolve_classes, resolve_split_dir
from .images import BadFile, BadImageError, image_size, load_image, warn_bad_files
from .info import DatasetInfo, compute_normalization
from .tensor_dataset import TensorImageDataset

SMALL_IMAGE_MAX = 64  # px: at or below this, the whole set is decoded into memory (CIFAR, SVHN, Tiny ImageNet)


class DataError(InputError):
    """The dataset cannot be used as asked (strict mode found bad files, nothing usable, ...)."""


class FolderDataset(torch.utils.data.Dataset):
    """The large-images path: files decoded per sample in DataLoader workers.

    ``transform`` is set by the loader (train or eval pipeline). Items may be addressed as
    ``index`` or ``(index, seed)``; with a seed the sample's random augmentation is drawn from a
    generator seeded with it, so the result does not depend on which worker decodes it.
    A file that fails to decode yields a :class:`BadFile`; the loader drops it from the batch,
    warns naming it and records it in ``bad_files``.
    """

    def __init__(self, root: Path, samples: list[tuple[str, int]], info: DatasetInfo,
                 bad_files: list[BadFile] | None = None, transform=None):
        self.root = Path(root)
        self.samples = list(samples)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self.info = info
        self.bad_files = list(bad_files or [])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[index]
        try:
            img = load_image(path)
        except (BadImageError, FileNotFoundError) as exc:
            # Returned, not raised: one bad file must not kill a DataLoader worker. The loader
            # warns in the main process (a worker's warnings would not reach the user's filters).
            return BadFile(path, exc.reason if isinstance(exc, BadImageError) else str(exc))
        if self.transform is None:
            return img, label
        if seed is None:
            return self.transform(img), label
        # torchvision's v2 transforms draw from torch's global generator; fork it so seeding a
        # sample leaves the caller's stream alone (this also runs in the main process when
        # num_workers=0).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), label

    def subset(self, indices) -> FolderDataset:
        indices = torch.as_tensor(indices, dtype=torch.int64).tolist()
        return FolderDataset(self.root, [self.samples[i] for i in indices], self.info, self.bad_files, self.transform)

    def class_counts(self) -> list[int]:
        return self.labels.bincount(minlength=len(self.info.classes)).tolist()

    def __repr__(self) -> str:
        return f"FolderDataset({len(self)} images, {len(self.info.classes)} classes, root={str(self.root)!r})"


def _cifar_kind_from_name(path: Path) -> str | None:
    name = path.name.lower().replace("_", "-")
    if name == CIFAR100_DIR or "cifar-100" in name or "cifar100" in name:
        return "cifar100"
    if name == CIFAR10_DIR or "cifar-10" in name or "cifar10" in name:
        return "cifar10"
    return None


def _strict_check(bad: list[BadFile], where: str, strict: bool) -> None:
    if bad and strict:
        listing = "\n".join(f"  {b.path}: {b.reason}" for b in bad[:50])
        more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
        raise DataError(f"{len(bad)} bad file(s) in {where} (strict mode):\n{listing}{more}")
    if bad:
        warn_bad_files(bad, where)


def _most_common_size(paths: list[str], limit: int = 64) -> tuple[int, int] | None:
    sizes = Counter(s for s in (image_size(p) for p in paths[:: max(1, len(paths) // limit)][:limit]) if s)
    return sizes.most_common(1)[0][0] if sizes else None


def _open_small(root: Path, classes, samples, listing_bad, strict, cache_dir, workers) -> TensorImageDataset:
    """Decode the folder into one uint8 tensor, through the on-disk cache."""
    cache_file = None
    if cache_dir is not False:
        cache_root = cache.default_cache_dir() if cache_dir is None else Path(cache_dir)
        key = cache.fingerprint(root, samples, classes, {"background": "white"})
        cache_file = cache_root / f"folder-{key[:32]}.safetensors"
    loaded = cache.load(cache_file) if cache_file else None
    if loaded is not None:
        images, labels, meta = loaded
        bad = [BadFile(**b) for b in meta["bad_files"]]
        _strict_check(bad, str(root), strict)
        info = DatasetInfo.from_dict(meta["info"])
        info.source = str(root)  # the key ignores where the folder lives: a copied folder reuses the cache
        return TensorImageDataset(images, labels, info, bad)

    results = decode_files([p for p, _ in samples], keep_pixels=True, workers=workers)
    bad = list(listing_bad) + [r for r in results if isinstance(r, BadFile)]
    _strict_check(bad, str(root), strict)
    good = [(r, label) for r, (_, label) in zip(results, samples) if not isinstance(r, BadFile)]
    if not good:
        raise DataError(f"{root}: no decodable images among {len(samples)} files")
    size = Counter((h, w) for (h, w, _, _), _ in good).most_common(1)[0][0]
    images = torch.empty((len(good), 3, *size), dtype=torch.uint8)
    resized = 0
    for i, ((h, w, _, pixels), _) in enumerate(good):
        t = torch.from_numpy(pixels).permute(2, 0, 1)
        if (h, w) != size:
            # A few odd sizes in a small-image set are resized to the common one rather than
            # dropped: they are still labelled data.
            t = torch.nn.functional.interpolate(t[None].float(), size=size, mode="bilinear", antialias=True,
                                                align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
            resized += 1
        images[i] = t
    if resized:
        warnings.warn(f"{root}: {resized} image(s) not {size[0]}x{size[1]} were resized to it", UserWarning,
                      stacklevel=3)
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    mean, std = compute_normalization(images)
    info = DatasetInfo(classes=list(classes), mean=mean, std=std, source=str(root), image_size=size)
    if cache_file is not None:
        cache.save(cache_file, images, labels, {"info": info.to_dict(), "bad_files": [b.to_dict() for b in bad],
                                                "root": str(root), "num_files": len(samples)})
    return TensorImageDataset(images, labels, info, bad)


def folder_statistics(samples: list[tuple[str, int]], max_images: int = 512, seed: int = 0,
                      thumb: int = 128) -> tuple[tuple, tuple]:
    """Mean/std of a large-image folder from a seeded sample of images decoded at reduced size.

    Decoding all of ImageNet for two numbers per channel would take an hour; 512 images pin the
    mean to about +-0.005. JPEGs are decoded at 1/2..1/8 scale via Pillow's draft mode.
    """
    from PIL import Image

    from .images import _to_rgb

    rng = random.Random(seed)
    picks = sorted(rng.sample(range(len(samples)), min(max_images, len(samples))))
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for i in picks:
        try:
            with Image.open(samples[i][0]) as img:
                img.draft("RGB", (thumb, thumb))
                img.load()
                arr = np.asarray(_to_rgb(img), dtype=np.float64) / 255.0
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue  # bad files are reported by the loader; statistics just skip them
        flat = arr.reshape(-1, 3)
        total += flat.sum(0)
        total_sq += (flat * flat).sum(0)
        count += flat.shape[0]
    if count == 0:
        raise DataError("no decodable image to compute normalisation statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0))
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def _open_large(root: Path, classes, samples, listing_bad, strict, workers) -> FolderDataset:
    bad = list(listing_bad)
    if strict:
        # Strict mode must fail before training starts, so every file is decoded up front.
        results = decode_files([p for p, _ in samples], keep_pixels=False, workers=workers)
        bad += [r for r in results if isinstance(r, BadFile)]
        _strict_check(bad, str(root), strict)
    mean, std = folder_statistics(samples)
    # image_size stays None: large images vary in size; the transforms fix the training size.
    info = DatasetInfo(classes=list(classes), mean=mean, std=std, source=str(root))
    return FolderDataset(root, samples, info, bad)


def open_dataset(path, *, split: str = "train", download: bool = False, strict: bool = False, cache_dir=None,
                 class_map=None, small_images: bool | None = None, workers: int | None = None,
                 label_set: str = "fine", min_classes: int = 2, allow_empty_classes: bool = False):
    """Open a CIFAR-10/100 archive folder or an image folder.

    - CIFAR: ``path`` is ``cifar-10-batches-py`` / ``cifar-100-python`` or the folder holding it;
      ``download=True`` fetches it there with torchvision's downloader when absent (the kind is
      taken from the folder name: ``.../cifar10`` or ``.../cifar100``). ``label_set`` picks
      CIFAR-100's "fine" (100) or "coarse" (20) labels.
    - Image folder: ``path/<class>/<image>``, or ``path/<split>/<class>/<image>``. With images of
      at most 64 px (or ``small_images=True``) the whole set is decoded once into a uint8 cache
      under ``cache_dir`` (default ``$RESNETS_CACHE`` or ``~/.cache/resnets/data``; ``False``
      disables it) and returned as a :class:`TensorImageDataset`; otherwise a
      :class:`FolderDataset` decoded by DataLoader workers.

    Files that cannot be decoded are skipped with a warning naming each; ``strict=True`` raises
    :class:`DataError` listing them instead. Normalisation statistics always come from the
    training split. Fewer than ``min_classes`` classes, or a class with no usable image, is a
    :class:`DataError` (issue 15: a one-class folder "trained" to 100 %, an empty folder became a
    class nothing could teach); ``allow_empty_classes=True`` keeps empty classes (a fixed label
    set shared with another dataset).
    """
    path = Path(path).expanduser()
    cifar = find_cifar_root(path) if path.is_dir() else None
    if cifar is None and download:
        kind = _cifar_kind_from_name(path)
        if kind is None:
            raise InputError(f"--download fetches CIFAR-10 or CIFAR-100: name the folder after one, e.g. "
                             f"{path.parent / 'cifar10'} or {path.parent / 'cifar100'} (got {path})")
        target = path.parent if path.name in (CIFAR10_DIR, CIFAR100_DIR) else path
        download_cifar(target, kind)
        cifar = find_cifar_root(path)
    if cifar is not None:
        kind, folder = cifar
        return open_cifar(folder, kind, split, label_set)
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz")):
            raise InputError(f"{path} is an archive: extract it (tar xzf {path.name}) and pass the folder, "
                             "or pass the folder that holds it with --download to have it checked and extracted")
        raise InputError(f"{path} is a file; expected a CIFAR archive folder or an image folder DIR/<class>/<image>")
    if not path.exists():
        hint = " (pass download=True / --download to fetch CIFAR there)" if _cifar_kind_from_name(path) else ""
        raise FileNotFoundError(f"dataset not found: {path}{hint}")
    root = resolve_split_dir(path, split)
    classes = resolve_classes(root, class_map)
    samples, listing_bad = list_files(root, classes)
    if not samples:
        raise DataError(f"{root}: the class folders hold no files")
    if small_images is None:
        size = _most_common_size([p for p, _ in samples], limit=16)
        small_images = size is not None and max(size) <= SMALL_IMAGE_MAX
    if small_images:
        dataset = _open_small(root, classes, samples, listing_bad, strict, cache_dir, workers)
    else:
        dataset = _open_large(root, classes, samples, listing_bad, strict, workers)
    if root != path and split != "train" and (path / "train").is_dir():
        train = open_dataset(path, split="train", strict=False, cache_dir=cache_dir, class_map=class_map,
                             small_images=small_images, workers=workers, min_classes=min_classes,
                             allow_empty_classes=allow_empty_classes)
        if train.info.classes != dataset.info.classes:
            raise DataError(f"{root} and {path / 'train'} have different classes; pass class_map to fix the order")
        dataset.info.mean, dataset.info.std = train.info.mean, train.info.std
    check_classes(dataset, str(root), min_classes, allow_empty_classes)
    return dataset


def check_classes(dataset, where: str, min_classes: int = 2, allow_empty: bool = False) -> None:
    """At least ``min_classes`` classes, each with an image (unless ``allow_empty``)."""
    classes = dataset.info.classes
    if len(classes) < min_classes:
        raise DataError(f"{where}: {len(classes)} class ({', '.join(classes)}); a classifier needs at least "
                        f"{min_classes} class folders <class>/<image>")
    empty = [c for c, n in zip(classes, dataset.class_counts()) if n == 0]
    if empty and not allow_empty:
        shown = ", ".join(empty[:10]) + (f" ... ({len(empty)} in all)" if len(empty) > 10 else "")
        raise DataError(f"{where}: class folder(s) with no usable image: {shown}; add images, remove the "
                        "folder, or allow empty classes (data.allow_empty_classes=true)")


def split_train_val(dataset, val_size: int | float = 5000, seed: int = 0):
    """A seeded, stratified split: each class gives its share of ``val_size`` (count or fraction).

    The paper's CIFAR protocol is 45k/5k (``val_size=5000``). Per-class quotas use largest
    remainders so they add up to exactly ``val_size``; the split depends only on the labels
    and ``seed``. The training part's normalisation statistics are recomputed from it alone
    (the held-out images must not leak into preprocessing), and the validation part uses them.
    """
    n = len(dataset)
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise InputError(f"val_size as a fraction must be in [0, 1), got {val_size} (pass an int for a count)")
        count = int(round(val_size * n))
    else:
        count = int(val_size)
    if not 0 <= count < n:
        raise InputError(f"val_size={val_size} must leave at least one training image out of {n}")
    labels = dataset.labels
    num_classes = len(dataset.info.classes)
    counts = labels.bincount(minlength=num_classes).double()
    exact = counts * count / n
    quota = exact.floor().long()
    remainder = count - int(quota.sum())
    if remainder:
        order = sorted(range(num_classes), key=lambda c: (-(exact[c] - quota[c]).item(), c))
        for c in order[:remainder]:
            quota[c] += 1
    g = torch.Generator().manual_seed(seed)
    val_parts = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        if quota[c]:
            val_parts.append(members[torch.randperm(len(members), generator=g)[: int(quota[c])]])
    val_mask = torch.zeros(n, dtype=torch.bool)
    if val_parts:
        val_mask[torch.cat(val_parts)] = True
    train_idx = (~val_mask).nonzero().flatten()
    val_idx = val_mask.nonzero().flatten()
    train, val = dataset.subset(train_idx), dataset.subset(val_idx)
    if isinstance(train, TensorImageDataset):
        mean, std = compute_normalization(train.images)
    else:
        mean, std = folder_statistics(train.samples, seed=seed)
    info = DatasetInfo(classes=list(dataset.info.classes), mean=mean, std=std,
                       source=f"{dataset.info.source} (train part of a {n - count}/{count} split, seed {seed})",
                       image_size=dataset.info.image_size)
    train.info = info
    val.info = info
    return train, val


__all__ = ["DataError", "FolderDataset", "SMALL_IMAGE_MAX", "folder_statistics", "open_dataset", "split_train_val"]
