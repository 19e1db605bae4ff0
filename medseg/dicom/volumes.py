"""Several volumes in one series: magnitude and phase frames at the same positions.

A Philips B0 map (and many other MR acquisitions: phase-contrast, real/imaginary pairs)
stores several images of every slice in one Enhanced MR instance or one series. Each frame
says what it is: ComplexImageComponent (MAGNITUDE, PHASE, REAL, IMAGINARY, MIXED) in the
MR Image Frame Type macro, and value 3 of FrameType (ImageType for single-frame files),
such as ``M_FFE`` or ``B0``. Frames are grouped by that *kind*; when several kinds lie at
the same positions, one group is the volume: the one ``--volume`` names (a kind or its
1-based number), else the magnitude image if exactly one group is one, else nothing is
guessed and the error names the choices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from medseg.dicom.frames import FrameInfo
from medseg.errors import ConfigError, DicomInputError

log = logging.getLogger(__name__)

# Short and long forms of ComplexImageComponent / FrameType value 3 that mean the same.
_ALIASES = {"M": "MAGNITUDE", "P": "PHASE", "R": "REAL", "I": "IMAGINARY"}
POSITION_DECIMALS = 3  # mm: frames closer than this lie at the same position


def _canonical(text: str) -> str:
    upper = text.strip().upper()
    return _ALIASES.get(upper, upper)


@dataclass(frozen=True)
class VolumeGroup:
    """Frames of one kind, in file order: ``number`` is 1-based, as ``--volume`` counts."""

    number: int
    kind: str  # e.g. "MAGNITUDE", "M_FFE/MAGNITUDE", "" when the file does not say
    frames: tuple[int, ...]  # indices into the series' frame list

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(_canonical(p) for p in self.kind.split("/") if p)

    @property
    def is_magnitude(self) -> bool:
        return any(p == "MAGNITUDE" or p.startswith("M_") for p in self.parts)

    def matches(self, choice: str) -> bool:
        wanted = _canonical(choice)
        return wanted in self.parts or wanted == _canonical(self.kind)

    def describe(self) -> str:
        return f"{self.number} {self.kind or '(no type)'} ({len(self.frames)} frames)"


def group_frames(frames: list[FrameInfo]) -> list[VolumeGroup]:
    """The series' frames grouped by kind, groups in the order their first frame comes."""
    indices: dict[str, list[int]] = {}
    for index, frame in enumerate(frames):
        indices.setdefault(frame.kind, []).append(index)
    return [
        VolumeGroup(number, kind, tuple(members))
        for number, (kind, members) in enumerate(indices.items(), start=1)
    ]


def _positions_overlap(frames: list[FrameInfo], groups: list[VolumeGroup]) -> bool:
    """Whether two groups have a frame at the same position (several images per slice)."""
    seen: dict[tuple[float, ...], int] = {}
    for group in groups:
        for index in group.frames:
            key = tuple(round(v, POSITION_DECIMALS) for v in frames[index].position)
            if seen.setdefault(key, group.number) != group.number:
                return True
    return False


def select_volume(
    frames: list[FrameInfo], choice: str | None, series_uid: str
) -> tuple[list[FrameInfo], VolumeGroup | None]:
    """The frames of the chosen volume and its group (None: the series is one volume).

    Raises ``ConfigError`` when ``choice`` names no group (or several), and
    ``DicomInputError`` when the series holds several volumes and none is the magnitude.
    """
    groups = group_frames(frames)
    choices = ", ".join(g.describe() for g in groups)
    if choice is None or not choice.strip():
        if len(groups) < 2 or not _positions_overlap(frames, groups):
            return frames, None
        magnitude = [g for g in groups if g.is_magnitude]
        if len(magnitude) != 1:
            raise DicomInputError(
                f"series {series_uid} holds {len(groups)} volumes at the same positions and "
                f"none is the one magnitude image: {choices}; choose one with --volume "
                "(its type or number)"
            )
        chosen = magnitude[0]
        log.info(
            "series %s holds %d volumes at the same positions (%s); using the magnitude "
            "image %s (--volume chooses another)",
            series_uid,
            len(groups),
            choices,
            chosen.kind,
        )
    else:
        chosen = _by_choice(groups, choice.strip(), series_uid, choices)
    return [frames[i] for i in chosen.frames], chosen


def _by_choice(
    groups: list[VolumeGroup], choice: str, series_uid: str, choices: str
) -> VolumeGroup:
    if choice.isdigit():
        number = int(choice)
        if not 1 <= number <= len(groups):
            raise ConfigError(
                f"--volume {choice}: series {series_uid} has {len(groups)} volume(s): {choices}"
            )
        return groups[number - 1]
    found = [g for g in groups if g.matches(choice)]
    if len(found) != 1:
        what = "matches no volume" if not found else "matches several volumes"
        raise ConfigError(f"--volume {choice} {what} of series {series_uid}: {choices}")
    return found[0]
