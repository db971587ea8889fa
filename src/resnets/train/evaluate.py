"""Evaluation and prediction from exported weights (``.safetensors``) or a training checkpoint (``.pt``),
run by PyTorch, or from an exported model file run by onnxruntime or OpenVINO (``backend``; see
:mod:`resnets.runtime`).

Preprocessing comes from the weights (:class:`resnets.preprocessing.Preprocessing`: input size,
resize, crop, mean/std of the training pixels), the same for evaluation, prediction, features and
the server, so one image gets the same probabilities from each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..preprocessing import Preprocessing
from ..progress import LoopProgress
from ..registry import load_model as load_registered
from ..runtime import Backend, open_backend, torch_threads


def load_model(weights: str | Path, model: str | None = None, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a weights file (or shipped weights' tag with ``model``), with its metadata."""
    net = load_registered(str(weights), model)
    return net.to(device).eval(), dict(net.pretrained_meta)


def _preprocessing(meta: dict, weights) -> Preprocessing:
    return Preprocessing.from_metadata(meta, str(weights))


def eval_batches(ds, prep: Preprocessing, batch_size: int, device):
    """Normalised evaluation batches with the weights' preprocessing (not the evaluation set's)."""
    from ..data import TensorImageDataset, make_loader

    if isinstance(ds, TensorImageDataset):  # small images in memory, uint8
        for start in range(0, len(ds), batch_size):
            x = prep.resize(ds.images[start:start + batch_size])
            yield prep.normalize(x, device), ds.labels[start:start + batch_size]
        return
    # Large images: decoded by DataLoader workers, each through the same preprocessing.
    yield from make_loader(ds, batch_size, train=False, device=device, transform=prep)


@torch.no_grad()
def tta_logits(net: Backend, x: torch.Tensor, tta: str | None, plain: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of ``net`` on ``x``; with ``tta="flip"``, the log of the softmax averaged over the image
    and its mirror (so ``.softmax(1)`` of either gives the predicted probabilities). ``plain``: the
    logits of ``net(x)`` when the caller already has them (one forward pass fewer)."""
    out = (net(x) if plain is None else plain).float()
    if tta == "flip":  # average the softmax of the image and its mirror (the training augmentation)
        out = (out.softmax(1) + net(x.flip(3)).float().softmax(1)).div(2).log()
    return out


def evaluate(weights: str | Path, data: str | Path, *, model: str | None = None, tta: str | None = None,
             batch_size: int = 256, device: str = "cpu", split: str | None = None,
             confusion_png: str | Path | None = None, holdout: bool = False, val_size: int | None = None,
             split_seed: int | None = None, backend: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy and the confusion matrix of ``weights`` on ``data``.

    ``data``: an image folder (class sub-folders) or a CIFAR archive folder. Images are normalised
    with the statistics stored in the weights, not the evaluation set's. ``holdout=True`` evaluates
    on the validation images held out during training: the stratified split of ``data`` made with
    the weights' recipe (``data.val_size``, ``data.split_seed``) unless ``val_size``/``split_seed`` say otherwise.
    ``backend``: "torch", "onnxruntime" or "openvino" (default: torch for weights, the file's runtime
    for an exported ``.onnx``/``.xml``/``.pt2``), with the same preprocessing and classes.
    ``threads``: CPU threads for whichever backend runs it (default: its own choice); on a machine busy
    with other work, fewer threads than cores avoid OpenMP's spinning threads waiting on each other.
    """
    from ..data import open_dataset

    if tta not in (None, "none", "flip"):
        raise InputError(f"--tta must be 'flip' or 'none'; got {tta!r}")
    tta = None if tta == "none" else tta
    device = torch.device(device)
    net = open_backend(weights, backend, model=model, device=device, threads=threads)
    meta = net.metadata
    for candidate in [split] if split else (["train"] if holdout else ["test", "val", "train"]):
        try:
            ds = open_dataset(data, split=candidate, min_classes=1, allow_empty_classes=True)
            break
        except FileNotFoundError:
            if split or candidate == "train":
                raise
    if holdout:
        from ..data import holdout_split

        ds = holdout_split(data, meta, val_size, split_seed, dataset=ds).val
    classes = check_classes(net, meta, ds.info.classes, weights, data)
    prep = net.prepared()  # after the classes: a wrong network is the first thing to say
    # Map the data's label indices onto the model's class order by name.
    remap = torch.tensor([classes.index(c) for c in ds.info.classes])
    k = len(classes)
    confusion = torch.zeros(k, k, dtype=torch.int64)
    correct5 = 0
    with torch_threads(threads), LoopProgress(f"eval {Path(data).name}", len(ds), unit="images") as progress:
        for x, y in eval_batches(ds, prep, batch_size, device):
            y = remap[y.cpu()]
            logits = tta_logits(net, x, tta)  # on the CPU, whatever ran it
            # argmax of NaN is an index: a silent "accuracy" (issue 15). -inf is allowed: flip TTA's
            # log of an averaged probability that underflowed to 0.
            if bool((logits.isnan() | logits.isposinf()).any()):
                raise InputError(f"{weights}: the model produced NaN/inf logits on {data}; its accuracy is undefined")
            pred = logits.argmax(1)
            confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k).view(k, k)
            correct5 += int((logits.topk(min(5, k), 1).indices == y[:, None]).any(1).sum())
            progress.advance(len(y), top1=round(float(confusion.diag().sum()) / float(confusion.sum()), 4))
    n = int(confusion.sum())
    per_class_n = confusion.sum(1)
    result = {
        "top1": float(confusion.diag().sum()) / max(n, 1),
        "top5": correct5 / max(n, 1),
        "n": n,
        "per_class": {c: (float(confusion[i, i]) / int(per_class_n[i])) if per_class_n[i] else None
                      for i, c in enumerate(classes)},
        "confusion": confusion.tolist(),
        "classes": classes,
        "backend": net.backend,
    }
    if confusion_png:
        plot_confusion(confusion, classes, confusion_png, title=f"{net.name} on {Path(data).name}")
    return result


def check_classes(net: nn.Module | Backend, meta: dict, data_classes: list[str], weights, data) -> list[str]:
    """The model's class names, checked against the data's by count and by name (issue 15: a
    5-class network "evaluated" on 10-class data scored 0.10 with exit 0)."""
    held = getattr(net, "num_classes", None)
    named = list(meta.get("classes") or [])
    if named and held is not None and len(named) != held:
        raise InputError(f"{weights}: its metadata names {len(named)} classes but the network has {held} outputs")
    if not named:
        if held is not None and held != len(data_classes):
            raise InputError(f"{weights} has a {held}-class classifier and no class names; {data} has "
                             f"{len(data_classes)} classes ({', '.join(data_classes[:5])}"
                             f"{', ...' if len(data_classes) > 5 else ''}): they cannot be matched")
        return list(data_classes)
    unknown = [c for c in data_classes if c not in named]
    if unknown:
        raise InputError(f"{data} has {len(unknown)} class(es) that {weights} does not know: "
                         f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''} (it knows "
                         f"{', '.join(named[:10])}{', ...' if len(named) > 10 else ''})")
    return named


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..weights_io import save_figure

    k = len(classes)
    rows = confusion.float() / confusion.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * k, 1 + 0.5 * k))
    ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _image_files(inputs: list[str | Path]) -> list[Path]:
    from ..data.images import has_image_extension, is_hidden

    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and has_image_extension(p.name)
                            and not is_hidden(p.name))
        elif item.exists():
            files.append(item)
        else:
            raise FileNotFoundError(f"no such image or folder: {item}")
    if not files:
        raise InputError(f"no image files in {', '.join(map(str, inputs))}")
    return files


def _image_batches(files: list[Path], prep: Preprocessing, batch_size: int, device, skip_bad: bool = False):
    """``(paths, normalised batch)`` for image files, preprocessed as the weights say."""
    import warnings

    from ..data import load_image
    from ..data.images import BadImageError
    from ..preprocessing import ImageTooLargeError

    for start in range(0, len(files), batch_size):
        chunk, arrays = [], []
        for path in files[start:start + batch_size]:
            try:
                image = load_image(path)
                try:
                    arrays.append(prep.resize(image))
                except ImageTooLargeError as exc:  # named by its file, and skipped like a bad one where asked
                    raise BadImageError(path, str(exc)) from None
            except BadImageError as exc:
                if not skip_bad:
                    raise
                warnings.warn(f"skipped {path}: {exc}", stacklevel=2)
                continue
            chunk.append(path)
        if chunk:
            yield chunk, prep.normalize(torch.stack(arrays), device)


@torch.no_grad()
def predict(weights: str | Path, images: list[str | Path] | str | Path, *, topk: int = 5,
            model: str | None = None, device: str = "cpu", batch_size: int = 256,
            backend: str | None = None) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file (or every image in a folder); ``backend``
    as for :func:`evaluate`."""
    if isinstance(images, str | Path):
        images = [images]
    net = open_backend(weights, backend, model=model, device=device)
    classes = net.classes
    results = []
    for chunk, x in _image_batches(_image_files(list(images)), net.prepared(), batch_size, device):
        probs = net(x).float().softmax(1)
        # NaN probabilities would print as answers (evaluate refuses them the same way, issue 15).
        if bool(probs.isnan().any()):
            bad = chunk[int(probs.isnan().any(1).nonzero()[0])]
            raise InputError(f"{weights}: the model produced NaN/inf logits on {bad}; no prediction")
        top = probs.topk(min(topk, probs.shape[1]), 1)
        for path, p, idx in zip(chunk, top.values.tolist(), top.indices.tolist()):
            results.append({"path": str(path), "top": [{"class": classes[i], "prob": round(v, 6)}
                                                        for v, i in zip(p, idx)]})
    return results


@torch.no_grad()
def extract_features(weights: str | Path, images: list[str | Path] | str | Path, *, model: str | None = None,
                     device: str = "cpu", batch_size: int = 256):
    """Pooled embeddings (the classifier's input) of every image: ``(float32 array (N, D), paths)``.
    Unreadable files are skipped with a warning naming them and are absent from ``paths``."""
    import numpy as np

    if isinstance(images, str | Path):
        images = [images]
    net, meta = load_model(weights, model, device)
    rows, paths = [], []
    prep = _preprocessing(meta, weights)
    for chunk, x in _image_batches(_image_files(list(images)), prep, batch_size, device, skip_bad=True):
        rows.append(net.forward_head(net.forward_features(x), pre_logits=True).float().cpu().numpy())
        paths += [str(p) for p in chunk]
    if not rows:
        raise InputError(f"no readable images in {', '.join(map(str, images))}")
    return np.concatenate(rows), paths

