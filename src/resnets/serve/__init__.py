"""``resnets serve``: an HTTP inference API with dynamic batching (FastAPI on uvicorn).

``create_app(weights, ...)`` builds the ASGI app; :class:`Batcher` is the dynamic batcher;
:class:`ModelService` loads and runs the model; :mod:`.limits` holds the limits' defaults. Needs the
``serve`` extra (``pip install -e ".[serve]"``).

The names below load on first use (PEP 562), so that ``resnets serve --help`` can read
:mod:`.limits` without importing FastAPI (issue 18).
"""

from importlib import import_module

_WHERE = {"create_app": ".app", "Batcher": ".batcher", "Closed": ".batcher", "QueueFull": ".batcher",
          "ApiError": ".errors", "ModelService": ".service"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value
