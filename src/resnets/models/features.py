"""Feature extraction: a ResNet cut after its stages, returning the maps of chosen stages
(timm's ``features_only=True``). Module names are kept, so the classifier's weights load as is."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .resnet import ResNet


class FeatureExtractor(nn.Module):
    """Returns ``[map for i in out_indices]``; index 0 is the stem, 1..N the stages.

    For pre-activation networks the last stage's map goes through the final BN-ReLU (it is the only
    normalised one), as in timm.
    """

    def __init__(self, model: ResNet, out_indices: Sequence[int] = (1, 2, 3, 4)) -> None:
        super().__init__()
        num = len(model.feature_info)
        out_indices = tuple(i if i >= 0 else num + i for i in out_indices)
        if not out_indices or any(i < 0 or i >= num for i in out_indices):
            raise ValueError(f"out_indices must lie in 0..{num - 1} for this model; got {out_indices}")
        self.out_indices = out_indices
        self.feature_info = [dict(model.feature_info[i]) for i in out_indices]
        last = max(out_indices)
        for name in ("conv1", "bn1", "relu", "maxpool"):
            self.add_module(name, getattr(model, name))
        self.stage_names = [f"layer{i}" for i in range(1, last + 1)]
        for name in self.stage_names:
            self.add_module(name, getattr(model, name))
        self.final_norm = model.preact and last == num - 1
        if self.final_norm:
            self.norm, self.act = model.norm, model.act
            self.feature_info[-1]["module"] = "norm"

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    def reductions(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = [x]
        for name in self.stage_names:
            x = getattr(self, name)(x)
            maps.append(x)
        if self.final_norm:
            maps[-1] = self.act(self.norm(maps[-1]))
        return [maps[i] for i in self.out_indices]
