"""Helpers shared by the family builders."""

from __future__ import annotations

from typing import Any

from ..errors import InputError


def pin(kwargs: dict[str, Any], **pinned: Any) -> dict[str, Any]:
    """Fix arguments that define a named variant; refuse a caller's conflicting value
    (``resnext50_32x4d(groups=8)`` is an error, not a silent override)."""
    for key, value in pinned.items():
        if key in kwargs and kwargs[key] != value:
            raise InputError(f"this model fixes {key}={value!r}; got {key}={kwargs[key]!r}")
        kwargs[key] = value
    return kwargs
