"""GSPS written as viewers write them (checked by dcmtk's dcmpschk) -> marks -> prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.dicom import Volume, load_series
from medseg.dicom.marks import Mark, marks_to_prompts, read_marks
from medseg.errors import DicomInputError
from medseg.prompts import BoxPrompt, PointPrompt
from tests.dicom.marks.writers import Annotation, DisplayedArea, Graphic, GspsWriter, dcmpschk
from tests.dicom.series_factory import write_series

SHAPE = (4, 32, 40)  # slices, rows, cols
SPACING = (2.0, 0.5, 0.5)
# DISPLAY units are relative to this displayed area: 1-based corners (col, row), so in image
# coordinates it spans x 4..36 and y 0..32 (32 x 32: every .5 coordinate is exact in binary)
AREA = DisplayedArea((5, 1), (36, 32))


def _display(points):
    return [((x - 4.0) / 32.0, y / 32.0) for x, y in points]


@pytest.fixture
def series(tmp_path: Path) -> tuple[list[Path], Volume]:
    written = write_series(tmp_path / "ct", np.zeros(SHAPE), spacing=SPACING)
    return sorted(written.paths), load_series(tmp_path / "ct").volume


def _read(tmp_path: Path, writer: GspsWriter) -> list[Mark]:
    path = writer.write(tmp_path / "pr.dcm")
    report = dcmpschk(path)
    assert "Test passed." in report and "failed" not in report and "E:" not in report, report
    return read_marks(path)


# (graphic type, points in image coordinates, layer, kind, expected prompt on slice 1);
# index = coordinate - 0.5; pixel spacing 0.5 mm both ways
CASES = [
    ("POINT", [(12.5, 20.5)], "MARKS", "point", PointPrompt(12.0, 20.0, 1.0)),
    # a 10-pixel (5 mm) diameter: a 5 mm square around its midpoint (15, 12)
    ("POLYLINE", [(10.5, 12.5), (20.5, 12.5)], "MARKS", "line", BoxPrompt(10, 7, 20, 17, 1, 1)),
    # centre (15, 16) radius 5 px
    ("CIRCLE", [(15.5, 16.5), (18.5, 20.5)], "MARKS", "ellipse", BoxPrompt(10, 11, 20, 21, 1, 1)),
    (
        "ELLIPSE",
        [(10.5, 16.5), (24.5, 16.5), (17.5, 13.5), (17.5, 19.5)],
        "MARKS",
        "ellipse",
        BoxPrompt(10, 13, 24, 19, 1, 1),
    ),
    (
        "POLYLINE",
        [(10.5, 10.5), (20.5, 12.5), (16.5, 22.5), (10.5, 10.5)],
        "MARKS",
        "outline",
        BoxPrompt(10, 10, 20, 22, 1, 1),
    ),
    (
        "INTERPOLATED",
        [(11.5, 9.5), (25.5, 14.5), (18.5, 26.5), (11.5, 9.5)],
        "MARKS",
        "outline",
        BoxPrompt(11, 9, 25, 26, 1, 1),
    ),
    (
        "POLYLINE",
        [(5.5, 6.5), (15.5, 6.5), (15.5, 9.5), (5.5, 9.5), (5.5, 6.5)],
        "MARKS",
        "box",
        BoxPrompt(5, 6, 15, 9, 1, 1),
    ),
    # an open freehand polyline: kept by its extent
    (
        "POLYLINE",
        [(8.5, 8.5), (14.5, 20.5), (22.5, 11.5)],
        "MARKS",
        "outline",
        BoxPrompt(8, 8, 22, 20, 1, 1),
    ),
    # an arrow (its layer says so): the first point is its tip
    ("POLYLINE", [(12.5, 14.5), (20.5, 30.5)], "ARROWS", "point", PointPrompt(12.0, 14.0, 1.0)),
    ("POINT", [(6.5, 7.5)], "EXCLUDE", "point", PointPrompt(6.0, 7.0, 1.0, positive=False)),
]


@pytest.mark.parametrize("units", ["PIXEL", "DISPLAY"])
@pytest.mark.parametrize(("graphic_type", "points", "layer", "kind", "expected"), CASES)
def test_each_graphic_type_in_both_units_gives_its_exact_prompt(
    tmp_path: Path, series, units, graphic_type, points, layer, kind, expected
) -> None:
    paths, volume = series
    data = _display(points) if units == "DISPLAY" else points
    writer = GspsWriter(
        paths,
        [Annotation([Graphic(graphic_type, data, units)], image=1, layer=layer)],
        areas=[AREA],
        layers={layer: f"{layer.lower()} drawn by the reader"},
    )
    marks = _read(tmp_path, writer)
    assert [m.kind for m in marks] == [kind]
    assert marks[0].sop_instance_uid == volume.frames[1].sop_instance_uid
    assert marks[0].source == f"GSPS {graphic_type}"
    assert marks_to_prompts(marks, volume) == [expected]


def test_rotated_ellipse_box_is_the_ellipse_extent_not_its_axis_ends(tmp_path: Path, series):
    paths, volume = series
    # semi-axes (4, 4) and (-2, 2) px around index (14, 14): half extents sqrt(20) both ways
    ellipse = Graphic("ELLIPSE", [(10.5, 10.5), (18.5, 18.5), (16.5, 12.5), (12.5, 16.5)])
    marks = _read(tmp_path, GspsWriter(paths, [Annotation([ellipse], image=2)]))
    (box,) = marks_to_prompts(marks, volume)
    half = np.sqrt(20.0)
    assert (box.x0, box.y0, box.x1, box.y1) == pytest.approx(
        (14 - half, 14 - half, 14 + half, 14 + half)
    )
    assert (box.z0, box.z1) == (2, 2)


def test_diameter_on_anisotropic_pixels_gives_a_square_in_mm(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct", np.zeros(SHAPE), spacing=(2.5, 0.8, 0.4))
    volume = load_series(tmp_path / "ct").volume
    # 20 columns at 0.4 mm = 8 mm: half side 4 mm = 10 columns, 5 rows around (15, 12)
    line = Graphic("POLYLINE", [(5.5, 12.5), (25.5, 12.5)])
    marks = _read(tmp_path, GspsWriter(sorted(written.paths), [Annotation([line], image=3)]))
    assert marks_to_prompts(marks, volume) == [BoxPrompt(5, 7, 25, 17, 3, 3)]


def test_box_of_a_diameter_at_the_image_edge_is_clipped(tmp_path: Path, series) -> None:
    paths, volume = series
    line = Graphic("POLYLINE", [(0.5, 2.5), (10.5, 2.5)])  # 5 mm square around (5, 2)
    marks = _read(tmp_path, GspsWriter(paths, [Annotation([line], image=0)]))
    assert marks_to_prompts(marks, volume) == [BoxPrompt(0, 0, 10, 7, 0, 0)]


def test_displayed_area_of_one_image_applies_to_that_image_only(tmp_path: Path, series):
    paths, volume = series
    areas = [DisplayedArea((1, 1), (40, 32), images=[0]), DisplayedArea((5, 1), (36, 32), [2])]
    point = Graphic("POINT", _display([(20.5, 16.5)]), "DISPLAY")
    marks = _read(tmp_path, GspsWriter(paths, [Annotation([point], image=2)], areas=areas))
    assert marks_to_prompts(marks, volume) == [PointPrompt(20.0, 16.0, 2.0)]


def test_display_units_without_a_displayed_area_for_the_image_are_refused(tmp_path, series):
    paths, _ = series
    areas = [DisplayedArea((1, 1), (40, 32), images=[0])]
    point = Graphic("POINT", [(0.5, 0.5)], "DISPLAY")
    path = GspsWriter(paths, [Annotation([point], image=1)], areas=areas).write(tmp_path / "p")
    assert "Test passed." in dcmpschk(path)
    with pytest.raises(DicomInputError, match="DISPLAY units but no displayed area") as info:
        read_marks(path)
    assert "\n" not in str(info.value)


def test_display_units_on_a_rotated_image_are_refused(tmp_path, series) -> None:
    paths, _ = series
    point = Graphic("POINT", [(0.5, 0.5)], "DISPLAY")
    writer = GspsWriter(paths, [Annotation([point], image=1)], areas=[AREA], rotation=90)
    with pytest.raises(DicomInputError, match="rotated or flipped"):
        read_marks(writer.write(tmp_path / "p"))


def test_annotation_without_image_reference_uses_the_one_image_of_the_state(tmp_path, series):
    paths, volume = series
    point = Graphic("POINT", [(3.5, 4.5)])
    writer = GspsWriter(paths, [Annotation([point], image=None)], series_images=[3])
    assert marks_to_prompts(_read(tmp_path, writer), volume) == [PointPrompt(3.0, 4.0, 3.0)]


def test_annotation_without_image_reference_on_a_whole_series_is_refused(tmp_path, series):
    paths, _ = series
    writer = GspsWriter(paths, [Annotation([Graphic("POINT", [(3.5, 4.5)])], image=None)])
    path = writer.write(tmp_path / "p")
    with pytest.raises(DicomInputError, match=r"applies to all images .* 4 images"):
        read_marks(path)


def test_negative_line_is_refused(tmp_path, series) -> None:
    paths, _ = series
    line = Graphic("POLYLINE", [(3.5, 4.5), (8.5, 4.5)])
    writer = GspsWriter(paths, [Annotation([line], layer="NEGATIVE")], layers={"NEGATIVE": ""})
    with pytest.raises(DicomInputError, match="a negative line is not supported"):
        read_marks(writer.write(tmp_path / "p"))


def test_mark_on_a_frame_of_a_multiframe_image(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct", np.zeros(SHAPE), spacing=SPACING, multiframe=True)
    volume = load_series(tmp_path / "ct").volume
    point = Graphic("POINT", [(7.5, 9.5)])
    writer = GspsWriter(written.paths, [Annotation([point], image=0, frame=3)])
    marks = _read(tmp_path, writer)
    assert marks[0].frame_number == 3
    assert marks_to_prompts(marks, volume) == [PointPrompt(7.0, 9.0, 2.0)]


def test_several_marks_keep_their_order(tmp_path: Path, series) -> None:
    paths, volume = series
    annotations = [
        Annotation([Graphic("POINT", [(1.5, 1.5)]), Graphic("POINT", [(2.5, 2.5)])], image=0),
        Annotation([Graphic("POINT", [(3.5, 3.5)])], image=3),
    ]
    prompts = marks_to_prompts(_read(tmp_path, GspsWriter(paths, annotations)), volume)
    assert prompts == [PointPrompt(1, 1, 0), PointPrompt(2, 2, 0), PointPrompt(3, 3, 3)]


def test_displayed_area_with_one_corner_value_is_one_line(tmp_path: Path, series) -> None:
    paths, _ = series
    point = Graphic("POINT", [(0.5, 0.5)], "DISPLAY")
    path = GspsWriter(paths, [Annotation([point])], areas=[AREA]).write(tmp_path / "p")
    ds = pydicom.dcmread(path)
    ds.DisplayedAreaSelectionSequence[0].DisplayedAreaBottomRightHandCorner = [36]  # one of 2
    ds.save_as(path)
    with pytest.raises(
        DicomInputError, match="GSPS: a displayed area has no valid corners"
    ) as info:
        read_marks(path)
    assert "\n" not in str(info.value)
