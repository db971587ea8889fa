"""Feature extraction: a network cut after its stages, returning the maps of chosen stages
(timm's ``features_only=True``). Module names are kept, so the classifier's weights load as is.

Any model of the zoo can be cut: it lists the modules its ``forward_features`` applies, in order
(``forward_units()``), and its ``feature_info`` names the points on that path where the maps are
taken (timm's convention: channels, reduction and module of each).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import InputError


class FeatureExtractor(nn.Module):
    """Returns ``[map for i in out_indices]``; index 0 is the stem, 1..N the stages.

    The last stage's map is the model's ``forward_features`` output: for pre-activation ResNets
    and DenseNets it goes through the final BN-ReLU (the only normalised one), as in timm.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        num = len(model.feature_info)
        if out_indices is None:
            out_indices = tuple(range(1, num))
        out_indices = tuple(i if i >= 0 else num + i for i in out_indices)
        if not out_indices or any(i < 0 or i >= num for i in out_indices):
            raise InputError(f"out_indices must lie in 0..{num - 1} for this model; got {out_indices}")
        units = model.forward_units()
        names = [name for name, _ in units]
        # The unit after which each feature is taken; the last feature comes after the whole path.
        points = [len(units) - 1 if i == num - 1 else names.index(model.feature_info[i]["module"])
                  for i in out_indices]
        self.out_indices = out_indices
        self.feature_info = [dict(model.feature_info[i]) for i in out_indices]
        if out_indices[-1] == num - 1:
            applied = [name for name, module in units if not isinstance(module, nn.Identity)]
            self.feature_info[-1]["module"] = applied[-1]
        kept = units[: max(points) + 1]
        for name, module in kept:
            self._attach(name, module)
        self.unit_names = [name for name, _ in kept]
        self.take = set(points)
        self.order = points  # the positions of the returned maps, in out_indices order

    def _attach(self, dotted: str, module: nn.Module) -> None:
        # Register under the model's own dotted name (``features.denseblock1``), so keys match.
        parent: nn.Module = self
        *path, leaf = dotted.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, module)

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    def reductions(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: Tensor) -> list[Tensor]:
        maps: dict[int, Tensor] = {}
        for position, name in enumerate(self.unit_names):
            x = self.get_submodule(name)(x)
            if position in self.take:
                maps[position] = x
        return [maps[p] for p in self.order]
