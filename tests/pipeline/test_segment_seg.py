"""End to end through ``segment()``: a bright sphere in a synthetic oblique CT series,
written as DICOM-SEG and read back independently (highdicom) into patient space."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medseg.pipeline import SegmentOptions, segment
from tests.dicom.series_factory import WrittenSeries, write_series

SHAPE = (24, 60, 72)  # slices, rows, cols: non-square
SPACING = (2.0, 0.9, 0.8)  # slice, row, col (mm)
RADIUS_MM = 13.0
A, B = np.radians(20.0), np.radians(15.0)
ROW_DIR = (np.cos(A), np.sin(A), 0.0)  # oblique, orthonormal with COL_DIR
COL_DIR = (-np.sin(A) * np.cos(B), np.cos(A) * np.cos(B), np.sin(B))


def _grid_lps(series: WrittenSeries) -> np.ndarray:
    """LPS of every voxel centre, (slices, rows, cols, 3), from the factory's geometry."""
    k, j, i = np.indices(SHAPE, dtype=np.float64)
    steps = np.stack([i * SPACING[2], j * SPACING[1], k * SPACING[0]], axis=-1)
    return series.positions[0] + steps @ series.direction.T


def _write_sphere_series(folder: Path, **kwargs) -> tuple[WrittenSeries, np.ndarray]:
    """A sphere of 120 HU in 0 HU (symmetric about the abdomen window's 60 HU midpoint)."""
    k, j, i = (np.array(SHAPE) - 1) / 2.0
    centre_index = np.array([i + 0.3, j - 0.4, k + 0.25])  # off-grid on purpose
    origin = np.array([-30.0, -25.0, 60.0])
    direction = np.column_stack([ROW_DIR, COL_DIR, np.cross(ROW_DIR, COL_DIR)])
    centre = origin + (centre_index * [SPACING[2], SPACING[1], SPACING[0]]) @ direction.T
    # the truth is geometric: voxel centres within the radius of the sphere's LPS centre
    k, j, i = np.indices(SHAPE, dtype=np.float64)
    steps = np.stack([i * SPACING[2], j * SPACING[1], k * SPACING[0]], axis=-1)
    truth = np.linalg.norm(origin + steps @ direction.T - centre, axis=-1) <= RADIUS_MM
    series = write_series(
        folder,
        np.where(truth, 120.0, 0.0),
        spacing=SPACING,
        origin=origin,
        row_dir=ROW_DIR,
        col_dir=COL_DIR,
        **kwargs,
    )
    np.testing.assert_allclose(_grid_lps(series)[0, 0, 0], origin)
    return series, truth


def _seg_mask_on_source_grid(seg_path: Path, series: WrittenSeries) -> np.ndarray:
    """highdicom volume -> LPS of each voxel -> index on the factory's grid."""
    seg = hd.seg.segread(seg_path)
    seg_volume = seg.get_volume(segment_numbers=[1], combine_segments=False)
    array = seg_volume.array[..., 0]
    index = np.indices(array.shape).reshape(3, -1).T
    lps = index @ seg_volume.affine[:3, :3].T + seg_volume.affine[:3, 3]
    rel = (lps - series.positions[0]) @ series.direction  # (i, j, k) in mm
    ijk = rel / [SPACING[2], SPACING[1], SPACING[0]]
    rounded = np.rint(ijk).astype(int)
    assert np.abs(ijk - rounded).max() < 1e-3, "SEG voxels are off the source grid"
    out = np.zeros(SHAPE, dtype=array.dtype)
    values = array.reshape(-1)
    hit = values != 0
    i, j, k = rounded[hit].T
    out[k, j, i] = values[hit]
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _check_frames_reference_their_sources(seg_path: Path, series: WrittenSeries) -> int:
    """Every SEG frame sits exactly on its referenced source slice."""
    ds = pydicom.dcmread(seg_path)
    by_uid = {uid: k for k, uid in enumerate(series.sop_uids)}
    for frame in ds.PerFrameFunctionalGroupsSequence:
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        if "ReferencedFrameNumber" in source:  # multi-frame source: the frame number counts
            k = _multiframe_slice(series, int(source.ReferencedFrameNumber))
        else:
            k = by_uid[source.ReferencedSOPInstanceUID]
        np.testing.assert_allclose(position, series.positions[k], atol=1e-4)
    return len(ds.PerFrameFunctionalGroupsSequence)


def _multiframe_slice(series: WrittenSeries, frame_number: int) -> int:
    ds = pydicom.dcmread(series.paths[0], stop_before_pixels=True)
    item = ds.PerFrameFunctionalGroupsSequence[frame_number - 1]
    position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
    return int(np.argmin(np.linalg.norm(series.positions - position, axis=1)))


def test_sphere_in_oblique_series_round_trips_through_seg(
    tmp_path: Path, bright_model: Path
) -> None:
    series, truth = _write_sphere_series(tmp_path / "ct", order="shuffle")
    out = tmp_path / "seg.dcm"
    result = segment([tmp_path / "ct"], out, SegmentOptions(model=bright_model, threads=1))
    assert result.output == out and out.is_file()
    assert result.slices == SHAPE[0] and result.engine == "onnxruntime-cpu"
    mask = _seg_mask_on_source_grid(out, series).astype(bool)
    # the issue asks for >= 0.95; a one-voxel column shift still scores 0.954 here, so ask more
    assert _dice(mask, truth) >= 0.98
    assert _dice(np.roll(mask, 1, axis=2), truth) < 0.98
    frames = _check_frames_reference_their_sources(out, series)
    assert frames == int(truth.reshape(SHAPE[0], -1).any(axis=1).sum())  # empty frames omitted
    voxel_ml = np.prod(SPACING) / 1000.0
    assert result.volume_ml == pytest.approx(mask.sum() * voxel_ml)
    assert result.sop_instance_uid == pydicom.dcmread(out).SOPInstanceUID
    assert set(result.timings) >= {"load", "preprocess", "infer", "postprocess", "write"}


def test_multiframe_source_and_fractional_seg(tmp_path: Path, bright_model: Path) -> None:
    series, truth = _write_sphere_series(tmp_path / "ct", multiframe=True, order="descending")
    out = tmp_path / "frac.dcm"
    options = SegmentOptions(model=bright_model, seg_type="FRACTIONAL", fill_holes=True)
    segment([series.paths[0]], out, options)
    ds = pydicom.dcmread(out)
    assert ds.SegmentationType == "FRACTIONAL"
    probabilities = _seg_mask_on_source_grid(out, series)
    assert probabilities.max() <= 1.0 and 0.0 < probabilities[probabilities > 0].min() < 1.0
    assert _dice(probabilities > 0.5, truth) >= 0.95
    _check_frames_reference_their_sources(out, series)


def test_reused_model_segments_two_series_without_reloading(
    tmp_path: Path, bright_model: Path
) -> None:
    from medseg.pipeline import load_model

    options = SegmentOptions(model=bright_model)
    with load_model(options) as model:
        for name in ("a", "b"):
            _write_sphere_series(tmp_path / name, seed=1)
            result = segment([tmp_path / name], tmp_path / f"{name}.dcm", options, model=model)
            assert result.volume_ml > 0
        assert model.engine.run(np.zeros((1, 3, 352, 352), dtype=np.float32)).shape[0] == 1
