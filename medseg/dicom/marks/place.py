"""``marks_to_prompts``: what each mark asks of the model, placed on a loaded series.

Every prompt is in voxel indices (``space="index"``) on the slice the mark is on; the rules
(docs/marks.md):

- point (a click, an arrow's tip) -> a point prompt, negative if the mark is;
- line (a lesion's longest diameter) -> a square box on its slice, centred on the line's
  midpoint, whose side is the line's length in mm (the lesion fits in the circle it spans);
- ellipse, circle, box, outline -> the box that bounds it.

Image coordinates (column x, row y) have their origin at the top-left corner of the first
pixel, so the voxel index is (x - 0.5, y - 0.5). Patient-space marks go to the nearest slice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from medseg.dicom.marks.mark import Mark
from medseg.dicom.volume import Volume
from medseg.errors import PromptError
from medseg.prompts import BoxPrompt, PointPrompt, Prompt, Tracking

log = logging.getLogger(__name__)

# a patient-space mark may sit this far (in slices) from its slice's plane and still be on it
_PLANE_TOLERANCE = 0.5 + 1e-6


def _slice_of(mark: Mark, volume: Volume) -> int:
    """The slice a pixel-space mark's image is in the volume."""
    matches = [
        k
        for k, frame in enumerate(volume.frames)
        if frame.sop_instance_uid == mark.sop_instance_uid
        and (mark.frame_number is None or frame.frame_number in (None, mark.frame_number))
    ]
    if not matches:
        log.debug(
            "%s refers to image %s frame %s",
            mark.described,
            mark.sop_instance_uid,
            mark.frame_number,
        )
        raise PromptError(f"a {mark.described} is drawn on an image that is not in this series")
    if len(matches) > 1:
        raise PromptError(
            f"a {mark.described} names a multi-frame image but not which frame it is drawn on"
        )
    return matches[0]


def _on_volume(mark: Mark, volume: Volume) -> tuple[np.ndarray, int]:
    """The mark's points as (n, 2) continuous (i, j) voxel indices, and its slice; the
    mark's centre must lie on the image."""
    slices, rows, cols = volume.shape
    points = np.asarray(mark.points, dtype=np.float64)
    if mark.space == "pixel":
        k = _slice_of(mark, volume)
        ij = points - 0.5
    else:
        own = str(getattr(volume.datasets[0], "FrameOfReferenceUID", "")) if volume.datasets else ""
        if mark.frame_of_reference_uid != own:
            log.debug(
                "%s frame of reference %s, series %s",
                mark.described,
                mark.frame_of_reference_uid,
                own,
            )
            raise PromptError(
                f"a {mark.described} is in another frame of reference than this series"
            )
        index = volume.lps_to_index(points)
        ks = index[:, 2]
        centre = float(np.mean(ks))
        if centre < -0.5 or centre > slices - 0.5:
            raise PromptError(
                f"a {mark.described} lies off the volume by more than half a slice "
                f"(at slice {centre:.1f} of 0-{slices - 1})"
            )
        k = int(np.clip(np.rint(centre), 0, slices - 1))
        if np.any(np.abs(ks - k) > _PLANE_TOLERANCE):
            raise PromptError(
                f"a {mark.described} crosses slices {ks.min():.1f} to {ks.max():.1f}: only marks "
                "drawn in the plane of the series' slices are supported"
            )
        ij = index[:, :2]
    centre = ij.mean(axis=0)  # a circle at the edge may reach past it: its box is clipped
    if np.any(centre < -0.5) or np.any(centre > np.array([cols, rows]) - 0.5):
        raise PromptError(
            f"a {mark.described} lies outside the image (columns 0-{cols - 1}, rows 0-{rows - 1})"
        )
    return ij, k


def _box(
    lo: np.ndarray, hi: np.ndarray, k: int, volume: Volume, tracking: Tracking | None
) -> BoxPrompt:
    """A box on slice k, clipped to the image (a box drawn around a lesion at the edge may
    reach past it)."""
    _, rows, cols = volume.shape
    top = np.array([cols - 1.0, rows - 1.0])
    lo, hi = np.clip(lo, 0.0, top), np.clip(hi, 0.0, top)
    x0, y0, x1, y1 = (float(v) for v in (lo[0], lo[1], hi[0], hi[1]))
    return BoxPrompt(x0, y0, x1, y1, float(k), float(k), tracking=tracking)


def _tracking(mark: Mark) -> Tracking | None:
    """The mark's finding identifiers (SR TID 1500; a GSPS has none) for the segment it
    prompts; a negative point prompts none. A tracking UID that is not a UID is left out
    (the segment gets a new one), the identifier kept."""
    identifier, uid = mark.tracking_identifier or "", mark.tracking_uid or ""
    if mark.negative or (not identifier and not uid):
        return None
    try:
        return Tracking(identifier, uid)
    except PromptError:
        log.debug("%s: tracking UID %r is not a UID; left out", mark.described, uid)
        return Tracking(identifier) if identifier else None


def mark_to_prompt(mark: Mark, volume: Volume) -> Prompt:
    """One mark as the prompt it stands for on ``volume`` (see the module's rules)."""
    ij, k = _on_volume(mark, volume)
    tracking = _tracking(mark)
    if mark.kind == "point":
        i, j = float(ij[0, 0]), float(ij[0, 1])
        return PointPrompt(i, j, float(k), positive=not mark.negative, tracking=tracking)
    if mark.kind == "line":
        col_mm, row_mm = volume.spacing[2], volume.spacing[1]
        step = (ij[1] - ij[0]) * np.array([col_mm, row_mm])
        half_mm = float(np.hypot(*step)) / 2.0
        middle = ij.mean(axis=0)
        half = half_mm / np.array([col_mm, row_mm])
        return _box(middle - half, middle + half, k, volume, tracking)
    if mark.kind == "ellipse":
        centre = ij.mean(axis=0)
        first, second = (ij[1] - ij[0]) / 2.0, (ij[3] - ij[2]) / 2.0
        half = np.sqrt(first**2 + second**2)  # the extent of an ellipse with these semi-axes
        return _box(centre - half, centre + half, k, volume, tracking)
    return _box(ij.min(axis=0), ij.max(axis=0), k, volume, tracking)  # box, outline


def marks_to_prompts(marks: Sequence[Mark], volume: Volume) -> list[Prompt]:
    """Each mark as a prompt in voxel indices of ``volume``, in order.

    Raises ``PromptError`` (one line naming the mark's kind and object, UIDs only in the
    DEBUG log) for a mark on an image outside the series, in another frame of reference,
    off the volume, or across slices.
    """
    prompts = [mark_to_prompt(mark, volume) for mark in marks]
    if prompts:
        log.info("%d mark(s) placed as prompts: %s", len(prompts), _counts(marks))
    return prompts


def _counts(marks: Sequence[Mark]) -> str:
    kinds: dict[str, int] = {}
    for mark in marks:
        kinds[mark.kind] = kinds.get(mark.kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in kinds.items())
