"""What the studies' results share: a JSON-ready dictionary (``report.json``, ``--json``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path


class StudyReport:
    """Mixed into a study's result dataclass: ``to_dict()`` is its fields, with paths as text."""

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}  # type: ignore[call-overload]
