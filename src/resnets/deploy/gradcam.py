"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class lies.

The target layer's activations A (N, C, h, w) are weighted by the spatial mean of the class
score's gradient with respect to them; ReLU keeps what speaks *for* the class. A whole batch is
explained with one forward and one backward: each image's score depends only on that image
(eval-mode BN), so the gradient of the summed scores is every image's own gradient.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..errors import InputError
from ..weights_io import atomic_write


def default_target_layer(model: nn.Module) -> str:
    """The last stage: ``feature_info[-1]`` for the zoo's models, ``layer4`` for torchvision's."""
    info = getattr(model, "feature_info", None)
    if info:
        return info[-1]["module"]
    for name in ("layer4", "layer3"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise InputError("cannot tell the model's last stage; name the target layer")


def grad_cam(model: nn.Module, images: Tensor, target: Tensor | int | None = None,
             layer: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Heatmaps (N, H, W) in [0, 1] at the input resolution, the explained class of each image
    (the prediction unless ``target`` is given), and the logits."""
    layer = layer or default_target_layer(model)
    module = model.get_submodule(layer)
    captured: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = images.detach().requires_grad_(False)
            logits = model(x)
            if not captured:
                raise RuntimeError(f"layer {layer!r} did not run in the forward pass")
            activation = captured[-1]
            if target is None:
                classes = logits.argmax(1)
            elif isinstance(target, int):
                classes = torch.full((len(x),), target, dtype=torch.long)
            else:
                classes = target.to(torch.long)
            n = logits.shape[1]
            outside = classes[(classes < 0) | (classes >= n)]
            if len(outside):
                raise InputError(f"target class {int(outside[0])} is not one of the model's {n} classes, 0 to {n - 1}")
            score = logits.gather(1, classes.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
        model.train(was_training)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(1, keepdim=True)).detach()
    cam = nn.functional.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).clamp_(0, 1), classes, logits.detach()


def overlay(image: Tensor, heatmap: Tensor, alpha: float = 0.45, scale: int = 1, cmap: str = "jet") -> Image.Image:
    """Blend a heatmap over a uint8 (3, H, W) image; ``scale`` enlarges tiny (32x32) images."""
    from matplotlib import colormaps

    colours = colormaps[cmap](heatmap.cpu().numpy())[..., :3]  # (H, W, 3) in [0, 1]
    base = image.permute(1, 2, 0).cpu().numpy().astype(np.float32) / 255
    blend = (1 - alpha) * base + alpha * colours
    picture = Image.fromarray((blend * 255).round().clip(0, 255).astype(np.uint8))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.BICUBIC)
    return picture


def save_overlays(images: Tensor, heatmaps: Tensor, out_dir: str | Path, names: Sequence[str],
                  alpha: float = 0.45, scale: int = 1) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = [Path(n).stem for n in names]
    paths = []
    for image, heatmap, name, stem in zip(images, heatmaps, names, stems, strict=True):
        # Image folders repeat file names across classes (airplane/0001.jpg, bird/0001.jpg).
        if stems.count(stem) > 1:
            stem = f"{Path(name).parent.name}_{stem}"
        path = out_dir / f"{stem}_gradcam.png"
        png = io.BytesIO()
        overlay(image, heatmap, alpha, scale).save(png, format="PNG")
        paths.append(atomic_write(path, png.getbuffer()))
    return paths
