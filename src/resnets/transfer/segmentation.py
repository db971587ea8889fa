"""A U-Net-style segmenter over any zoo network's ``features_only`` maps (Ronneberger et al. 2015's
decoder on a residual encoder, as in the "ResNet-UNet" of medical-imaging practice).

The encoder is ``create_model(name, features_only=True)``: its stem and stage maps at reductions
2, 4, 8, 16, 32 (ImageNet ResNets). The decoder goes back up one level at a time: upsample x2,
concatenate the encoder map of that level (the skip connection that keeps thin structures, such as
the cortical grey-matter ribbon, which a stride-8 head would blur), two conv-BN-ReLU. A last x2
upsample and a 1x1 convolution give per-pixel logits at the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..layers import ConvBnAct
from ..registry import create_model


class _Up(nn.Module):
    def __init__(self, in_chs: int, skip_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Sequential(ConvBnAct(in_chs + skip_chs, out_chs, 3), ConvBnAct(out_chs, out_chs, 3))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], 1))


class UNet(nn.Module):
    """``UNet("resnet18", num_classes=4, in_chans=1)``: logits (N, classes, H, W) for (N, C, H, W)."""

    def __init__(self, encoder: str = "resnet18", num_classes: int = 2, in_chans: int = 3,
                 decoder_chs: tuple[int, ...] = (256, 128, 64, 32), weights: str | None = None, **kwargs):
        super().__init__()
        # Every level's map, the stem's included: reductions 2, 4, 8, 16, 32 for ImageNet ResNets.
        self.encoder = create_model(encoder, weights=weights, features_only=True, in_chans=in_chans,
                                    out_indices=tuple(range(len(decoder_chs) + 1)), **kwargs)
        chs = [info["num_chs"] for info in self.encoder.feature_info]
        if len(chs) != len(decoder_chs) + 1:
            raise InputError(f"{encoder} gives {len(chs)} feature maps; decoder_chs needs {len(chs) - 1} widths")
        ups, prev = [], chs[-1]
        for skip, out in zip(reversed(chs[:-1]), decoder_chs, strict=True):
            ups.append(_Up(prev, skip, out))
            prev = out
        self.decoder = nn.ModuleList(ups)
        self.head = nn.Conv2d(prev, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        maps = self.encoder(x)
        y = maps[-1]
        for up, skip in zip(self.decoder, reversed(maps[:-1]), strict=True):
            y = up(y, skip)
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)
