"""Surface distances: Hausdorff (max), HD95, ASSD and normalised surface Dice.

Definitions (docs/evaluation.md has the rationale):

* A mask's *surface* is its voxels with at least one of their 6 face neighbours outside the
  mask; voxels beyond the array edge count as outside. A single voxel is its own surface.
* Distances are exact Euclidean distances in mm (anisotropic spacing honoured) from each
  surface voxel centre of one mask to the nearest surface voxel centre of the other. Both
  directed sets are computed once and every distance metric is derived from them.
* HD = the larger of the two directed maxima. HD95 = the larger of the two directed 95th
  percentiles (as MONAI, DeepMind's surface-distance and Metrics Reloaded do), so it is
  symmetric, never exceeds HD and is not dominated by whichever surface has more voxels.
* ASSD = the mean of all directed distances pooled from both surfaces.
* NSD (normalised surface Dice at tolerance tau) = the fraction of both surfaces' voxels
  lying within tau of the other surface.

Both masks empty: distances 0 and NSD 1 (nothing disagrees). Exactly one empty: distances
inf and NSD 0 (no surface to be close to).

Two interchangeable ways to get the directed distances: a k-d tree of the other surface's
voxel centres (default: cost grows with the surface, not the volume) or the exact distance
transform of the cropped volume (``scipy.ndimage.distance_transform_edt``); they agree to
floating-point rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medseg.errors import ConfigError

DISTANCE_METHODS = ("kdtree", "edt")


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of ``mask``: voxels with a face neighbour outside (or off the array)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)  # off-array voxels are background
    inner = mask & padded[:-2, 1:-1, 1:-1]
    inner &= padded[2:, 1:-1, 1:-1]
    inner &= padded[1:-1, :-2, 1:-1]
    inner &= padded[1:-1, 2:, 1:-1]
    inner &= padded[1:-1, 1:-1, :-2]
    inner &= padded[1:-1, 1:-1, 2:]
    return mask & ~inner


def _directed_kdtree(
    surface_from: np.ndarray, surface_to: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(spacing, dtype=np.float64)
    points_from = np.argwhere(surface_from) * scale
    points_to = np.argwhere(surface_to) * scale
    return cKDTree(points_to).query(points_from)[0], cKDTree(points_from).query(points_to)[0]


def _directed_edt(
    surface_from: np.ndarray, surface_to: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    to_other = ndimage.distance_transform_edt(~surface_to, sampling=spacing)
    forward = to_other[surface_from]
    del to_other
    backward = ndimage.distance_transform_edt(~surface_from, sampling=spacing)[surface_to]
    return forward, backward


@dataclass(frozen=True, eq=False)
class SurfaceDistances:
    """Directed distances (mm) from each surface voxel of one mask to the other surface."""

    pred_to_truth: np.ndarray
    truth_to_pred: np.ndarray

    @classmethod
    def of(
        cls,
        pred: np.ndarray,
        truth: np.ndarray,
        spacing: tuple[float, float, float],
        method: str = "kdtree",
    ) -> SurfaceDistances:
        """Compute both directed distance sets; the arrays should already be cropped."""
        if method not in DISTANCE_METHODS:
            raise ConfigError(f"distance method must be one of {DISTANCE_METHODS}, got {method}")
        surface_pred = surface_voxels(pred)
        surface_truth = surface_voxels(truth)
        if not surface_pred.any() or not surface_truth.any():  # one or both empty
            return cls(
                np.full(np.count_nonzero(surface_pred), np.inf),
                np.full(np.count_nonzero(surface_truth), np.inf),
            )
        directed = _directed_kdtree if method == "kdtree" else _directed_edt
        return cls(*directed(surface_pred, surface_truth, spacing))

    @property
    def _empty_both(self) -> bool:
        return self.pred_to_truth.size == 0 and self.truth_to_pred.size == 0

    @property
    def _one_empty(self) -> bool:
        return not self._empty_both and (
            self.pred_to_truth.size == 0 or self.truth_to_pred.size == 0
        )

    def hausdorff(self) -> float:
        return self.percentile_hausdorff(100.0)

    def percentile_hausdorff(self, percentile: float = 95.0) -> float:
        """Larger of the two directed ``percentile``-th percentiles (linear interpolation)."""
        if self._empty_both:
            return 0.0
        if self._one_empty:
            return float("inf")
        return float(
            max(
                np.percentile(self.pred_to_truth, percentile),
                np.percentile(self.truth_to_pred, percentile),
            )
        )

    def assd(self) -> float:
        """Average symmetric surface distance: mean of both directed sets pooled."""
        if self._empty_both:
            return 0.0
        if self._one_empty:
            return float("inf")
        total = self.pred_to_truth.sum() + self.truth_to_pred.sum()
        return float(total / (self.pred_to_truth.size + self.truth_to_pred.size))

    def surface_dice(self, tolerance_mm: float) -> float:
        """Normalised surface Dice: share of both surfaces within ``tolerance_mm``."""
        if self._empty_both:
            return 1.0
        if self._one_empty:
            return 0.0
        close = np.count_nonzero(self.pred_to_truth <= tolerance_mm) + np.count_nonzero(
            self.truth_to_pred <= tolerance_mm
        )
        return float(close / (self.pred_to_truth.size + self.truth_to_pred.size))


def surface_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, float, float],
    tolerance_mm: float = 1.0,
    method: str = "kdtree",
) -> dict[str, float]:
    """HD, HD95, ASSD and NSD of two boolean arrays (already cropped is faster)."""
    distances = SurfaceDistances.of(pred, truth, spacing, method)
    return {
        "hd": distances.hausdorff(),
        "hd95": distances.percentile_hausdorff(95.0),
        "assd": distances.assd(),
        "nsd": distances.surface_dice(tolerance_mm),
    }
