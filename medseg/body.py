"""Which slices hold any of the body: the others (air only) need no inference.

A series often runs past the patient (a scout range, the head end of a body scan), and a
slice of air cannot hold a lesion: running the network on it costs a full inference for a
known answer. The test is deliberately crude and cheap (one comparison per voxel, about a
millisecond per 512x512 slice) and errs towards running a slice:

- CT: voxels above ``ct_threshold_hu`` (air is about -1000 HU, fat -100, lung parenchyma
  -850 to -500 but always inside a body wall that is above it).
- any other modality (MR has no absolute scale): the volume's own robust range, its 2nd to
  98th percentile (on a subsample), and voxels above ``other_fraction`` of the way up it —
  background noise lies well below a tenth of tissue's brightness.

A slice is body if at least ``min_area_mm2`` of it is above the threshold (a few noise
voxels or a streak do not count, a lesion is never alone in air), and every slice within
``margin_slices`` of a body slice is run too (partial volume at the skin, and the 2.5-D
input of a slice near the body reads its neighbours).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.dicom.volume import Volume
from medseg.errors import ConfigError

# Every this-many voxels along rows and columns for the percentiles of a non-CT volume.
_SUBSAMPLE = 4


@dataclass(frozen=True)
class BodyCriteria:
    """What counts as body in a slice; see the module docstring."""

    ct_threshold_hu: float = -500.0
    other_fraction: float = 0.1
    min_area_mm2: float = 25.0
    margin_slices: int = 1

    def __post_init__(self) -> None:
        if not -1000.0 < self.ct_threshold_hu < 0.0:
            raise ConfigError(
                f"body threshold must lie between air and water (-1000 to 0 HU), "
                f"got {self.ct_threshold_hu}"
            )
        if not 0.0 < self.other_fraction < 0.5:
            raise ConfigError(f"body fraction must lie in (0, 0.5), got {self.other_fraction}")
        if not 0.0 <= self.min_area_mm2 < 1e4:
            raise ConfigError(
                f"minimum body area must lie in [0, 1e4) mm2, got {self.min_area_mm2}"
            )
        if self.margin_slices < 0:
            raise ConfigError(f"body margin must be >= 0 slices, got {self.margin_slices}")


DEFAULT_BODY = BodyCriteria()


def body_threshold(volume: Volume, criteria: BodyCriteria) -> float:
    """The intensity above which a voxel counts as body, for this volume."""
    if volume.modality.upper() == "CT":
        return criteria.ct_threshold_hu
    sample = volume.voxels[:, ::_SUBSAMPLE, ::_SUBSAMPLE]
    low, high = np.percentile(sample, [2.0, 98.0])
    return float(low + criteria.other_fraction * (high - low))


def body_slices(volume: Volume, criteria: BodyCriteria) -> np.ndarray:
    """(slices,) bool: True for each slice that holds body or lies within the margin of one.

    A constant volume (no contrast at all: nothing to tell air from body by) is all True.
    """
    voxels = volume.voxels
    threshold = body_threshold(volume, criteria)
    pixel_mm2 = float(volume.spacing[1] * volume.spacing[2])
    min_pixels = max(1, int(np.ceil(criteria.min_area_mm2 / pixel_mm2)))
    if volume.modality.upper() != "CT" and not np.ptp(voxels[:, ::_SUBSAMPLE, ::_SUBSAMPLE]) > 0:
        return np.ones(len(voxels), dtype=bool)
    counts = np.fromiter(
        (np.count_nonzero(plane > threshold) for plane in voxels), dtype=np.int64, count=len(voxels)
    )
    body = counts >= min_pixels
    margin = criteria.margin_slices
    if margin and body.any():
        near = np.convolve(body.astype(np.int64), np.ones(2 * margin + 1, dtype=np.int64), "same")
        body = near > 0
    return body
