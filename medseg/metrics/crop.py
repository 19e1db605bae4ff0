"""Bounding-box cropping: every voxel outside the union of both masks is background.

Distance transforms and connected components cost time and memory in proportion to the
array they run on, so they only ever see the union's bounding box plus a small margin.
"""

from __future__ import annotations

import numpy as np


def union_bbox(
    pred: np.ndarray, truth: np.ndarray, margin: int = 1
) -> tuple[slice, slice, slice] | None:
    """Slices of the bounding box of ``pred | truth`` grown by ``margin`` voxels (clipped).

    None when both masks are empty.
    """
    union = pred | truth
    along_slices = np.flatnonzero(union.any(axis=(1, 2)))
    if along_slices.size == 0:
        return None
    k0, k1 = int(along_slices[0]), int(along_slices[-1]) + 1
    plane = union[k0:k1].any(axis=0)
    rows = np.flatnonzero(plane.any(axis=1))
    cols = np.flatnonzero(plane.any(axis=0))
    bounds = ((k0, k1), (int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1))
    return tuple(  # type: ignore[return-value]
        slice(max(lo - margin, 0), min(hi + margin, n))
        for (lo, hi), n in zip(bounds, union.shape, strict=True)
    )
