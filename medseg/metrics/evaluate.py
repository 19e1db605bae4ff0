"""``evaluate``: every metric of one prediction/truth pair, from arrays (notebook API)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medseg.errors import ConfigError
from medseg.metrics.crop import union_bbox
from medseg.metrics.lesions import lesion_metrics
from medseg.metrics.overlap import overlap_metrics
from medseg.metrics.surface import surface_metrics

#: Scalar metrics in report order (lists such as per-lesion Dice go to JSON only).
SCALAR_METRICS = (
    "dice",
    "iou",
    "hd",
    "hd95",
    "assd",
    "nsd",
    "volume_pred_ml",
    "volume_truth_ml",
    "rvd",
    "sensitivity",
    "precision",
    "lesion_tp",
    "lesion_fp",
    "lesion_fn",
    "lesion_f1",
    "lesion_dice_mean",
    "lesion_nsd_mean",
)


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"spacing must be three positive mm values (z, y, x), got {spacing}")
    return values  # type: ignore[return-value]


def evaluate(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    *,
    tolerance_mm: float = 1.0,
    connectivity: int = 26,
    distance_method: str = "kdtree",
) -> dict[str, object]:
    """All metrics of ``pred`` against ``truth``: bool arrays (z, y, x), ``spacing`` in mm.

    Distances are in mm, volumes in ml; see docs/evaluation.md for every definition and the
    values returned when one or both masks are empty. ``distance_method`` ("kdtree" or
    "edt") only changes how the same exact distances are found.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.ndim != 3 or pred.shape != truth.shape:
        raise ConfigError(
            f"pred and truth must be 3-D arrays of one shape, got {pred.shape} and {truth.shape}"
        )
    if pred.dtype != bool or truth.dtype != bool:
        raise ConfigError(f"pred and truth must be boolean, got {pred.dtype} and {truth.dtype}")
    spacing = _check_spacing(spacing)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ConfigError(f"tolerance must be a non-negative number of mm, got {tolerance_mm}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    box = union_bbox(pred, truth)
    if box is not None:
        pred, truth = pred[box], truth[box]
    else:
        pred = truth = np.zeros((1, 1, 1), dtype=bool)
    result: dict[str, object] = {}
    result.update(overlap_metrics(pred, truth, voxel_ml))
    result.update(surface_metrics(pred, truth, spacing, tolerance_mm, distance_method))
    result.update(
        lesion_metrics(
            pred, truth, voxel_ml, connectivity, spacing=spacing, tolerance_mm=tolerance_mm
        )
    )
    result["tolerance_mm"] = float(tolerance_mm)
    return result
