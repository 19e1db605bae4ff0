"""Anonymised sources: absent type 2 attributes are supplied empty, absent UIDs refused."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.dicom import load_series
from medseg.errors import DicomInputError
from medseg.modelcard import ModelCard
from medseg.seg import TYPE2_PATIENT_STUDY, check_seg_source, write_seg
from tests.dicom.series_factory import sphere, write_series
from tests.seg.readback import (
    assert_frames_on_their_sources,
    dcmqi_mask_on_volume,
    highdicom_mask_on_volume,
)

CARD = ModelCard(name="anon-test", version="0.1")
SHAPE, SPACING = (9, 26, 31), (2.5, 0.9, 0.8)


def _blank(ds: pydicom.Dataset, keyword: str, empty: bool) -> None:
    if keyword not in ds:
        return
    if empty:
        ds[keyword].value = ""
    else:
        delattr(ds, keyword)


def _anonymise(paths: tuple[Path, ...], *, empty: bool) -> None:
    """What anonymisers do to every type 2 patient/study attribute and the thickness:
    delete it, or (PS3.15 action "Z") keep it with a zero-length value."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword in (*TYPE2_PATIENT_STUDY, "SliceThickness"):
            _blank(ds, keyword, empty)
        for group in ds.get("SharedFunctionalGroupsSequence", []):
            for measures in group.get("PixelMeasuresSequence", []):
                _blank(measures, "SliceThickness", empty)
        ds.save_as(path)


def _sphere_mask() -> np.ndarray:
    return sphere(SHAPE, SPACING, center_mm=(10.0, 11.0, 12.0), radius_mm=7.0)


@pytest.mark.parametrize(
    ("multiframe", "empty"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["single-frame-deleted", "enhanced-deleted", "single-frame-emptied", "enhanced-emptied"],
)
def test_anonymised_series_writes_a_readable_seg(
    tmp_path: Path, multiframe: bool, empty: bool
) -> None:
    mask = _sphere_mask()
    written = write_series(
        tmp_path / "ct",
        np.where(mask, 150.0, 10.0),
        spacing=SPACING,
        row_dir=(0.8, 0.6, 0.0),
        col_dir=(0.0, 0.0, -1.0),
        order="shuffle",
        multiframe=multiframe,
    )
    _anonymise(written.paths, empty=empty)
    volume = load_series(tmp_path / "ct").volume
    present = {k in ds for ds in volume.datasets for k in TYPE2_PATIENT_STUDY}
    assert present == {empty}
    before = [copy.deepcopy(ds) for ds in volume.datasets]

    path = tmp_path / "anon.seg.dcm"
    check_seg_source(volume, CARD)
    write_seg(volume, mask, CARD, path)

    # the Volume's own headers are untouched: nothing was added to them
    assert len(volume.datasets) == len(before)
    for ds, original in zip(volume.datasets, before, strict=True):
        assert ds == original
        assert ("PatientSex" in ds) == empty and ("StudyDate" in ds) == empty
    # the SEG carries the type 2 attributes, empty, and the derived slice thickness
    seg = pydicom.dcmread(path)
    for keyword in TYPE2_PATIENT_STUDY:
        assert keyword in seg, keyword
        assert seg[keyword].value in (None, "", b""), keyword
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(SPACING[0])
    assert seg.StudyInstanceUID == written.study_uid
    # geometry, by two independent readers
    back = highdicom_mask_on_volume(path, volume)
    np.testing.assert_array_equal(back.astype(bool), mask)
    assert_frames_on_their_sources(path, volume)
    dcmqi_back = dcmqi_mask_on_volume(path, volume, tmp_path / "dcmqi")
    np.testing.assert_array_equal(dcmqi_back.astype(bool), mask)
    meta = json.loads((tmp_path / "dcmqi" / "seg-meta.json").read_text())
    assert meta["segmentAttributes"][0][0]["SegmentLabel"] == CARD.segments[0].label


def test_present_slice_thickness_is_kept(tmp_path: Path) -> None:
    """Only an absent thickness is derived: a stated one (here != spacing) is copied."""
    mask = _sphere_mask()
    written = write_series(tmp_path / "ct", np.where(mask, 150.0, 10.0), spacing=SPACING)
    for path in written.paths:
        ds = pydicom.dcmread(path)
        ds.SliceThickness = "1.25"
        del ds.PatientSex
        ds.save_as(path)
    volume = load_series(tmp_path / "ct").volume
    seg = write_seg(volume, mask, CARD, tmp_path / "s.dcm")
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(1.25)


def test_series_without_study_uid_fails_clearly(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct", np.zeros((3, 8, 10)))
    for path in written.paths:
        ds = pydicom.dcmread(path)
        del ds.StudyInstanceUID
        ds.save_as(path)
    volume = load_series(tmp_path / "ct").volume
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DicomInputError, match="no StudyInstanceUID") as caught:
        check_seg_source(volume, CARD)
    assert "\n" not in str(caught.value)
    with pytest.raises(DicomInputError, match="no StudyInstanceUID"):
        write_seg(volume, np.ones((1, *volume.shape), dtype=bool), CARD, out / "s.dcm")
    assert list(out.iterdir()) == []


def test_source_without_sop_instance_uid_fails_clearly(tmp_path: Path) -> None:
    """A header that lost its SOPInstanceUID cannot be referenced by a SEG frame."""
    written = write_series(tmp_path / "ct", np.zeros((3, 8, 10)))
    volume = load_series(written.paths).volume
    headers = [copy.deepcopy(ds) for ds in volume.datasets]
    del headers[1].SOPInstanceUID
    broken = dataclasses.replace(volume, datasets=tuple(headers))
    with pytest.raises(DicomInputError, match="no SOPInstanceUID"):
        check_seg_source(broken, CARD)


def test_loader_restores_sop_class_from_file_meta(tmp_path: Path) -> None:
    """A dataset without SOPClassUID still names it in its file meta (PS3.10)."""
    mask = _sphere_mask()
    written = write_series(tmp_path / "ct", np.where(mask, 150.0, 10.0), spacing=SPACING)
    for path in written.paths:
        ds = pydicom.dcmread(path)
        del ds.SOPClassUID
        ds.save_as(path)
    volume = load_series(tmp_path / "ct").volume
    assert {f.sop_class_uid for f in volume.frames} == {pydicom.uid.CTImageStorage}
    path = tmp_path / "s.dcm"
    write_seg(volume, mask, CARD, path)
    np.testing.assert_array_equal(highdicom_mask_on_volume(path, volume).astype(bool), mask)


def test_enhanced_source_with_per_frame_only_measures(tmp_path: Path) -> None:
    """Orientation and pixel measures given per frame only (allowed by the standard):
    highdicom wants them shared, so the header copy shares frame 1's."""
    mask = _sphere_mask()
    written = write_series(
        tmp_path / "ct", np.where(mask, 150.0, 10.0), spacing=SPACING, multiframe=True
    )
    ds = pydicom.dcmread(written.paths[0])
    shared = ds.SharedFunctionalGroupsSequence[0]
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        for item in ds.PerFrameFunctionalGroupsSequence:
            setattr(item, keyword, copy.deepcopy(shared[keyword].value))
        delattr(shared, keyword)
    ds.save_as(written.paths[0])
    volume = load_series(written.paths).volume
    path = tmp_path / "s.dcm"
    write_seg(volume, mask, CARD, path)
    assert "PixelMeasuresSequence" not in volume.datasets[0].SharedFunctionalGroupsSequence[0]
    np.testing.assert_array_equal(highdicom_mask_on_volume(path, volume).astype(bool), mask)
    assert_frames_on_their_sources(path, volume)


def _set_in_files(paths: tuple[Path, ...], **values: str) -> None:
    """Store invalid values as some real data has them (unvalidated, so pydicom is quiet)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            tag = pydicom.datadict.tag_for_keyword(keyword)
            vr = pydicom.datadict.dictionary_VR(tag)
            ds[tag] = pydicom.DataElement(tag, vr, value, validation_mode=pydicom.config.IGNORE)
        ds.save_as(path)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PatientSex", "U"),
        ("PatientBirthDate", "1970"),
        ("StudyDate", "2024-01-31"),
        ("StudyTime", "25:61"),
    ],
)
def test_invalid_type2_value_is_written_empty_with_a_warning(
    tmp_path: Path, keyword: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Real data has PatientSex "U" and odd dates: the SEG is written with that attribute
    empty (the standard allows an empty type 2 value), and a WARNING names the attribute but
    never quotes the value (patient data). The preflight accepts such a source quietly."""
    mask = _sphere_mask()
    written = write_series(tmp_path / "ct", np.where(mask, 150.0, 10.0), spacing=SPACING)
    _set_in_files(written.paths, **{keyword: value})
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "s.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Python warning would quote the value on stderr
        volume = load_series(tmp_path / "ct").volume
        check_seg_source(volume, CARD)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        write_seg(volume, mask, CARD, path)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and keyword in warned[0], warned
    quoted = re.compile(rf"(?<![\w-]){re.escape(value)}(?![\w-])")
    assert not [r.getMessage() for r in caplog.records if quoted.search(r.getMessage())]
    seg = pydicom.dcmread(path)
    assert keyword in seg and seg[keyword].value in (None, "", b"")
    # the other patient/study values are still copied, and the source is unchanged
    assert seg.PatientID == volume.datasets[0].PatientID
    assert seg.StudyInstanceUID == written.study_uid
    assert all(str(ds[keyword].value) == value for ds in volume.datasets)
    np.testing.assert_array_equal(highdicom_mask_on_volume(path, volume).astype(bool), mask)


def test_several_invalid_type2_values_are_each_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    written = write_series(tmp_path / "ct", np.zeros((3, 8, 10)))
    _set_in_files(written.paths, PatientSex="U", PatientBirthDate="1970-02-30")
    volume = load_series(tmp_path / "ct").volume
    with caplog.at_level(logging.WARNING):
        seg = write_seg(volume, np.ones((1, *volume.shape), dtype=bool), CARD, tmp_path / "s")
    warned = " | ".join(r.getMessage() for r in caplog.records)
    assert "PatientSex" in warned and "PatientBirthDate" in warned
    assert "1970-02-30" not in warned
    assert seg.PatientSex == "" and seg.PatientBirthDate == ""
    assert seg.StudyDate == volume.datasets[0].StudyDate != ""


@pytest.mark.parametrize("sop_class", ["1.2.3", "1.2.840.10008.5.1.4.1.1.501.1"])
def test_unsupported_sop_class_is_one_input_error(tmp_path: Path, sop_class: str) -> None:
    """A CT whose SOPClassUID is no storage class ("1.2.3"), or a standard one highdicom
    cannot reference (DICOS CT Image Storage): a one-line DicomInputError, no KeyError."""
    written = write_series(tmp_path / "ct", np.zeros((3, 8, 10)))
    for path in written.paths:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.save_as(path)
    volume = load_series(tmp_path / "ct").volume  # the pixels still load
    assert {f.sop_class_uid for f in volume.frames} == {sop_class}
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DicomInputError, match="SOPClassUID") as caught:
        check_seg_source(volume, CARD)
    assert sop_class in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(DicomInputError, match="SOPClassUID"):
        write_seg(volume, np.ones((1, *volume.shape), dtype=bool), CARD, out / "s.dcm")
    assert list(out.iterdir()) == []
