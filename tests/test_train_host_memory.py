"""keep_freed_memory (train/host_memory.py): page faults counted for real, each case in a fresh
process, since the setting is process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Allocates and frees two 8 MB tensors (a ResNet-20 layer1 activation and its gradient at batch
# 128) ten times, writing every page, and prints the minor page faults of the last five rounds:
# first under glibc's malloc as a fresh process has it (128 KiB thresholds; set explicitly, because
# glibc raises them by itself after large frees, so what a process has by then depends on what ran
# before), then after keep_freed_memory().
_PROBE = r"""
import ctypes, json, resource, torch
from resnets.train.host_memory import _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, keep_freed_memory
def faults_of_rounds():
    for i in range(10):
        if i == 5:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = torch.empty(128, 16, 32, 32); a.fill_(1.0)
        b = torch.empty(128, 16, 32, 32); b.fill_(2.0)
        del a, b
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
mallopt = ctypes.CDLL(None).mallopt
assert mallopt(_M_MMAP_THRESHOLD, 128 * 1024) == 1 and mallopt(_M_TRIM_THRESHOLD, 128 * 1024) == 1
fresh = faults_of_rounds()
applied = keep_freed_memory()
print(json.dumps({"fresh": fresh, "applied": applied, "kept": faults_of_rounds()}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


_GLIBC = sys.platform.startswith("linux") and "glibc" in os.confstr("CS_GNU_LIBC_VERSION").lower()


@pytest.mark.skipif(not _GLIBC, reason="glibc's malloc only")
def test_freed_activations_are_reused_without_page_faults():
    pages = 2 * 128 * 16 * 32 * 32 * 4 // 4096  # 4,096 pages written per round
    result = _probe()
    assert result["applied"] is True
    # Fresh thresholds: each freed 8 MB block goes back to the kernel, so every round faults its
    # pages in again; kept, the same blocks come back already mapped.
    assert result["fresh"] >= 5 * pages // 2, result
    assert result["kept"] < 5 * pages // 20, result


@pytest.mark.skipif(not _GLIBC, reason="glibc's malloc only")
def test_the_users_malloc_settings_stand():
    assert _probe(MALLOC_TRIM_THRESHOLD_="1048576")["applied"] is False
    assert _probe(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576")["applied"] is False
