"""Edge-aware refinement of a probability map, guided by the image it was computed from.

SAM2-UNet's finest decoder features are at stride 4: its logits are a 88x88 map upsampled
to 352x352, then resized to the slice. A 10 mm lesion on a 1.4 mm slice is about two
feature cells across, so its predicted border is smooth and can sit a pixel or two off
the real intensity edge. The guided filter (He, Sun & Tang, "Guided Image Filtering",
ECCV 2010) fits the probabilities, in every small box, as a linear function of the
windowed image, so the mask follows the image's edges where it has them and stays as it
was where it has none.

The refinement only redraws borders: it changes voxels within ``radius`` of what the
network already marked above the threshold, never anywhere else, so it cannot add a
finding far from one and it does nothing to a slice without one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.modelcard import check_refinement
from medseg.preprocess import IntensityWindow

# Slices refined per step: bounds the filter's scratch arrays (about 8 float32 copies of
# a chunk) on a 512x512x1000 volume.
_CHUNK_SLICES = 16


@dataclass(frozen=True)
class Refinement:
    """Guided-filter settings: box radius in mm (0: off) and regularisation ``eps``.

    ``eps`` is in squared window units (the guide is the windowed image in [0, 1]): edges
    whose contrast is well above ``sqrt(eps)`` steer the mask, flatter regions keep the
    network's probabilities.
    """

    radius_mm: float = 0.0
    eps: float = 1e-4

    def __post_init__(self) -> None:
        check_refinement(self.radius_mm, self.eps, "refinement")

    @property
    def enabled(self) -> bool:
        return self.radius_mm > 0


def box_radius(radius_mm: float, pixel_spacing: tuple[float, float]) -> tuple[int, int]:
    """The filter's box half-size in pixels per in-plane axis (at least one pixel)."""
    return tuple(max(1, round(radius_mm / s)) for s in pixel_spacing)  # type: ignore[return-value]


def guided_filter(
    guide: np.ndarray, values: np.ndarray, radius: tuple[int, int], eps: float
) -> np.ndarray:
    """He et al.'s guided filter of ``values`` by ``guide``, slice by slice of a stack."""
    size = (1, 2 * radius[0] + 1, 2 * radius[1] + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(x, size=size, mode="nearest")

    mean_i, mean_v = box(guide), box(values)
    var_i = box(guide * guide) - mean_i * mean_i
    cov_iv = box(guide * values) - mean_i * mean_v
    a = cov_iv / (var_i + np.float32(eps))
    b = mean_v - a * mean_i
    return box(a) * guide + box(b)


def refine_probabilities(
    probabilities: np.ndarray,
    image: np.ndarray,
    window: IntensityWindow,
    pixel_spacing: tuple[float, float],
    level: float,
    settings: Refinement,
) -> np.ndarray:
    """Probabilities with borders redrawn along the image's edges (a new array).

    ``probabilities`` and ``image`` (raw voxels) are (slices, rows, cols); the guide is
    ``image`` through ``window``, the same intensity mapping the network was given. Only
    voxels within the box radius of a voxel above ``level`` change.
    """
    if probabilities.shape != image.shape:
        raise ValueError(f"image {image.shape} does not match probabilities {probabilities.shape}")
    out = np.array(probabilities, dtype=np.float32)
    if not settings.enabled:
        return out
    radius = box_radius(settings.radius_mm, pixel_spacing)
    above = out > np.float32(level)
    slices = np.flatnonzero(above.any(axis=(1, 2)))
    structure = np.ones((1, 2 * radius[0] + 1, 2 * radius[1] + 1), dtype=bool)
    for start in range(0, slices.size, _CHUNK_SLICES):
        ks = slices[start : start + _CHUNK_SLICES]
        rows, cols = _support(above[ks], radius)
        near = ndimage.binary_dilation(above[ks][:, rows, cols], structure=structure)
        chunk = out[ks][:, rows, cols]
        guide = window.apply(image[ks][:, rows, cols])
        filtered = guided_filter(guide, chunk, radius, settings.eps)
        chunk[near] = np.clip(filtered[near], 0.0, 1.0)
        out[ks, rows, cols] = chunk
    return out


def _support(above: np.ndarray, radius: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and cols that decide the refinement of ``above``'s neighbourhood.

    A refined voxel lies within ``radius`` of a marked one and reads the image and the
    probabilities within twice the radius of itself, so three radii around the marked
    voxels' bounding box give the same answer as the whole slice, at a fraction of the cost.
    """
    bounds = []
    for axis, r in zip((1, 2), radius, strict=True):
        hit = np.flatnonzero(above.any(axis=tuple(a for a in (0, 1, 2) if a != axis)))
        bounds.append(slice(max(int(hit[0]) - 3 * r - 1, 0), int(hit[-1]) + 3 * r + 2))
    return bounds[0], bounds[1]
