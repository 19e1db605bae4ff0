"""From one 2-D prompt to a 3-D lesion, through a promptable network.

A click or a box on one slice is segmented there, with the prompt drawn into the
network's prompt input (``medseg.prompt_maps``), in a square crop around the prompt zoomed
to the model's input (96 mm around a click, three times a box's size around a box: the
crops training renders too, so a 5 mm lesion is not 4 pixels of a 352-pixel slice). The
lesion is then carried to the next slice, in both directions, by a click at the deepest
point of the previous slice's mask (as training simulates it; never the mask itself,
which a network learns to copy), until the network finds nothing more there: the way
SAM2 and MedSAM2 carry an object through a video or a volume. Only the slices the lesion
reaches are run, so one click on a 300-slice series costs a few dozen model calls.

Stopping rules (plain SAM2 overshoots where an object ends): a slice keeps only the part
of its answer at the carried click, which must overlap the previous slice's mask (dilated
by one pixel), may not grow past ``max_growth`` times the previous area (at least 25
pixels of the crop) and may not fall below ``min_share`` of the lesion's largest
cross-section; propagation ends at the first slice with nothing left. Each
positive prompt is one lesion; negative clicks on a slice are drawn into every prompt of
that slice and, afterwards, drop any part of a lesion they hit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.dicom.volume import Volume
from medseg.errors import PromptError
from medseg.prompt_maps import POINT_CROP_MM, PromptMaps, box_crop_mm, deepest_point, draw
from medseg.prompts import PointPrompt, Prompt, box_bounds, point_index
from medseg.tiling import Region, Tile

log = logging.getLogger(__name__)
MIN_AREA = 25  # crop pixels: the smallest previous area the growth limit is measured on

# runs the network on tiles (one crop shape per call) with prompt maps (n, 2, H, W) and
# returns probabilities on the tiles' own grid (n, rows, cols)
SliceRunner = Callable[[list[Tile], np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LesionSeed:
    """One lesion to find: the slices its prompt covers, what is drawn on each, and the
    crop it is run in (voxel rows/cols of every slice).

    ``box``/``point`` are voxel (row, col); ``propagate`` says whether to continue beyond
    ``slices`` (a one-slice prompt) or not (a box the reader gave a slice range: the lesion
    lies within it).
    """

    slices: tuple[int, ...]
    region: Region
    box: tuple[int, int, int, int] | None = None  # r0, c0, r1, c1 (inclusive)
    point: tuple[int, int] | None = None  # row, col
    propagate: bool = True


@dataclass(frozen=True)
class Propagation:
    """Knobs of the stopping rule.

    ``min_share``: a slice whose answer is smaller than this share of the lesion's largest
    cross-section found so far ends propagation. Past a lesion's end the network still
    answers a carried click with a small blob of its own, slice after slice (models/README.md);
    by geometry a lesion's tips beyond 90 % of its radius, where its cross-section is under
    a fifth of its largest, hold under 1 % of a sphere's volume, so little is lost.
    """

    level: float = 0.5
    max_growth: float = 2.5
    max_slices: int = 400
    min_share: float = 0.2


def crop_around(
    centre: tuple[float, float],
    side_mm: float,
    shape: tuple[int, int],
    spacing: tuple[float, float],
) -> Region:
    """A square of ``side_mm`` around voxel ``centre`` (row, col), no larger than the slice
    and moved inside it where it would reach past an edge."""
    extent = []
    for c, n, s in zip(centre, shape, spacing, strict=True):
        size = max(1, min(n, round(side_mm / s)))
        start = min(max(round(c + 0.5 - size / 2), 0), n - size)
        extent.append((start, start + size))
    (r0, r1), (c0, c1) = extent
    return Region(r0, r1, c0, c1)


def lesion_seeds(
    prompts: tuple[Prompt, ...] | list[Prompt], volume: Volume
) -> tuple[list[LesionSeed], list[tuple[int, int, int]]]:
    """Positive prompts -> one seed each; negative points -> (k, row, col) voxels."""
    seeds: list[LesionSeed] = []
    negative: list[tuple[int, int, int]] = []
    shape = volume.shape[1:]
    spacing = (float(volume.spacing[1]), float(volume.spacing[2]))
    for prompt in prompts:
        if isinstance(prompt, PointPrompt):
            k, j, i = point_index(prompt, volume)
            if prompt.positive:
                region = crop_around((j, i), POINT_CROP_MM, shape, spacing)
                seeds.append(LesionSeed((k,), region, point=(j, i)))
            else:
                negative.append((k, j, i))
            continue
        c0, c1, r0, r1, k0, k1 = box_bounds(prompt, volume)
        side = max((r1 - r0 + 1) * spacing[0], (c1 - c0 + 1) * spacing[1])
        region = crop_around(((r0 + r1) / 2, (c0 + c1) / 2), box_crop_mm(side), shape, spacing)
        single = prompt.z0 is not None and k0 == k1
        seeds.append(
            LesionSeed(tuple(range(k0, k1 + 1)), region, box=(r0, c0, r1, c1), propagate=single)
        )
    if not seeds and negative:
        raise PromptError(
            "negative points alone mark nothing to find: add a positive point or a box"
        )
    return seeds, negative


class _Crop:
    """Coordinates of one seed's crop: voxel <-> crop grid <-> model input."""

    def __init__(self, region: Region, size: tuple[int, int]) -> None:
        self.region, self.size = region, size

    def model(self, row: float, col: float) -> tuple[float, float]:
        r = self.region
        (h, w), (mh, mw) = r.shape, self.size
        return ((row - r.r0 + 0.5) * mh / h - 0.5, (col - r.c0 + 0.5) * mw / w - 0.5)

    def local(self, row: int, col: int) -> tuple[int, int] | None:
        r = self.region
        if r.r0 <= row < r.r1 and r.c0 <= col < r.c1:
            return row - r.r0, col - r.c0
        return None

    def maps(
        self,
        seed: LesionSeed | None,
        k: int,
        negative: list[tuple[int, int, int]],
        carry: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Prompt maps of slice ``k``: the seed's own prompt, or the click ``carry`` (crop
        pixel) that carries a lesion from its neighbour; plus the slice's negative clicks."""
        neg = tuple(self.model(r, c) for kk, r, c in negative if kk == k and self.local(r, c))
        boxes, points = (), ()
        if seed is not None and seed.box is not None:
            r0, c0, r1, c1 = seed.box
            boxes = (self.model(r0, c0) + self.model(r1, c1),)
        if seed is not None and seed.point is not None:
            points = (self.model(*seed.point),)
        if carry is not None:
            points = (self.model(carry[0] + self.region.r0, carry[1] + self.region.c0),)
        return draw(PromptMaps(points, neg, boxes), self.size)  # type: ignore[arg-type]


def _component_at(mask: np.ndarray, rc: tuple[int, int]) -> np.ndarray:
    labels, _ = ndimage.label(mask)
    number = labels[rc]
    if number == 0:  # a click just outside the answer: the nearest part within 2 pixels
        r, c = rc
        window = labels[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3]
        found = window[window > 0]
        if not len(found):
            return np.zeros_like(mask)
        number = np.bincount(found).argmax()
    return labels == number


def _overlapping(mask: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The parts of ``mask`` that touch ``previous`` (dilated by a pixel)."""
    labels, count = ndimage.label(mask)
    if not count:
        return mask
    near = ndimage.binary_dilation(previous)
    keep = np.unique(labels[near & mask])
    return np.isin(labels, keep[keep > 0])


def _first_answer(seed: LesionSeed, crop: _Crop, mask: np.ndarray) -> np.ndarray:
    """What a prompted slice keeps: the part at the click, or the parts in the box."""
    if seed.point is not None:
        local = crop.local(*seed.point)
        return _component_at(mask, local) if local else np.zeros_like(mask)
    r0, c0, r1, c1 = seed.box  # type: ignore[misc]
    inside = np.zeros_like(mask)
    top, left = crop.local(r0, c0) or (0, 0)
    bottom, right = crop.local(r1, c1) or mask.shape
    inside[top : bottom + 1, left : right + 1] = True
    return _overlapping(mask, inside & mask) if (inside & mask).any() else mask & inside


def propagate_lesions(
    volume: Volume,
    run: SliceRunner,
    prompts: tuple[Prompt, ...] | list[Prompt],
    size: tuple[int, int],
    rule: Propagation = Propagation(),
) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels uint16: 1..n per lesion, probabilities float32, model calls) for ``prompts``."""
    seeds, negative = lesion_seeds(prompts, volume)
    labels = np.zeros(volume.shape, dtype=np.uint16)
    probabilities = np.zeros(volume.shape, dtype=np.float32)
    calls = 0
    for number, seed in enumerate(seeds, start=1):
        crop = _Crop(seed.region, size)
        ks = list(seed.slices)
        maps = np.stack([crop.maps(seed, k, negative) for k in ks])
        probs = run([Tile(k, seed.region) for k in ks], maps)
        calls += len(ks)
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k, prob in zip(ks, probs, strict=True):
            found[k] = (_first_answer(seed, crop, prob > rule.level), prob)
        if seed.point is not None and not found[ks[0]][0].any():
            log.warning("a positive point hit background: no lesion found there")
        if seed.propagate and any(m.any() for m, _ in found.values()):
            fronts = [(ks[0], -1), (ks[-1], 1)]
            calls += _propagate(volume.shape[0], run, crop, fronts, negative, rule, found)
        r = seed.region
        for k, (mask, prob) in found.items():
            free = labels[k, r.r0 : r.r1, r.c0 : r.c1] == 0
            labels[k, r.r0 : r.r1, r.c0 : r.c1][mask & free] = number
            view = probabilities[k, r.r0 : r.r1, r.c0 : r.c1]
            np.maximum(view, np.where(mask, prob, 0.0), out=view)
    for k, r, c in negative:  # a negative click drops the part of a lesion it hits
        hit = labels[k, r, c]
        if hit:
            component = ndimage.label(labels == hit)[0]
            labels[component == component[k, r, c]] = 0
    outside = labels == 0
    probabilities[outside] = np.minimum(probabilities[outside], np.float32(rule.level * 0.999))
    return labels, probabilities, calls


def _carried(previous: np.ndarray) -> tuple[int, int]:
    """The click that carries a mask onto the next slice: its deepest pixel."""
    row, col = deepest_point(previous)
    return int(row), int(col)


def _propagate(
    slices: int,
    run: SliceRunner,
    crop: _Crop,
    fronts: list[tuple[int, int]],
    negative: list[tuple[int, int, int]],
    rule: Propagation,
    found: dict[int, tuple[np.ndarray, np.ndarray]],
) -> int:
    """Carry each front's mask slice by slice until it ends; both fronts share each call."""
    calls = 0
    peak = max(int(m.sum()) for m, _ in found.values())  # the largest cross-section yet
    active = [(k + step, step, found[k][0]) for k, step in fronts if found[k][0].any()]
    active = [f for f in active if 0 <= f[0] < slices and f[0] not in found]
    while active and calls < rule.max_slices:
        ks = [k for k, _, _ in active]
        clicks = [_carried(previous) for _, _, previous in active]
        maps = np.stack(
            [crop.maps(None, k, negative, c) for (k, _, _), c in zip(active, clicks, strict=True)]
        )
        probs = run([Tile(k, crop.region) for k in ks], maps)
        calls += len(ks)
        following = []
        for (k, step, previous), click, prob in zip(active, clicks, probs, strict=True):
            mask = _overlapping(_component_at(prob > rule.level, click), previous)
            # a small cross-section may well grow (a click on a lesion's end slice), so the
            # limit counts at least MIN_AREA pixels for the previous slice
            area = int(mask.sum())
            if not area or area > rule.max_growth * max(int(previous.sum()), MIN_AREA):
                continue
            if area < rule.min_share * peak:  # a tail the lesion does not have
                continue
            found[k] = (mask, prob)
            peak = max(peak, area)
            nxt = k + step
            if 0 <= nxt < slices and nxt not in found:
                following.append((nxt, step, mask))
        active = following
    return calls
