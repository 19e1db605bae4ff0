"""Lesion-wise detection: the overlap rule, connectivity, F1 and per-lesion Dice."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics import evaluate
from medseg.metrics.lesions import lesion_metrics

UNIT = (1.0, 1.0, 1.0)


def _cube(mask: np.ndarray, at: tuple[int, int, int], size: int) -> None:
    mask[tuple(slice(a, a + size) for a in at)] = True


def test_detected_missed_and_false_positive_lesions() -> None:
    truth = np.zeros((20, 40, 40), bool)
    pred = np.zeros_like(truth)
    _cube(truth, (2, 2, 2), 4)  # detected by a shifted prediction
    _cube(pred, (3, 3, 3), 4)
    _cube(truth, (2, 20, 20), 3)  # missed
    _cube(pred, (10, 30, 5), 2)  # false positive
    _cube(truth, (12, 10, 30), 2)  # touched by a single voxel: still detected
    pred[13, 11, 31] = True

    result = evaluate(pred, truth, UNIT)

    assert (result["lesion_tp"], result["lesion_fp"], result["lesion_fn"]) == (2, 1, 1)
    assert result["lesion_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # truth lesions in scan order: cube at z=2 (y=2), cube at z=2 (y=20), cube at z=12
    shifted = 2 * 27 / (64 + 64)
    assert result["lesion_dice"] == pytest.approx([shifted, 0.0, 2 * 1 / (8 + 1)])
    assert result["lesion_volume_truth_ml"] == pytest.approx([0.064, 0.027, 0.008])
    assert result["lesion_dice_mean"] == pytest.approx(np.mean(result["lesion_dice"]))


def test_one_prediction_bridging_two_lesions_detects_both() -> None:
    truth = np.zeros((6, 6, 20), bool)
    truth[2:4, 2:4, 2:5] = True
    truth[2:4, 2:4, 10:13] = True
    pred = np.zeros_like(truth)
    pred[2:4, 2:4, 2:13] = True
    result = lesion_metrics(pred, truth, 0.001)
    assert (result["lesion_tp"], result["lesion_fp"], result["lesion_fn"]) == (2, 0, 0)
    # each lesion (12 voxels) against the whole bridging component (44 voxels)
    assert result["lesion_dice"] == pytest.approx([2 * 12 / 56, 2 * 12 / 56])


def test_connectivity_decides_whether_diagonal_voxels_are_one_lesion() -> None:
    truth = np.zeros((5, 5, 5), bool)
    truth[1, 1, 1] = truth[2, 2, 2] = True  # corner neighbours
    pred = np.zeros_like(truth)
    pred[1, 1, 1] = True
    corner = lesion_metrics(pred, truth, 0.001, connectivity=26)
    faces = lesion_metrics(pred, truth, 0.001, connectivity=6)
    assert (corner["lesion_tp"], corner["lesion_fn"]) == (1, 0)
    assert (faces["lesion_tp"], faces["lesion_fn"]) == (1, 1)
