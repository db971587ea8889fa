"""Experiments that show why residual learning works and what it is for: ``degradation_study``
(plain vs residual networks), ``brain_segmentation_study`` (a ResNet-UNet on a real brain scan)."""

from .brain_segmentation import BrainSegResult, brain_segmentation_study
from .degradation import DegradationResult, degradation_study

__all__ = ["BrainSegResult", "DegradationResult", "brain_segmentation_study", "degradation_study"]
