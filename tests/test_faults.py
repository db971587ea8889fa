"""The fault-injection probes of ``tests/fault_suite.py`` (issue 15), one test each; the script
prints the same probes' tally (``python tests/fault_suite.py``)."""

from __future__ import annotations

import pytest

from fault_suite import PROBES


@pytest.mark.parametrize("probe", [pytest.param(p, marks=[pytest.mark.slow] if p.slow else [], id=p.id)
                                   for p in PROBES])
def test_probe(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path.parent / "cache"))  # the data cache, not under tmp_path
    probe.fn(tmp_path)
