"""Refinement of a network's findings, guided by the image they were computed from.

SAM2-UNet's finest decoder features are at stride 4: its logits are a 88x88 map upsampled
to 352x352, then resized to the slice. A 10 mm lesion on a 1.4 mm slice is about two
feature cells across, so its predicted border is smooth and can sit a pixel or two off
the real intensity edge. The guided filter (He, Sun & Tang, "Guided Image Filtering",
ECCV 2010) fits the probabilities, in every small box, as a linear function of the
windowed image, so the mask follows the image's edges where it has them.

The filter changes only voxels within the box radius of what the network marked, never
anywhere else, so it cannot add a finding far from one and it does nothing to a slice
without one (the refinement across slices, :func:`continue_across_slices`, is the one
step that adds to such slices, and only the narrowing ends of a finding). Where the
image has no edge, the filter averages the probabilities over its box, which wears away
the rim of a finding the image does not support; voxels one pixel or more inside a
finding never lose probability, so a finding can shrink to its core but not vanish.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
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
# The network's outline of a lesion is drawn a little inside it (the smoothed band trims
# a continuation the same way), so the first continuation of a network's finding may hold
# up to this many times its pixels; after that, each continuation must be smaller than
# the one it continues. Chosen on tuning phantoms (models/README.md).
_FIRST_STEP_SIZE = 1.5
# In-plane connectivity: components of a finding (8-neighbours), grown parts (4-neighbours,
# so a thin bridge of noise does not join a neighbouring structure).
_IN_PLANE = np.ones((3, 3), dtype=bool)
_IN_PLANE_EDGES = ndimage.generate_binary_structure(2, 1)
# 3-D findings: voxels touching by a face, an edge or a corner (26-neighbours).
_ALL_NEIGHBOURS = np.ones((3, 3, 3), dtype=bool)
# A finding's core: its voxels whose 8 in-plane neighbours are in it too.
_CORE = np.zeros((3, 3, 3), dtype=bool)
_CORE[1] = True
# Fewer core voxels than this and a finding's own intensity is measured on all of it.
_MIN_CORE = 4


@dataclass(frozen=True)
class Refinement:
    """Guided-filter settings: box radius in mm (0: off) and regularisation ``eps``.

    ``across_slices`` also continues findings into the neighbouring slices where the image
    continues them (:func:`continue_across_slices`). ``rim_level`` > 0 widens each finding
    by the bordering pixels that lie at least that fraction of the way from its
    surroundings' intensity to its core's, and ``rim_trim`` (0, or below ``rim_level``)
    drops its edge pixels that lie less than that fraction of the way (:func:`redraw_rims`).

    ``eps`` is in squared window units (the guide is the windowed image in [0, 1]): edges
    whose contrast is well above ``sqrt(eps)`` steer the mask; in flatter regions the
    probabilities are averaged over the box.
    """

    radius_mm: float = 0.0
    eps: float = 1e-4
    across_slices: bool = False
    rim_level: float = 0.0
    rim_trim: float = 0.0

    def __post_init__(self) -> None:
        check_refinement(self.radius_mm, self.eps, "refinement", self.rim_level, self.rim_trim)

    @property
    def enabled(self) -> bool:
        return self.radius_mm > 0

    @property
    def crosses_slices(self) -> bool:
        return self.enabled and self.across_slices

    @property
    def redraws_rims(self) -> bool:
        return self.enabled and self.rim_level > 0


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
    *,
    in_place: bool = False,
) -> np.ndarray:
    """Probabilities with the borders of ``marked`` redrawn along the image's edges.

    ``probabilities``, ``image`` (raw voxels) and ``marked`` (bool: the network's findings,
    usually probabilities above the threshold) are (slices, rows, cols); the guide is
    ``image`` through ``window``, the same intensity mapping the network was given. Only
    voxels within the box radius of a marked voxel change; marked voxels one pixel inside a
    finding keep at least their probability. Returns a new array, or with ``in_place``
    (float32 ``probabilities`` only) ``probabilities`` itself, changed: the same values
    without copying a whole volume (the pipeline owns its array).
    """
    if not probabilities.shape == image.shape == marked.shape:
        raise ValueError(
            f"probabilities {probabilities.shape}, image {image.shape} and marked voxels "
            f"{marked.shape} must have one shape"
        )
    own = in_place and isinstance(probabilities, np.ndarray) and probabilities.dtype == np.float32
    out = probabilities if own else np.array(probabilities, dtype=np.float32)
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
) -> np.ndarray:
    """``mask`` plus the ends of its findings that the network missed on neighbouring slices.

    A lesion's first and last slices show only a small cross-section, which a network
    working at stride 4 tends to miss although the image shows it. A finding's in-plane
    part is continued if its median windowed intensity differs by at least
    :data:`MIN_CONTRAST` from that of its ring (between one and two box radii out, unmarked
    pixels only, at least 8 of them). On a neighbouring slice with nothing marked within
    one box radius of the part, take the pixels whose intensity, Gaussian-smoothed with
    sigma r/2, lies within half that difference of the part's, and of those the
    4-connected regions that overlap the part's pixels. If they hold fewer pixels than the
    part (a lesion narrows towards its ends; a region as large or larger is a vessel or an
    organ; against a part the network outlined, fewer than 1.5 times as many), their pixels
    within one box radius of the part join the mask and are continued the same way, with
    the first part's two intensities. Returns a new array; never removes a voxel.
    """
    _check_masks(mask, image)
    out = np.array(mask, dtype=bool)
    if not settings.crosses_slices or out.shape[0] < 2:
        return out
    radius = box_radius(settings.radius_mm, pixel_spacing)
    near = np.ones((2 * radius[0] + 1, 2 * radius[1] + 1), dtype=bool)
    sigma = tuple(settings.radius_mm / 2 / s for s in pixel_spacing)
    todo = [
        (k, step, _Part(box, part, *levels, _FIRST_STEP_SIZE))
        for k in np.flatnonzero(out.any(axis=(1, 2)))
        for box, part in _findings(out[k], (4 * max(radius) + 2,) * 2, _IN_PLANE)
        if (levels := _levels(window.apply(image[k][box]), part, ~out[k][box], near))
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
        smooth = ndimage.gaussian_filter(window.apply(image[kk][seed.box]), sigma, mode="nearest")
        like = np.abs(smooth - seed.inside) < abs(seed.inside - seed.around) / 2
        region = _touching(like, seed.pixels)
        if not region.any() or region.sum() >= seed.size_limit * seed.pixels.sum():
            continue
        grown = _touching(region & footprint, seed.pixels)
        out[kk][seed.box] |= grown
        todo.append((kk, step, _Part(seed.box, grown, seed.inside, seed.around, 1.0)))
    return out


def redraw_rims(
    mask: np.ndarray,
    image: np.ndarray,
    window: IntensityWindow,
    spacing: tuple[float, float, float],
    settings: Refinement,
) -> np.ndarray:
    """``mask`` with each finding's border redrawn by a pixel where the image says so.

    The network's outline of a low-contrast lesion, and the guided filter's after it, tend
    to sit a pixel inside the lesion (on tuning phantoms the missed border pixels
    outnumbered the extra ones 1.4 to 1), and where they do not, a pixel of noise decides
    the border. On the windowed image Gaussian-smoothed with sigma r/2 mm along all three
    axes (CT noise is independent from slice to slice, a lesion is not), take for each 3-D
    connected finding the median intensity of its core (voxels whose 8 in-plane neighbours
    are in it; all of it when the core has fewer than 4) and of its ring (unmarked pixels
    between one and two box radii out in plane); if they differ by at least
    :data:`MIN_CONTRAST`:

    * with ``rim_trim`` T > 0 and a core of at least 4 voxels, each of the finding's edge
      pixels (not its core) is dropped when it lies less than T of that difference from
      the ring's value towards the core's: it looks like the surroundings;
    * every unmarked pixel 8-adjacent in plane to what is left joins it when its intensity
      lies within ``1 - rim_level`` of that difference of the core's: at least
      ``rim_level`` of the way from the ring's value to the core's, and no further beyond
      it (fat beside a dark lesion, bone beside a bright one, stays out).

    All three values are read from the same smoothed image, so a small lesion's blurred
    core is compared with its equally blurred border. Pixels join in plane only, one at
    most, so a finding cannot run into a neighbouring organ; the trim takes only edge
    pixels, which on a finding's end slices can be all of them. No pixel joins whose
    26 neighbours hold another finding or a pixel joining another finding, so two findings
    are not joined. ``spacing`` is (slice, row, column) in mm. Returns a new array.
    """
    _check_masks(mask, image)
    if len(spacing) != 3:
        raise ValueError(f"spacing must be (slice, row, column) mm, got {spacing}")
    mask = np.asarray(mask, dtype=bool)
    out = mask.copy()
    if not settings.redraws_rims:
        return out
    radius = box_radius(settings.radius_mm, spacing[1:])
    near = np.ones((1, 2 * radius[0] + 1, 2 * radius[1] + 1), dtype=bool)
    sigma = tuple(settings.radius_mm / 2 / s for s in spacing)
    margin = (math.ceil(4 * sigma[0]), 4 * radius[0] + 2, 4 * radius[1] + 2)
    claims = np.zeros(mask.shape, dtype=np.uint8)  # findings whose rim takes each pixel
    rims = []
    for box, finding in _findings(mask, margin, _ALL_NEIGHBOURS):
        smooth = ndimage.gaussian_filter(window.apply(image[box]), sigma, mode="nearest")
        core = ndimage.binary_erosion(finding, structure=_CORE)
        has_core = core.sum() >= _MIN_CORE
        levels = _levels(smooth, finding, ~mask[box], near, core if has_core else None)
        if levels is None:
            continue
        inside, around = levels
        kept = finding
        if settings.rim_trim > 0 and has_core:
            towards_core = (smooth - around) / (inside - around)
            kept = finding & (core | (towards_core >= settings.rim_trim))
        like = np.abs(smooth - inside) <= (1.0 - settings.rim_level) * abs(inside - around)
        rim = ndimage.binary_dilation(kept, structure=_CORE) & ~mask[box] & like
        out[box] &= ~(finding & ~kept)
        claims[box] += rim
        rims.append((box, finding, rim))
    for box, finding, rim in rims:
        others = (mask[box] & ~finding) | (claims[box] > rim)
        out[box] |= rim & ~ndimage.binary_dilation(others, structure=_ALL_NEIGHBOURS)
    return out


def _findings(
    mask: np.ndarray, margin: tuple[int, ...], structure: np.ndarray
) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """Each finding of ``mask`` (a slice or a volume; connected as ``structure`` says) as
    (its bounding box grown by ``margin`` per axis, its mask there). Only the box around
    all findings is labelled, so a few findings in a large volume cost little."""
    axes = range(mask.ndim)
    hit = [np.flatnonzero(mask.any(axis=tuple(a for a in axes if a != axis))) for axis in axes]
    if hit[0].size == 0:
        return
    region = tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hit)
    labels, _ = ndimage.label(mask[region], structure=structure)
    for number, found in enumerate(ndimage.find_objects(labels), start=1):
        start = [r.start + f.start for r, f in zip(region, found, strict=True)]
        stop = [r.start + f.stop for r, f in zip(region, found, strict=True)]
        box = tuple(
            slice(max(a - m, 0), min(b + m, n))
            for a, b, m, n in zip(start, stop, margin, mask.shape, strict=True)
        )
        finding = np.zeros([b.stop - b.start for b in box], dtype=bool)
        inner = tuple(
            slice(a - b.start, e - b.start) for a, e, b in zip(start, stop, box, strict=True)
        )
        finding[inner] = labels[found] == number
        yield box, finding


def _check_masks(mask: np.ndarray, image: np.ndarray) -> None:
    if mask.ndim != 3:
        raise ValueError(f"mask must be (slices, rows, cols), got shape {mask.shape}")
    if not mask.shape == image.shape:
        raise ValueError(f"mask {mask.shape} and image {image.shape} must have one shape")


@dataclass(frozen=True)
class _Part:
    """A finding's in-plane part being continued, and the intensities it is continued by."""

    box: tuple[slice, slice]
    pixels: np.ndarray
    inside: float
    around: float
    size_limit: float  # a continuation must hold fewer than this many times its pixels


def _levels(
    guide: np.ndarray,
    part: np.ndarray,
    free: np.ndarray,
    near: np.ndarray,
    inner_part: np.ndarray | None = None,
) -> tuple[float, float] | None:
    """Median intensity of ``part`` (or of ``inner_part``, its core) and of its unmarked
    surroundings between one and two ``near`` footprints out, if they differ enough.
    2-D, or 3-D with a 3-D footprint."""
    inner = ndimage.binary_dilation(part, structure=near)
    ring = ndimage.binary_dilation(inner, structure=near) & ~inner & free
    if ring.sum() < 8:
        return None
    inside = float(np.median(guide[part if inner_part is None else inner_part]))
    around = float(np.median(guide[ring]))
    return (inside, around) if abs(inside - around) >= MIN_CONTRAST else None


def _touching(candidates: np.ndarray, part: np.ndarray) -> np.ndarray:
    """The connected parts of ``candidates`` that overlap ``part``."""
    labels, _ = ndimage.label(candidates, structure=_IN_PLANE_EDGES)
    hit = np.unique(labels[part & candidates])
    return np.isin(labels, hit[hit > 0])
