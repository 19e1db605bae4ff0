"""Segmentation metrics: overlap, surface distances, lesion detection, cohort statistics."""

from medseg.metrics.evaluate import SCALAR_METRICS, evaluate
from medseg.metrics.overlap import dice

__all__ = ["SCALAR_METRICS", "dice", "evaluate"]
