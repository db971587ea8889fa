"""Image folders (``root/<class>/<image>``): class order, file listing and parallel decoding."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import InputError
from .images import BadFile, BadImageError, decode_with_mode, has_image_extension, is_hidden, read_bytes

CLASS_ORDERS = ("alphabetical", "natural")


def natural_key(name: str):
    """'class2' < 'class10': digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def class_dirs(root: Path) -> list[str]:
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        raise FileNotFoundError(f"image folder not found: {root}") from None
    except NotADirectoryError:
        raise NotADirectoryError(f"not a folder: {root}") from None
    return [e.name for e in entries if e.is_dir() and not is_hidden(e.name)]


def read_class_map(path) -> list[str]:
    """A class-map file: a JSON list of names, a JSON object name -> index, or one name per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"class-map file not found: {path}") from None
    if path.suffix.lower() == ".json":
        try:
            return class_map_order(json.loads(text), str(path))
        except json.JSONDecodeError as exc:
            raise InputError(f"class-map file {path}: invalid JSON ({exc})") from exc
    names = [line.strip() for line in text.splitlines()]
    return class_map_order([n for n in names if n and not n.startswith("#")], str(path))


def class_map_order(mapping, where: str = "class_map") -> list[str]:
    if isinstance(mapping, dict):
        try:
            pairs = sorted((int(index), str(name)) for name, index in mapping.items())
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: indices must be integers ({exc})") from exc
        if [i for i, _ in pairs] != list(range(len(pairs))):
            raise InputError(f"{where}: indices must be 0..{len(pairs) - 1} without gaps or repeats")
        names = [n for _, n in pairs]
    elif isinstance(mapping, list | tuple):
        names = [str(n) for n in mapping]
    else:
        raise InputError(f"{where}: expected a list of class names or a dict name -> index, got {type(mapping).__name__}")
    repeated = [n for n, c in Counter(names).items() if c > 1]
    if repeated or not names:
        raise InputError(f"{where}: class names must be unique and non-empty (repeated: {repeated})")
    return names


def resolve_classes(root: Path, class_map=None) -> list[str]:
    """Class names in label order for an image folder.

    ``class_map``: None or "alphabetical" (torchvision's order), "natural" (class2 before class10),
    a class-map file path, a list of names, or a dict name -> index.
    """
    found = class_dirs(root)
    if not found:
        raise InputError(f"{root} has no class folders: expected {root}/<class>/<image files>")
    if class_map is None or class_map == "alphabetical":
        classes = sorted(found)
        if class_map is None and all(n.isdigit() for n in classes) and classes != sorted(found, key=int):
            warnings.warn(
                f"{root}: class folders are numbers and sort alphabetically ('10' before '2'); "
                "pass class_map='natural' or a class-map file if label i should be folder i",
                UserWarning, stacklevel=3)
        return classes
    if class_map == "natural":
        return sorted(found, key=natural_key)
    if isinstance(class_map, str | os.PathLike):
        classes = read_class_map(class_map)
    else:
        classes = class_map_order(class_map)
    missing = [c for c in classes if c not in found]
    extra = sorted(set(found) - set(classes))
    if missing:
        raise InputError(f"{root}: class map names folders that do not exist: {missing[:10]}")
    if extra:
        warnings.warn(f"{root}: folders not in the class map are ignored: {extra[:10]}", UserWarning, stacklevel=3)
    return classes


def resolve_split_dir(root: Path, split: str) -> Path:
    """``root/<split>`` when it exists (ImageNet-style train/ and val/), else ``root`` for "train"."""
    candidate = root / split
    if candidate.is_dir() and class_dirs(candidate):
        return candidate
    if split == "train":
        return root
    raise FileNotFoundError(
        f"no '{split}' split under {root}: expected {candidate}/<class>/<images>; "
        "to validate on part of the training set use a validation split (split_train_val)")


def list_files(root: Path, classes: list[str]) -> tuple[list[tuple[str, int]], list[BadFile]]:
    """Every non-hidden file under each class folder (recursively, sorted), with its label, and
    the entries that cannot be used, as bad files: broken links, and links to folders whose images
    would take this class's label without being its images.

    Files without an image extension are still listed: the decoder decides, so a JPEG named
    ``.jfif`` is used and a stray ``notes.txt`` is reported rather than silently ignored.
    """
    samples: list[tuple[str, int]] = []
    bad: list[BadFile] = []
    root_real = os.path.realpath(root)
    class_reals = {os.path.realpath(os.path.join(str(root), name)): name for name in classes}

    def foreign(real: str, own: str) -> str | None:
        """Why a linked folder must not be walked for class ``own``, or None."""
        if os.path.commonpath([real, root_real]) == real:
            # The root or above it: every class's images (a/up -> ..) would be relabelled ``own``.
            return "the dataset folder or a folder above it"
        for class_real, name in class_reals.items():
            if name != own and os.path.commonpath([real, class_real]) == class_real:
                return f"class folder {name!r}"
        return None

    def walk(folder: str, label: int, seen: frozenset):
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not is_hidden(e.name)), key=lambda e: e.name)
        for entry in entries:
            if entry.is_dir():
                real = os.path.realpath(entry.path)
                if entry.is_symlink() and (why := foreign(real, classes[label])):
                    bad.append(BadFile(entry.path, f"link to {why} ({real}), not followed: its images would be "
                                                   f"labelled {classes[label]!r}"))
                elif real not in seen:  # a symlink loop must not recurse forever
                    walk(entry.path, label, seen | {real})
            elif entry.is_file():
                samples.append((entry.path, label))
            elif entry.is_symlink():
                bad.append(BadFile(entry.path, f"broken link: its target {os.readlink(entry.path)} cannot be opened"))

    for label, name in enumerate(classes):
        folder = os.path.join(str(root), name)
        walk(folder, label, frozenset({os.path.realpath(folder)}))
    return samples, bad


# --- decoding many files ----------------------------------------------------------------------

def _decode_chunk(paths: list[str], keep_pixels: bool):
    """Worker: per file either (H, W, mode, pixels or None) or a BadFile."""
    out = []
    for path in paths:
        try:
            img, mode = decode_with_mode(read_bytes(path), path)
        except BadImageError as exc:
            out.append(BadFile(exc.path, exc.reason))
            continue
        except FileNotFoundError as exc:
            out.append(BadFile(path, f"vanished while reading ({exc})"))
            continue
        out.append((img.height, img.width, mode, np.array(img) if keep_pixels else None))
    return out


def decode_files(paths: list[str], keep_pixels: bool = True, workers: int | None = None, chunk: int = 512):
    """Decode every file, in worker processes when there are many: results in input order.

    Processes, not threads: a 32x32 JPEG costs less to decode than the Python around it, so
    threads serialise on the GIL (measured: 2 threads no faster than 1).
    """
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    if workers <= 1 or len(chunks) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [r for c in chunks for r in _decode_chunk(c, keep_pixels)]
    # fork: the children only run Pillow and NumPy, and start without re-importing torch.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return [r for part in pool.map(_decode_chunk, chunks, [keep_pixels] * len(chunks)) for r in part]


def verify_folder(path, class_map=None, workers: int | None = None) -> dict:
    """Decode every file of an image folder (or CIFAR archive) and report what a loader would see."""
    from .cifar import find_cifar_root, read_cifar

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such folder: {path}")
    cifar = find_cifar_root(path)
    if cifar is not None:
        kind, folder = cifar
        report = {"path": str(folder), "format": kind, "splits": {}}
        for split in ("train", "test"):
            _, labels, classes = read_cifar(folder, kind, split)
            counts = labels.bincount(minlength=len(classes)).tolist()
            report["splits"][split] = {"images": len(labels), "classes": dict(zip(classes, counts))}
        train = report["splits"]["train"]
        report.update(num_images=train["images"], num_classes=len(train["classes"]), classes=train["classes"],
                      image_sizes={"32x32": train["images"]}, modes={"RGB": train["images"]}, bad_files=[])
        return report
    classes = resolve_classes(path, class_map)
    samples, bad = list_files(path, classes)
    results = decode_files([p for p, _ in samples], keep_pixels=False, workers=workers)
    per_class = Counter()
    sizes, modes = Counter(), Counter()
    for (_, label), result in zip(samples, results):
        if isinstance(result, BadFile):
            bad.append(result)
            continue
        h, w, mode, _ = result
        per_class[label] += 1
        sizes[f"{h}x{w}"] += 1
        modes[mode] += 1
    stray = sorted(e.name for e in os.scandir(path) if e.is_file() and not is_hidden(e.name))
    return {
        "path": str(path), "format": "image-folder",
        "num_images": sum(per_class.values()), "num_classes": len(classes),
        "classes": {name: per_class[i] for i, name in enumerate(classes)},
        "image_sizes": dict(sizes.most_common()), "modes": dict(modes.most_common()),
        "bad_files": [b.to_dict() for b in bad],
        "ignored_files": stray,  # files directly in the root belong to no class
        "unusual_extensions": sorted({os.path.splitext(p)[1] for p, _ in samples if not has_image_extension(p)}),
    }
