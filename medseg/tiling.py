"""Sliding windows: a network trained at one pixel spacing sees every slice at that spacing.

A card with ``pixel_spacing_mm`` s > 0 says the network learnt on ``input_size`` windows at
s mm per pixel. A slice is then covered by windows of ``input_size x s`` mm (``tile_extent``
source pixels each), every window is resampled to ``input_size``, and where windows overlap
their answers are blended with weights that favour window centres, where the network saw
the most context. A slice smaller than a window is padded (the window reaches past the
slice), never stretched, so a structure keeps its size in pixels whatever the matrix.

Without ``pixel_spacing_mm`` the window is the whole slice, resized to ``input_size``: one
window per slice, nothing blended. Serving (``medseg.pipeline``) and training validation
(``medseg.model.train``) both tile with these functions, so they see the same windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from medseg.modelcard import ModelCard

# Neighbouring windows share at least this fraction of a window: the blend needs an overlap
# to hand over from one window's centre to the next; more overlap costs more windows.
MIN_OVERLAP = 0.25
# Blending weight: a Gaussian of sigma = extent / 8 around the window centre (nnU-Net's
# choice), floored so a slice corner that only one window reaches still gets its answer.
_SIGMA_FRACTION = 1.0 / 8.0
_WEIGHT_FLOOR = 1e-3


@dataclass(frozen=True)
class Region:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of a slice; may reach past its edges."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.r1 - self.r0, self.c1 - self.c0)


@dataclass(frozen=True)
class Tile:
    """A crop the network runs on: ``region`` of slice ``k`` (a sliding window may reach
    past the slice's edges: that part is padding)."""

    k: int
    region: Region

    @property
    def shape(self) -> tuple[int, int]:
        return self.region.shape


def tile_extent(
    card: ModelCard, shape: tuple[int, int], pixel_spacing: tuple[float, float]
) -> tuple[int, int]:
    """Source pixels (rows, cols) one window covers: the whole slice without a card spacing.

    ``pixel_spacing`` is (between rows, between columns) in mm, as ``Volume.spacing[1:]``.
    """
    if card.pixel_spacing_mm <= 0:
        return (int(shape[0]), int(shape[1]))
    return tuple(  # type: ignore[return-value]
        max(1, round(size * card.pixel_spacing_mm / spacing))
        for size, spacing in zip(card.input_size, pixel_spacing, strict=True)
    )


def window_starts(length: int, extent: int) -> tuple[int, ...]:
    """Evenly spaced window starts covering ``[0, length)``, neighbours overlapping by at
    least ``MIN_OVERLAP``; one centred (padded) window when the slice is not larger."""
    if extent >= length:
        return ((length - extent) // 2,)
    count = math.ceil((length - extent) / (extent * (1.0 - MIN_OVERLAP))) + 1
    return tuple(int(v) for v in np.linspace(0, length - extent, count).round())


def slice_regions(shape: tuple[int, int], extent: tuple[int, int]) -> tuple[Region, ...]:
    """The windows that cover one slice, row by row."""
    rows, cols = shape
    return tuple(
        Region(r, r + extent[0], c, c + extent[1])
        for r in window_starts(rows, extent[0])
        for c in window_starts(cols, extent[1])
    )


def crop_padded(image: np.ndarray, region: Region, fill: float) -> np.ndarray:
    """``image[..., r0:r1, c0:c1]``, with ``fill`` where the region reaches past the edges."""
    rows, cols = image.shape[-2:]
    if region.r0 >= 0 and region.c0 >= 0 and region.r1 <= rows and region.c1 <= cols:
        return image[..., region.r0 : region.r1, region.c0 : region.c1]
    out = np.full((*image.shape[:-2], *region.shape), fill, dtype=image.dtype)
    src, dst = _overlap(region, (rows, cols))
    out[(..., *dst)] = image[(..., *src)]
    return out


def _overlap(region: Region, shape: tuple[int, int]) -> tuple[tuple[slice, slice], ...]:
    """(slice-side, window-side) index pairs of the part of ``region`` inside the slice."""
    r0, r1 = max(region.r0, 0), min(region.r1, shape[0])
    c0, c1 = max(region.c0, 0), min(region.c1, shape[1])
    inside = (slice(r0, r1), slice(c0, c1))
    window = (slice(r0 - region.r0, r1 - region.r0), slice(c0 - region.c0, c1 - region.c0))
    return inside, window


@lru_cache(maxsize=16)
def _centre_weights(extent: tuple[int, int]) -> np.ndarray:
    axes = []
    for size in extent:
        offset = (np.arange(size, dtype=np.float64) + 0.5 - size / 2.0) / (size * _SIGMA_FRACTION)
        axes.append(np.exp(-0.5 * offset**2))
    weights = np.maximum(np.outer(*axes), _WEIGHT_FLOOR).astype(np.float32)
    weights.flags.writeable = False
    return weights


class TileBlender:
    """Weighted mean of window answers on a slice grid where every slice has the same
    windows (``regions``); with a single window per slice its answer is taken as it is."""

    def __init__(self, shape: tuple[int, int], regions: Sequence[Region]) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.single = len(regions) == 1
        self.total_weight: np.ndarray | None = None
        if not self.single:
            self.total_weight = np.zeros(self.shape, dtype=np.float32)
            for region in regions:
                inside, window = _overlap(region, self.shape)
                self.total_weight[inside] += _centre_weights(region.shape)[window]

    def add(self, plane: np.ndarray, region: Region, values: np.ndarray) -> None:
        """Add one window's answer ``values`` (its ``region.shape``) into slice ``plane``."""
        inside, window = _overlap(region, self.shape)
        if self.single:
            plane[inside] = values[window]
        else:
            plane[inside] += _centre_weights(region.shape)[window] * values[window]

    def finish(self, stack: np.ndarray) -> np.ndarray:
        """Divide the accumulated (slices, rows, cols) ``stack`` by the weights, in place."""
        if self.total_weight is not None:
            stack /= self.total_weight
        return stack
