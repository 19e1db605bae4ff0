"""Box and point prompts: steering a single-input network from outside it.

The deployed SAM2-UNet takes only an image, so a prompt decides *where* the network looks
and *which* of its findings are kept:

- a box crops each slice in its range to the box plus a margin, the crop is zoomed to the
  model's input size (a small lesion gets many more pixels), and everything outside the box
  is cleared;
- a point crops a square of ``point_crop_mm`` around itself on every slice within
  ``point_crop_mm / 2`` along the slice normal; afterwards only the 3-D connected
  components containing a positive point are kept and those containing a negative point
  are dropped. Negative points alone leave the whole volume segmented and only drop.

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
from medseg.tiling import Region

if TYPE_CHECKING:  # pragma: no cover
    from medseg.dicom.volume import Volume

log = logging.getLogger(__name__)

Space = Literal["index", "mm"]
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"^\s*({_NUM})\s*(?::|(?<=[\d.])-)\s*({_NUM})\s*$")


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

    def __post_init__(self) -> None:
        if not all(np.isfinite([self.x, self.y, self.z])):
            raise PromptError(
                f"point has a non-finite coordinate: {self.x:g},{self.y:g},{self.z:g}"
            )


Prompt = BoxPrompt | PointPrompt


def _numbers(text: str, count: int, what: str) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != count or not all(re.fullmatch(_NUM, p) for p in parts):
        raise PromptError(f"bad {what} {text!r}: expected {count} comma-separated numbers")
    return [float(p) for p in parts]


def parse_box(text: str, space: Space = "index") -> BoxPrompt:
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
    return BoxPrompt(x0, y0, x1, y1, z0, z1, space)


def parse_point(text: str, space: Space = "index") -> PointPrompt:
    """``a,b,c[:neg|:pos]`` -> PointPrompt."""
    what = "--point-mm" if space == "mm" else "--point"
    coords, _, sign = text.partition(":")
    sign = sign.strip().lower()
    if sign not in ("", "pos", "neg", "+", "-"):
        raise PromptError(f"bad {what} {text!r}: the suffix must be :pos or :neg")
    x, y, z = _numbers(coords, 3, what)
    return PointPrompt(x, y, z, positive=sign not in ("neg", "-"), space=space)


@dataclass(frozen=True)
class Tile:
    """A crop the network runs on: ``region`` of slice ``k`` (a sliding window may reach
    past the slice's edges: that part is padding)."""

    k: int
    region: Region

    @property
    def shape(self) -> tuple[int, int]:
        return self.region.shape


@dataclass(frozen=True, eq=False)
class PromptPlan:
    """What to run and what to keep, in voxel indices of one volume.

    ``keep`` is None for auto-segmentation (everything kept; ``tiles`` is then empty: the
    pipeline covers every slice with the model's windows, ``medseg.tiling``); otherwise
    the voxels the network's answer may survive in. ``box_region``/``point_region`` split it
    by origin for component selection; seeds are (k, j, i) voxel indices.
    """

    tiles: tuple[Tile, ...]
    keep: np.ndarray | None
    box_region: np.ndarray | None
    point_region: np.ndarray | None
    positive: tuple[tuple[int, int, int], ...] = ()
    negative: tuple[tuple[int, int, int], ...] = ()

    def seeds(self, shape: tuple[int, int, int]) -> np.ndarray | None:
        """The points' voxels as a bool mask of ``shape`` (None without points), so a
        refinement that may drop voxels can leave the findings they hit alone."""
        points = self.positive + self.negative
        if not points:
            return None
        seeds = np.zeros(shape, dtype=bool)
        seeds[tuple(np.transpose(points))] = True
        return seeds


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


def _box_bounds(box: BoxPrompt, volume: Volume) -> tuple[int, int, int, int, int, int]:
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
        k0, k1 = (0.0, slices - 1.0) if box.z0 is None else (box.z0, box.z1)
        lo = np.array([min(box.x0, box.x1), min(box.y0, box.y1), min(k0, k1)])
        hi = np.array([max(box.x0, box.x1), max(box.y0, box.y1), max(k0, k1)])
        described = f"box {box.x0:g},{box.y0:g},{box.x1:g},{box.y1:g}@{k0:g}-{k1:g}"
    (c0, r0, k0i), (c1, r1, k1i) = _voxel_indices(np.stack([lo, hi]), volume.shape, described)
    return int(c0), int(c1), int(r0), int(r1), int(k0i), int(k1i)


def _point_index(point: PointPrompt, volume: Volume) -> tuple[int, int, int]:
    """(k, j, i) voxel index of a point, checked to be inside."""
    xyz = np.array([point.x, point.y, point.z], dtype=float)
    index = volume.lps_to_index(xyz) if point.space == "mm" else xyz
    unit = " mm" if point.space == "mm" else ""
    described = f"point {point.x:g},{point.y:g},{point.z:g}{unit}"
    i, j, k = (int(v) for v in _voxel_indices(index, volume.shape, described))
    return k, j, i


def check_prompt_sizes(box_margin: float, point_crop_mm: float) -> None:
    """The box margin must be a finite fraction >= 0, the point crop a finite size > 0 mm."""
    if not np.isfinite(box_margin) or box_margin < 0:
        raise PromptError(f"box margin must be a finite fraction >= 0, got {box_margin}")
    if not np.isfinite(point_crop_mm) or point_crop_mm <= 0:
        raise PromptError(f"point crop size must be a finite size > 0 mm, got {point_crop_mm}")


def _reach(voxels: float, limit: int, least: int) -> int:
    """A margin in whole voxels, at least ``least`` and never beyond the grid's ``limit``
    (a huge but finite option must not overflow, it just means "the whole slice")."""
    return max(least, round(min(float(voxels), float(limit))))


def plan_prompts(
    prompts: tuple[Prompt, ...] | list[Prompt],
    volume: Volume,
    *,
    box_margin: float = 0.15,
    point_crop_mm: float = 64.0,
) -> PromptPlan:
    """Resolve prompts on ``volume`` into tiles to run and regions to keep.

    ``box_margin`` is the context added around a box on each side as a fraction of its
    size (at least 4 voxels); ``point_crop_mm`` the side of a point's square crop.
    """
    check_prompt_sizes(box_margin, point_crop_mm)
    slices, rows, cols = volume.shape
    if not prompts or all(isinstance(p, PointPrompt) and not p.positive for p in prompts):
        negative = tuple(_point_index(p, volume) for p in prompts)  # type: ignore[arg-type]
        return PromptPlan((), None, None, None, (), negative)
    tiles: list[Tile] = []
    box_region = np.zeros(volume.shape, dtype=bool)
    point_region = np.zeros(volume.shape, dtype=bool)
    positive: list[tuple[int, int, int]] = []
    negative: list[tuple[int, int, int]] = []
    for prompt in prompts:
        if isinstance(prompt, BoxPrompt):
            c0, c1, r0, r1, k0, k1 = _box_bounds(prompt, volume)
            box_region[k0 : k1 + 1, r0 : r1 + 1, c0 : c1 + 1] = True
            mr = _reach(box_margin * (r1 - r0 + 1), rows, 4)
            mc = _reach(box_margin * (c1 - c0 + 1), cols, 4)
            tr0, tr1 = max(0, r0 - mr), min(rows, r1 + 1 + mr)
            tc0, tc1 = max(0, c0 - mc), min(cols, c1 + 1 + mc)
            tiles.extend(Tile(k, Region(tr0, tr1, tc0, tc1)) for k in range(k0, k1 + 1))
            continue
        k, j, i = _point_index(prompt, volume)
        (positive if prompt.positive else negative).append((k, j, i))
        if not prompt.positive:
            continue
        half = point_crop_mm / 2.0
        hk = _reach(np.floor(half / volume.spacing[0] + 1e-6), slices, 0)
        hr = _reach(half / volume.spacing[1], rows, 1)
        hc = _reach(half / volume.spacing[2], cols, 1)
        ks = range(max(0, k - hk), min(slices, k + hk + 1))
        tr0, tr1 = max(0, j - hr), min(rows, j + hr + 1)
        tc0, tc1 = max(0, i - hc), min(cols, i + hc + 1)
        point_region[ks.start : ks.stop, tr0:tr1, tc0:tc1] = True
        tiles.extend(Tile(kk, Region(tr0, tr1, tc0, tc1)) for kk in ks)
    keep = box_region | point_region
    return PromptPlan(
        tuple(dict.fromkeys(tiles)),  # drop exact duplicates, keep order
        keep,
        box_region if box_region.any() else None,
        point_region if positive else None,
        tuple(positive),
        tuple(negative),
    )


def select_components(mask: np.ndarray, plan: PromptPlan) -> np.ndarray:
    """Apply the point rules to a thresholded (slices, rows, cols) mask.

    Box results are kept as they are; inside point crops only components that contain a
    positive point survive; then every component containing a negative point is dropped.
    """
    from medseg.postprocess import label_components

    mask = np.asarray(mask, dtype=bool)
    if plan.positive:
        labels, _ = label_components(mask & plan.point_region)
        hits = {int(labels[seed]) for seed in plan.positive}
        missed = [seed for seed in plan.positive if labels[seed] == 0]
        if missed:
            log.warning("%d positive point(s) hit background: nothing kept there", len(missed))
        hits.discard(0)
        chosen = np.isin(labels, sorted(hits)) if hits else np.zeros_like(mask)
        boxed = mask & plan.box_region if plan.box_region is not None else np.zeros_like(mask)
        mask = boxed | chosen
    if plan.negative:
        labels, _ = label_components(mask)
        drop = sorted({int(labels[seed]) for seed in plan.negative} - {0})
        if drop:
            mask = mask & ~np.isin(labels, drop)
    return mask
