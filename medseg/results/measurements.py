"""Per-lesion numbers from a label mask and its geometry: what the measurement report states.

Definitions (docs/report.md):

- **volume**: the lesion's voxels times the voxel volume (ml), as any SEG reader counts it.
- **long axis**: on each slice, the longest distance between two points of one connected
  region of the lesion (8-connected pixels, each drawn as its full pixel square, so the
  line runs edge to edge as a reader's calliper would); reported for the slice where it is
  longest (RECIST 1.1 style). One region: two separate islands on a slice are never
  spanned by one diameter.
- **short axis**: on that slice and region, the longest line at right angles to the long
  axis that lies wholly inside the region (a chord, as a reader draws the perpendicular of
  a bidirectional measurement). Measured on lines sampled every quarter pixel, so it is
  exact to about half a pixel; the long axis is exact.
- **HU** (CT only): mean, population standard deviation and maximum of the voxel values
  (Hounsfield units) inside the lesion.

Coordinates of the axes' ends are image coordinates (column, row) of the slice's image,
origin at the top-left corner of the top-left pixel, as an SR SCOORD states them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from medseg.dicom.volume import Volume
from medseg.errors import OutputError

SAMPLES_PER_PIXEL = 4  # short-axis sampling step: a quarter of the finer pixel spacing
_EIGHT = np.ones((3, 3), dtype=bool)
_CROSS = ndimage.generate_binary_structure(2, 1)
_CORNERS = np.array([(0, 0), (0, 1), (1, 0), (1, 1)], dtype=np.float64)  # (row, col) offsets

Point = tuple[float, float]


@dataclass(frozen=True)
class Axis:
    """One in-plane diameter: its length (mm), slice index and ends (column, row)."""

    length_mm: float
    slice_index: int
    ends: tuple[Point, Point]


@dataclass(frozen=True)
class Intensity:
    """HU statistics inside a lesion (CT): mean, population SD, maximum."""

    mean: float
    std: float
    maximum: float


@dataclass(frozen=True)
class LesionMeasurements:
    """What the report says about one lesion (one SEG segment).

    ``long_axis`` / ``short_axis`` are None for an empty lesion; ``short_axis`` also for a
    region too thin to hold a perpendicular sample line. ``intensity`` is None unless CT.
    """

    segment_number: int
    voxels: int
    volume_ml: float
    long_axis: Axis | None = None
    short_axis: Axis | None = None
    intensity: Intensity | None = None

    def __post_init__(self) -> None:
        if self.segment_number < 1:
            raise OutputError(f"segment numbers start at 1, got {self.segment_number}")
        if self.voxels < 0 or self.volume_ml < 0:
            raise OutputError("a lesion's voxel count and volume cannot be negative")


def _pixel_spacing(volume: Volume) -> tuple[float, float]:
    """(row, col) spacing in mm: rows are PixelSpacing[0] apart, columns PixelSpacing[1]."""
    return float(volume.spacing[1]), float(volume.spacing[2])


def _corners_mm(region: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """(n, 2) unique (row, col) corners of the region's border pixels, in mm."""
    inner = ndimage.binary_erosion(region, structure=_CROSS)  # the hull needs only the rim
    rows, cols = np.nonzero(region & ~inner)
    pixels = np.stack([rows, cols], axis=1).astype(np.float64)
    corners = np.unique((pixels[:, None, :] + _CORNERS[None]).reshape(-1, 2), axis=0)
    return corners * np.asarray(spacing)


def _farthest_pair(points: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Length and ends of the longest segment between ``points`` (n, 2), via their hull."""
    hull = points[ConvexHull(points).vertices] if len(points) > 3 else points
    gaps = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(gaps)), gaps.shape)
    return float(gaps[i, j]), hull[i], hull[j]


def _to_image(point_mm: np.ndarray, spacing: tuple[float, float]) -> Point:
    """(row, col) mm -> (column, row) image coordinates."""
    return float(point_mm[1] / spacing[1]), float(point_mm[0] / spacing[0])


def _longest_on_slice(
    plane: np.ndarray, spacing: tuple[float, float]
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray] | None:
    """The longest diameter of any 8-connected region of ``plane`` (rows, cols): length,
    ends (row, col mm) and the region."""
    labels, count = ndimage.label(plane, structure=_EIGHT)
    best = None
    for number in range(1, count + 1):
        region = labels == number
        length, start, end = _farthest_pair(_corners_mm(region, spacing))
        if best is None or length > best[0]:
            best = (length, start, end, region)
    return best


def _longest_run(inside: np.ndarray) -> tuple[int, int, int]:
    """For each row of ``inside`` (lines, samples) bool: (line, first, last) of the longest
    run of True samples over all rows; (-1, 0, -1) when there is none."""
    padded = np.pad(inside, ((0, 0), (1, 1))).astype(np.int8)
    edges = np.diff(padded, axis=1)
    line_up, starts = np.nonzero(edges == 1)
    _, stops = np.nonzero(edges == -1)  # row-major: pairs with ``starts`` one to one
    if not len(starts):
        return -1, 0, -1
    longest = int(np.argmax(stops - starts))
    return int(line_up[longest]), int(starts[longest]), int(stops[longest] - 1)


LINES_PER_CHUNK = 256  # bounds memory: a 300 mm finding samples ~1700 x 1700 points


def _short_axis(
    region: np.ndarray, start: np.ndarray, end: np.ndarray, spacing: tuple[float, float]
) -> tuple[float, np.ndarray, np.ndarray] | None:
    """The longest chord of ``region`` at right angles to start->end (row, col mm)."""
    step = min(spacing) / SAMPLES_PER_PIXEL
    along = end - start
    length = float(np.linalg.norm(along))
    u = along / length
    v = np.array([-u[1], u[0]])
    reach = _corners_mm(region, spacing) @ v - start @ v
    offsets = np.arange(step / 2, length, step)  # positions of the lines along the long axis
    across = np.arange(reach.min() + step / 2, reach.max(), step)  # samples along each line
    best: tuple[int, int, int] = (-1, 0, -1)
    for first_line in range(0, len(offsets), LINES_PER_CHUNK):
        chunk = offsets[first_line : first_line + LINES_PER_CHUNK]
        points = start + chunk[:, None, None] * u + across[None, :, None] * v  # (lines, s, 2)
        pixel = np.floor(points / np.asarray(spacing)).astype(np.int64)
        rows, cols = pixel[..., 0], pixel[..., 1]
        valid = (rows >= 0) & (rows < region.shape[0]) & (cols >= 0) & (cols < region.shape[1])
        inside = np.zeros(valid.shape, dtype=bool)
        inside[valid] = region[rows[valid], cols[valid]]
        line, lo, hi = _longest_run(inside)
        if line >= 0 and hi - lo > best[2] - best[1]:
            best = (first_line + line, lo, hi)
    line, lo, hi = best
    if line < 0:
        return None
    base = start + offsets[line] * u
    low = base + (across[lo] - step / 2) * v
    high = base + (across[hi] + step / 2) * v
    return float(np.linalg.norm(high - low)), low, high


def axes(mask: np.ndarray, volume: Volume) -> tuple[Axis | None, Axis | None]:
    """(long axis, short axis) of a lesion mask (slices, rows, cols) on ``volume``."""
    spacing = _pixel_spacing(volume)
    best: tuple[int, tuple[float, np.ndarray, np.ndarray, np.ndarray]] | None = None
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        found = _longest_on_slice(mask[k], spacing)
        if found is not None and (best is None or found[0] > best[1][0]):
            best = (int(k), found)
    if best is None:
        return None, None
    k, (length, start, end, region) = best
    long_axis = Axis(length, k, (_to_image(start, spacing), _to_image(end, spacing)))
    short = _short_axis(region, start, end, spacing)
    if short is None:
        return long_axis, None
    width, low, high = short
    return long_axis, Axis(width, k, (_to_image(low, spacing), _to_image(high, spacing)))


def intensity(mask: np.ndarray, volume: Volume) -> Intensity | None:
    """HU mean, population SD and maximum inside ``mask``; None unless CT or when empty."""
    if volume.modality.upper() != "CT" or not mask.any():
        return None
    values = volume.voxels[mask].astype(np.float64)
    return Intensity(float(values.mean()), float(values.std()), float(values.max()))


def measure_lesion(mask: np.ndarray, volume: Volume, segment_number: int) -> LesionMeasurements:
    """Everything the report states about one lesion mask (slices, rows, cols) bool."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != volume.shape:
        raise OutputError(f"lesion mask {mask.shape} does not match the volume {volume.shape}")
    voxels = int(mask.sum())
    long_axis, short_axis = axes(mask, volume)
    return LesionMeasurements(
        segment_number=segment_number,
        voxels=voxels,
        volume_ml=voxels * volume.voxel_volume_ml,
        long_axis=long_axis,
        short_axis=short_axis,
        intensity=intensity(mask, volume),
    )


def measure_segments(masks: np.ndarray, volume: Volume) -> list[LesionMeasurements]:
    """One ``LesionMeasurements`` per segment of ``masks`` (segments, slices, rows, cols),
    numbered from 1 as the SEG numbers them."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 3:
        masks = masks[None]
    return [measure_lesion(m, volume, n) for n, m in enumerate(masks, start=1)]
