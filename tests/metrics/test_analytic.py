"""Metrics on shapes whose Dice, Hausdorff and surface distances follow from geometry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.spatial import cKDTree

from medseg.metrics import evaluate
from tests.metrics.shapes import ANISO, box, box_surface_points, sphere

VOXEL_DIAGONAL = float(np.linalg.norm(ANISO))  # 2.69 mm


def _lens_volume(radius: float, distance: float) -> float:
    """Volume shared by two balls of one radius whose centres are ``distance`` apart."""
    return np.pi * (4 * radius + distance) * (2 * radius - distance) ** 2 / 12


def _offset_sphere_assd(radius: float, distance: float) -> float:
    """Mean over one sphere of the distance to the other (area-uniform: cos theta uniform)."""
    value, _ = quad(
        lambda t: abs(np.sqrt(radius**2 + distance**2 - 2 * radius * distance * t) - radius),
        -1.0,
        1.0,
    )
    return value / 2.0


@pytest.mark.parametrize("axis", [0, 2])
def test_offset_spheres_match_geometry_with_anisotropic_spacing(axis: int) -> None:
    radius, distance = 14.0, 5.0
    shape = (20, 64, 64)
    centre = np.array([25.0, 22.0, 22.0])
    shifted = centre.copy()
    shifted[axis] += distance
    truth = sphere(shape, tuple(centre), radius)
    pred = sphere(shape, tuple(shifted), radius)

    result = evaluate(pred, truth, ANISO)

    ball = 4 / 3 * np.pi * radius**3
    assert result["dice"] == pytest.approx(_lens_volume(radius, distance) / ball, abs=0.02)
    assert result["volume_truth_ml"] == pytest.approx(ball / 1000, rel=0.03)
    assert abs(result["hd"] - distance) <= VOXEL_DIAGONAL
    assert abs(result["assd"] - _offset_sphere_assd(radius, distance)) <= VOXEL_DIAGONAL
    assert result["hd95"] <= result["hd"]


def test_concentric_spheres_distances_equal_radius_gap() -> None:
    shape = (24, 80, 80)
    centre = (30.0, 28.0, 28.0)
    inner, outer = 9.0, 15.0
    pred = sphere(shape, centre, inner)
    truth = sphere(shape, centre, outer)

    result = evaluate(pred, truth, ANISO)

    assert result["dice"] == pytest.approx(2 * inner**3 / (inner**3 + outer**3), abs=0.02)
    assert result["precision"] == 1.0
    assert abs(result["hd"] - (outer - inner)) <= VOXEL_DIAGONAL
    assert abs(result["assd"] - (outer - inner)) <= VOXEL_DIAGONAL
    assert result["nsd"] < 0.05  # 6 mm apart everywhere: nothing within 1 mm


@pytest.mark.parametrize("shift", [(0, 0, 3), (2, 0, 0), (1, 2, 3), (-2, 4, -1)])
def test_offset_boxes_exact_dice_hd_and_kdtree_surface_distances(shift) -> None:
    shape = (24, 40, 40)
    lo, size = (8, 12, 12), (7, 11, 9)
    truth = box(shape, lo, size)
    pred_lo = tuple(a + s for a, s in zip(lo, shift, strict=True))
    pred = box(shape, pred_lo, size)

    result = evaluate(pred, truth, ANISO)

    shared = np.prod([max(n - abs(s), 0) for n, s in zip(size, shift, strict=True)])
    assert result["dice"] == pytest.approx(shared / np.prod(size), abs=1e-12)
    assert result["iou"] == pytest.approx(shared / (2 * np.prod(size) - shared), abs=1e-12)
    # A translated box: the farthest surface point is a trailing corner, |shift| mm away.
    assert result["hd"] == pytest.approx(np.linalg.norm(np.multiply(shift, ANISO)), abs=1e-9)
    # Surface distances by brute force over surface points enumerated from the box alone.
    a, b = box_surface_points(pred_lo, size), box_surface_points(lo, size)
    a_to_b = cKDTree(b).query(a)[0]
    b_to_a = cKDTree(a).query(b)[0]
    pooled = np.concatenate([a_to_b, b_to_a])
    assert result["assd"] == pytest.approx(pooled.mean(), abs=1e-9)
    hd95 = max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    assert result["hd95"] == pytest.approx(hd95, abs=1e-9)
    assert result["nsd"] == pytest.approx(np.mean(pooled <= 1.0), abs=1e-12)


def test_hd95_is_max_of_directed_percentiles_not_pooled() -> None:
    # Prediction = truth box plus a far 8-voxel cube: 7% of the prediction's surface is far
    # from the truth (so its directed 95th percentile is large) but only 3.7% of the pooled
    # surface voxels are (so a pooled 95th percentile would call the case perfect).
    unit = (1.0, 1.0, 1.0)
    shape = (30, 40, 60)
    truth = box(shape, (5, 5, 5), (20, 30, 30))
    pred = truth | box(shape, (5, 5, 45), (8, 8, 8))
    result = evaluate(pred, truth, unit)

    truth_points = box_surface_points((5, 5, 5), (20, 30, 30), unit)
    pred_points = np.concatenate([truth_points, box_surface_points((5, 5, 45), (8, 8, 8), unit)])
    p_to_t = cKDTree(truth_points).query(pred_points)[0]
    t_to_p = cKDTree(pred_points).query(truth_points)[0]
    directed = max(np.percentile(p_to_t, 95), np.percentile(t_to_p, 95))
    pooled = np.percentile(np.concatenate([p_to_t, t_to_p]), 95)
    assert directed > pooled + 5.0
    assert result["hd95"] == pytest.approx(directed, abs=1e-9)
    assert result["lesion_fp"] == 1
