"""Marks that cannot be placed on the loaded series: one line each, PromptError (exit 5)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.dicom import Volume, load_series
from medseg.dicom.marks import Mark, marks_to_prompts
from medseg.errors import DicomInputError, PromptError
from medseg.prompts import BoxPrompt, PointPrompt
from tests.dicom.series_factory import write_series

SHAPE = (4, 32, 40)
ORIGIN = (-120.0, -100.0, 40.0)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    folder = tmp_path_factory.mktemp("ct")
    write_series(folder, np.zeros(SHAPE), spacing=(2.0, 0.5, 0.5), origin=ORIGIN)
    return load_series(folder).volume


def _frame(volume: Volume) -> str:
    return str(volume.datasets[0].FrameOfReferenceUID)


def _refused(mark: Mark, volume: Volume, words: str) -> None:
    with pytest.raises(PromptError) as info:
        marks_to_prompts([mark], volume)
    message = str(info.value)
    assert words in message and "\n" not in message, message
    assert "1.2." not in message  # no UID in the user's line


def test_mark_on_an_image_not_in_the_series(volume: Volume) -> None:
    mark = Mark("line", ((1.5, 1.5), (5.5, 1.5)), "GSPS POLYLINE", sop_instance_uid="1.2.3.4")
    _refused(mark, volume, "a line (GSPS POLYLINE) is drawn on an image that is not in this series")


def test_mark_in_another_frame_of_reference(volume: Volume) -> None:
    mark = Mark(
        "point",
        ((-110.0, -95.0, 42.0),),
        "SR SCOORD3D POINT",
        "patient",
        frame_of_reference_uid="1.2.3.9",
    )
    _refused(mark, volume, "in another frame of reference than this series")


@pytest.mark.parametrize(
    ("z", "inside"), [(39.01, True), (38.99, False), (46.99, True), (47.01, False)]
)
def test_patient_mark_may_lie_up_to_half_a_slice_off_the_volume(volume, z, inside) -> None:
    mark = Mark(
        "point",
        ((-110.0, -95.0, z),),
        "SR SCOORD3D POINT",
        "patient",
        frame_of_reference_uid=_frame(volume),
    )
    if inside:
        expected = 0 if z < 40 else 3
        assert marks_to_prompts([mark], volume)[0].z == expected
    else:
        _refused(mark, volume, "lies off the volume by more than half a slice")


def test_patient_mark_across_slices_is_refused(volume: Volume) -> None:
    ends = ((-110.0, -95.0, 40.0), (-110.0, -95.0, 46.0))  # slices 0 to 3
    mark = Mark(
        "line", ends, "SR SCOORD3D POLYLINE", "patient", frame_of_reference_uid=_frame(volume)
    )
    _refused(mark, volume, "crosses slices 0.0 to 3.0")


def test_mark_outside_the_image_is_refused(volume: Volume) -> None:
    uid = volume.frames[0].sop_instance_uid
    inside = Mark("point", ((40.0, 32.0),), "GSPS POINT", sop_instance_uid=uid)  # the far corner
    assert marks_to_prompts([inside], volume) == [PointPrompt(39.5, 31.5, 0)]
    outside = Mark("point", ((40.5, 3.0),), "GSPS POINT", sop_instance_uid=uid)
    _refused(outside, volume, "lies outside the image (columns 0-39, rows 0-31)")
    # a circle centred on the image that reaches past its edge: the box is clipped
    edge = Mark(
        "ellipse", ((-4, 10), (6, 10), (1, 5), (1, 15)), "GSPS CIRCLE", sop_instance_uid=uid
    )
    assert marks_to_prompts([edge], volume) == [BoxPrompt(0, 4.5, 5.5, 14.5, 0, 0)]


def test_mark_values_are_checked_on_construction() -> None:
    with pytest.raises(DicomInputError, match="a line needs 2 points, got 3"):
        Mark("line", ((1, 1), (2, 2), (3, 3)), "GSPS POLYLINE", sop_instance_uid="1.2")
    with pytest.raises(DicomInputError, match="names no referenced image"):
        Mark("point", ((1, 1),), "GSPS POINT")
    with pytest.raises(DicomInputError, match="names no frame of reference"):
        Mark("point", ((1, 1, 1),), "SR SCOORD3D POINT", "patient")
    with pytest.raises(DicomInputError, match="not a finite number"):
        Mark("point", ((float("nan"), 1),), "GSPS POINT", sop_instance_uid="1.2")
