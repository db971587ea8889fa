"""Deployment: export (ONNX, OpenVINO IR, TorchScript, PT2), faster CPU inference (BN folding,
channels-last, torch.compile, int8 through PT2E), pruning, Grad-CAM explanations and the inference
benchmark. Running an exported file is :mod:`resnets.runtime`'s (``open_backend``).

The commands' library functions: ``export_model``, ``quantize_model``, ``prune_model`` and
``bench_infer`` return report dataclasses (``print(report)``, ``report.to_dict()``); see
:mod:`resnets.deploy.api`.

Heavy optional dependencies (onnx, onnxruntime, OpenVINO, NNCF, torchao, torch-pruning) are
imported where used, through :func:`resnets.errors.need`, so ``import resnets.deploy`` works without
the ``deploy`` extra and a command that needs one says which extra to install.
"""

from .api import (
    DataChoice,
    ExportReport,
    PruneReport,
    PruneStage,
    QuantizeReport,
    export_model,
    prune_model,
    quantize_model,
)
from .bench import BenchReport, BenchRow, bench_infer
from .export import (
    FORMATS,
    Parity,
    compare,
    export,
    export_onnx,
    export_openvino,
    export_pt2,
    export_torchscript,
    load_exported,
)
from .fuse import compile_for_inference, conv_bn_pairs, fold_bn, to_channels_last
from .gradcam import default_target_layer, grad_cam, overlay, save_overlays
from .prune import fine_tune, prune_structured, prune_unstructured, sparsity
from .quantize import (
    METHODS,
    PT2EInt8,
    QuantReport,
    accuracy,
    compare_accuracy,
    predict,
    quantize_aware_train,
    quantize_int8,
    quantize_pt2e,
    quantize_static,
    resolve_method,
)
from .weights import LoadedModel, load_model

__all__ = [
    "BenchReport", "BenchRow", "DataChoice", "ExportReport", "PruneReport", "PruneStage", "QuantizeReport",
    "bench_infer", "export_model", "prune_model", "quantize_model",
    "FORMATS", "LoadedModel", "METHODS", "PT2EInt8", "Parity", "QuantReport", "accuracy", "compare", "compare_accuracy",
    "compile_for_inference", "conv_bn_pairs", "default_target_layer", "export", "export_onnx", "export_openvino", "export_pt2",
    "export_torchscript", "fine_tune", "fold_bn", "grad_cam", "load_exported", "load_model", "overlay",
    "predict", "prune_structured", "prune_unstructured", "quantize_aware_train", "quantize_int8", "quantize_pt2e",
    "quantize_static", "resolve_method",
    "save_overlays", "sparsity", "to_channels_last",
]
