"""Voxel-overlap measures: Dice, IoU, sensitivity, precision, volumes.

Edge cases (documented in docs/evaluation.md): both masks empty gives Dice = IoU = 1 and a
relative volume difference of 0; sensitivity is NaN when the truth is empty and precision
NaN when the prediction is empty (0/0: undefined, and left out of cohort statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts of one prediction/truth pair."""

    both: int
    pred: int
    truth: int

    @classmethod
    def of(cls, pred: np.ndarray, truth: np.ndarray) -> OverlapCounts:
        return cls(
            both=int(np.count_nonzero(pred & truth)),
            pred=int(np.count_nonzero(pred)),
            truth=int(np.count_nonzero(truth)),
        )

    @property
    def dice(self) -> float:
        total = self.pred + self.truth
        return 1.0 if total == 0 else 2.0 * self.both / total

    @property
    def iou(self) -> float:
        union = self.pred + self.truth - self.both
        return 1.0 if union == 0 else self.both / union

    @property
    def sensitivity(self) -> float:
        return float("nan") if self.truth == 0 else self.both / self.truth

    @property
    def precision(self) -> float:
        return float("nan") if self.pred == 0 else self.both / self.pred

    @property
    def relative_volume_difference(self) -> float:
        """(V_pred - V_truth) / V_truth: signed, 0 when both are empty, inf if truth is."""
        if self.truth == 0:
            return 0.0 if self.pred == 0 else float("inf")
        return (self.pred - self.truth) / self.truth


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two boolean arrays (1.0 when both are empty)."""
    return OverlapCounts.of(np.asarray(pred, bool), np.asarray(truth, bool)).dice


def overlap_metrics(pred: np.ndarray, truth: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """Overlap measures and volumes (ml) of two boolean arrays of one shape."""
    counts = OverlapCounts.of(pred, truth)
    return {
        "dice": counts.dice,
        "iou": counts.iou,
        "sensitivity": counts.sensitivity,
        "precision": counts.precision,
        "volume_pred_ml": counts.pred * voxel_ml,
        "volume_truth_ml": counts.truth * voxel_ml,
        "rvd": counts.relative_volume_difference,
    }
