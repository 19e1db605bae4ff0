"""A reader's finding keeps its name: the Tracking Identifier / Tracking Unique Identifier of
an SR measurement group become the TrackingID / TrackingUID of the SEG segment its mark
prompted, and so of the report's measurement group; a mark without them (a GSPS, a box on
the command line) gets medseg's own."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import generate_uid

from medseg.dicom.marks import Mark, read_marks
from medseg.dicom.marks.place import mark_to_prompt
from medseg.errors import PromptError
from medseg.pipeline import SegmentOptions, segment
from medseg.prompts import BoxPrompt, Tracking
from tests.dicom.marks.writers import group, image_region, write_report
from tests.dicom.series_factory import write_series
from tests.results.readers import highdicom_groups

SHAPE = (6, 40, 48)


def _series(folder: Path) -> list[Path]:
    values = np.zeros(SHAPE)
    values[1:5, 4:14, 4:14] = 200.0  # block A (rows and columns 4-13)
    values[1:5, 24:34, 30:42] = 200.0  # block B (rows 24-33, columns 30-41)
    values[1:5, 26:34, 4:12] = 200.0  # block C (rows 26-33, columns 4-11)
    return sorted(write_series(folder, values).paths)


def _outline(c0: float, r0: float, c1: float, r1: float) -> list[tuple[float, float]]:
    return [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]


def test_sr_tracking_identifiers_are_carried_onto_the_seg_segments_and_the_report(
    tmp_path: Path, prompted_bright_model: Path
) -> None:
    paths = _series(tmp_path / "ct")
    uid_a, uid_b = generate_uid(), generate_uid()
    region_a = image_region(paths[2], "POLYLINE", _outline(4.5, 4.5, 13.5, 13.5))
    region_b = image_region(paths[3], "POLYLINE", _outline(30.5, 24.5, 41.5, 33.5))
    groups = [group("Target A", region_a, uid=uid_a), group("Target B", region_b, uid=uid_b)]
    sr = write_report(tmp_path / "marks.sr.dcm", [paths[2], paths[3]], groups)
    marks = read_marks(sr)
    assert [m.tracking_uid for m in marks] == [uid_a, uid_b]
    seg_path, report = tmp_path / "out.seg.dcm", tmp_path / "out.sr.dcm"
    hand = BoxPrompt(4, 26, 11, 33, 2, 2)  # block C, from the command line: no tracking
    options = SegmentOptions(
        model=prompted_bright_model,
        window="100/200",
        marks=tuple(marks),
        prompts=(hand,),
        report=report,
    )
    segment(tmp_path / "ct", seg_path, options)

    seg = hd.seg.segread(seg_path)
    found = [
        (int(s.SegmentNumber), str(s.TrackingID), str(s.TrackingUID)) for s in seg.SegmentSequence
    ]
    # the command line's prompts come first, then the marks in order (Lesion 1, 2, 3)
    assert [number for number, _, _ in found] == [1, 2, 3]
    (_, own_id, own_uid), mark_a, mark_b = found
    assert own_id == "Lesion 1" and own_uid not in (uid_a, uid_b)
    assert mark_a[1:] == ("Target A", uid_a)
    assert mark_b[1:] == ("Target B", uid_b)
    tracked = {(str(g.tracking_identifier), str(g.tracking_uid)) for g in highdicom_groups(report)}
    assert {("Target A", uid_a), ("Target B", uid_b)} <= tracked


def test_a_tracking_uid_that_is_not_a_uid_is_left_out_and_the_identifier_kept(
    tmp_path: Path,
) -> None:
    from medseg.dicom import load_series

    paths = _series(tmp_path / "ct")
    volume = load_series(tmp_path / "ct").volume
    image = str(volume.datasets[2].SOPInstanceUID)
    mark = Mark(
        "point",
        ((8.5, 8.5),),
        "SR SCOORD POINT",
        sop_instance_uid=image,
        tracking_identifier="Node 7",
        tracking_uid="not-a-uid",
    )
    assert mark_to_prompt(mark, volume).tracking == Tracking("Node 7")
    plain = Mark("point", ((8.5, 8.5),), "GSPS POINT", sop_instance_uid=image)
    assert mark_to_prompt(plain, volume).tracking is None
    assert paths


def test_tracking_values_are_checked_when_made() -> None:
    assert Tracking("x" * 70).identifier == "x" * 64
    with pytest.raises(PromptError, match="tracking UID"):
        Tracking("A", "1.2.abc")
    with pytest.raises(PromptError, match="tracking UID"):
        Tracking("A", "1." * 40)
