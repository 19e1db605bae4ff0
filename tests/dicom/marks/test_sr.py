"""TID 1500 Measurement Reports (highdicom and dcmqi's tid1500writer as writers, dcmtk's
dsrdump as checker) -> marks -> prompts."""

from __future__ import annotations

import dataclasses
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.dicom import Volume, load_series
from medseg.dicom.marks import Mark, marks_to_prompts, read_marks
from medseg.errors import DicomInputError
from medseg.prompts import BoxPrompt, PointPrompt
from tests.dicom.marks.writers import (
    dsrdump,
    group,
    image_region,
    image_region_3d,
    length,
    tid1500writer_sr,
    volume_3d,
    write_report,
)
from tests.dicom.series_factory import write_series

SHAPE = (4, 32, 40)
SPACING = (2.0, 0.5, 0.5)
ORIGIN = (-120.0, -100.0, 40.0)  # LPS of voxel (0, 0, 0); axial: x = columns, y = rows


@pytest.fixture
def series(tmp_path: Path) -> tuple[list[Path], Volume]:
    written = write_series(tmp_path / "ct", np.zeros(SHAPE), spacing=SPACING, origin=ORIGIN)
    return sorted(written.paths), load_series(tmp_path / "ct").volume


def _frame_of_reference(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).FrameOfReferenceUID)


def _read(path: Path) -> list[Mark]:
    checked = dsrdump(path)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    assert "Measurement Group" in checked.stdout
    return read_marks(path)


@pytest.mark.parametrize("sop", ["comprehensive3d", "comprehensive", "enhanced"])
def test_image_regions_and_a_length_give_exact_prompts(tmp_path: Path, series, sop) -> None:
    paths, volume = series
    groups = [
        group("lesion 1", image_region(paths[1], "POINT", [(12.5, 20.5)]), uid="1.2.3.4.1"),
        group(
            "lesion 2",
            image_region(
                paths[2], "ELLIPSE", [(10.5, 16.5), (24.5, 16.5), (17.5, 13.5), (17.5, 19.5)]
            ),
            uid="1.2.3.4.2",
        ),
        group(
            "lesion 3",
            image_region(paths[0], "POLYLINE", [(5.5, 6.5), (15.5, 6.5), (10.5, 12.5), (5.5, 6.5)]),
        ),
        group("lesion 4", image_region(paths[3], "CIRCLE", [(15.5, 16.5), (18.5, 20.5)])),
        # a RECIST diameter as OHIF and Slicer save it: a Length NUM from two endpoints
        group("lesion 5", measurements=[length(paths[3], [(10.5, 12.5), (20.5, 12.5)], 5.0)]),
    ]
    marks = _read(write_report(tmp_path / "sr.dcm", paths, groups, sop))
    assert [(m.kind, m.tracking_identifier) for m in marks] == [
        ("point", "lesion 1"),
        ("ellipse", "lesion 2"),
        ("outline", "lesion 3"),
        ("ellipse", "lesion 4"),
        ("line", "lesion 5"),
    ]
    assert [m.tracking_uid for m in marks[:2]] == ["1.2.3.4.1", "1.2.3.4.2"]
    assert marks[4].source == "SR SCOORD POLYLINE"
    prompts = marks_to_prompts(marks, volume)
    assert [dataclasses.replace(p, tracking=None) for p in prompts] == [
        PointPrompt(12, 20, 1),
        BoxPrompt(10, 13, 24, 19, 2, 2),
        BoxPrompt(5, 6, 15, 12, 0, 0),
        BoxPrompt(10, 11, 20, 21, 3, 3),
        BoxPrompt(10, 7, 20, 17, 3, 3),
    ]
    # each prompt carries its group's finding: identifier, and UID where the group had one
    assert [(p.tracking.identifier, p.tracking.uid) for p in prompts[:2]] == [
        ("lesion 1", "1.2.3.4.1"),
        ("lesion 2", "1.2.3.4.2"),
    ]
    assert [p.tracking.identifier for p in prompts[2:]] == ["lesion 3", "lesion 4", "lesion 5"]


def test_scoord3d_regions_go_to_the_nearest_slice(tmp_path: Path, series) -> None:
    paths, volume = series
    frame = _frame_of_reference(paths)
    # voxel (i, j, k) is at ORIGIN + (0.5 i, 0.5 j, 2 k) mm
    point = [(-110.0, -95.0, 42.4)]  # i 20, j 10, k 1.2 -> slice 1
    line = [(-115.0, -94.0, 44.0), (-110.0, -94.0, 44.0)]  # i 10..20, j 12, k 2
    polygon = [(-118.0, -98.0, 46.0), (-108.0, -98.0, 46.0), (-113.0, -90.0, 46.0)]
    polygon.append(polygon[0])
    groups = [
        group("a", image_region_3d("POINT", point, frame)),
        group("b", image_region_3d("POLYLINE", line, frame)),
        group("c", image_region_3d("POLYGON", polygon, frame)),
    ]
    marks = _read(write_report(tmp_path / "sr.dcm", paths, groups))
    assert [(m.kind, m.space) for m in marks] == [
        ("point", "patient"),
        ("line", "patient"),
        ("outline", "patient"),
    ]
    assert marks[0].frame_of_reference_uid == frame
    prompts = marks_to_prompts(marks, volume)
    assert [type(p) for p in prompts] == [PointPrompt, BoxPrompt, BoxPrompt]
    assert astuple(prompts[0])[:3] == pytest.approx((20, 10, 1))
    assert astuple(prompts[1])[:6] == pytest.approx((10, 7, 20, 17, 2, 2))
    assert astuple(prompts[2])[:6] == pytest.approx((4, 4, 24, 20, 3, 3))


def test_negative_finding_gives_a_negative_point(tmp_path: Path, series) -> None:
    paths, volume = series
    region = image_region(paths[1], "POINT", [(3.5, 4.5)])
    marks = _read(write_report(tmp_path / "sr.dcm", paths, [group("exclude: cyst", region)]))
    assert marks_to_prompts(marks, volume) == [PointPrompt(3, 4, 1, positive=False)]


def test_unsupported_graphic_type_is_refused_in_one_line(tmp_path: Path, series) -> None:
    paths, _ = series
    frame = _frame_of_reference(paths)
    axes = [(-115, -95, 44), (-105, -95, 44), (-110, -98, 44), (-110, -92, 44)]
    axes += [(-110, -95, 42), (-110, -95, 46)]
    measured = group("a", measurements=[volume_3d("ELLIPSOID", axes, frame)])
    path = write_report(tmp_path / "sr.dcm", paths, [measured])
    assert dsrdump(path).returncode == 0
    with pytest.raises(DicomInputError) as info:
        read_marks(path)
    message = str(info.value)
    assert "SR SCOORD3D ELLIPSOID: graphic type ELLIPSOID is not supported" in message
    assert "\n" not in message


def test_sr_written_by_dcmqi_is_refused_naming_its_segmentation(tmp_path, shared_dir) -> None:
    """dcmqi's tid1500writer records measurements of a SEG segment (TID 1411), never a
    region drawn on an image: there is no mark to take, and the message says why."""
    path = tid1500writer_sr(tmp_path, shared_dir)
    checked = dsrdump(path)
    assert checked.returncode == 0 and "Measurement Group" in checked.stdout
    with pytest.raises(DicomInputError) as info:
        read_marks(path)
    message = str(info.value)
    assert "no mark to take prompts from" in message
    assert "refer to a segmentation" in message and "(Enhanced SR)" in message
    assert "\n" not in message
