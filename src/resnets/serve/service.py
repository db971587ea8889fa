"""The model behind the server: loaded once, described for ``/v1/model``, run for predictions and
Grad-CAM explanations.

The model is a :class:`resnets.runtime.Backend`: weights run by PyTorch, or an exported file run by
onnxruntime or OpenVINO (``--backend``), with the preprocessing and classes the file carries.
Grad-CAM needs the PyTorch model's gradients, so with an exported file ``/v1/explain`` answers 501.

One lock serialises every use of the model: Grad-CAM hooks a layer and would capture another
thread's activations if a batch ran at the same time.
"""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..preprocessing import PreprocessingError

# Grad-CAM overlays are enlarged to at least this short side by default (32x32 is too small to see).
EXPLAIN_MIN_SIDE = 224


class ModelService:
    def __init__(self, weights: str | Path, model: str | None = None, device: str = "cpu",
                 backend: str | None = None, threads: int | None = None):
        from ..runtime import open_backend

        runner = open_backend(weights, backend, model=model, device=device, threads=threads)
        if runner.preprocessing is None:  # nothing to guess from: refuse to start
            raise PreprocessingError(runner.preprocessing_error)
        self.runner = runner
        self.backend = runner.backend
        self.preprocessing = runner.preprocessing
        self.name = runner.name
        self.device = torch.device(device)
        self.model = runner.module  # the PyTorch model, for Grad-CAM; None for an exported file
        self.meta = dict(runner.metadata)
        self.input_size = list(runner.input_size)
        self.classes = list(runner.classes)
        self.mean = list(self.preprocessing.mean)
        self.std = list(self.preprocessing.std)
        self.sha256 = runner.sha256
        self.weights = runner.source  # the file's name or the shipped tag, not the server's paths
        self.metrics: dict[str, Any] = dict(self.meta.get("metrics") or {})
        parameters = runner.parameters if runner.parameters is not None else self.meta.get("parameters")
        self.parameters = int(parameters) if parameters is not None else None
        self._lock = threading.Lock()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def can_explain(self) -> bool:
        return self.model is not None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "classes": self.classes, "num_classes": self.num_classes,
                "input_size": self.input_size, "mean": self.mean, "std": self.std,
                "preprocessing": self.preprocessing.to_metadata(), "metrics": self.metrics,
                "weights": self.weights, "sha256": self.sha256, "parameters": self.parameters,
                "backend": self.backend, "runtime": self.runner.runtime, "exported_from": self.runner.exported_from}

    def inputs(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """Normalised model input from :func:`resnets.serve.inputs.decode` arrays."""
        return self.preprocessing.normalize(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, num_classes) on the CPU; called from the batcher's thread."""
        with self._lock:
            return self.runner(x).float().softmax(1)

    def warm_up(self, batch: int) -> None:
        # The first calls allocate and pick kernels; pay for that before saying ready. The first
        # resize imports torchvision's transforms: 11-16 s on this busy 2-core machine, which the
        # first request paid (and a 10 s client timeout saw) until it was done here.
        self.preprocessing.resize(torch.zeros(3, *self.input_size[-2:], dtype=torch.uint8))
        for n in {1, batch}:
            self.forward(torch.zeros(n, *self.input_size))

    def class_index(self, value: str | None) -> int | None:
        """A class given by name or index (``?class=``), checked; ``None`` for the prediction."""
        from .errors import ApiError

        if value is None or value == "":
            return None
        if value in self.classes:
            return self.classes.index(value)
        try:
            index = int(value)
        except ValueError:  # not a number (or thousands of digits: int() refuses those too)
            shown = ", ".join(self.classes[:20]) + (", ..." if self.num_classes > 20 else "")
            raise ApiError(422, "invalid_parameter", f"query parameter 'class': unknown class {value[:50]!r}; "
                                                     f"one of {shown} or an index") from None
        if not 0 <= index < self.num_classes:
            raise ApiError(422, "invalid_parameter", f"query parameter 'class': index {value[:50]} is out of "
                                                     f"range 0..{self.num_classes - 1}")
        return index

    def explain(self, array: np.ndarray, target: int | None, scale: int | None) -> dict[str, Any]:
        """Grad-CAM overlay PNG of one image (uint8 (H, W, 3) at the input size) for ``target``
        (default: the prediction), with the predicted and explained classes."""
        from ..deploy.gradcam import grad_cam, overlay
        from .errors import ApiError

        if not self.can_explain:
            raise ApiError(501, "not_implemented", explain_refusal(self))
        x = self.inputs([array]).to(self.device)
        with self._lock:
            heatmaps, classes, logits = grad_cam(self.model, x, target)
        probs = logits.float().softmax(1)[0].cpu()
        explained = int(classes[0])
        if scale is None:
            scale = max(1, math.ceil(EXPLAIN_MIN_SIDE / min(array.shape[:2])))
        picture = overlay(torch.from_numpy(array.copy()).permute(2, 0, 1), heatmaps[0], scale=scale)
        png = io.BytesIO()
        picture.save(png, format="PNG")
        predicted = int(probs.argmax())
        return {"png": png.getvalue(), "predicted": predicted, "explained": explained,
                "probability": float(probs[explained]), "width": picture.width, "height": picture.height}


def explain_refusal(service: ModelService) -> str:
    return (f"Grad-CAM needs the PyTorch model's gradients; this server runs {service.weights} on "
            f"{service.backend}. Serve the weights with --backend torch to explain.")
