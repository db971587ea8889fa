"""Experiments that show why residual learning works and what it is for: ``degradation_study``
(plain vs residual networks), ``brain_segmentation_study`` (a ResNet-UNet on a real brain scan),
``detection_study`` (two- and one-stage detectors on residual and plain backbones)."""

from .brain_segmentation import BrainSegResult, brain_segmentation_study
from .degradation import DegradationResult, degradation_study
from .detection import DetectionResult, detection_study

__all__ = ["BrainSegResult", "DegradationResult", "DetectionResult", "brain_segmentation_study", "degradation_study",
           "detection_study"]
