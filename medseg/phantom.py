"""Synthetic abdomen/chest CT phantoms with exact lesion truth.

Training data, demos and end-to-end tests need CT series whose lesions are known voxel for
voxel. A phantom is built from analytic shapes in patient millimetres (so it looks the same
at any matrix size or spacing): body outline, subcutaneous fat, muscle wall, liver, spleen,
kidneys, aorta, spine (and ribs/lungs in the upper slices) with typical Hounsfield units,
then 0-4 ellipsoidal, slightly irregular lesions (5-40 mm), hypo- or hyperdense relative
to the organ they sit in (mostly liver), then partial-volume blur and noise. Everything
follows from the seed. ``write_phantom`` stores it as a CT series (int16 + rescale
intercept, obviously fake patient) with a DICOM-SEG truth written by ``medseg.seg``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage

from medseg.errors import ConfigError, OutputError
from medseg.modelcard import Code, ModelCard, SegmentSpec
from medseg.synthetic.dicomfile import SyntheticSeries, write_slice

log = logging.getLogger(__name__)

AIR, LUNG, FAT, MUSCLE, LIVER, SPLEEN, KIDNEY, AORTA, BONE, MARROW, CANAL, BOWEL, GAS = range(13)
TISSUE_NAMES = (
    "air",
    "lung",
    "fat",
    "muscle",
    "liver",
    "spleen",
    "kidney",
    "aorta",
    "cortical bone",
    "cancellous bone",
    "spinal canal",
    "bowel",
    "gas",
)
# (mean HU without contrast, texture SD, enhancement factor for the contrast phase)
TISSUE_HU: dict[int, tuple[float, float, float]] = {
    AIR: (-1000.0, 0.0, 0.0),
    LUNG: (-860.0, 25.0, 0.0),
    FAT: (-100.0, 8.0, 0.0),
    MUSCLE: (50.0, 6.0, 0.2),
    LIVER: (60.0, 5.0, 1.0),
    SPLEEN: (48.0, 5.0, 1.2),
    KIDNEY: (35.0, 6.0, 2.5),
    AORTA: (40.0, 4.0, 2.5),
    BONE: (850.0, 60.0, 0.0),
    MARROW: (230.0, 30.0, 0.0),
    CANAL: (20.0, 4.0, 0.0),
    BOWEL: (30.0, 10.0, 0.6),
    GAS: (-950.0, 20.0, 0.0),
}
LESION_ORGANS = (LIVER, SPLEEN, KIDNEY)
MAX_VOXELS = 512 * 512 * 300
TRUTH_FAMILY = Code("123104", "DCM", "Morphological Operations")


@dataclass(frozen=True)
class PhantomConfig:
    """Grid and content of a phantom; sizes in voxels, spacings in mm."""

    size: tuple[int, int] = (256, 256)  # (rows, cols)
    slices: int = 40
    pixel_spacing: float = 1.4
    slice_spacing: float = 2.5
    min_lesions: int = 0
    max_lesions: int = 4
    lesion_diameter_mm: tuple[float, float] = (5.0, 40.0)
    # relative odds of a lesion's organ (liver, spleen, kidney); a training set may enrich
    # the rare organs so the network sees enough of them
    lesion_organ_weights: tuple[float, float, float] = (0.8, 0.1, 0.1)
    noise_hu: tuple[float, float] = (6.0, 16.0)  # per-series noise SD range
    blur_mm: float = 0.8  # partial-volume blur (Gaussian sigma, in-plane)

    def __post_init__(self) -> None:
        rows, cols = self.size
        if rows < 16 or cols < 16 or self.slices < 1:
            raise ConfigError("phantom size must be at least 16x16 with one slice")
        if rows * cols * self.slices > MAX_VOXELS:
            raise ConfigError(
                f"phantom larger than 512x512x300 voxels: {rows}x{cols}x{self.slices}"
            )
        if not (0.1 <= self.pixel_spacing <= 10.0 and 0.1 <= self.slice_spacing <= 20.0):
            raise ConfigError("phantom spacing out of range (0.1-10 mm in-plane, 0.1-20 mm slices)")
        if not 0 <= self.min_lesions <= self.max_lesions <= 10:
            raise ConfigError("phantom lesion count must satisfy 0 <= min <= max <= 10")
        low, high = self.lesion_diameter_mm
        if not 1.0 <= low <= high <= 80.0:
            raise ConfigError("phantom lesion diameters must satisfy 1 <= min <= max <= 80 mm")
        weights = self.lesion_organ_weights
        if len(weights) != 3 or not all(np.isfinite(w) and w >= 0 for w in weights):
            raise ConfigError("phantom lesion organ weights must be three numbers >= 0")
        if sum(weights) <= 0:
            raise ConfigError("phantom lesion organ weights must not all be zero")


@dataclass(frozen=True)
class Lesion:
    """One lesion as placed: centre in patient LPS mm (x, y, z), nominal diameter, contrast."""

    center_lps: tuple[float, float, float]
    diameter_mm: float
    organ: str
    delta_hu: float  # lesion HU minus organ HU: negative = hypodense


@dataclass(frozen=True, eq=False)
class Phantom:
    """A generated CT phantom.

    ``hu`` int16 (slices, rows, cols) in Hounsfield units; ``lesions`` bool, same shape,
    exact truth; ``lesion_ids`` uint8 (0 background, i+1 for ``lesion_list[i]``); ``tissues``
    uint8 tissue labels (see ``TISSUE_NAMES``). ``spacing`` (slice, row, col) mm, ``origin``
    LPS of voxel (0, 0, 0); axial slices, rows run anterior -> posterior, columns patient
    right -> left, slices feet -> head.
    """

    seed: int
    config: PhantomConfig
    hu: np.ndarray = field(repr=False)
    lesions: np.ndarray = field(repr=False)
    lesion_ids: np.ndarray = field(repr=False)
    tissues: np.ndarray = field(repr=False)
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    lesion_list: tuple[Lesion, ...]
    contrast_phase: str
    noise_sd: float = field(default=0.0)


@dataclass(frozen=True)
class PhantomFiles:
    """Where ``write_phantom`` put things."""

    folder: Path
    series_dir: Path
    seg_path: Path
    nifti_path: Path | None
    phantom: Phantom
    series_instance_uid: str
    study_instance_uid: str


# --------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class _Blob:
    """An ellipsoid with separate semi-axes on each side, and a rough boundary."""

    center: tuple[float, float, float]  # (z, y, x) mm
    axes_neg: tuple[float, float, float]
    axes_pos: tuple[float, float, float]
    roughness: float
    field_index: int

    def q(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        total = 0.0
        for value, c, neg, pos in zip(
            (z, y, x), self.center, self.axes_neg, self.axes_pos, strict=True
        ):
            d = value - c
            total = total + (d / np.where(d < 0, neg, pos)) ** 2
        return np.sqrt(total)


class _SmoothFields:
    """Low-frequency random fields in mm space, identical whichever chunk samples them."""

    def __init__(self, rng: np.random.Generator, extent: np.ndarray, count: int, cell: float):
        self.cell = cell
        self.lower = -extent - 2 * cell
        shape = tuple(math.ceil(2 * e / cell) + 5 for e in extent)
        self.grids = [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]

    def _weights(self, values: np.ndarray, axis: int) -> np.ndarray:
        """Linear-interpolation matrix from the coarse grid axis onto ``values`` (mm)."""
        size = self.grids[0].shape[axis]
        u = np.clip((values - self.lower[axis]) / self.cell, 0, size - 1.000001)
        i0 = np.floor(u).astype(int)
        frac = u - i0
        weights = np.zeros((values.size, size), dtype=np.float32)
        rows = np.arange(values.size)
        weights[rows, i0] = 1 - frac
        weights[rows, i0 + 1] += frac
        return weights

    def sample(self, index: int, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Field ``index`` on the grid spanned by z (k,1,1), y (1,r,1), x (1,1,c) in mm.

        Trilinear interpolation of a regular grid onto a regular grid is separable, so it
        is three small matrix products instead of a per-voxel lookup.
        """
        wz, wy, wx = (self._weights(np.ravel(v), a) for a, v in enumerate((z, y, x)))
        grid = np.tensordot(wz, self.grids[index], axes=([1], [0]))  # (k, J, K)
        rows = np.matmul(wy, grid)  # (k, r, K)
        flat = rows.reshape(-1, rows.shape[-1]) @ wx.T  # one large GEMM: (k * r, c)
        return flat.reshape(wz.shape[0], wy.shape[0], wx.shape[0])


@dataclass(frozen=True)
class _Anatomy:
    body_axes: tuple[float, float]  # (lateral half-width, AP half-depth) mm
    body_center_y: float
    fat_thickness: float
    muscle_thickness: float
    liver: _Blob
    spleen: _Blob
    kidneys: tuple[_Blob, _Blob]
    aorta: tuple[float, float, float]  # (y, x, radius)
    spine: tuple[float, float, float]  # (y, x, vertebral body radius)
    lung_base_z: float  # lungs above this (with domes)
    bowel_gas: tuple[tuple[float, float, float, float], ...]  # (z, y, x, radius)
    enhancement: float
    noise_sd: float
    rib_phase: float


def _anatomy(rng: np.random.Generator, cfg: PhantomConfig, z_extent: float) -> _Anatomy:
    fov = min(cfg.size) * cfg.pixel_spacing
    scale = min(1.0, fov * 0.46 / 165.0)  # keep the body inside the field of view
    s = scale * rng.uniform(0.9, 1.08)

    def jitter(value: float, spread: float = 0.1) -> float:
        return float(value * s * rng.uniform(1 - spread, 1 + spread))

    # the scan window: z = 0 is its centre; the liver centre sits near it so lesions fit
    liver_z = float(rng.uniform(-0.15, 0.15) * z_extent)
    liver = _Blob(
        center=(liver_z, jitter(-5.0, 0.5), jitter(-55.0)),
        axes_neg=(jitter(70.0), jitter(75.0), jitter(80.0)),
        axes_pos=(jitter(60.0), jitter(65.0), jitter(70.0)),
        roughness=0.06,
        field_index=0,
    )
    spleen = _Blob(
        center=(liver_z + jitter(15.0, 0.6), jitter(35.0), jitter(85.0)),
        axes_neg=(jitter(45.0), jitter(40.0), jitter(22.0)),
        axes_pos=(jitter(45.0), jitter(30.0), jitter(20.0)),
        roughness=0.05,
        field_index=1,
    )
    kidney_z = liver_z - jitter(45.0, 0.3)
    kidneys = tuple(
        _Blob(
            center=(kidney_z + side * jitter(6.0, 0.5), jitter(60.0), side * jitter(62.0)),
            axes_neg=(jitter(50.0), jitter(22.0), jitter(25.0)),
            axes_pos=(jitter(50.0), jitter(25.0), jitter(28.0)),
            roughness=0.04,
            field_index=2,
        )
        for side in (-1.0, 1.0)
    )
    bowel = tuple(
        (
            float(rng.uniform(-0.5, 0.2) * z_extent),
            float(rng.uniform(-70, -20) * s),
            float(rng.uniform(-20, 80) * s),
            float(rng.uniform(4, 12) * s),
        )
        for _ in range(int(rng.integers(2, 7)))
    )
    return _Anatomy(
        body_axes=(jitter(160.0, 0.08), jitter(115.0, 0.1)),
        body_center_y=jitter(5.0, 1.0),
        fat_thickness=jitter(14.0, 0.5),
        muscle_thickness=jitter(9.0, 0.3),
        liver=liver,
        spleen=spleen,
        kidneys=kidneys,  # type: ignore[arg-type]
        aorta=(jitter(32.0), jitter(12.0, 0.3), jitter(11.0, 0.15)),
        spine=(jitter(68.0), 0.0, jitter(19.0, 0.1)),
        lung_base_z=liver_z + jitter(45.0, 0.3),
        bowel_gas=bowel,
        enhancement=float(rng.choice([0.0, 45.0, 65.0])),
        noise_sd=float(rng.uniform(*cfg.noise_hu)),
        rib_phase=float(rng.uniform(0, 30)),
    )


def _put(labels: np.ndarray, where: np.ndarray, tissue: int) -> None:
    labels[np.broadcast_to(where, labels.shape)] = tissue


def _paint_chunk(
    anatomy: _Anatomy, fields: _SmoothFields, z: np.ndarray, y: np.ndarray, x: np.ndarray
) -> np.ndarray:
    """Tissue labels for a block of slices; z (k,1,1), y (1,r,1), x (1,1,c) in mm."""
    shape = np.broadcast_shapes(z.shape, y.shape, x.shape)
    labels = np.full(shape, AIR, dtype=np.uint8)
    a_lat, a_ap = anatomy.body_axes
    wobble = 1.0 + 0.03 * np.sin(z / 40.0)
    yy = y - anatomy.body_center_y
    rough = 0.015 * fields.sample(3, z, y, x)
    body_q = np.sqrt((x / (a_lat * wobble)) ** 2 + (yy / (a_ap * wobble)) ** 2) - rough
    _put(labels, body_q < 1.0, FAT)
    wall_outer = 1.0 - anatomy.fat_thickness / a_ap
    wall_inner = wall_outer - anatomy.muscle_thickness / a_ap
    _put(labels, (body_q < wall_outer) & (body_q >= wall_inner), MUSCLE)
    inside = body_q < wall_inner
    # bowel loops: soft tissue blobs with gas pockets in the anterior abdomen
    for bz, by, bx, br in anatomy.bowel_gas:
        d = np.sqrt((z - bz) ** 2 + (y - by) ** 2 + (x - bx) ** 2)
        _put(labels, inside & (d < br * 1.8), BOWEL)
        _put(labels, inside & (d < br), GAS)
    # lungs above the diaphragm domes (the right dome sits higher, over the liver)
    dome = anatomy.lung_base_z + 18.0 * (1 - (x / a_lat) ** 2) + np.where(x < 0, 8.0, 0.0)
    lung_q = np.sqrt(
        ((np.abs(x) - 0.45 * a_lat) / (0.42 * a_lat)) ** 2 + ((yy + 5.0) / (0.8 * a_ap)) ** 2
    )
    _put(labels, inside & (z > dome) & (lung_q < 1.0), LUNG)
    for organ, blob in ((LIVER, anatomy.liver), (SPLEEN, anatomy.spleen)):
        q = blob.q(z, y, x) - blob.roughness * fields.sample(blob.field_index, z, y, x)
        _put(labels, inside & (q < 1.0) & (labels != LUNG), organ)
    for blob in anatomy.kidneys:
        q = blob.q(z, y, x) - blob.roughness * fields.sample(blob.field_index, z, y, x)
        _put(labels, inside & (q < 1.0), KIDNEY)
    ay, ax, ar = anatomy.aorta
    _put(labels, inside & ((y - ay) ** 2 + (x - ax) ** 2 < ar**2), AORTA)
    sy, sx, sr = anatomy.spine
    ring = np.sqrt((y - sy) ** 2 + (x - sx) ** 2)
    _put(labels, ring < sr, BONE)
    _put(labels, ring < sr - 2.5, MARROW)
    canal_y = sy + sr + 9.0
    canal = np.sqrt((y - canal_y) ** 2 + (x - sx) ** 2)
    lamina = (canal < 15.0) & (np.abs(x - sx) < 16.0) & (y > canal_y - 4.0)
    _put(labels, lamina | ((np.abs(x - sx) < 4.0) & (y > canal_y) & (y < canal_y + 28.0)), BONE)
    _put(labels, canal < 7.0, CANAL)
    for side in (-1.0, 1.0):  # paraspinal muscles
        para = ((x - side * 32.0) / 22.0) ** 2 + ((y - (canal_y + 10.0)) / 20.0) ** 2 < 1.0
        _put(labels, para & inside & (labels == FAT), MUSCLE)
    # ribs: short bone segments inside the wall of the upper slices
    theta = np.arctan2(np.abs(x), yy)  # 0 at the back, pi at the front
    rib_wave = np.sin(2 * np.pi * (z + anatomy.rib_phase + 25.0 * theta) / 30.0)
    rib_band = (body_q < wall_inner + 0.015) & (body_q > wall_inner - 0.03)
    rib_zone = (z > anatomy.lung_base_z - 45.0) & (theta > 0.5) & (theta < 2.4)
    _put(labels, rib_band & rib_zone & (rib_wave > 0.75), BONE)
    return labels


def _place_lesions(
    rng: np.random.Generator,
    cfg: PhantomConfig,
    anatomy: _Anatomy,
    z_positions: np.ndarray,
) -> list[tuple[Lesion, _Blob, float, int]]:
    """Lesion centres inside their organ, in the scanned range, not overlapping."""
    count = int(rng.integers(cfg.min_lesions, cfg.max_lesions + 1))
    organs = {LIVER: anatomy.liver, SPLEEN: anatomy.spleen, KIDNEY: anatomy.kidneys[0]}
    placed: list[tuple[Lesion, _Blob, float, int]] = []
    low, high = cfg.lesion_diameter_mm
    odds = np.asarray(cfg.lesion_organ_weights, dtype=np.float64)
    odds /= odds.sum()
    attempts = 0
    while len(placed) < count and attempts < 400:
        attempts += 1
        organ = int(rng.choice(LESION_ORGANS, p=odds))
        if organ == KIDNEY:
            organs[KIDNEY] = anatomy.kidneys[int(rng.integers(2))]
        blob = organs[organ]
        diameter = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        radius = diameter / 2
        axes = np.minimum(np.asarray(blob.axes_neg), np.asarray(blob.axes_pos))
        reach = 1.0 - 1.3 * radius / axes.min() - 2 * blob.roughness
        if reach <= 0.05:
            continue
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        offset = direction * reach * rng.uniform(0, 1) ** (1 / 3)
        center = np.asarray(blob.center) + offset * axes
        # snap the centre near a slice centre so even a 5 mm lesion is seen on a slice
        k = int(np.argmin(np.abs(z_positions - center[0])))
        if abs(z_positions[k] - center[0]) > cfg.slice_spacing:
            continue
        center[0] = z_positions[k] + rng.uniform(-0.25, 0.25) * min(cfg.slice_spacing, radius)
        if any(
            np.linalg.norm(center[::-1] - np.asarray(other.center_lps))
            < radius + other.diameter_mm / 2 + 4
            for other, _, _, _ in placed
        ):
            continue
        base = TISSUE_HU[organ][0] + TISSUE_HU[organ][2] * anatomy.enhancement
        if rng.uniform() < 0.7:
            delta = -float(rng.uniform(25.0, 60.0))
        else:
            delta = float(rng.uniform(25.0, 60.0))
        stretch = rng.uniform(0.8, 1.2, size=3)
        stretch /= np.prod(stretch) ** (1 / 3)  # same volume as the nominal sphere
        shape = _Blob(
            center=tuple(float(v) for v in center),  # type: ignore[arg-type]
            axes_neg=tuple(float(v) for v in radius * stretch),  # type: ignore[arg-type]
            axes_pos=tuple(float(v) for v in radius * stretch),  # type: ignore[arg-type]
            roughness=0.1,
            field_index=4,
        )
        lesion = Lesion(
            center_lps=(shape.center[2], shape.center[1], shape.center[0]),
            diameter_mm=round(diameter, 2),
            organ=TISSUE_NAMES[organ],
            delta_hu=round(delta, 1),
        )
        placed.append((lesion, shape, base + delta, organ))
    return placed


def generate_phantom(seed: int, config: PhantomConfig | None = None, **overrides: Any) -> Phantom:
    """Generate the phantom for ``seed`` (same seed and config -> identical arrays).

    ``overrides`` replace fields of ``config`` (e.g. ``size=(128, 128), slices=20``).
    """
    cfg = replace(config or PhantomConfig(), **overrides)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    rows, cols = cfg.size
    ps, ss = cfg.pixel_spacing, cfg.slice_spacing
    z = (np.arange(cfg.slices) - (cfg.slices - 1) / 2) * ss
    y = (np.arange(rows) - (rows - 1) / 2) * ps
    x = (np.arange(cols) - (cols - 1) / 2) * ps
    z_extent = max(float(np.ptp(z)), 60.0)
    anatomy = _anatomy(rng, cfg, z_extent)
    extent = np.array([abs(z).max() + 60, abs(y).max() + 60, abs(x).max() + 60])
    fields = _SmoothFields(rng, extent, count=5, cell=18.0)
    lesions = _place_lesions(rng, cfg, anatomy, z)
    texture_seed = int(rng.integers(2**31))
    noise_seed = int(rng.integers(2**31))

    hu = np.empty((cfg.slices, rows, cols), dtype=np.int16)
    tissues = np.empty((cfg.slices, rows, cols), dtype=np.uint8)
    lesion_ids = np.zeros((cfg.slices, rows, cols), dtype=np.uint8)
    sigma_px = cfg.blur_mm / ps
    chunk = max(1, 4_000_000 // (rows * cols))
    for start in range(0, cfg.slices, chunk):
        stop = min(cfg.slices, start + chunk)
        zz = z[start:stop, None, None]
        labels = _paint_chunk(anatomy, fields, zz, y[None, :, None], x[None, None, :])
        values = _tissue_values(labels, anatomy, texture_seed, start)
        for number, (_, shape, lesion_hu, organ) in enumerate(lesions, start=1):
            inside = _lesion_mask(shape, organ, fields, zz, y, x, labels)
            if inside is None:
                continue
            region, mask, texture = inside
            lesion_ids[start:stop][region][mask] = number
            values[region][mask] = lesion_hu + 6.0 * texture[mask]
        if sigma_px > 0.05:
            values = ndimage.gaussian_filter(values, sigma=(0, sigma_px, sigma_px), mode="nearest")
        noise_rng = np.random.default_rng([noise_seed, start])
        noise = noise_rng.standard_normal(values.shape).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=(0, 0.6, 0.6)) * 1.9  # CT noise is correlated
        values += anatomy.noise_sd * noise
        hu[start:stop] = np.clip(np.rint(values), -1024, 3071).astype(np.int16)
        tissues[start:stop] = labels
    origin = (float(x[0]), float(y[0]), float(z[0]))
    log.debug("phantom seed %s: %s lesion(s)", seed, len(lesions))
    return Phantom(
        seed=int(seed),
        config=cfg,
        hu=hu,
        lesions=lesion_ids > 0,
        lesion_ids=lesion_ids,
        tissues=tissues,
        spacing=(ss, ps, ps),
        origin=origin,
        lesion_list=tuple(lesion for lesion, _, _, _ in lesions),
        contrast_phase="non-contrast" if anatomy.enhancement == 0 else "portal venous",
        noise_sd=anatomy.noise_sd,
    )


def _tissue_values(labels: np.ndarray, anatomy: _Anatomy, seed: int, start: int) -> np.ndarray:
    mean = np.zeros(len(TISSUE_NAMES), dtype=np.float32)
    spread = np.zeros(len(TISSUE_NAMES), dtype=np.float32)
    for tissue, (hu, sd, gain) in TISSUE_HU.items():
        mean[tissue] = hu + gain * anatomy.enhancement
        spread[tissue] = sd
    rng = np.random.default_rng([seed, start])
    texture = ndimage.gaussian_filter(
        rng.standard_normal(labels.shape).astype(np.float32), sigma=(0, 2.0, 2.0)
    )
    texture *= 1.0 / max(float(texture.std()), 1e-6)
    return mean[labels] + spread[labels] * texture


def _lesion_mask(
    shape: _Blob,
    organ: int,
    fields: _SmoothFields,
    zz: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    labels: np.ndarray,
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
    """The lesion inside its bounding box within this chunk, clipped to its organ."""
    reach = max(shape.axes_pos) * (1 + 2 * shape.roughness) + 1.0
    cz, cy, cx = shape.center
    z1 = zz[:, 0, 0]
    ks = np.flatnonzero(np.abs(z1 - cz) <= reach)
    js = np.flatnonzero(np.abs(y - cy) <= reach)
    is_ = np.flatnonzero(np.abs(x - cx) <= reach)
    if not (ks.size and js.size and is_.size):
        return None
    region = (
        slice(int(ks[0]), int(ks[-1]) + 1),
        slice(int(js[0]), int(js[-1]) + 1),
        slice(int(is_[0]), int(is_[-1]) + 1),
    )
    zr = z1[region[0], None, None]
    yr = y[None, region[1], None]
    xr = x[None, None, region[2]]
    q = shape.q(zr, yr, xr) - shape.roughness * fields.sample(shape.field_index, zr, yr, xr)
    mask = (q < 1.0) & (labels[region] == organ)
    if not mask.any():
        return None
    return region, mask, fields.sample(2, zr, yr, xr)


# --------------------------------------------------------------------------- writing
TRUTH_CARD = ModelCard(
    name="medseg-phantom",
    version="1",
    architecture="analytic phantom",
    segments=(SegmentSpec(label="Lesion"),),
    intended_use="synthetic ground truth",
)


def _uid(*parts: object) -> str:
    """Deterministic UIDs: the same phantom always has the same instance identities."""
    return generate_uid(entropy_srcs=["medseg-phantom", *[str(p) for p in parts]])


def _write_ct_series(phantom: Phantom, folder: Path, unique_uids: bool) -> tuple[str, str]:
    cfg = phantom.config
    key: tuple[object, ...] = (phantom.seed, cfg)
    if unique_uids:
        key = (*key, generate_uid())  # fresh identities for the same pixels
    study_uid, series_uid, frame_uid = _uid(key, "study"), _uid(key, "series"), _uid(key, "for")
    folder.mkdir(parents=True, exist_ok=True)
    series = SyntheticSeries(
        patient_name=f"PHANTOM^Synthetic{phantom.seed:05d}",
        patient_id=f"PHANTOM-{phantom.seed:05d}",
        study_uid=study_uid,
        series_uid=series_uid,
        frame_uid=frame_uid,
        study_id=f"PH{phantom.seed:05d}",
        study_description="medseg synthetic phantom (not a patient)",
        series_description=f"phantom seed {phantom.seed} {phantom.contrast_phase}",
        model_name="medseg phantom",
        body_part="ABDOMEN",
    )
    for k in range(cfg.slices):
        x, y, z = phantom.origin
        write_slice(
            folder / f"IM{k + 1:04d}.dcm",
            series,
            sop_instance_uid=_uid(key, "image", k),
            instance_number=k + 1,
            position=(x, y, z + k * cfg.slice_spacing),
            pixel_spacing=cfg.pixel_spacing,
            thickness=cfg.slice_spacing,
            values=phantom.hu[k],
        )
    return series_uid, study_uid


def write_phantom(
    out_dir: Path,
    seed: int,
    config: PhantomConfig | None = None,
    *,
    nifti: bool = False,
    unique_uids: bool = False,
    **overrides: Any,
) -> PhantomFiles:
    """Generate the phantom for ``seed`` and write it below ``out_dir``.

    Layout: ``out_dir/ct/IM0001.dcm ...`` (CT series), ``out_dir/truth.seg.dcm`` (DICOM-SEG,
    segment "Lesion"), and with ``nifti`` ``out_dir/truth.nii.gz`` (uint8 lesion label).
    The SEG is written from the series as read back by ``medseg.dicom.load_series``, so it
    references exactly the instances on disk. The CT's UIDs derive from seed and config (the
    same phantom keeps its identity); ``unique_uids`` gives this copy fresh study, series and
    instance UIDs, e.g. to send the same phantom to a PACS again as a new study.
    """
    from medseg.dicom import load_series
    from medseg.seg import write_seg

    phantom = generate_phantom(seed, config, **overrides)
    folder = Path(out_dir)
    series_dir = folder / "ct"
    try:
        series_uid, study_uid = _write_ct_series(phantom, series_dir, unique_uids)
    except OSError as exc:
        raise OutputError(f"cannot write phantom series to {series_dir}: {exc}") from exc
    volume = load_series(series_dir).volume
    if volume.shape != phantom.hu.shape:  # pragma: no cover - the loader re-sorts by position
        raise OutputError("phantom series did not load back with its own shape")
    seg_path = folder / "truth.seg.dcm"
    write_seg(
        volume,
        phantom.lesions[np.newaxis],
        TRUTH_CARD,
        seg_path,
        series_number=2,
        series_description="phantom lesion truth",
        algorithm_family=TRUTH_FAMILY,
    )
    nifti_path = None
    if nifti:
        import SimpleITK as sitk

        nifti_path = folder / "truth.nii.gz"
        image = volume.to_sitk(phantom.lesion_ids)
        tmp = folder / ".truth.tmp.nii.gz"
        try:
            sitk.WriteImage(image, str(tmp), True)
            tmp.replace(nifti_path)
        except (OSError, RuntimeError) as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot write {nifti_path}: {exc}") from exc
    log.info("phantom seed %s: %s lesion(s) -> %s", seed, len(phantom.lesion_list), folder)
    return PhantomFiles(
        folder=folder,
        series_dir=series_dir,
        seg_path=seg_path,
        nifti_path=nifti_path,
        phantom=phantom,
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
    )


__all__ = [
    "TISSUE_NAMES",
    "Lesion",
    "Phantom",
    "PhantomConfig",
    "PhantomFiles",
    "generate_phantom",
    "write_phantom",
]
