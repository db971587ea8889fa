"""keep_freed_memory (train/host_memory.py): page faults counted for real, each case in a fresh
process, since the setting is process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Allocates and frees two 8 MB tensors (a ResNet-20 layer1 activation and its gradient at batch
# 128) ten times, writing every page, and prints the minor page faults of the last five rounds.
_PROBE = r"""
import json, resource, sys, torch
from resnets.train.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(10):
    if i == 5:
        start = faults()
    a = torch.empty(128, 16, 32, 32); a.fill_(1.0)
    b = torch.empty(128, 16, 32, 32); b.fill_(2.0)
    del a, b
print(json.dumps({"applied": applied, "faults": faults() - start}))
"""


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env={**clean, **env}, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or "glibc" not in os.confstr("CS_GNU_LIBC_VERSION").lower(),
                    reason="glibc's malloc only")
def test_freed_activations_are_reused_without_page_faults():
    pages = 2 * 128 * 16 * 32 * 32 * 4 // 4096  # 4,096 pages written per round
    before = _probe("off")
    after = _probe("on")
    assert after["applied"] is True
    # glibc as shipped: two freed 8 MB blocks exceed its trim threshold, so every round faults in
    # fresh pages; kept, the same blocks come back already mapped.
    assert before["faults"] >= 5 * pages // 2, before
    assert after["faults"] < 5 * pages // 20, after


def test_the_users_malloc_settings_stand():
    assert _probe("on", MALLOC_TRIM_THRESHOLD_="1048576")["applied"] is False
    assert _probe("on", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576")["applied"] is False
