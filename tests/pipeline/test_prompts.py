"""Box and point prompts: parsing (propagation has its own tests in test_propagate.py)."""

from __future__ import annotations

import pytest

from medseg.errors import PromptError
from medseg.prompts import BoxPrompt, PointPrompt, parse_box, parse_point


def test_parse_box_forms() -> None:
    assert parse_box("1,2,30,40@5") == BoxPrompt(1, 2, 30, 40, 5, 5)
    assert parse_box("1,2,30,40@3-7") == BoxPrompt(1, 2, 30, 40, 3, 7)
    assert parse_box("1,2,30,40@3:7") == BoxPrompt(1, 2, 30, 40, 3, 7)
    assert parse_box("1,2,30,40") == BoxPrompt(1, 2, 30, 40)
    mm = parse_box("-10.5,-20,15,5@-100:-80", "mm")
    assert (mm.x0, mm.z0, mm.z1, mm.space) == (-10.5, -100, -80, "mm")
    assert parse_box("0,0,1,1@-12.5--10", "mm").z0 == -12.5


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,x@4", "1,2,3,4@", "1,2,3,4@a-b", "1,2,3,4,5@1"])
def test_parse_box_rejects_malformed_text(text: str) -> None:
    with pytest.raises(PromptError):
        parse_box(text)


def test_mm_box_needs_a_slice_position() -> None:
    with pytest.raises(PromptError, match="needs its slice position"):
        parse_box("1,2,3,4", "mm")


def test_parse_point_forms() -> None:
    assert parse_point("10,20,3") == PointPrompt(10, 20, 3, True)
    assert parse_point("10,20,3:neg") == PointPrompt(10, 20, 3, False)
    assert parse_point("10,20,3:pos").positive
    assert parse_point("-1.5,2,-30:neg", "mm") == PointPrompt(-1.5, 2, -30, False, "mm")
    for bad in ("1,2", "1,2,3:maybe", "a,b,c"):
        with pytest.raises(PromptError):
            parse_point(bad)


def test_a_slice_can_be_named_by_instance_number_or_position(tmp_path) -> None:
    """A viewer's slice number (InstanceNumber) or z in mm reach the same slice index."""
    import numpy as np

    from medseg.dicom import load_series
    from medseg.prompts import box_bounds, instance_numbers, point_index, slice_positions_mm
    from tests.dicom.series_factory import write_series

    written = write_series(tmp_path / "ct", np.zeros((5, 8, 8)), origin=(-10.0, -10.0, 40.0))
    volume = load_series(tmp_path / "ct").volume
    numbers = instance_numbers(volume)
    positions = slice_positions_mm(volume)
    assert sorted(numbers) == numbers or sorted(numbers, reverse=True) == numbers
    assert np.allclose(np.diff(positions), volume.spacing[0])
    k = 3
    by_index = point_index(PointPrompt(2, 3, k), volume)
    by_instance = point_index(PointPrompt(2, 3, numbers[k], slices="instance"), volume)
    by_z = point_index(PointPrompt(2, 3, positions[k], slices="z"), volume)
    assert by_index == by_instance == by_z == (k, 3, 2)
    box = BoxPrompt(1, 1, 4, 4, numbers[1], numbers[2], slices="instance")
    assert box_bounds(box, volume)[4:] == (1, 2)
    with pytest.raises(PromptError, match="no slice with InstanceNumber 99"):
        point_index(PointPrompt(2, 3, 99, slices="instance"), volume)
    with pytest.raises(PromptError, match="outside the volume"):
        point_index(PointPrompt(2, 3, positions[-1] + 10, slices="z"), volume)
    assert written.positions is not None
