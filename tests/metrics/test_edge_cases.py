"""Documented outputs for empty masks, single voxels, masks on the array edge, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.errors import ConfigError, MedsegError
from medseg.metrics import dice, evaluate

SPACING = (2.5, 0.7, 0.7)


def _empty(shape=(6, 8, 8)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def test_both_empty_is_perfect_agreement_with_undefined_ratios() -> None:
    result = evaluate(_empty(), _empty(), SPACING)
    assert result["dice"] == 1.0 and result["iou"] == 1.0 and result["nsd"] == 1.0
    assert result["hd"] == 0.0 and result["hd95"] == 0.0 and result["assd"] == 0.0
    assert result["rvd"] == 0.0 and result["lesion_f1"] == 1.0
    assert math.isnan(result["sensitivity"]) and math.isnan(result["precision"])
    assert (result["lesion_tp"], result["lesion_fp"], result["lesion_fn"]) == (0, 0, 0)
    assert math.isnan(result["lesion_dice_mean"]) and result["lesion_dice"] == []
    assert math.isnan(result["lesion_nsd_mean"]) and result["lesion_nsd"] == []


def test_empty_prediction_against_truth_scores_zero_and_infinite_distances() -> None:
    truth = _empty()
    truth[2:4, 2:5, 2:5] = True
    result = evaluate(_empty(), truth, SPACING)
    assert result["dice"] == 0.0 and result["iou"] == 0.0 and result["nsd"] == 0.0
    assert math.isinf(result["hd"]) and math.isinf(result["hd95"]) and math.isinf(result["assd"])
    assert result["lesion_nsd"] == [0.0] and result["lesion_nsd_mean"] == 0.0
    assert result["sensitivity"] == 0.0 and math.isnan(result["precision"])
    assert result["rvd"] == -1.0
    assert (result["lesion_tp"], result["lesion_fp"], result["lesion_fn"]) == (0, 0, 1)
    assert result["lesion_f1"] == 0.0 and result["lesion_dice"] == [0.0]


def test_prediction_against_empty_truth_is_infinite_volume_difference() -> None:
    pred = _empty()
    pred[1, 1, 1] = True
    result = evaluate(pred, _empty(), SPACING)
    assert result["dice"] == 0.0 and result["iou"] == 0.0 and result["nsd"] == 0.0
    assert math.isinf(result["hd"]) and math.isinf(result["hd95"]) and math.isinf(result["assd"])
    assert math.isinf(result["rvd"]) and result["rvd"] > 0
    assert math.isnan(result["sensitivity"]) and result["precision"] == 0.0
    assert (result["lesion_tp"], result["lesion_fp"], result["lesion_fn"]) == (0, 1, 0)
    assert result["lesion_f1"] == 0.0 and result["lesion_dice"] == []
    assert math.isnan(result["lesion_dice_mean"]) and math.isnan(result["lesion_nsd_mean"])


def test_single_voxel_identical_and_offset() -> None:
    truth = _empty()
    truth[3, 4, 4] = True
    same = evaluate(truth.copy(), truth, SPACING)
    assert same["dice"] == 1.0 and same["iou"] == 1.0 and same["nsd"] == 1.0
    assert same["hd"] == 0.0 and same["hd95"] == 0.0 and same["assd"] == 0.0
    assert same["sensitivity"] == 1.0 and same["precision"] == 1.0 and same["rvd"] == 0.0
    assert (same["lesion_tp"], same["lesion_fp"], same["lesion_fn"]) == (1, 0, 0)
    assert same["lesion_f1"] == 1.0 and same["lesion_dice"] == [1.0]
    assert same["lesion_nsd"] == [1.0]
    assert same["volume_truth_ml"] == pytest.approx(2.5 * 0.7 * 0.7 / 1000)
    assert same["volume_pred_ml"] == same["volume_truth_ml"]
    pred = _empty()
    pred[4, 4, 5] = True  # one slice and one column away
    moved = evaluate(pred, truth, SPACING)
    expected = math.hypot(2.5, 0.7)
    assert moved["dice"] == 0.0 and moved["iou"] == 0.0
    assert moved["sensitivity"] == 0.0 and moved["precision"] == 0.0 and moved["rvd"] == 0.0
    assert (moved["lesion_tp"], moved["lesion_fp"], moved["lesion_fn"]) == (0, 1, 1)
    assert moved["lesion_f1"] == 0.0 and moved["lesion_dice"] == [0.0]
    assert moved["hd"] == pytest.approx(expected) and moved["hd95"] == pytest.approx(expected)
    assert moved["assd"] == pytest.approx(expected)
    assert moved["nsd"] == 0.0 and evaluate(pred, truth, SPACING, tolerance_mm=3)["nsd"] == 1.0


def test_mask_touching_array_edge_counts_outside_as_background() -> None:
    full = np.ones((4, 5, 5), dtype=bool)
    inner = _empty((4, 5, 5))
    inner[1:3, 1:4, 1:4] = True
    result = evaluate(inner, full, (1.0, 1.0, 1.0))
    # The full array's outer layer is its surface (were the off-array voxels not background,
    # it would have none and HD would be inf); its corners are sqrt(3) from the inner block.
    assert result["hd"] == pytest.approx(np.sqrt(3.0))
    assert result["nsd"] < 1.0
    assert result["dice"] == pytest.approx(2 * 18 / (18 + 100))


def test_dice_alone_matches_full_evaluation() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 9, 9)) > 0.5, rng.random((5, 9, 9)) > 0.5
    assert dice(a, b) == pytest.approx(evaluate(a, b, SPACING)["dice"], abs=1e-15)
    assert dice(_empty(), _empty()) == 1.0


@pytest.mark.parametrize(
    ("pred", "truth", "spacing", "message"),
    [
        (np.zeros((2, 2), bool), np.zeros((2, 2), bool), SPACING, "3-D"),
        (np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool), SPACING, "one shape"),
        (np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), bool), SPACING, "boolean"),
        (np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool), (1.0, 0.0, 1.0), "spacing"),
        (np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool), (1.0, 1.0), "spacing"),
    ],
)
def test_bad_arrays_raise_config_error(pred, truth, spacing, message) -> None:
    with pytest.raises(ConfigError, match=message):
        evaluate(pred, truth, spacing)


def test_bad_tolerance_and_connectivity_raise_medseg_errors() -> None:
    mask = _empty()
    with pytest.raises(MedsegError, match="tolerance"):
        evaluate(mask, mask, SPACING, tolerance_mm=-1)
    with pytest.raises(MedsegError, match="connectivity"):
        evaluate(mask, mask, SPACING, connectivity=8)
