"""Box and point prompts: what a reader marks, parsed and placed on a volume.

A promptable network sees each prompt drawn into its prompt input
(``medseg.prompt_maps``); ``medseg.propagate`` carries a one-slice prompt through the
volume. This module only parses the command line's prompts and resolves them to voxel
indices of one volume.

Coordinates are voxel indices (column i, row j, slice k; 0-based) or patient LPS mm.
Command-line syntax (see docs/segment.md)::

    --box x0,y0,x1,y1[@k | @k0-k1]      voxel indices, inclusive; no @: every slice
    --box-mm x0,y0,x1,y1@z | @z0:z1     LPS mm, the slice range as z (mm)
    --point i,j,k[:neg]                 voxel indices
    --point-mm x,y,z[:neg]              LPS mm
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Literal

import numpy as np

from medseg.errors import PromptError

if TYPE_CHECKING:  # pragma: no cover
    from medseg.dicom.volume import Volume

log = logging.getLogger(__name__)

Space = Literal["index", "mm"]
# how the slice part of an index-space prompt is read: the 0-based index along the slice
# normal (medseg's own), the InstanceNumber a viewer shows (the frame number of a
# multi-frame image), or the slice position along the normal in mm (a viewer's "z")
SliceBy = Literal["index", "instance", "z"]
SLICE_BY: tuple[str, ...] = ("index", "instance", "z")
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"^\s*({_NUM})\s*(?::|(?<=[\d.])-)\s*({_NUM})\s*$")


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass(frozen=True)
class Tracking:
    """A finding's TID 1500 Tracking Identifier and Tracking Unique Identifier, carried from
    a reader's mark to the SEG segment of the lesion it prompted (and so into the report),
    so that the reader's finding and medseg's segment are one finding across documents.

    ``identifier`` is cut to 64 characters (VR LO); ``uid`` must be a UID (VR UI) or empty.
    """

    identifier: str = ""
    uid: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "identifier", self.identifier.strip()[:64])
        if self.uid and (len(self.uid) > 64 or not _UID.fullmatch(self.uid)):
            raise PromptError("a tracking UID must be digits and dots, at most 64 characters")


@dataclass(frozen=True)
class BoxPrompt:
    """An in-plane box on one slice or a slice range.

    ``space="index"``: x = column, y = row, ``z0..z1`` = slice indices (None: every slice).
    ``space="mm"``: x, y, z are LPS mm; the box is the LPS-aligned block between the two
    corners and is mapped to the voxel-index bounding block.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    z0: float | None = None
    z1: float | None = None
    space: Space = "index"
    slices: SliceBy = "index"
    tracking: Tracking | None = None  # the reader's finding this box marks

    def __post_init__(self) -> None:
        values = [self.x0, self.y0, self.x1, self.y1]
        values += [v for v in (self.z0, self.z1) if v is not None]
        if not all(np.isfinite(values)):
            raise PromptError(
                "box has a non-finite coordinate: " + ",".join(f"{v:g}" for v in values)
            )
        if (self.z0 is None) != (self.z1 is None):
            raise PromptError("box slice range needs both ends")
        if self.space == "mm" and self.z0 is None:
            raise PromptError("a --box-mm needs its slice position: x0,y0,x1,y1@z or @z0:z1")


@dataclass(frozen=True)
class PointPrompt:
    """A positive (keep what is here) or negative (drop what is here) point."""

    x: float
    y: float
    z: float
    positive: bool = True
    space: Space = "index"
    slices: SliceBy = "index"
    tracking: Tracking | None = None  # the reader's finding this point marks

    def __post_init__(self) -> None:
        if not all(np.isfinite([self.x, self.y, self.z])):
            raise PromptError(
                f"point has a non-finite coordinate: {self.x:g},{self.y:g},{self.z:g}"
            )


Prompt = BoxPrompt | PointPrompt


def lesion_prompts(prompts: tuple[Prompt, ...] | list[Prompt]) -> list[Prompt]:
    """The prompts that each start a lesion (boxes, positive points), in order: lesion n of
    a prompted result is the n-th of them (``medseg.propagate`` numbers lesions so)."""
    return [p for p in prompts if isinstance(p, BoxPrompt) or p.positive]


def _numbers(text: str, count: int, what: str) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != count or not all(re.fullmatch(_NUM, p) for p in parts):
        raise PromptError(f"bad {what} {text!r}: expected {count} comma-separated numbers")
    return [float(p) for p in parts]


def parse_box(text: str, space: Space = "index", slices: SliceBy = "index") -> BoxPrompt:
    """``x0,y0,x1,y1[@k|@k0-k1|@k0:k1]`` -> BoxPrompt (mm boxes need the ``@`` part)."""
    what = "--box-mm" if space == "mm" else "--box"
    corners, _, where = text.partition("@")
    x0, y0, x1, y1 = _numbers(corners, 4, what)
    z0 = z1 = None
    if where.strip():
        match = _RANGE.match(where)
        if match:
            z0, z1 = float(match.group(1)), float(match.group(2))
        elif re.fullmatch(rf"\s*{_NUM}\s*", where):
            z0 = z1 = float(where)
        else:
            raise PromptError(f"bad {what} slice part {where!r}: use @k, @k0-k1 or @z0:z1")
    elif "@" in text:
        raise PromptError(f"bad {what} {text!r}: nothing after '@'")
    return BoxPrompt(x0, y0, x1, y1, z0, z1, space, slices)


def parse_point(text: str, space: Space = "index", slices: SliceBy = "index") -> PointPrompt:
    """``a,b,c[:neg|:pos]`` -> PointPrompt."""
    what = "--point-mm" if space == "mm" else "--point"
    coords, _, sign = text.partition(":")
    sign = sign.strip().lower()
    if sign not in ("", "pos", "neg", "+", "-"):
        raise PromptError(f"bad {what} {text!r}: the suffix must be :pos or :neg")
    x, y, z = _numbers(coords, 3, what)
    return PointPrompt(x, y, z, positive=sign not in ("neg", "-"), space=space, slices=slices)


def _voxel_indices(index: np.ndarray, shape: tuple[int, int, int], described: str) -> np.ndarray:
    """(..., 3) continuous (i, j, k) -> the nearest voxels' integer (i, j, k).

    Inside means within half a voxel of the grid, so -0.5 and n - 0.5 are still inside;
    rounding such an edge value can land one past the grid (``np.rint(15.5) == 16``), hence
    the clip after rounding: the edge belongs to the outermost voxel.
    """
    slices, rows, cols = shape
    upper = np.array([cols, rows, slices], dtype=np.float64) - 1.0
    index = np.asarray(index, dtype=np.float64)
    if np.any(index < -0.5) or np.any(index > upper + 0.5):
        raise PromptError(
            f"{described} lies outside the volume (columns 0-{cols - 1}, rows 0-{rows - 1}, "
            f"slices 0-{slices - 1})"
        )
    return np.clip(np.rint(index), 0.0, upper).astype(np.int64)


def box_bounds(box: BoxPrompt, volume: Volume) -> tuple[int, int, int, int, int, int]:
    """Inclusive (c0, c1, r0, r1, k0, k1) voxel bounds of a box."""
    slices = volume.shape[0]
    if box.space == "mm":
        corners = np.array(
            list(product((box.x0, box.x1), (box.y0, box.y1), (box.z0, box.z1))), dtype=float
        )
        index = volume.lps_to_index(corners)
        lo, hi = index.min(axis=0), index.max(axis=0)
        described = f"box {box.x0:g},{box.y0:g},{box.x1:g},{box.y1:g} mm at z {box.z0:g}:{box.z1:g}"
    else:
        if box.z0 is None:
            k0, k1 = 0.0, slices - 1.0
        else:
            k0, k1 = (slice_index(volume, z, box.slices) for z in (box.z0, box.z1))
        lo = np.array([min(box.x0, box.x1), min(box.y0, box.y1), min(k0, k1)])
        hi = np.array([max(box.x0, box.x1), max(box.y0, box.y1), max(k0, k1)])
        described = f"box {box.x0:g},{box.y0:g},{box.x1:g},{box.y1:g}@{k0:g}-{k1:g}"
    (c0, r0, k0i), (c1, r1, k1i) = _voxel_indices(np.stack([lo, hi]), volume.shape, described)
    return int(c0), int(c1), int(r0), int(r1), int(k0i), int(k1i)


def point_index(point: PointPrompt, volume: Volume) -> tuple[int, int, int]:
    """(k, j, i) voxel index of a point, checked to be inside."""
    if point.space == "mm":
        index = volume.lps_to_index(np.array([point.x, point.y, point.z], dtype=float))
    else:
        index = np.array([point.x, point.y, slice_index(volume, point.z, point.slices)])
    unit = " mm" if point.space == "mm" else ""
    described = f"point {point.x:g},{point.y:g},{point.z:g}{unit}"
    i, j, k = (int(v) for v in _voxel_indices(index, volume.shape, described))
    return k, j, i


def instance_numbers(volume: Volume) -> list[int | None]:
    """What a viewer numbers each slice by: its frame number in a multi-frame image, else
    the InstanceNumber of its file (None where the file has none)."""
    by_uid = {str(ds.get("SOPInstanceUID", "")): ds.get("InstanceNumber") for ds in volume.datasets}
    numbers: list[int | None] = []
    for frame in volume.frames:
        if frame.frame_number is not None:
            numbers.append(int(frame.frame_number))
            continue
        value = by_uid.get(frame.sop_instance_uid)
        numbers.append(None if value in (None, "") else int(value))
    return numbers


def slice_positions_mm(volume: Volume) -> np.ndarray:
    """Each slice's position along the slice normal in mm (a viewer's slice "z")."""
    normal = np.asarray(volume.direction, dtype=float)[:, 2]
    return np.asarray(volume.positions, dtype=float) @ normal


def slice_index(volume: Volume, value: float, slices: SliceBy) -> float:
    """A slice given as an index, an InstanceNumber or a position in mm -> its index
    (continuous; range checks come with the rest of the prompt)."""
    if slices == "index":
        return float(value)
    if slices == "instance":
        numbers = instance_numbers(volume)
        if float(value) in numbers:
            return float(numbers.index(float(value)))  # type: ignore[arg-type]
        known = sorted(n for n in numbers if n is not None)
        span = f"{known[0]}-{known[-1]}" if known else "none"
        raise PromptError(f"no slice with InstanceNumber {value:g} (this series has {span})")
    if slices == "z":
        positions = slice_positions_mm(volume)
        step = volume.spacing[0] if positions[-1] >= positions[0] else -volume.spacing[0]
        return float((value - positions[0]) / step) if len(positions) > 1 else 0.0
    raise PromptError(f"unknown slice numbering {slices!r} (use {', '.join(SLICE_BY)})")
