"""The measurement report on a series with known lesions, read back by dcmtk, dcmqi and
highdicom; its numbers against those computed from the SEG alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.errors import OutputError
from medseg.results.report import build_report, write_report
from medseg.seg import write_seg
from tests.results.lesions import (
    BOX,
    CARD,
    CENTRE,
    SEMI_AXES,
    SHAPE,
    SPACING,
    Written,
    write_case,
)
from tests.results.readers import (
    HU,
    LONG_AXIS,
    MAXIMUM,
    MEAN,
    SD,
    SHORT_AXIS,
    VOLUME,
    dcmqi_numbers,
    dsrdump,
    highdicom_groups,
    highdicom_numbers,
    longest_feret,
    seg_frames_of,
    seg_voxel_ml,
    tid1500reader,
)
from tests.seg.readback import highdicom_mask_on_volume

DIAGONAL = float(np.hypot(SPACING[1], SPACING[2]))


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return write_case(tmp_path_factory.mktemp("report"))


def _clean_dump(path: Path) -> str:
    dumped = dsrdump(path)
    assert dumped.returncode == 0 and dumped.stderr == "", dumped.stderr
    return dumped.stdout


def _expected_from_seg(case: Written, number: int) -> dict:
    """What the report must say about segment ``number``, from the SEG read by highdicom."""
    mask = highdicom_mask_on_volume(case.seg_path, case.volume, number).astype(bool)
    inside = case.hu[mask].astype(np.float64)
    feret, k = longest_feret(mask, (SPACING[1], SPACING[2]))
    return {
        "volume": mask.sum() * seg_voxel_ml(case.seg_path),
        "long": feret,
        "slice": k,
        "hu": (inside.mean(), inside.std(), inside.max()),
    }


def test_dsrdump_reads_the_report_without_a_complaint(case: Written) -> None:
    text = _clean_dump(case.sr_path)
    assert text.startswith("Comprehensive SR Document")
    assert text.count('"Measurement Group")=CONTINUOUS>  # TID 1411 (DCMR)') == 2
    assert '"Imaging Measurement Report")=CONTINUOUS>  # TID 1500 (DCMR)' in text
    assert 'Algorithm Name")="lesion-finder"' in text
    assert 'Algorithm Version")="2.1.0"' in text


@pytest.mark.parametrize("reader", ["dcmqi", "highdicom"])
def test_numbers_equal_those_computed_from_the_seg(case: Written, reader: str, tmp_path) -> None:
    if reader == "dcmqi":
        groups = [dcmqi_numbers(g) for g in tid1500reader(case.sr_path, tmp_path)["Measurements"]]
    else:
        groups = [highdicom_numbers(g) for g in highdicom_groups(case.sr_path)]
    assert len(groups) == 2
    for number, numbers in enumerate(groups, start=1):
        expected = _expected_from_seg(case, number)
        assert numbers[(VOLUME, None)] == pytest.approx(expected["volume"], abs=1e-4)
        assert numbers[(LONG_AXIS, None)] == pytest.approx(expected["long"], abs=DIAGONAL)
        hu = (numbers[(HU, MEAN)], numbers[(HU, SD)], numbers[(HU, MAXIMUM)])
        assert hu == pytest.approx(expected["hu"], abs=0.006)  # stated to 0.01 HU
        assert set(numbers) == {(VOLUME, None), (LONG_AXIS, None), (SHORT_AXIS, None)} | {
            (HU, d) for d in (MEAN, SD, MAXIMUM)
        }


def test_axes_match_the_known_shapes(case: Written) -> None:
    ellipsoid, box = (highdicom_numbers(g) for g in highdicom_groups(case.sr_path))
    assert ellipsoid[(LONG_AXIS, None)] == pytest.approx(2 * SEMI_AXES[0], abs=DIAGONAL)
    assert ellipsoid[(SHORT_AXIS, None)] == pytest.approx(2 * SEMI_AXES[1], abs=DIAGONAL)
    rows, cols = BOX[1].stop - BOX[1].start, BOX[2].stop - BOX[2].start
    height, width = rows * SPACING[1], cols * SPACING[2]
    diagonal = float(np.hypot(width, height))
    assert box[(LONG_AXIS, None)] == pytest.approx(diagonal, abs=0.006)  # corner to corner
    assert box[(SHORT_AXIS, None)] == pytest.approx(height * diagonal / width, abs=0.5)
    # the known volumes: the box exactly, the ellipsoid within 5 % of 4/3 pi a b c
    voxel_ml = float(np.prod(SPACING)) / 1000
    assert box[(VOLUME, None)] == pytest.approx(4 * rows * cols * voxel_ml, abs=1e-4)
    assert ellipsoid[(VOLUME, None)] == pytest.approx(
        4 / 3 * np.pi * np.prod(SEMI_AXES) / 1000, rel=0.05
    )


def test_groups_reference_their_seg_segment_and_source_images(case: Written, tmp_path) -> None:
    seg = pydicom.dcmread(case.seg_path)
    by_uid = {f.sop_instance_uid: k for k, f in enumerate(case.volume.frames)}
    dcmqi = tid1500reader(case.sr_path, tmp_path)["Measurements"]
    for number, group in enumerate(highdicom_groups(case.sr_path), start=1):
        segment = seg.SegmentSequence[number - 1]
        assert group.tracking_uid == segment.TrackingUID
        assert group.tracking_identifier == segment.TrackingID == f"Lesion {number}"
        assert group.finding_type.value == segment.SegmentedPropertyTypeCodeSequence[0].CodeValue
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_sop_class_uid == seg.SOPClassUID
        assert ref.referenced_segment_numbers == [number]
        sources = {
            (item.referenced_sop_instance_uid, None) for item in ref.source_images_for_segmentation
        }
        assert sources == seg_frames_of(seg, number)  # the images the segment lies on
        assert dcmqi[number - 1]["ReferencedSegment"] == number
        assert dcmqi[number - 1]["segmentationSOPInstanceUID"] == seg.SOPInstanceUID
        # the axes name the slice they were measured on: the widest section
        expected = _expected_from_seg(case, number)
        for m in group.get_measurements():
            if m.name.value in (LONG_AXIS, SHORT_AXIS):
                (image,) = m.referenced_images
                k = by_uid[image.referenced_sop_instance_uid]
                assert k == (CENTRE[0] if number == 1 else expected["slice"])


def test_evidence_names_the_seg_and_the_source_series(case: Written) -> None:
    sr = pydicom.dcmread(case.sr_path)
    assert sr.StudyInstanceUID == case.volume.study_instance_uid
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    series = {
        str(s.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in s.ReferencedSOPSequence}
        for s in study.ReferencedSeriesSequence
    }
    assert series[str(case.seg.SeriesInstanceUID)] == {str(case.seg.SOPInstanceUID)}
    assert series[case.volume.series_instance_uid] == {
        f.sop_instance_uid for f in case.volume.frames
    }
    assert sr.SeriesInstanceUID not in series


def test_a_research_model_says_so_a_cleared_one_does_not(case: Written, tmp_path) -> None:
    sr = pydicom.dcmread(case.sr_path)
    assert sr.SeriesDescription == "medseg measurements (RESEARCH ONLY, NOT CLINICAL)"
    text = _clean_dump(case.sr_path)
    assert text.count('Comment")="RESEARCH ONLY, NOT CLINICAL') == 2
    cleared = replace(CARD, intended_use="cleared for clinical use")
    masks = case.masks
    seg = write_seg(case.volume, masks, cleared, tmp_path / "c.seg.dcm", semiautomatic=True)
    path = tmp_path / "c.sr.dcm"
    clean = write_report(case.volume, seg, masks, cleared, path)
    assert clean.SeriesDescription == "medseg measurements"
    assert "RESEARCH" not in _clean_dump(path)


def test_multiframe_source_is_referenced_by_its_frames(tmp_path) -> None:
    case = write_case(tmp_path, multiframe=True)
    _clean_dump(case.sr_path)
    seg = pydicom.dcmread(case.seg_path)
    for number, group in enumerate(highdicom_groups(case.sr_path), start=1):
        (image,) = group.referenced_segment.source_images_for_segmentation
        frames = {(image.referenced_sop_instance_uid, f) for f in image.referenced_frame_numbers}
        assert frames == seg_frames_of(seg, number)
    numbers = dcmqi_numbers(tid1500reader(case.sr_path, tmp_path)["Measurements"][1])
    assert numbers[(VOLUME, None)] == pytest.approx(case.masks[1].sum() * np.prod(SPACING) / 1000)


def test_mr_report_has_no_hu(tmp_path) -> None:
    case = write_case(tmp_path, modality="MR")
    text = _clean_dump(case.sr_path)
    assert "Attenuation Coefficient" not in text and "CT unspecified" not in text
    for group in highdicom_groups(case.sr_path):
        assert {name for name, _ in highdicom_numbers(group)} == {VOLUME, LONG_AXIS, SHORT_AXIS}


def test_empty_segment_reports_zero_volume_on_the_source_series(case: Written, tmp_path) -> None:
    card = replace(CARD, segments=CARD.segments[:1])
    empty = np.zeros((1, *SHAPE), dtype=bool)
    seg = write_seg(case.volume, empty, card, tmp_path / "e.seg.dcm")
    path = tmp_path / "e.sr.dcm"
    write_report(case.volume, seg, empty, card, path)
    _clean_dump(path)
    (group,) = highdicom_groups(path)
    assert highdicom_numbers(group) == {(VOLUME, None): 0.0}
    series = group.referenced_segment.source_series_for_segmentation
    assert series.value == case.volume.series_instance_uid
    (measured,) = tid1500reader(path, tmp_path)["Measurements"]
    assert dcmqi_numbers(measured) == {(VOLUME, None): 0.0}


def test_masks_that_are_not_the_segs_segments_are_refused(case: Written) -> None:
    with pytest.raises(OutputError, match="the SEG has segments"):
        build_report(case.volume, case.seg, case.masks[:1], CARD)
    with pytest.raises(OutputError, match="needs the DICOM-SEG"):
        build_report(case.volume, case.volume.datasets[0], case.masks, CARD)


def test_medseg_does_not_take_its_own_report_as_prompts(case: Written) -> None:
    from medseg.dicom.marks import read_marks
    from medseg.errors import DicomInputError

    with pytest.raises(DicomInputError, match="refer to a segmentation") as info:
        read_marks(case.sr_path)
    assert "\n" not in str(info.value)
