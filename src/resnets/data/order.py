"""The data order: which samples make up batch i of epoch e on rank r.

Everything random is a pure function of (seed, epoch, batch) rather than a stateful stream, so a
run resumed mid-epoch, or split over more processes, sees exactly the batches an uninterrupted
single-process run sees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across runs, platforms and Python versions)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=generator(seed, "order", epoch))


@dataclass(frozen=True)
class Batch:
    index: int             # global batch number within the epoch
    indices: torch.Tensor  # dataset indices for this rank
    global_size: int       # samples in the global batch (all ranks), over which randomness is drawn
    lo: int                # this rank's slice [lo, hi) of the global batch
    hi: int


@dataclass(frozen=True)
class BatchPlan:
    """Batches of an epoch for one rank.

    Training: the epoch's permutation is cut into global batches of ``batch_size * world_size``;
    rank r takes the contiguous slice [r*B, (r+1)*B). Without drop_last, a final partial global
    batch of R samples gives every rank ceil(R/W) samples, padding with the permutation's first
    samples (as DistributedSampler does) so all ranks take the same number of steps.
    Evaluation: no shuffling; rank r takes a contiguous shard (sizes differ by at most one), in order.
    """

    n: int
    batch_size: int
    train: bool
    drop_last: bool
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")

    def _shard(self) -> tuple[int, int]:
        base, extra = divmod(self.n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def __len__(self) -> int:
        if not self.train:
            start, stop = self._shard()
            return -(-(stop - start) // self.batch_size)
        global_batch = self.batch_size * self.world_size
        full, rem = divmod(self.n, global_batch)
        return full + (1 if rem and not self.drop_last else 0)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        if not self.train:
            lo, hi = self._shard()
            for i in range(start, len(self)):
                a = lo + i * self.batch_size
                b = min(a + self.batch_size, hi)
                yield Batch(i, torch.arange(a, b), b - a, 0, b - a)
            return
        perm = epoch_permutation(self.n, self.seed, epoch)
        global_batch = self.batch_size * self.world_size
        full = self.n // global_batch
        for i in range(start, len(self)):
            if i < full:
                chunk = perm[i * global_batch:(i + 1) * global_batch]
                b = self.batch_size
            else:
                rest = perm[i * global_batch:]
                b = -(-len(rest) // self.world_size)
                pad = b * self.world_size - len(rest)
                chunk = torch.cat([rest, perm.repeat(-(-pad // self.n))[:pad]]) if pad else rest
            lo, hi = self.rank * b, (self.rank + 1) * b
            yield Batch(i, chunk[lo:hi], len(chunk), lo, hi)
