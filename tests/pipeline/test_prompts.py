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
