"""The loader on series generated with pydicom, each with one awkward property."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from medseg.dicom import load_series
from tests.dicom.series_factory import WrittenSeries, write_series


def _values(shape: tuple[int, int, int], seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 2000, size=shape).astype(np.float64)


def _assert_loaded(folder: Path, written: WrittenSeries) -> None:
    loaded = load_series(folder)
    volume = loaded.volume
    assert loaded.skipped == ()
    np.testing.assert_array_equal(volume.voxels, written.voxels)
    np.testing.assert_allclose(volume.positions, written.positions, atol=1e-6)
    np.testing.assert_allclose(volume.direction, written.direction, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, written.spacing, rtol=1e-6)
    np.testing.assert_allclose(volume.origin, written.positions[0], atol=1e-6)
    assert [f.sop_instance_uid for f in volume.frames] == list(written.sop_uids)
    assert volume.series_instance_uid == written.series_uid
    assert volume.study_instance_uid == written.study_uid


CASES = {
    "shuffled_files": dict(order="shuffle"),
    "descending_instances": dict(order="descending"),
    "oblique": dict(row_dir=(0.8, 0.6, 0.0), col_dir=(-0.48, 0.64, -0.6), order="shuffle"),
    "sagittal_descending": dict(row_dir=(0, 1, 0), col_dir=(0, 0, -1), order="descending"),
    "per_slice_rescale": dict(slopes=[1.0, 2.0, 0.5, 1.0], intercept=-1024.0),
    "monochrome1": dict(monochrome1=True),
    "rle": dict(transfer_syntax=RLELossless),
    "jpeg_ls": dict(transfer_syntax=JPEGLSLossless),
    "deflate": dict(transfer_syntax=DeflatedExplicitVRLittleEndian),
    "enhanced_ct_shuffled_frames": dict(multiframe=True, order="shuffle"),
    "enhanced_ct_rle_oblique": dict(
        multiframe=True, transfer_syntax=RLELossless, row_dir=(0.6, 0.8, 0), col_dir=(0, 0, 1)
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_synthetic_series_loads_to_written_voxels_and_geometry(tmp_path: Path, case: str) -> None:
    # 4 non-square slices: 21 rows x 34 cols
    written = write_series(tmp_path, _values((4, 21, 34)), seed=7, **CASES[case])
    _assert_loaded(tmp_path, written)


def test_jpeg2000_series_loads(tmp_path: Path) -> None:
    # OpenJPEG refuses very small images: use 64x96
    written = write_series(tmp_path, _values((3, 64, 96)), transfer_syntax=JPEG2000Lossless)
    _assert_loaded(tmp_path, written)


def test_monochrome1_window_is_mirrored_onto_loaded_values(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((2, 8, 8)), monochrome1=True, window=(40.0, 400.0))
    volume = load_series(tmp_path).volume
    np.testing.assert_array_equal(volume.voxels, written.voxels)
    assert volume.window == pytest.approx((40.0, 400.0))


def test_single_slice_takes_spacing_from_slice_thickness(tmp_path: Path) -> None:
    write_series(tmp_path, _values((1, 10, 12)), spacing=(3.0, 0.5, 0.6))
    volume = load_series(tmp_path).volume
    assert volume.shape == (1, 10, 12)
    assert volume.spacing == pytest.approx((3.0, 0.5, 0.6))


def test_series_uid_chooses_among_candidates(tmp_path: Path) -> None:
    first = write_series(tmp_path / "a", _values((3, 6, 7), seed=1))
    second = write_series(tmp_path / "b", _values((2, 6, 7), seed=2), modality="MR")
    volume = load_series([tmp_path], series_uid=second.series_uid).volume
    assert volume.modality == "MR" and volume.shape == (2, 6, 7)
    np.testing.assert_array_equal(volume.voxels, second.voxels)
    volume = load_series([tmp_path / "a", tmp_path / "b"], series_uid=first.series_uid).volume
    np.testing.assert_array_equal(volume.voxels, first.voxels)


def test_index_to_lps_matches_positions_on_oblique_series(tmp_path: Path) -> None:
    written = write_series(
        tmp_path, _values((3, 5, 6)), row_dir=(0.8, 0.6, 0), col_dir=(0, 0, -1), order="shuffle"
    )
    volume = load_series(tmp_path).volume
    corners = np.array([[0, 0, k] for k in range(3)], dtype=float)
    np.testing.assert_allclose(volume.index_to_lps(corners), written.positions, atol=1e-6)
    np.testing.assert_allclose(volume.lps_to_index(written.positions), corners, atol=1e-6)


def test_raw_dataset_without_preamble_or_file_meta_is_read(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((3, 5, 6)), order="shuffle")
    ds = pydicom.dcmread(written.paths[1])
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    ds.save_as(written.paths[1], implicit_vr=True, little_endian=True, enforce_file_format=False)
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(written.paths[1])  # plain pydicom refuses it without force
    _assert_loaded(tmp_path, written)


def test_localizer_in_the_series_is_skipped_not_fatal(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((3, 5, 6)))
    scout = pydicom.dcmread(written.paths[0])
    scout.SOPInstanceUID = pydicom.uid.generate_uid()
    scout.file_meta.MediaStorageSOPInstanceUID = scout.SOPInstanceUID
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.save_as(tmp_path / "scout.dcm")
    loaded = load_series(tmp_path)
    np.testing.assert_array_equal(loaded.volume.voxels, written.voxels)
    assert [(s.path.name, "localizer" in s.reason) for s in loaded.skipped] == [("scout.dcm", True)]
