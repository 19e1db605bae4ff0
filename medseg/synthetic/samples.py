"""Training samples made fresh from random scenes, with simulated prompts.

``SampleStream`` renders the few planes of a random scene that one 2.5-D model input
needs (the slice and its context taps, at a random slice thickness and field of view,
``medseg.preprocess.context_taps``) plus the neighbouring slices, and draws samples from
them the way SAM-family training simulates a reader:

- no prompt (automatic mode): the target is every lesion on the slice;
- a click inside one lesion (biased to its interior), sometimes a second one;
- a box around one lesion, jittered and usually a little loose;
- the lesion's mask on the neighbouring slice (what 2-D -> 3-D propagation feeds), whose
  target may be empty where the lesion ends, so the network learns when to stop;
- sometimes a negative click on another lesion or elsewhere, which the target excludes.

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
from medseg.prompt_maps import POINT_CROP_MM, PromptMaps, box_crop_mm, draw
from medseg.synthetic.scene import Scene, random_scene, render

LESION_SLICE_SHARE = 0.8  # whole-view slabs through a lesion rather than anywhere


@dataclass(frozen=True)
class SampleConfig:
    """What the stream draws from; shares are probabilities of each prompt mode."""

    families: tuple[str, ...] = ("lobulated", "metaball")
    modalities: tuple[str, ...] = ("CT", "MR")
    seed_offset: int = 0
    auto_share: float = 0.3
    point_share: float = 0.25
    box_share: float = 0.25  # the rest: the neighbouring slice's mask
    negative_share: float = 0.2
    zoom_share: float = 0.5  # slabs rendered as a prompt's crop around a lesion
    thickness_mm: tuple[float, float] = (0.6, 5.0)
    pool: int = 24
    draws_per_slab: int = 4


@dataclass(frozen=True)
class Slab:
    """The unit-windowed planes around one slice and their lesion labels."""

    scene: Scene
    unit: np.ndarray  # (3, H, W) model channels in [0, 1] (context blended)
    labels: np.ndarray  # (H, W) lesion numbers on the slice
    neighbours: tuple[np.ndarray, ...]  # lesion labels on the slices either side


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
    fov, centre = None, (0.0, 0.0)
    if zoom and scene.lesions:
        lesion = scene.lesions[int(rng.integers(len(scene.lesions)))]
        (z0, z1), (y0, y1), (x0, x1) = lesion.shape.bounds()
        cz, cy, cx = _anchor(lesion.shape)
        fov = zoom_side_mm(rng, 0.7 * max(y1 - y0, x1 - x0))
        shift = rng.uniform(-0.2, 0.2, 2) * fov
        centre = (cy + shift[0], cx + shift[1])
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
    return Slab(scene, channels, labels[at[k]], (labels[at[k - 1]], labels[at[k + 1]]))


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


def draw_sample(
    rng: np.random.Generator, slab: Slab, config: SampleConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit channels (3, H, W), prompt (2, H, W), target (H, W)) for one training step."""
    labels = slab.labels
    shape = labels.shape
    present = [n for n in np.unique(labels) if n]
    mode = rng.choice(
        ["auto", "point", "box", "mask"],
        p=[
            config.auto_share,
            config.point_share,
            config.box_share,
            1 - config.auto_share - config.point_share - config.box_share,
        ],
    )
    if mode == "mask":
        side = slab.neighbours[int(rng.integers(2))]
        candidates = [n for n in np.unique(side) if n]
        if candidates:
            number = int(rng.choice(candidates))
            prompt_mask = side == number
            grow = int(rng.integers(-1, 2))
            if grow > 0:
                prompt_mask = ndimage.binary_dilation(prompt_mask, iterations=grow)
            elif grow < 0 and prompt_mask.sum() > 12:
                prompt_mask = ndimage.binary_erosion(prompt_mask)
            target = labels == number
            maps = PromptMaps(mask=prompt_mask)
            return (
                slab.unit,
                draw(_with_negative(rng, maps, labels, number, config), shape),
                target.astype(np.float32),
            )
        mode = "auto"
    if mode == "auto" or not present:
        return slab.unit, np.zeros((2, *shape), np.float32), (labels > 0).astype(np.float32)
    number = int(rng.choice(present))
    target = labels == number
    if mode == "point":
        clicks = [_click(rng, target)]
        if rng.random() < 0.15:
            clicks.append(_click(rng, target))
        maps = PromptMaps(positive=tuple(clicks))
    else:
        maps = PromptMaps(boxes=(_box(rng, target),))
    maps = _with_negative(rng, maps, labels, number, config)
    return slab.unit, draw(maps, shape), target.astype(np.float32)


def _with_negative(
    rng: np.random.Generator,
    maps: PromptMaps,
    labels: np.ndarray,
    number: int,
    config: SampleConfig,
) -> PromptMaps:
    """Maybe add a negative click on another lesion (or anywhere off the target)."""
    if rng.random() >= config.negative_share:
        return maps
    others = (labels > 0) & (labels != number)
    where = others if others.any() else labels != number
    click = _click(rng, where)
    return PromptMaps(maps.positive, (click,), maps.boxes, maps.mask)


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
        return render_slab(rng, scene, self.card, thickness, rng.random() < cfg.zoom_share)

    def batch(
        self, size: int, crop: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit channels (N, 3, H, W), prompts (N, 2, H, W), targets (N, H, W).

        ``crop``: square windows of that many pixels at the same scale (a third of a whole
        input's cost), holding the target (and so its prompt) where it has one."""
        while len(self.pool) < self.config.pool:
            self.pool.append((self._fresh(), 0))
        units, prompts, targets = [], [], []
        for _ in range(size):
            i = int(self.rng.integers(len(self.pool)))
            slab, used = self.pool[i]
            unit, prompt, target = draw_sample(self.rng, slab, self.config)
            if crop is not None:
                unit, prompt, target = _window(self.rng, crop, unit, prompt, target)
            if self.rng.random() < 0.5:
                unit, prompt, target = unit[..., ::-1], prompt[..., ::-1], target[..., ::-1]
            units.append(unit)
            prompts.append(prompt)
            targets.append(target)
            used += 1
            self.pool[i] = (
                (self._fresh(), 0) if used >= self.config.draws_per_slab else (slab, used)
            )
        return (
            np.ascontiguousarray(np.stack(units)),
            np.ascontiguousarray(np.stack(prompts)),
            np.ascontiguousarray(np.stack(targets)),
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
