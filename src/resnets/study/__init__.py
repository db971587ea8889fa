"""Experiments that show why residual learning works: ``degradation_study``."""

from .degradation import DegradationResult, degradation_study

__all__ = ["DegradationResult", "degradation_study"]
