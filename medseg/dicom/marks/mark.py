"""A reader's mark as a viewer saved it, before it is placed on a loaded series.

GSPS and SR describe the same few shapes in two encodings; both readers produce ``Mark`` so
that one function (``marks_to_prompts``) decides what each shape means to the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from medseg.errors import DicomInputError

MarkKind = Literal["point", "line", "box", "ellipse", "outline"]
MarkSpace = Literal["pixel", "patient"]

# how many points each kind carries (None: at least 3)
_POINTS: dict[str, int | None] = {"point": 1, "line": 2, "box": 4, "ellipse": 4, "outline": None}


@dataclass(frozen=True)
class Mark:
    """One mark on one image (``space="pixel"``) or in patient space (``"patient"``).

    Attributes
    ----------
    kind:
        ``point`` (a click or an arrow's tip), ``line`` (a diameter, its two ends),
        ``box`` (an axis-aligned rectangle, its four corners), ``ellipse`` (the two ends of
        one axis, then of the other; a circle is an ellipse with equal axes) or ``outline``
        (a closed or freehand contour, three or more points).
    points:
        ``pixel``: (column, row) image coordinates whose origin is the top-left corner of
        the top-left pixel, so 0-based pixel (r, c) has its centre at (c + 0.5, r + 0.5)
        (GSPS PIXEL units, SR SCOORD). ``patient``: (x, y, z) LPS mm (SR SCOORD3D).
    source:
        What the mark came from, for messages: ``"GSPS POLYLINE"``, ``"SR SCOORD3D ELLIPSE"``.
    sop_instance_uid, frame_number:
        The referenced image (pixel marks); the 1-based frame of a multi-frame image or None.
    frame_of_reference_uid:
        The patient coordinate system of a patient-space mark.
    tracking_identifier, tracking_uid:
        TID 1500's Tracking Identifier / Tracking Unique Identifier of the finding, if any.
    negative:
        The object marks something to leave out (only a point can be negative).
    """

    kind: MarkKind
    points: tuple[tuple[float, ...], ...]
    source: str
    space: MarkSpace = "pixel"
    sop_instance_uid: str | None = None
    frame_number: int | None = None
    frame_of_reference_uid: str | None = None
    tracking_identifier: str | None = None
    tracking_uid: str | None = None
    negative: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _POINTS:
            raise DicomInputError(f"{self.source}: unknown mark kind {self.kind!r}")
        want = _POINTS[self.kind]
        count = len(self.points)
        if (want is not None and count != want) or (want is None and count < 3):
            need = f"{want}" if want is not None else "at least 3"
            raise DicomInputError(f"{self.source}: a {self.kind} needs {need} points, got {count}")
        dims = 2 if self.space == "pixel" else 3
        if any(len(p) != dims for p in self.points):
            raise DicomInputError(f"{self.source}: {self.space} coordinates need {dims} values")
        if not np.all(np.isfinite(self.points)):
            raise DicomInputError(f"{self.source}: a coordinate is not a finite number")
        if self.space == "pixel" and not self.sop_instance_uid:
            raise DicomInputError(f"{self.source}: the mark names no referenced image")
        if self.space == "patient" and not self.frame_of_reference_uid:
            raise DicomInputError(f"{self.source}: the mark names no frame of reference")
        if self.negative and self.kind != "point":
            raise DicomInputError(
                f"{self.source}: a negative {self.kind} is not supported (only points)"
            )

    @property
    def described(self) -> str:
        """The mark in words for a user: its object and kind, never a UID."""
        sign = "negative " if self.negative else ""
        return f"{sign}{self.kind} ({self.source})"


def has_word(texts: tuple[str | None, ...], words: tuple[str, ...]) -> bool:
    """Whether any of ``texts`` holds one of ``words`` as a whole word (any case): how a
    layer or finding name such as ``ARROWS`` or ``Exclude`` tells what its marks are."""
    found = set()
    for text in texts:
        if text:
            found.update("".join(c if c.isalnum() else " " for c in text.upper()).split())
    return any(w in found or w + "S" in found for w in words)
