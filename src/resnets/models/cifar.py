"""CIFAR ResNets (He et al. 2015, section 4.2): 3x3 stem, three stages of widths 16/32/64 on
32x32 inputs, depth 6n+2 with basic blocks; pre-activation bottlenecks with depth 9n+2
(He et al. 2016); plain counterparts; Wide ResNets (Zagoruyko & Komodakis 2016); SE-ResNets.

Parameters with option A shortcuts (10 classes), as in the paper's Table 6 and akamaster's
reproduction, checked by ``tests/test_models.py``:

    resnet20 0.27M   resnet32 0.46M   resnet44 0.66M   resnet56 0.85M   resnet110 1.7M   resnet1202 19.4M
"""

from __future__ import annotations

from ..blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from ..registry import register_model
from ._builder import pin
from .resnet import ResNet

CIFAR_INPUT = (3, 32, 32)


def _depth_to_blocks(depth: int, layers_per_block: int, rule: str, what: str) -> int:
    """Blocks per stage for a CIFAR depth: depth = 3 * layers_per_block * n + 2 (stem conv + fc)."""
    step = 3 * layers_per_block
    if depth >= step + 2 and (depth - 2) % step == 0:
        return (depth - 2) // step
    below = max(step + 2, (depth - 2) // step * step + 2)
    above = below + step if below < depth else below
    nearest = sorted({below, above})
    raise ValueError(
        f"{what} depth must be {rule} for integer n >= 1 (e.g. {step + 2}, {2 * step + 2}, "
        f"{3 * step + 2}); got {depth}. Nearest valid depths: {' and '.join(map(str, nearest))}."
    )


def cifar_resnet(depth: int, *, bottleneck: bool = False, preact: bool = False, **kwargs) -> ResNet:
    """A CIFAR ResNet of any valid depth: 6n+2 with basic blocks, 9n+2 with bottlenecks.

    v1 (post-activation) defaults to option A shortcuts as in the paper; pre-activation networks to
    projections (option B) as in He et al. 2016 and the Keras example's ``resnet_v2``.
    """
    if bottleneck:
        n = _depth_to_blocks(depth, 3, "9n+2", "a bottleneck (v2) CIFAR ResNet's")
        block = PreActBottleneck if preact else Bottleneck
    else:
        n = _depth_to_blocks(depth, 2, "6n+2", "a basic-block (v1) CIFAR ResNet's")
        block = PreActBasicBlock if preact else BasicBlock
    kwargs.setdefault("shortcut", "B" if (preact or bottleneck) else "A")
    kwargs.setdefault("num_classes", 10)
    return ResNet(block, [n, n, n], widths=(16, 32, 64), stem="cifar", stem_width=16, **kwargs)


def _register_cifar_v1(depth: int, residual: bool, se: bool = False) -> None:
    prefix = "resnet" if residual else "plain"
    if se:
        prefix = "se_resnet"
    name = f"{prefix}{depth}"

    def builder(**kwargs) -> ResNet:
        if se:
            kwargs.setdefault("se_reduction", 16)
        return cifar_resnet(depth, **pin(kwargs, residual=residual))

    kind = "squeeze-and-excitation ResNet" if se else ("ResNet" if residual else "plain network")
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"CIFAR {kind}-{depth}: basic blocks, 3 stages of {(depth - 2) // 6}, widths 16/32/64."
    register_model("cifar", CIFAR_INPUT, 10)(builder)
    globals()[name] = builder


for _depth in (20, 32, 44, 56, 110, 1202):
    _register_cifar_v1(_depth, residual=True)
for _depth in (20, 32, 44, 56, 110):
    _register_cifar_v1(_depth, residual=False)
for _depth in (20, 56):
    _register_cifar_v1(_depth, residual=True, se=True)


def _register_preact(depth: int) -> None:
    name = f"preact_resnet{depth}"

    def builder(**kwargs) -> ResNet:
        return cifar_resnet(depth, **pin(kwargs, bottleneck=True, preact=True))

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (
        f"CIFAR pre-activation ResNet-{depth} (He et al. 2016): bottlenecks, 3 stages of {(depth - 2) // 9}."
    )
    register_model("cifar", CIFAR_INPUT, 10)(builder)
    globals()[name] = builder


for _depth in (110, 164, 1001):
    _register_preact(_depth)


def wide_resnet_cifar(depth: int, widen_factor: int, **kwargs) -> ResNet:
    """WRN-depth-k: pre-activation basic blocks, widths 16k/32k/64k, depth = 6n+4
    (the +2 over 6n+2 counts the projection shortcuts, as the WRN paper does)."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"a Wide ResNet's depth must be 6n+4 (e.g. 16, 28, 40); got {depth}")
    n = (depth - 4) // 6
    kwargs.setdefault("shortcut", "B")
    kwargs.setdefault("num_classes", 10)
    widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    return ResNet(PreActBasicBlock, [n, n, n], widths=widths, stem="cifar", stem_width=16, **kwargs)


def _register_wrn(depth: int, k: int) -> None:
    name = f"wrn{depth}_{k}"

    def builder(**kwargs) -> ResNet:
        return wide_resnet_cifar(depth, k, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"CIFAR Wide ResNet WRN-{depth}-{k} (Zagoruyko & Komodakis 2016)."
    register_model("cifar", CIFAR_INPUT, 10)(builder)
    globals()[name] = builder


for _depth, _k in ((16, 8), (28, 10), (40, 4)):
    _register_wrn(_depth, _k)
