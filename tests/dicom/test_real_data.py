"""The loader on real DICOM: the shared test-suite files and pydicom's bundled files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medseg.dicom import load_series, scan_series
from medseg.errors import DicomInputError

TRANSFER_SYNTAX_FILES = [f"{i}.dcm" for i in range(1, 10)]


def test_transfer_syntaxes_all_nine_decode_to_identical_voxels(shared_dir: Path) -> None:
    folder = shared_dir / "data" / "transfer_syntaxes"
    syntaxes = set()
    volumes = []
    for name in TRANSFER_SYNTAX_FILES:
        loaded = load_series(folder / name)
        assert loaded.skipped == ()
        volumes.append(loaded.volume)
        syntaxes.add(
            pydicom.dcmread(folder / name, stop_before_pixels=True).file_meta.TransferSyntaxUID
        )
    # two JPEG lossless and two JPEG-LS lossless encodings share a UID: 7 distinct syntaxes
    assert len(syntaxes) == 7
    reference = volumes[0]
    assert reference.shape == (1, 384, 384)
    assert reference.voxels.std() > 0
    for volume in volumes[1:]:
        np.testing.assert_array_equal(volume.voxels, reference.voxels)
        np.testing.assert_allclose(volume.positions, reference.positions)
        assert volume.spacing == reference.spacing


def test_dcmqi_single_and_multiframe_load_to_identical_voxels_and_geometry(
    shared_dir: Path,
) -> None:
    base = shared_dir / "data" / "dcmqi" / "23x38x3"
    classic = load_series(base / "image").volume
    enhanced = load_series(base / "multiframe" / "mf.dcm").volume
    assert classic.shape == (3, 38, 23)
    np.testing.assert_array_equal(classic.voxels, enhanced.voxels)
    np.testing.assert_allclose(classic.positions, enhanced.positions)
    np.testing.assert_allclose(classic.direction, enhanced.direction)
    assert classic.spacing == pytest.approx(enhanced.spacing)
    assert classic.spacing == pytest.approx((2.5, 0.7, 0.7))
    assert [f.frame_number for f in enhanced.frames] == [1, 2, 3]
    assert len(enhanced.datasets) == 1 and len(classic.datasets) == 3
    assert all(f.frame_number is None for f in classic.frames)
    # Each classic slice references the file it came from.
    for frame, ds in zip(classic.frames, classic.datasets, strict=True):
        assert frame.sop_instance_uid == ds.SOPInstanceUID
        assert "PixelData" not in ds


def test_dcmqi_ct_3slice_sorted_by_position_in_hounsfield(shared_dir: Path) -> None:
    folder = shared_dir / "data" / "dcmqi" / "ct-3slice"
    volume = load_series(folder).volume
    headers = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    assert z == sorted(z, reverse=True)  # files run head to feet: the loader must reverse
    assert volume.positions[:, 2].tolist() == pytest.approx(sorted(z))
    assert volume.spacing == pytest.approx((1.0, 0.810547, 0.810547))
    by_uid = {h.SOPInstanceUID: h for h in headers}
    for k, frame in enumerate(volume.frames):
        header = by_uid[frame.sop_instance_uid]
        assert float(header.ImagePositionPatient[2]) == pytest.approx(volume.positions[k, 2])
        expected = header.pixel_array * float(header.RescaleSlope) + float(header.RescaleIntercept)
        np.testing.assert_array_equal(volume.voxels[k], expected.astype(np.float32))
    assert volume.voxels.min() < -900  # air in HU
    assert volume.modality == "CT"


def test_pydicom_mr_small_in_every_bundled_syntax_decodes_identically() -> None:
    names = [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ]
    volumes = [load_series(get_testdata_file(n)).volume for n in names]
    assert volumes[0].shape == (1, 64, 64) and volumes[0].modality == "MR"
    for volume in volumes[1:]:
        np.testing.assert_array_equal(volume.voxels, volumes[0].voxels)


def test_pydicom_ct_small_applies_rescale() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    volume = load_series(path).volume
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(volume.voxels[0], expected.astype(np.float32))
    assert volume.spacing[1:] == pytest.approx((0.661468, 0.661468))


def test_truncated_file_is_skipped_and_reported(tmp_path: Path) -> None:
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "good")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "bad")
    (tmp_path / "notes.txt").write_text("not dicom")
    loaded = load_series(tmp_path)
    assert loaded.volume.shape == (1, 64, 64)
    reasons = {s.path.name: s.reason for s in loaded.skipped}
    assert set(reasons) == {"bad", "notes.txt"}
    assert "decode" in reasons["bad"]
    assert "not a DICOM file" in reasons["notes.txt"]


def test_only_truncated_file_is_an_error(tmp_path: Path) -> None:
    shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "bad.dcm")
    with pytest.raises(DicomInputError, match="could be decoded"):
        load_series(tmp_path)


def test_scan_series_lists_images_before_non_images(shared_dir: Path) -> None:
    summaries = scan_series(shared_dir / "data" / "dcmqi")
    kinds = [s.is_image for s in summaries]
    assert kinds == sorted(kinds, reverse=True)
    by_modality = {s.modality for s in summaries if not s.is_image}
    assert by_modality == {"SEG"}
    ct = next(s for s in summaries if s.description == "Image 23x38x3")
    assert ct.instances == 3 and ct.first_path.name == "IMG0001.dcm"
    assert "3 instances" in ct.describe()


def test_lossy_jpeg2000_ct_decodes() -> None:
    path = get_testdata_file("693_J2KI.dcm")
    ds = pydicom.dcmread(path)
    volume = load_series(path).volume
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    np.testing.assert_array_equal(volume.voxels[0], expected.astype(np.float32))
    assert volume.modality == "CT"


def test_jpeg_extended_pixels_decode_through_the_loader(tmp_path: Path) -> None:
    """pydicom's JPEG (process 2/4) sample is NM; given CT geometry it must decode the same."""
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"
    expected = ds.pixel_array.astype(np.float32)
    ds.Modality = "CT"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.save_as(tmp_path / "jpeg.dcm")
    volume = load_series(tmp_path / "jpeg.dcm").volume
    assert expected.std() > 0
    np.testing.assert_array_equal(volume.voxels[0], expected)
