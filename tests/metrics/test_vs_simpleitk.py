"""Agreement with SimpleITK's filters on random blobs (independent implementations)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medseg.errors import MedsegError
from medseg.metrics import evaluate
from medseg.metrics.surface import surface_voxels
from tests.metrics.shapes import ANISO

VOXEL_DIAGONAL = float(np.linalg.norm(ANISO))


def _blobs(seed: int, shape=(28, 64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping random blob masks, zero-padded by one voxel on every side."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.standard_normal(shape), (1.2, 4, 4))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), (1.2, 4, 4))
    truth = base > 0.03
    pred = (base + 0.6 * noise) > 0.03
    return np.pad(pred, 1), np.pad(truth, 1)


def _image(mask: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(ANISO[::-1])
    return image


def _sitk_directed(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Distances from SimpleITK's contour of ``source`` to its contour of ``target``."""
    contour_source = sitk.BinaryContour(_image(source), fullyConnected=False)
    contour_target = sitk.BinaryContour(_image(target), fullyConnected=False)
    distance = sitk.SignedMaurerDistanceMap(
        contour_target, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    values = sitk.GetArrayFromImage(distance)[sitk.GetArrayFromImage(contour_source) > 0]
    return np.maximum(values.astype(np.float64), 0.0)  # contour voxels read -0.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_overlap_matches_label_overlap_measures(seed: int) -> None:
    pred, truth = _blobs(seed)
    result = evaluate(pred, truth, ANISO)
    measures = sitk.LabelOverlapMeasuresImageFilter()
    measures.Execute(_image(pred), _image(truth))  # source = pred, target = truth
    assert result["dice"] == pytest.approx(measures.GetDiceCoefficient(), abs=1e-6)
    assert result["iou"] == pytest.approx(measures.GetJaccardCoefficient(), abs=1e-6)
    # ITK: false negative error = |T - S| / |T|; false discovery rate = |S - T| / |S|
    assert result["sensitivity"] == pytest.approx(1 - measures.GetFalseNegativeError(), abs=1e-6)
    assert result["precision"] == pytest.approx(1 - measures.GetFalseDiscoveryRate(), abs=1e-6)
    similarity = (
        2
        * (result["volume_pred_ml"] - result["volume_truth_ml"])
        / (result["volume_pred_ml"] + result["volume_truth_ml"])
    )
    assert similarity == pytest.approx(measures.GetVolumeSimilarity(), abs=1e-6)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hausdorff_within_one_voxel_diagonal_of_hausdorff_filter(seed: int) -> None:
    pred, truth = _blobs(seed)
    result = evaluate(pred, truth, ANISO)
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(_image(pred), _image(truth))
    assert abs(result["hd"] - hausdorff.GetHausdorffDistance()) <= VOXEL_DIAGONAL


@pytest.mark.parametrize("seed", [1, 2])
def test_surface_distances_match_simpleitk_contours_and_maurer_map(seed: int) -> None:
    pred, truth = _blobs(seed)
    # Same surface definition: SimpleITK's face-connected contour of a zero-padded mask.
    contour = sitk.GetArrayFromImage(sitk.BinaryContour(_image(pred), fullyConnected=False))
    assert np.array_equal(contour > 0, surface_voxels(pred))
    result = evaluate(pred, truth, ANISO, tolerance_mm=2.0)
    a, b = _sitk_directed(pred, truth), _sitk_directed(truth, pred)
    pooled = np.concatenate([a, b])
    assert result["hd"] == pytest.approx(pooled.max(), abs=1e-4)
    expected_hd95 = max(np.percentile(a, 95), np.percentile(b, 95))
    assert result["hd95"] == pytest.approx(expected_hd95, abs=1e-4)
    assert result["assd"] == pytest.approx(pooled.mean(), abs=1e-4)
    assert result["nsd"] == pytest.approx(np.mean(pooled <= 2.0), abs=1e-6)


def test_kdtree_and_distance_transform_give_the_same_distances() -> None:
    pred, truth = _blobs(4, shape=(20, 40, 48))
    by_tree = evaluate(pred, truth, ANISO, distance_method="kdtree")
    by_edt = evaluate(pred, truth, ANISO, distance_method="edt")
    for metric in ("hd", "hd95", "assd", "nsd"):
        assert by_tree[metric] == pytest.approx(by_edt[metric], abs=1e-9), metric
    with pytest.raises(MedsegError, match="distance method"):
        evaluate(pred, truth, ANISO, distance_method="brute")
