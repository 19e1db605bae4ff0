"""Per-lesion numbers on in-memory volumes whose answers are known exactly or analytically."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.dicom import SourceFrame, Volume
from medseg.errors import OutputError
from medseg.results.measurements import measure_lesion, measure_segments
from tests.results.lesions import SEMI_AXES, SHAPE, SPACING, ellipsoid

DIAGONAL = float(np.hypot(SPACING[1], SPACING[2]))  # one pixel's diagonal, mm


def _volume(voxels: np.ndarray, modality: str = "CT") -> Volume:
    n = voxels.shape[0]
    return Volume(
        voxels=voxels.astype(np.float32),
        spacing=SPACING,
        origin=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        positions=np.array([(0.0, 0.0, k * SPACING[0]) for k in range(n)]),
        frames=tuple(SourceFrame("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{k}") for k in range(n)),
        datasets=(),
        modality=modality,
        series_instance_uid="1.2.3",
        study_instance_uid="1.2",
    )


def _ends_mm(axis) -> np.ndarray:
    """An axis' ends (column, row image coordinates) as (x, y) mm."""
    return np.asarray(axis.ends) * np.array([SPACING[2], SPACING[1]])


def test_box_long_axis_is_its_diagonal_and_short_axis_the_perpendicular_chord() -> None:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[3:5, 10:22, 30:50] = True  # 12 rows x 20 columns on two slices
    width, height = 20 * SPACING[2], 12 * SPACING[1]
    diagonal = float(np.hypot(width, height))
    found = measure_lesion(mask, _volume(np.zeros(SHAPE)), 1)
    assert found.voxels == 480
    assert found.volume_ml == pytest.approx(480 * np.prod(SPACING) / 1000)
    assert found.long_axis.length_mm == pytest.approx(diagonal)  # exact: corner to corner
    assert found.long_axis.slice_index == 3  # the first of equally long slices
    assert sorted(found.long_axis.ends) == [(30.0, 10.0), (50.0, 22.0)]
    # the longest chord across a rectangle at right angles to its diagonal: H * D / W
    assert found.short_axis.length_mm == pytest.approx(height * diagonal / width, abs=0.5)


def test_tilted_ellipse_axes_match_its_semi_axes_within_a_pixel() -> None:
    mask = ellipsoid()
    found = measure_lesion(mask, _volume(np.zeros(SHAPE)), 1)
    assert found.long_axis.slice_index == 4  # the centre slice: the widest section
    assert found.long_axis.length_mm == pytest.approx(2 * SEMI_AXES[0], abs=DIAGONAL)
    assert found.short_axis.length_mm == pytest.approx(2 * SEMI_AXES[1], abs=DIAGONAL)
    long, short = _ends_mm(found.long_axis), _ends_mm(found.short_axis)
    u, v = np.diff(long, axis=0)[0], np.diff(short, axis=0)[0]
    assert abs(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v)) < 1e-9  # at right angles
    assert np.degrees(np.arctan2(abs(u[1]), abs(u[0]))) == pytest.approx(30.0, abs=3.0)


def test_two_islands_on_one_slice_are_never_spanned_by_one_diameter() -> None:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2, 5:10, 5:10] = True
    mask[2, 50:55, 70:75] = True  # far away on the same slice
    found = measure_lesion(mask, _volume(np.zeros(SHAPE)), 1)
    assert found.long_axis.length_mm == pytest.approx(np.hypot(5 * 0.7, 5 * 0.9))


def test_hu_statistics_for_ct_only() -> None:
    voxels = np.random.default_rng(0).normal(30.0, 12.0, SHAPE)
    mask = ellipsoid()
    ct = measure_lesion(mask, _volume(voxels), 1).intensity
    inside = voxels.astype(np.float32)[mask].astype(np.float64)
    assert (ct.mean, ct.std, ct.maximum) == pytest.approx(
        (inside.mean(), inside.std(), inside.max())
    )
    assert measure_lesion(mask, _volume(voxels, "MR"), 1).intensity is None


def test_empty_lesion_has_a_volume_of_zero_and_no_axes() -> None:
    found = measure_segments(np.zeros((1, *SHAPE), dtype=bool), _volume(np.zeros(SHAPE)))
    assert len(found) == 1
    assert (found[0].voxels, found[0].volume_ml, found[0].long_axis) == (0, 0.0, None)
    assert found[0].short_axis is None and found[0].intensity is None


def test_single_pixel_lesion_measures_one_pixel() -> None:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[1, 7, 9] = True
    found = measure_lesion(mask, _volume(np.zeros(SHAPE)), 1)
    assert found.long_axis.length_mm == pytest.approx(DIAGONAL)
    assert 0 < found.short_axis.length_mm <= DIAGONAL


def test_mask_of_another_shape_is_refused() -> None:
    with pytest.raises(OutputError, match="does not match the volume"):
        measure_lesion(np.zeros((2, 3, 4), dtype=bool), _volume(np.zeros(SHAPE)), 1)


def test_large_disc_is_measured_in_chunks_of_lines_to_the_same_answer() -> None:
    shape = (1, 260, 200)
    r, c = np.indices(shape[1:], dtype=np.float64)
    radius = 80.0  # mm: about 900 sample lines along the long axis, four chunks
    disc = ((r - 130) * SPACING[1]) ** 2 + ((c - 100) * SPACING[2]) ** 2 <= radius**2
    found = measure_lesion(disc[None], _volume(np.zeros(shape)), 1)
    assert found.long_axis.length_mm == pytest.approx(2 * radius, abs=DIAGONAL)
    assert found.short_axis.length_mm == pytest.approx(2 * radius, abs=DIAGONAL)
