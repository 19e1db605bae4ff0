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


def test_one_prediction_bridging_two_lesions_detects_only_one() -> None:
    # One-to-one matching: the bridge is assigned to the lesion it overlaps with larger IoU;
    # the other lesion is a miss (many-to-many matching would count 2 TP, 0 FN).
    truth = np.zeros((6, 6, 20), bool)
    truth[2:4, 2:4, 2:5] = True  # 12 voxels
    truth[2:4, 2:4, 10:14] = True  # 16 voxels: larger IoU with the bridge
    pred = np.zeros_like(truth)
    pred[2:4, 2:4, 2:14] = True  # 48 voxels
    result = lesion_metrics(pred, truth, 0.001)
    assert (result["lesion_tp"], result["lesion_fp"], result["lesion_fn"]) == (1, 0, 1)
    assert result["lesion_f1"] == pytest.approx(2 / 3)
    assert result["lesion_dice"] == pytest.approx([0.0, 2 * 16 / (16 + 48)])


def test_hungarian_assignment_beats_greedy_choice() -> None:
    # Along x (2x2 cross-section): truth A 2..9, truth B 12..15; prediction Q 0..4 overlaps
    # A only (IoU 0.3), P 6..13 overlaps A (IoU 1/3) and B (IoU 0.2). Greedy best-IoU for A
    # takes P and leaves B unmatched; the summed-IoU optimum is A-Q (0.3) + B-P (0.2).
    truth = np.zeros((4, 4, 20), bool)
    pred = np.zeros_like(truth)
    truth[1:3, 1:3, 2:10] = True
    truth[1:3, 1:3, 12:16] = True
    pred[1:3, 1:3, 0:5] = True
    pred[1:3, 1:3, 6:14] = True
    result = lesion_metrics(pred, truth, 0.001)
    assert (result["lesion_tp"], result["lesion_fp"], result["lesion_fn"]) == (2, 0, 0)
    assert result["lesion_dice"] == pytest.approx([2 * 12 / (32 + 20), 2 * 8 / (16 + 32)])


def test_matching_maximises_total_iou_in_a_competing_group() -> None:
    from medseg.metrics.lesions import match_lesions

    # truth 1 overlaps pred 1 (IoU .6) and pred 2 (.5); truth 2 overlaps only pred 1 (.4).
    # Greedy (truth 1 -> pred 1) gives one match; the optimum pairs 1-2 and 2-1.
    pair_truth = np.array([1, 1, 2])
    pair_pred = np.array([1, 2, 1])
    matched_t, matched_p = match_lesions(pair_truth, pair_pred, np.array([0.6, 0.5, 0.4]))
    assert sorted(zip(matched_t.tolist(), matched_p.tolist(), strict=True)) == [(1, 2), (2, 1)]


def test_per_lesion_nsd_against_the_matched_component() -> None:
    truth = np.zeros((8, 8, 30), bool)
    truth[2:6, 2:6, 2:6] = True
    truth[2:6, 2:6, 20:24] = True
    pred = np.zeros_like(truth)
    pred[2:6, 2:6, 2:6] = True  # identical: NSD 1
    pred[2:6, 2:6, 23:27] = True  # shifted 3 voxels: surfaces mostly > 1 mm apart
    result = evaluate(pred, truth, UNIT)
    assert result["lesion_nsd"][0] == 1.0
    assert 0.0 < result["lesion_nsd"][1] < 1.0
    assert result["lesion_nsd_mean"] == pytest.approx(np.mean(result["lesion_nsd"]))
    wide = evaluate(pred, truth, UNIT, tolerance_mm=3.0)
    assert wide["lesion_nsd"] == [1.0, 1.0]


def test_connectivity_decides_whether_diagonal_voxels_are_one_lesion() -> None:
    truth = np.zeros((5, 5, 5), bool)
    truth[1, 1, 1] = truth[2, 2, 2] = True  # corner neighbours
    pred = np.zeros_like(truth)
    pred[1, 1, 1] = True
    corner = lesion_metrics(pred, truth, 0.001, connectivity=26)
    faces = lesion_metrics(pred, truth, 0.001, connectivity=6)
    assert (corner["lesion_tp"], corner["lesion_fn"]) == (1, 0)
    assert (faces["lesion_tp"], faces["lesion_fn"]) == (1, 1)
