"""Every input the loader refuses gives a DicomInputError with a reason a user can act on."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.dicom import load_series
from medseg.errors import DicomInputError, MedsegError
from tests.dicom.series_factory import edit_file, write_series


def _values(shape: tuple[int, int, int]) -> np.ndarray:
    return np.random.default_rng(3).integers(-500, 500, size=shape).astype(np.float64)


def test_missing_input_path(tmp_path: Path) -> None:
    with pytest.raises(DicomInputError, match="input not found"):
        load_series(tmp_path / "nope")


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.bin").write_bytes(b"\x00" * 300)
    with pytest.raises(DicomInputError, match=r"no DICOM files found .*2 file\(s\)"):
        load_series(tmp_path)


def test_non_dicom_files_are_skipped_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Text or image files beside a series: skipped and listed, but no pydicom warning text
    on stderr (the CLI promises one line). The README must not be parsed as a raw dataset."""
    written = write_series(tmp_path / "ct", _values((2, 6, 7)))
    (tmp_path / "ct" / "README.txt").write_text("not DICOM\n")  # pydicom warned on this one
    (tmp_path / "ct" / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_series(tmp_path)
    np.testing.assert_array_equal(loaded.volume.voxels, written.voxels)
    assert sorted((s.path.name, s.reason) for s in loaded.skipped) == [
        ("README.txt", "not a DICOM file"),
        ("thumb.png", "not a DICOM file"),
    ]
    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []


def test_empty_input_list() -> None:
    with pytest.raises(DicomInputError, match="no input"):
        load_series([])


def test_only_segmentation_is_not_an_image_series(shared_dir: Path) -> None:
    with pytest.raises(DicomInputError, match=r"no CT or MR image series found.*SEG"):
        load_series(shared_dir / "data" / "dcmqi" / "liver.dcm")


def test_non_ct_mr_image_is_not_a_candidate() -> None:
    from pydicom.data import get_testdata_file

    with pytest.raises(DicomInputError, match=r"no CT or MR image series found.*OT"):
        load_series(get_testdata_file("image_dfl.dcm"))


def test_several_candidates_are_listed(tmp_path: Path) -> None:
    a = write_series(tmp_path / "a", _values((2, 4, 4)))
    b = write_series(tmp_path / "b", _values((3, 4, 4)), modality="MR")
    with pytest.raises(DicomInputError) as info:
        load_series(tmp_path)
    message = str(info.value)
    assert "2 candidate image series" in message and "--series" in message
    assert a.series_uid in message and b.series_uid in message
    assert "2 instances" in message and "3 instances" in message and "MR" in message
    assert "\n" not in message


def test_unknown_series_uid(tmp_path: Path) -> None:
    write_series(tmp_path, _values((2, 4, 4)))
    with pytest.raises(DicomInputError, match=r"series 1\.2\.3 not found; available"):
        load_series(tmp_path, series_uid="1.2.3")


def test_series_uid_of_a_non_image_series(shared_dir: Path) -> None:
    seg = pydicom.dcmread(shared_dir / "data" / "dcmqi" / "liver.dcm", stop_before_pixels=True)
    with pytest.raises(DicomInputError, match="not a CT or MR image series"):
        load_series(shared_dir / "data" / "dcmqi", series_uid=seg.SeriesInstanceUID)


def test_mixed_orientations(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((3, 4, 4)))
    edit_file(written.paths[1], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(DicomInputError, match="mixed orientations"):
        load_series(tmp_path)


def test_duplicate_positions(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((3, 4, 4)))
    first = pydicom.dcmread(written.paths[0])
    edit_file(written.paths[2], ImagePositionPatient=list(first.ImagePositionPatient))
    with pytest.raises(DicomInputError, match="duplicate slice position"):
        load_series(tmp_path)


def test_same_file_twice_in_two_folders_is_a_duplicate(tmp_path: Path) -> None:
    written = write_series(tmp_path / "a", _values((2, 4, 4)))
    (tmp_path / "b").mkdir()
    shutil.copy(written.paths[0], tmp_path / "b" / "copy.dcm")
    with pytest.raises(DicomInputError, match="duplicate slice position"):
        load_series(tmp_path)


def test_inconsistent_matrix(tmp_path: Path) -> None:
    uids = dict(
        series_uid="1.2.826.0.1.3680043.9.1", frame_of_reference_uid="1.2.826.0.1.3680043.9.2"
    )
    write_series(tmp_path, _values((2, 4, 4)), **uids)
    other = write_series(tmp_path / "x", _values((1, 4, 5)), **uids)
    edit_file(other.paths[0], ImagePositionPatient=[-120.0, -100.0, 45.0])
    with pytest.raises(DicomInputError, match=r"inconsistent image size.*4x4.*4x5"):
        load_series(tmp_path)


def test_inconsistent_frame_of_reference(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((3, 4, 4)))
    edit_file(written.paths[1], FrameOfReferenceUID="1.2.826.0.1.3680043.9.3")
    with pytest.raises(DicomInputError, match="inconsistent FrameOfReferenceUID"):
        load_series(tmp_path)


def test_inconsistent_pixel_spacing(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((3, 4, 4)))
    edit_file(written.paths[1], PixelSpacing=[0.9, 0.7])
    with pytest.raises(DicomInputError, match="inconsistent pixel spacing"):
        load_series(tmp_path)


def test_missing_pixel_data(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((3, 4, 4)))
    edit_file(written.paths[1], PixelData=None)
    with pytest.raises(DicomInputError, match="no pixel data"):
        load_series(tmp_path)


def test_missing_slice_is_non_uniform_spacing(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((5, 4, 4)), spacing=(2.0, 1.0, 1.0))
    written.paths[2].unlink()
    with pytest.raises(DicomInputError, match=r"non-uniform slice spacing: gaps range from 2 to 4"):
        load_series(tmp_path)


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((3, 4, 4)))
    ds = pydicom.dcmread(written.paths[2])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    edit_file(written.paths[2], ImagePositionPatient=[x, y + 3.0, z])
    with pytest.raises(DicomInputError, match="sideways"):
        load_series(tmp_path)


def test_missing_image_position(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((2, 4, 4)))
    edit_file(written.paths[0], ImagePositionPatient=None)
    with pytest.raises(DicomInputError, match="no ImagePositionPatient"):
        load_series(tmp_path)


def test_enhanced_without_plane_position(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((3, 4, 4)), multiframe=True)
    ds = pydicom.dcmread(written.paths[0])
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    ds.save_as(written.paths[0])
    with pytest.raises(DicomInputError, match="frame 2: no PlanePositionSequence"):
        load_series(tmp_path)


def test_errors_are_medseg_errors_with_exit_code() -> None:
    assert issubclass(DicomInputError, MedsegError)
    assert DicomInputError.exit_code != 0


def test_dicomdir_is_ignored(tmp_path: Path) -> None:
    written = write_series(tmp_path, _values((2, 4, 4)))
    (tmp_path / "DICOMDIR").write_bytes(b"garbage that is never parsed")
    loaded = load_series(tmp_path)
    assert loaded.skipped == ()
    np.testing.assert_array_equal(loaded.volume.voxels, written.voxels)


def test_ct_headers_without_pixel_module_say_so(tmp_path: Path) -> None:
    """CT instances with no Rows/Columns (a header-only export) are not an image series, and
    the message says why rather than the puzzling 'no CT ... (found only: CT)'."""
    written = write_series(tmp_path / "ct", _values((2, 6, 7)))
    for path in written.paths:
        ds = pydicom.dcmread(path)
        for keyword in ("Rows", "Columns", "PixelData"):
            delattr(ds, keyword)
        ds.save_as(path)
    with pytest.raises(DicomInputError, match="CT without image pixel data: no Rows/Columns"):
        load_series(tmp_path)
    with pytest.raises(DicomInputError, match=r"not a CT or MR image series .*without image"):
        load_series(tmp_path, series_uid=written.series_uid)


def _truncated_copy(source: Path, target: Path, before: bytes) -> None:
    """``source`` cut just before the (explicit VR little endian) element ``before``."""
    raw = source.read_bytes()
    cut = raw.find(before)
    assert cut > 132, f"{before!r} not found in {source}"
    target.write_bytes(raw[:cut])


def test_truncated_headers_are_listed_in_skipped(tmp_path: Path) -> None:
    """pydicom reads a file cut short without complaint: one that stops before its
    SeriesInstanceUID belongs to no series, one that stops before Rows is no slice. Both are
    read and unusable, so both must be reported, not dropped silently."""
    written = write_series(tmp_path / "ct", _values((3, 6, 7)))
    _truncated_copy(written.paths[0], tmp_path / "cut_early", b"\x20\x00\x0e\x00UI")
    _truncated_copy(written.paths[1], tmp_path / "cut_late", b"\x28\x00\x10\x00US")
    early = pydicom.dcmread(tmp_path / "cut_early")
    late = pydicom.dcmread(tmp_path / "cut_late")
    assert "SeriesInstanceUID" not in early and early.Modality == "CT"
    assert late.SeriesInstanceUID == written.series_uid and "Rows" not in late

    loaded = load_series(tmp_path)
    np.testing.assert_array_equal(loaded.volume.voxels, written.voxels)
    reasons = {s.path.name: s.reason for s in loaded.skipped}
    assert set(reasons) == {"cut_early", "cut_late"}
    assert "no SeriesInstanceUID" in reasons["cut_early"]
    assert "no Rows/Columns" in reasons["cut_late"]
    # the same with the series named explicitly
    chosen = load_series(tmp_path, series_uid=written.series_uid)
    assert {s.path.name for s in chosen.skipped} == {"cut_early", "cut_late"}


def test_only_a_header_cut_before_its_series_uid_is_an_error(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct", _values((1, 6, 7)))
    _truncated_copy(written.paths[0], tmp_path / "cut.dcm", b"\x20\x00\x0e\x00UI")
    written.paths[0].unlink()
    with pytest.raises(DicomInputError, match=r"no usable DICOM .*cut.dcm: .*SeriesInstanceUID"):
        load_series(tmp_path)


def test_other_modality_in_the_chosen_series_is_listed(tmp_path: Path) -> None:
    """An instance that shares the series UID but is no CT/MR image is left out, with why."""
    written = write_series(tmp_path / "ct", _values((2, 6, 7)))
    ds = pydicom.dcmread(written.paths[0])
    ds.Modality = "OT"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "ct" / "other.dcm")
    loaded = load_series(tmp_path)
    np.testing.assert_array_equal(loaded.volume.voxels, written.voxels)
    assert [(s.path.name, s.reason) for s in loaded.skipped] == [
        ("other.dcm", "not a CT or MR image: modality OT")
    ]


def test_a_file_with_an_unknown_vr_is_skipped_not_a_traceback(tmp_path: Path) -> None:
    """Found by benchmarks/fuzz_dicom.py: pydicom converts elements lazily, so a VR it does
    not know raised NotImplementedError in the middle of loading, outside every check."""
    written = write_series(tmp_path / "ct", _values((3, 4, 4)))
    data = written.paths[1].read_bytes()
    element = b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) File Meta Information Group Length
    assert element in data
    written.paths[1].write_bytes(data.replace(element, b"\x02\x00\x00\x00U#\x04\x00", 1))
    loaded = load_series(tmp_path / "ct")
    assert loaded.volume.shape[0] == 2
    (skipped,) = loaded.skipped
    assert skipped.path == written.paths[1] and "unreadable DICOM header" in skipped.reason
