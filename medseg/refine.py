"""Edge-aware refinement of a probability map, guided by the image it was computed from.

SAM2-UNet's finest decoder features are at stride 4: its logits are a 88x88 map upsampled
to 352x352, then resized to the slice. A 10 mm lesion on a 1.4 mm slice is about two
feature cells across, so its predicted border is smooth and can sit a pixel or two off
the real intensity edge. The guided filter (He, Sun & Tang, "Guided Image Filtering",
ECCV 2010) fits the probabilities, in every small box, as a linear function of the
windowed image, so the mask follows the image's edges where it has them.

The refinement changes only voxels within the box radius of what the network marked,
never anywhere else, so it cannot add a finding far from one and it does nothing to a
slice without one. Where the image has no edge, the filter averages the probabilities
over its box, which wears away the rim of a finding the image does not support; voxels
one pixel or more inside a finding never lose probability, so a finding can shrink to
its core but not vanish.
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
# The smallest difference, in window units, between a finding and its surroundings that
# lets the image continue it across slices: 16 HU in a 400 HU window, where CT noise
# averaged over a few pixels is about 2-5 HU.
MIN_CONTRAST = 0.04
# In-plane connectivity: components of a finding (8-neighbours), grown parts (4-neighbours,
# so a thin bridge of noise does not join a neighbouring structure).
_IN_PLANE = np.ones((3, 3), dtype=bool)
_IN_PLANE_EDGES = ndimage.generate_binary_structure(2, 1)
# A finding's core: its voxels whose 8 in-plane neighbours are in it too.
_CORE = np.zeros((3, 3, 3), dtype=bool)
_CORE[1] = True


@dataclass(frozen=True)
class Refinement:
    """Guided-filter settings: box radius in mm (0: off) and regularisation ``eps``.

    ``across_slices`` also continues findings into the neighbouring slices where the image
    continues them (:func:`continue_across_slices`).

    ``eps`` is in squared window units (the guide is the windowed image in [0, 1]): edges
    whose contrast is well above ``sqrt(eps)`` steer the mask; in flatter regions the
    probabilities are averaged over the box.
    """

    radius_mm: float = 0.0
    eps: float = 1e-4
    across_slices: bool = False

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
    var_i = np.maximum(box(guide * guide) - mean_i * mean_i, 0.0)  # float32 round-off
    cov_iv = box(guide * values) - mean_i * mean_v
    a = cov_iv / (var_i + np.float32(eps))
    b = mean_v - a * mean_i
    return box(a) * guide + box(b)


def refine_probabilities(
    probabilities: np.ndarray,
    image: np.ndarray,
    window: IntensityWindow,
    pixel_spacing: tuple[float, float],
    marked: np.ndarray,
    settings: Refinement,
) -> np.ndarray:
    """Probabilities with the borders of ``marked`` redrawn along the image's edges.

    ``probabilities``, ``image`` (raw voxels) and ``marked`` (bool: the network's findings,
    usually probabilities above the threshold) are (slices, rows, cols); the guide is
    ``image`` through ``window``, the same intensity mapping the network was given. Only
    voxels within the box radius of a marked voxel change; marked voxels one pixel inside a
    finding keep at least their probability. Returns a new array.
    """
    if not probabilities.shape == image.shape == marked.shape:
        raise ValueError(
            f"probabilities {probabilities.shape}, image {image.shape} and marked voxels "
            f"{marked.shape} must have one shape"
        )
    out = np.array(probabilities, dtype=np.float32)
    if not settings.enabled:
        return out
    radius = box_radius(settings.radius_mm, pixel_spacing)
    slices = np.flatnonzero(marked.any(axis=(1, 2)))
    structure = np.ones((1, 2 * radius[0] + 1, 2 * radius[1] + 1), dtype=bool)
    for start in range(0, slices.size, _CHUNK_SLICES):
        ks = slices[start : start + _CHUNK_SLICES]
        rows, cols = _support(marked[ks], radius)
        found = marked[ks][:, rows, cols]
        near = ndimage.binary_dilation(found, structure=structure)
        core = ndimage.binary_erosion(found, structure=_CORE)
        chunk = out[ks][:, rows, cols]
        guide = window.apply(image[ks][:, rows, cols])
        filtered = np.clip(guided_filter(guide, chunk, radius, settings.eps), 0.0, 1.0)
        filtered[core] = np.maximum(filtered[core], chunk[core])
        chunk[near] = filtered[near]
        out[ks, rows, cols] = chunk
    return out


def _support(marked: np.ndarray, radius: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and cols that decide the refinement of ``marked``'s neighbourhood.

    A refined voxel lies within ``radius`` of a marked one and reads the image and the
    probabilities within twice the radius of itself, so three radii around the marked
    voxels' bounding box give the same answer as the whole slice, at a fraction of the cost.
    """
    bounds = []
    for axis, r in zip((1, 2), radius, strict=True):
        hit = np.flatnonzero(marked.any(axis=tuple(a for a in (0, 1, 2) if a != axis)))
        bounds.append(slice(max(int(hit[0]) - 3 * r - 1, 0), int(hit[-1]) + 3 * r + 2))
    return bounds[0], bounds[1]


def continue_across_slices(
    mask: np.ndarray,
    image: np.ndarray,
    window: IntensityWindow,
    pixel_spacing: tuple[float, float],
    settings: Refinement,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """``mask`` plus the parts of its findings the network missed on neighbouring slices.

    A lesion's first and last slices show only a small cross-section, which a network
    working at stride 4 tends to miss although the image shows it. Each in-plane component
    of a finding whose median windowed intensity differs from that of a ring around it by
    at least :data:`MIN_CONTRAST` is continued onto an unmarked neighbouring slice: the
    voxels within the box radius of its footprint whose smoothed intensity lies within half
    that difference of the finding's, connected to the component's own pixels, join the
    mask if they are no more than the component's area (a lesion narrows towards its ends;
    anything larger is a neighbouring structure). The new part is continued the same way,
    with the first component's intensities. Returns a new array; never removes a voxel;
    adds none outside ``allowed`` when given.
    """
    if not mask.shape == image.shape:
        raise ValueError(f"mask {mask.shape} and image {image.shape} must have one shape")
    out = np.array(mask, dtype=bool)
    if not (settings.enabled and settings.across_slices) or out.shape[0] < 2:
        return out
    radius = box_radius(settings.radius_mm, pixel_spacing)
    near = np.ones((2 * radius[0] + 1, 2 * radius[1] + 1), dtype=bool)
    sigma = tuple(settings.radius_mm / 2 / s for s in pixel_spacing)
    guide = _SliceGuide(image, window)
    todo = [
        (k, step, _Part(box, part, *levels))
        for k in np.flatnonzero(out.any(axis=(1, 2)))
        for box, part in _components(out[k], 4 * max(radius) + 2)
        if (levels := _levels(guide(k)[box], part, ~out[k][box], near)) is not None
        for step in (-1, 1)
    ]
    while todo:
        k, step, seed = todo.pop()
        kk = k + step
        if not 0 <= kk < out.shape[0]:
            continue
        footprint = ndimage.binary_dilation(seed.pixels, structure=near)
        if (out[kk][seed.box] & footprint).any():
            continue  # the network has this slice: its outline stands
        smooth = ndimage.gaussian_filter(guide(kk)[seed.box], sigma, mode="nearest")
        like = footprint & (np.abs(smooth - seed.inside) < abs(seed.inside - seed.around) / 2)
        if allowed is not None:
            like &= allowed[kk][seed.box]
        grown = _touching(like, seed.pixels)
        if not grown.any() or grown.sum() > seed.pixels.sum():
            continue
        out[kk][seed.box] |= grown
        todo.append((kk, step, _Part(seed.box, grown, seed.inside, seed.around)))
    return out


@dataclass(frozen=True)
class _Part:
    """A finding's in-plane part being continued, and the intensities it is continued by."""

    box: tuple[slice, slice]
    pixels: np.ndarray
    inside: float
    around: float


class _SliceGuide:
    """Windowed slices, computed once each and only for slices that are looked at."""

    def __init__(self, image: np.ndarray, window: IntensityWindow) -> None:
        self._image, self._window, self._done = image, window, {}

    def __call__(self, k: int) -> np.ndarray:
        if k not in self._done:
            self._done[k] = self._window.apply(self._image[k])
        return self._done[k]


def _levels(
    guide: np.ndarray, part: np.ndarray, free: np.ndarray, near: np.ndarray
) -> tuple[float, float] | None:
    """Median intensity of ``part`` and of its unmarked surroundings, if they differ enough."""
    inner = ndimage.binary_dilation(part, structure=near)
    ring = ndimage.binary_dilation(inner, structure=near) & ~inner & free
    if ring.sum() < 8:
        return None
    inside, around = float(np.median(guide[part])), float(np.median(guide[ring]))
    return (inside, around) if abs(inside - around) >= MIN_CONTRAST else None


def _components(plane: np.ndarray, margin: int) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """Each connected part of ``plane`` as (bounding box grown by ``margin``, its mask there)."""
    labels, _ = ndimage.label(plane, structure=_IN_PLANE)
    parts = []
    for number, found in enumerate(ndimage.find_objects(labels), start=1):
        box = tuple(
            slice(max(s.start - margin, 0), min(s.stop + margin, n))
            for s, n in zip(found, plane.shape, strict=True)
        )
        parts.append((box, labels[box] == number))
    return parts  # type: ignore[return-value]


def _touching(candidates: np.ndarray, part: np.ndarray) -> np.ndarray:
    """The connected parts of ``candidates`` that overlap ``part``."""
    labels, _ = ndimage.label(candidates, structure=_IN_PLANE_EDGES)
    hit = np.unique(labels[part & candidates])
    return np.isin(labels, hit[hit > 0])
