"""Training samples made fresh from random scenes, with simulated prompts.

``SampleStream`` renders the few planes of a random scene that one 2.5-D model input
needs (the slice and its context taps, at a random slice thickness and field of view,
``medseg.preprocess.context_taps``) plus the neighbouring slices, and draws samples from
them the way serving will use the network:

- ``auto`` (no prompt) on the whole field of view: the target is every lesion on the slice;
- prompted samples on a crop around one lesion, zoomed to the model input as
  ``medseg.propagate`` crops around a prompt:
  - ``point``: a click inside the lesion (biased to its interior, where readers click);
  - ``box``: a box around it, jittered and usually a little loose;
  - ``carry``: what propagation feeds the next slice, a click at the deepest point of the
    lesion's mask on the neighbouring slice; the target is the lesion on this slice, empty
    where it has ended, so the network learns where to stop;
  - sometimes a negative click on another lesion or elsewhere, which the target excludes.

The prompt never holds the answer (no mask prompts), so the network cannot learn to
return its prompt: from a click it has to find the lesion's extent in the image.
A prompted target is the prompted lesion alone. Rendered slabs are kept in a small pool
and each is drawn from a few times, since rendering costs about as much as a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.modelcard import ModelCard
from medseg.preprocess import CT_PRESETS, context_taps
from medseg.prompt_maps import POINT_CROP_MM, PromptMaps, box_crop_mm, deepest_point, draw
from medseg.synthetic.scene import Scene, random_scene, render

MODES = ("auto", "point", "box", "carry")
LESION_SLICE_SHARE = 0.8  # whole-view slabs through a lesion rather than anywhere
END_SHARE = 0.35  # zoomed slabs anywhere along the lesion and past its ends (carry stops)


@dataclass(frozen=True)
class SampleConfig:
    """What the stream draws from. ``auto_share`` of slabs show the whole field of view
    (automatic samples); the rest are prompt crops, split by the point and box shares
    (the remainder: carried clicks)."""

    families: tuple[str, ...] = ("lobulated", "metaball")
    modalities: tuple[str, ...] = ("CT", "MR")
    seed_offset: int = 0
    auto_share: float = 0.3
    point_share: float = 0.45
    box_share: float = 0.25
    negative_share: float = 0.15
    thickness_mm: tuple[float, float] = (0.6, 5.0)
    pool: int = 24
    draws_per_slab: int = 4

    def prompted(self) -> np.ndarray:
        """Probabilities of point, box and carry among prompted samples."""
        shares = np.array([self.point_share, self.box_share, 1.0])
        shares[2] = max(1.0 - self.point_share - self.box_share, 0.0)
        return shares / shares.sum()


@dataclass(frozen=True)
class Slab:
    """The unit-windowed planes around one slice and their lesion labels; ``focus`` is the
    lesion a zoomed slab was rendered around (0: a whole-view slab)."""

    scene: Scene
    unit: np.ndarray  # (3, H, W) model channels in [0, 1] (context blended)
    labels: np.ndarray  # (H, W) lesion numbers on the slice
    neighbours: tuple[np.ndarray, ...]  # lesion labels on the slices either side
    focus: int = 0


@dataclass(frozen=True)
class Sample:
    """One training input: channels (3, H, W), prompt maps (2, H, W), target (H, W)."""

    unit: np.ndarray
    prompt: np.ndarray
    target: np.ndarray
    mode: str


@dataclass(frozen=True)
class Batch:
    units: np.ndarray  # (N, 3, H, W)
    prompts: np.ndarray  # (N, 2, H, W)
    targets: np.ndarray  # (N, H, W)
    modes: tuple[str, ...]


def _window_unit(
    scene: Scene, planes: np.ndarray, card: ModelCard, whole: np.ndarray
) -> np.ndarray:
    """Windowed [0, 1] planes; MR percentiles come from ``whole`` (the whole field of view,
    as serving takes them from the whole volume, not from a prompt's crop)."""
    if scene.modality == "CT":
        centre, width = CT_PRESETS[card.default_ct_window]
        low, high = centre - width / 2, centre + width / 2
    else:
        low, high = np.percentile(whole, card.mr_percentiles)
        high = max(high, low + 1e-3)
    return np.clip((planes - np.float32(low)) / np.float32(high - low), 0.0, 1.0)


def zoom_side_mm(rng: np.random.Generator, diameter_mm: float) -> float:
    """A crop side like those ``medseg.propagate`` uses around a click or a box."""
    side = POINT_CROP_MM if rng.random() < 0.5 else box_crop_mm(diameter_mm)
    return float(side * np.exp(rng.uniform(-0.25, 0.25)))


def render_slab(
    rng: np.random.Generator, scene: Scene, card: ModelCard, thickness: float, zoom: bool
) -> Slab:
    """Render the planes one sample of ``scene`` needs at slice ``thickness`` mm, over the
    whole field of view or (``zoom``) a prompt's crop around one of its lesions."""
    size = card.input_size
    fov, centre, focus = None, (0.0, 0.0), 0
    if zoom and scene.lesions:
        focus = int(rng.integers(len(scene.lesions))) + 1
        lesion = scene.lesions[focus - 1]
        (z0, z1), (y0, y1), (x0, x1) = lesion.shape.bounds()
        cz, cy, cx = _anchor(lesion.shape)
        fov = zoom_side_mm(rng, 0.7 * max(y1 - y0, x1 - x0))
        shift = rng.uniform(-0.12, 0.12, 2) * fov
        centre = (cy + shift[0], cx + shift[1])
        if rng.random() < END_SHARE:
            centre_z = float(rng.uniform(z0 - thickness, z1 + thickness))
        else:
            centre_z = float(cz + rng.uniform(-0.25, 0.25) * (z1 - z0))
    else:
        centre_z = _pick_z(rng, scene)
    reach = math.ceil(card.slice_context_mm / thickness) + 1 if card.slice_context_mm else 1
    k = reach
    taps = context_taps(k, 2 * reach + 1, thickness, card)
    needed = sorted({k - 1, k, k + 1} | {t[0] for t in taps} | {t[1] for t in taps})
    zs = np.array([centre_z + (i - k) * thickness for i in needed])
    noise_seed = int(rng.integers(1 << 30))
    image, labels = render(scene, zs, *size, noise_seed=noise_seed, fov_mm=fov, centre=centre)
    whole = image
    if fov is not None and scene.modality == "MR":  # the window of the whole field of view
        middle = zs[len(zs) // 2 : len(zs) // 2 + 1]
        whole = render(scene, middle, 96, 96, noise_seed=noise_seed)[0]
    unit = _window_unit(scene, image, card, whole)
    at = {i: n for n, i in enumerate(needed)}
    channels = np.stack([(1 - w) * unit[at[lo]] + w * unit[at[hi]] for lo, hi, w in taps]).astype(
        np.float32
    )
    return Slab(scene, channels, labels[at[k]], (labels[at[k - 1]], labels[at[k + 1]]), focus)


def _anchor(shape: object) -> tuple[float, float, float]:
    """A shape's own centre (a metaball's: the mean of its kernels), which lies inside it
    far more surely than the centre of its bounds."""
    centre = getattr(shape, "centre", None)
    if centre is None:
        centre = tuple(np.mean(np.asarray(shape.centres), axis=0))  # type: ignore[attr-defined]
    return tuple(float(v) for v in centre)  # type: ignore[return-value]


def _pick_z(rng: np.random.Generator, scene: Scene) -> float:
    """A slice through one of the lesions (LESION_SLICE_SHARE of the time), else anywhere."""
    if scene.lesions and rng.random() < LESION_SLICE_SHARE:
        lesion = scene.lesions[int(rng.integers(len(scene.lesions)))]
        (z0, z1), _, _ = lesion.shape.bounds()
        return float(_anchor(lesion.shape)[0] + rng.uniform(-0.25, 0.25) * (z1 - z0))
    return float(rng.uniform(-60, 60))


def _click(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float]:
    """A click inside ``mask``, more likely far from its edge (where readers click)."""
    depth = ndimage.distance_transform_edt(mask)
    rows, cols = np.nonzero(mask)
    weights = depth[rows, cols] ** 1.5
    pick = int(rng.choice(len(rows), p=weights / weights.sum()))
    return float(rows[pick]), float(cols[pick])


def _box(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    h, w = r1 - r0 + 1, c1 - c0 + 1
    loose = rng.uniform(0.0, 0.15)

    def side(value: float, extent: float, outward: int) -> float:
        return value + outward * loose * extent + rng.normal(0, 0.06 * extent + 0.7)

    return (side(r0, h, -1), side(c0, w, -1), side(r1, h, 1), side(c1, w, 1))


def _auto(slab: Slab) -> Sample:
    shape = slab.labels.shape
    target = (slab.labels > 0).astype(np.float32)
    return Sample(slab.unit, np.zeros((2, *shape), np.float32), target, "auto")


def draw_sample(
    rng: np.random.Generator, slab: Slab, mode: str, negative_share: float = 0.0
) -> Sample:
    """One sample of ``slab`` in ``mode`` (one of MODES). A prompted mode the slice cannot
    give (its lesion is not there) falls back to another: carry, then auto."""
    labels = slab.labels
    if mode == "auto":
        return _auto(slab)
    number = slab.focus
    present = [int(n) for n in np.unique(labels) if n]
    if number not in present and mode != "carry":
        number = int(rng.choice(present)) if present else number
        mode = mode if present else "carry"
    target = labels == number
    if mode == "carry":
        sides = [side for side in slab.neighbours if (side == number).any()] if number else []
        if not sides:
            return _auto(slab)
        previous = sides[int(rng.integers(len(sides)))] == number
        r, c = deepest_point(previous)
        maps = PromptMaps(positive=((r + rng.normal(0, 0.7), c + rng.normal(0, 0.7)),))
    elif mode == "point":
        clicks = [_click(rng, target)]
        if rng.random() < 0.1:
            clicks.append(_click(rng, target))
        maps = PromptMaps(positive=tuple(clicks))
    else:
        maps = PromptMaps(boxes=(_box(rng, target),))
    if rng.random() < negative_share:
        others = (labels > 0) & (labels != number)
        where = others if others.any() else ~target
        if where.any():
            maps = PromptMaps(maps.positive, (_click(rng, where),), maps.boxes)
    return Sample(slab.unit, draw(maps, labels.shape), target.astype(np.float32), mode)


class SampleStream:
    """An endless supply of (input, prompt, target) batches from fresh random scenes."""

    def __init__(self, config: SampleConfig, card: ModelCard, seed: int) -> None:
        self.config, self.card = config, card
        self.rng = np.random.default_rng(seed)
        self.next_scene = 1_000_000 * (seed + 1) + config.seed_offset
        self.pool: list[tuple[Slab, int]] = []

    def _fresh(self) -> Slab:
        cfg, rng = self.config, self.rng
        family = str(rng.choice(cfg.families))
        modality = str(rng.choice(cfg.modalities))
        scene = random_scene(self.next_scene, family, modality)
        self.next_scene += 1
        lo, hi = cfg.thickness_mm
        thickness = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        return render_slab(rng, scene, self.card, thickness, rng.random() >= cfg.auto_share)

    def _mode(self, slab: Slab) -> str:
        if not slab.focus:
            return "auto"
        return str(self.rng.choice(MODES[1:], p=self.config.prompted()))

    def batch(self, size: int, crop: int | None = None) -> Batch:
        """``size`` samples; ``crop``: square windows of that many pixels at the same scale
        (a third of a whole input's cost), holding the target (and so its prompt) where it
        has one."""
        while len(self.pool) < self.config.pool:
            self.pool.append((self._fresh(), 0))
        samples = []
        for _ in range(size):
            i = int(self.rng.integers(len(self.pool)))
            slab, used = self.pool[i]
            sample = draw_sample(self.rng, slab, self._mode(slab), self.config.negative_share)
            unit, prompt, target = sample.unit, sample.prompt, sample.target
            if crop is not None:
                unit, prompt, target = _window(self.rng, crop, unit, prompt, target)
            if self.rng.random() < 0.5:
                unit, prompt, target = unit[..., ::-1], prompt[..., ::-1], target[..., ::-1]
            samples.append(Sample(unit, prompt, target, sample.mode))
            used += 1
            self.pool[i] = (
                (self._fresh(), 0) if used >= self.config.draws_per_slab else (slab, used)
            )
        return Batch(
            np.ascontiguousarray(np.stack([s.unit for s in samples])),
            np.ascontiguousarray(np.stack([s.prompt for s in samples])),
            np.ascontiguousarray(np.stack([s.target for s in samples])),
            tuple(s.mode for s in samples),
        )


def _window(
    rng: np.random.Generator, size: int, unit: np.ndarray, prompt: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` window of a sample, over its target and prompt if it has them."""
    height, width = target.shape
    marked = (target > 0) | (prompt[0] > 0)
    rows, cols = np.nonzero(marked)
    starts = []
    for found, n in ((rows, height), (cols, width)):
        if len(found):
            lo, hi = int(found.min()), int(found.max())
            low = max(0, min(hi - size + 1, n - size))
            high = min(lo, n - size)
            start = (
                int(rng.integers(low, high + 1)) if high >= low else max(0, (lo + hi - size) // 2)
            )
        else:
            start = int(rng.integers(0, n - size + 1))
        starts.append(min(max(start, 0), n - size))
    r, c = starts
    view = np.s_[..., r : r + size, c : c + size]
    return unit[view], prompt[view], target[view]
