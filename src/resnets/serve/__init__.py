"""``resnets serve``: an HTTP inference API with dynamic batching (FastAPI on uvicorn).

``create_app(weights, ...)`` builds the ASGI app; :class:`Batcher` is the dynamic batcher;
:class:`ModelService` loads and runs the model. Needs the ``serve`` extra (``pip install -e ".[serve]"``).
"""

from .app import create_app
from .batcher import Batcher, Closed, QueueFull
from .errors import ApiError
from .service import ModelService

__all__ = ["ApiError", "Batcher", "Closed", "ModelService", "QueueFull", "create_app"]
