"""CIFAR ResNets (He et al. 2015, section 4.2): 3x3 stem, three stages of widths 16/32/64 on
32x32 inputs, depth 6n+2 with basic blocks; pre-activation bottlenecks with depth 9n+2
(He et al. 2016); plain counterparts; Wide ResNets (Zagoruyko & Komodakis 2016); SE-ResNets.

Parameters with option A shortcuts (10 classes), as in the paper's Table 6 and akamaster's
reproduction, checked by ``tests/test_models.py``:

    resnet20 0.27M   resnet32 0.46M   resnet44 0.66M   resnet56 0.85M   resnet110 1.7M   resnet1202 19.4M
"""

from __future__ import annotations

from ..blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from ..errors import InputError
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
    raise InputError(
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


_cifar = register_model("cifar", CIFAR_INPUT, 10)


# One explicit builder per registered name (grep finds them). ResNets and plain networks pin
# ``residual``; the pre-activation networks pin their block type.


@_cifar
def resnet20(**kwargs) -> ResNet:
    """CIFAR ResNet-20: basic blocks, 3 stages of 3, widths 16/32/64."""
    return cifar_resnet(20, **pin(kwargs, residual=True))


@_cifar
def resnet32(**kwargs) -> ResNet:
    """CIFAR ResNet-32: basic blocks, 3 stages of 5, widths 16/32/64."""
    return cifar_resnet(32, **pin(kwargs, residual=True))


@_cifar
def resnet44(**kwargs) -> ResNet:
    """CIFAR ResNet-44: basic blocks, 3 stages of 7, widths 16/32/64."""
    return cifar_resnet(44, **pin(kwargs, residual=True))


@_cifar
def resnet56(**kwargs) -> ResNet:
    """CIFAR ResNet-56: basic blocks, 3 stages of 9, widths 16/32/64."""
    return cifar_resnet(56, **pin(kwargs, residual=True))


@_cifar
def resnet110(**kwargs) -> ResNet:
    """CIFAR ResNet-110: basic blocks, 3 stages of 18, widths 16/32/64."""
    return cifar_resnet(110, **pin(kwargs, residual=True))


@_cifar
def resnet1202(**kwargs) -> ResNet:
    """CIFAR ResNet-1202: basic blocks, 3 stages of 200, widths 16/32/64."""
    return cifar_resnet(1202, **pin(kwargs, residual=True))


@_cifar
def plain20(**kwargs) -> ResNet:
    """CIFAR plain network-20: basic blocks, 3 stages of 3, widths 16/32/64."""
    return cifar_resnet(20, **pin(kwargs, residual=False))


@_cifar
def plain32(**kwargs) -> ResNet:
    """CIFAR plain network-32: basic blocks, 3 stages of 5, widths 16/32/64."""
    return cifar_resnet(32, **pin(kwargs, residual=False))


@_cifar
def plain44(**kwargs) -> ResNet:
    """CIFAR plain network-44: basic blocks, 3 stages of 7, widths 16/32/64."""
    return cifar_resnet(44, **pin(kwargs, residual=False))


@_cifar
def plain56(**kwargs) -> ResNet:
    """CIFAR plain network-56: basic blocks, 3 stages of 9, widths 16/32/64."""
    return cifar_resnet(56, **pin(kwargs, residual=False))


@_cifar
def plain110(**kwargs) -> ResNet:
    """CIFAR plain network-110: basic blocks, 3 stages of 18, widths 16/32/64."""
    return cifar_resnet(110, **pin(kwargs, residual=False))


@_cifar
def se_resnet20(**kwargs) -> ResNet:
    """CIFAR squeeze-and-excitation ResNet-20: basic blocks, 3 stages of 3, widths 16/32/64."""
    kwargs.setdefault("se_reduction", 16)
    return cifar_resnet(20, **pin(kwargs, residual=True))


@_cifar
def se_resnet56(**kwargs) -> ResNet:
    """CIFAR squeeze-and-excitation ResNet-56: basic blocks, 3 stages of 9, widths 16/32/64."""
    kwargs.setdefault("se_reduction", 16)
    return cifar_resnet(56, **pin(kwargs, residual=True))


@_cifar
def preact_resnet110(**kwargs) -> ResNet:
    """CIFAR pre-activation ResNet-110 (He et al. 2016): bottlenecks, 3 stages of 12."""
    return cifar_resnet(110, **pin(kwargs, bottleneck=True, preact=True))


@_cifar
def preact_resnet164(**kwargs) -> ResNet:
    """CIFAR pre-activation ResNet-164 (He et al. 2016): bottlenecks, 3 stages of 18."""
    return cifar_resnet(164, **pin(kwargs, bottleneck=True, preact=True))


@_cifar
def preact_resnet1001(**kwargs) -> ResNet:
    """CIFAR pre-activation ResNet-1001 (He et al. 2016): bottlenecks, 3 stages of 111."""
    return cifar_resnet(1001, **pin(kwargs, bottleneck=True, preact=True))


def wide_resnet_cifar(depth: int, widen_factor: int, **kwargs) -> ResNet:
    """WRN-depth-k: pre-activation basic blocks, widths 16k/32k/64k, depth = 6n+4
    (the +2 over 6n+2 counts the projection shortcuts, as the WRN paper does)."""
    if depth < 10 or (depth - 4) % 6:
        raise InputError(f"a Wide ResNet's depth must be 6n+4 (e.g. 16, 28, 40); got {depth}")
    n = (depth - 4) // 6
    kwargs.setdefault("shortcut", "B")
    kwargs.setdefault("num_classes", 10)
    widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    return ResNet(PreActBasicBlock, [n, n, n], widths=widths, stem="cifar", stem_width=16, **kwargs)


@_cifar
def wrn16_8(**kwargs) -> ResNet:
    """CIFAR Wide ResNet WRN-16-8 (Zagoruyko & Komodakis 2016)."""
    return wide_resnet_cifar(16, 8, **kwargs)


@_cifar
def wrn28_10(**kwargs) -> ResNet:
    """CIFAR Wide ResNet WRN-28-10 (Zagoruyko & Komodakis 2016)."""
    return wide_resnet_cifar(28, 10, **kwargs)


@_cifar
def wrn40_4(**kwargs) -> ResNet:
    """CIFAR Wide ResNet WRN-40-4 (Zagoruyko & Komodakis 2016)."""
    return wide_resnet_cifar(40, 4, **kwargs)
