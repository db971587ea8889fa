"""Freed host memory stays with the process for the next training step (glibc's malloc).

Why (issue 13, item 2): a ResNet-20 step at batch 128 allocates and frees about 120 MB of
activations and gradients, in blocks of up to 8 MB. glibc returns blocks above its mmap threshold
to the kernel on free, and trims the top of its heap once more than twice that threshold is free,
so each step writes to fresh pages: ~30,000 page faults a step, the kernel zeroing each page. On a
2-core EPYC that was up to a fifth of an fp32 step; how much depends on the thresholds glibc has
raised by itself after earlier large frees (``benchmarks/bench_train.py``, RESULTS.md). Keeping
freed blocks is what PyTorch's CUDA caching allocator does on a GPU, and what Intel's advice to
train on CPUs with jemalloc or tcmalloc (``LD_PRELOAD``) buys; ``mallopt`` gets it from glibc
without a preload or a dependency.
"""

from __future__ import annotations

import ctypes
import os
import sys

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2); blocks above it are always mmapped.
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse: blocks up to 32 MB come from the heap, and
    the heap is never trimmed. Process-wide and not undone: the process keeps its peak heap, which the
    next step needs again. Returns whether it applied: not on other C libraries (macOS, musl, Windows),
    and not where the user set glibc's malloc thresholds in the environment (their choice stands).
    An allocator preloaded instead of glibc's (jemalloc, tcmalloc) is unaffected either way.
    """
    user_set = os.environ.get("MALLOC_TRIM_THRESHOLD_") or os.environ.get("MALLOC_MMAP_THRESHOLD_") or (
        "malloc" in os.environ.get("GLIBC_TUNABLES", ""))
    if not sys.platform.startswith("linux") or user_set:
        return False
    try:
        if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or "").lower():
            return False  # musl has a mallopt that does nothing
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, ValueError, AttributeError):
        return False
    # -1 disables trimming (mallopt(3)); each call returns 1 on success.
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1)
