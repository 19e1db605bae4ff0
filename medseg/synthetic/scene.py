"""Random scenes (body, organs, vessels, bone, lesions) and their rendering on any grid.

A scene is drawn once from a seed, in patient millimetres, and rendered on whatever grid
is asked for: a whole series (``render``) or the few planes one training sample needs.
Shapes come from the family's shape model (``medseg.synthetic.shapes``); the family also
picks the texture and how tissue values are drawn, so the three families differ in shape,
texture and contrast, not only in their random numbers. CT values are Hounsfield units;
MR values are arbitrary positive signal with a smooth bias field (no absolute scale, which
is why serving windows MR by percentiles).

Lesions are the only labelled objects; bone, vessels and organ borders are there so the
network learns what is *not* a lesion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medseg.synthetic.shapes import FAMILIES, Box, Shape, random_shape

MODALITIES = ("CT", "MR")
LESION_KINDS = ("hypo", "hyper", "rim", "cystic", "calcified")


@dataclass(frozen=True)
class Solid:
    """One painted object: its shape, value and texture strength (fraction of the noise)."""

    shape: Shape
    value: float
    texture: float = 0.0


@dataclass(frozen=True)
class LesionSolid:
    """A lesion: outer shape and value; ``inner`` is a rim lesion's core or a calcification."""

    shape: Shape
    value: float
    kind: str
    inner: Shape | None = None
    inner_value: float = 0.0


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one synthetic series at any sampling."""

    family: str
    modality: str
    fov_mm: float
    z_extent_mm: float
    air: float
    background: float  # inside the body (fat on CT)
    body: Shape
    solids: tuple[Solid, ...]  # painted in order over the background
    lesions: tuple[LesionSolid, ...]
    noise: float
    noise_grain_mm: float
    blur_mm: float
    bias: tuple[tuple[float, float, float, float], ...] = field(default=())  # MR bias waves
    seed: int = 0


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _tissue_values(rng: np.random.Generator, family: str, modality: str) -> dict[str, float]:
    """Base values per tissue; each family draws them its own way."""
    if modality == "CT":
        if family == "lobulated":
            organ = [rng.uniform(40, 120) for _ in range(6)]
        elif family == "metaball":
            base = rng.uniform(30, 90)
            organ = [base + rng.normal(0, 25) for _ in range(6)]
        else:
            organ = [rng.choice([35.0, 60.0, 110.0, 150.0]) + rng.normal(0, 10) for _ in range(6)]
        return {
            "air": -1000.0,
            "fat": rng.uniform(-130, -70),
            "muscle": rng.uniform(35, 65),
            "bone": rng.uniform(450, 1200),
            "marrow": rng.uniform(150, 300),
            "vessel": rng.choice([rng.uniform(35, 55), rng.uniform(150, 320)]),
            **{f"organ{i}": float(v) for i, v in enumerate(organ)},
        }
    t1 = rng.random() < 0.5  # fat bright (T1-like) or suppressed (T2 fat-sat-like)
    scale = _log_uniform(rng, 200, 3000)
    organ = rng.uniform(0.25, 0.75, 6) if family != "rippled" else rng.uniform(0.15, 0.9, 6)
    return {
        "air": 0.0,
        "fat": scale * (rng.uniform(0.8, 1.0) if t1 else rng.uniform(0.05, 0.2)),
        "muscle": scale * rng.uniform(0.15, 0.35),
        "bone": scale * rng.uniform(0.02, 0.08),
        "marrow": scale * (rng.uniform(0.6, 0.9) if t1 else rng.uniform(0.1, 0.3)),
        "vessel": scale * rng.choice([rng.uniform(0.02, 0.1), rng.uniform(0.8, 1.0)]),
        **{f"organ{i}": float(scale * v) for i, v in enumerate(organ)},
    }


def _inside(rng: np.random.Generator, shape: Shape, tries: int = 40) -> tuple[float, float, float]:
    """A random point with occupancy above 0.5 (the box centre if none is found)."""
    (z0, z1), (y0, y1), (x0, x1) = shape.bounds()
    for _ in range(tries):
        p = (rng.uniform(z0, z1), rng.uniform(y0, y1), rng.uniform(x0, x1))
        if shape.occupancy(*(np.asarray(v) for v in p)) > 0.5:
            return p
    return ((z0 + z1) / 2, (y0 + y1) / 2, (x0 + x1) / 2)


def random_scene(
    seed: int,
    family: str,
    modality: str,
    *,
    fov_mm: float | None = None,
    z_extent_mm: float = 120.0,
    lesions: tuple[int, int] = (0, 4),
    lesion_mm: tuple[float, float] = (3.0, 50.0),
    lesion_free: float = 0.2,
) -> Scene:
    """A scene from ``seed``: body, 2-5 organs, vessels, spine and ribs, 0-4 lesions."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}")
    rng = np.random.default_rng([seed, FAMILIES.index(family), MODALITIES.index(modality)])
    fov = float(fov_mm if fov_mm is not None else rng.uniform(150, 500))
    values = _tissue_values(rng, family, modality)
    zc = 0.0
    body_axes = (z_extent_mm, rng.uniform(90, 140), rng.uniform(120, 190))
    # the body is always a smooth ellipse-like outline; the families differ inside it
    body = random_shape(rng, "lobulated", (zc, 0.0, 0.0), body_axes, irregularity=0.3, edge=1.0)
    solids: list[Solid] = []
    # muscle: a few blobs along the body wall and the back
    for _ in range(int(rng.integers(2, 5))):
        angle = rng.uniform(0, 2 * np.pi)
        pos = (zc, 0.8 * body_axes[1] * np.sin(angle), 0.8 * body_axes[2] * np.cos(angle))
        size = (z_extent_mm, rng.uniform(10, 25), rng.uniform(20, 50))
        solids.append(
            Solid(random_shape(rng, family, pos, size, irregularity=0.5), values["muscle"], 0.5)
        )
    organs: list[Shape] = []
    for i in range(int(rng.integers(2, 6))):
        size = (rng.uniform(30, 120), rng.uniform(20, 75), rng.uniform(20, 90))
        pos = (
            rng.uniform(-30, 30),
            rng.uniform(-0.5, 0.5) * body_axes[1],
            rng.uniform(-0.6, 0.6) * body_axes[2],
        )
        shape = random_shape(rng, family, pos, size, irregularity=0.8, edge=1.0)
        organs.append(shape)
        solids.append(Solid(shape, values[f"organ{i}"], 1.0))
    for _ in range(int(rng.integers(1, 5))):  # vessels: long thin solids along z
        pos = (zc, rng.uniform(-0.6, 0.6) * body_axes[1], rng.uniform(-0.7, 0.7) * body_axes[2])
        r = rng.uniform(2.5, 14)
        solids.append(
            Solid(
                random_shape(rng, "lobulated", pos, (400.0, r, r), irregularity=0.0, edge=0.8),
                values["vessel"],
                0.3,
            )
        )
    spine_y = 0.65 * body_axes[1]
    r = rng.uniform(14, 22)
    solids.append(
        Solid(
            random_shape(
                rng, "lobulated", (zc, spine_y, 0.0), (400.0, r, r * 1.1), irregularity=0.2
            ),
            values["bone"],
            0.5,
        )
    )
    solids.append(
        Solid(
            random_shape(
                rng, "lobulated", (zc, spine_y, 0.0), (400.0, r * 0.75, r * 0.8), irregularity=0.1
            ),
            values["marrow"],
            0.5,
        )
    )
    for _ in range(int(rng.integers(0, 8))):  # ribs: small bright ellipses near the wall
        angle = rng.uniform(0, 2 * np.pi)
        pos = (
            rng.uniform(-40, 40),
            0.9 * body_axes[1] * np.sin(angle),
            0.9 * body_axes[2] * np.cos(angle),
        )
        solids.append(
            Solid(
                random_shape(
                    rng,
                    "lobulated",
                    pos,
                    (rng.uniform(5, 20), 4.0, 7.0),
                    irregularity=0.0,
                    edge=0.8,
                ),
                values["bone"],
                0.3,
            )
        )

    noise = (
        rng.uniform(4, 25)
        if modality == "CT"
        else rng.uniform(0.01, 0.06) * values["muscle"] / 0.25
    )
    count = (
        0 if rng.random() < lesion_free else int(rng.integers(max(lesions[0], 1), lesions[1] + 1))
    )
    placed: list[LesionSolid] = []
    for _ in range(count):
        host_index = int(rng.integers(len(organs)))
        host = organs[host_index]
        host_value = values[f"organ{host_index}"]
        diameter = _log_uniform(rng, *lesion_mm)
        centre = _inside(rng, host)
        semi = diameter / 2 * rng.uniform(0.75, 1.0, 3)
        kind = str(rng.choice(LESION_KINDS, p=[0.35, 0.25, 0.15, 0.15, 0.10]))
        shape = random_shape(
            rng,
            family,
            centre,
            tuple(semi),
            irregularity=rng.uniform(0.2, 1.2),
            edge=rng.uniform(0.3, 1.5),
        )
        placed.append(_lesion(rng, shape, kind, host_value, noise, modality, family, centre, semi))
    bias = ()
    if modality == "MR":
        bias = tuple(
            (*(rng.normal(size=3) / rng.uniform(150, 400)), float(rng.uniform(0.05, 0.3)))
            for _ in range(2)
        )
    return Scene(
        family=family,
        modality=modality,
        fov_mm=fov,
        z_extent_mm=z_extent_mm,
        air=values["air"],
        background=values["fat"],
        body=body,
        solids=tuple(solids),
        lesions=tuple(placed),
        noise=float(noise),
        noise_grain_mm=float(rng.uniform(0.3, 1.5)),
        blur_mm=float(rng.uniform(0.2, 1.2)),
        bias=bias,  # type: ignore[arg-type]
        seed=seed,
    )


def _lesion(
    rng: np.random.Generator,
    shape: Shape,
    kind: str,
    host: float,
    noise: float,
    modality: str,
    family: str,
    centre: tuple[float, float, float],
    semi: np.ndarray,
) -> LesionSolid:
    """Values for one lesion kind, always at least twice the noise away from its host."""
    least = 2.0 * noise
    if modality == "CT":
        step = max(least, rng.uniform(15, 90))
        hypo, hyper = host - step, host + step
        cyst, calc = rng.uniform(-5, 20), rng.uniform(300, 900)
    else:
        hypo = min(host * rng.uniform(0.25, 0.7), host - least)
        hyper = max(host * rng.uniform(1.4, 2.5), host + least)
        cyst, calc = host * rng.uniform(1.8, 3.0), host * rng.uniform(0.02, 0.2)
    if kind == "hypo":
        return LesionSolid(shape, hypo, kind)
    if kind == "hyper":
        return LesionSolid(shape, hyper, kind)
    if kind == "cystic":
        return LesionSolid(shape, cyst if abs(cyst - host) > least else hypo, kind)
    inner_semi = tuple(float(s) * rng.uniform(0.45, 0.7) for s in semi)
    inner = random_shape(rng, "lobulated", centre, inner_semi, irregularity=0.3, edge=0.8)  # type: ignore[arg-type]
    if kind == "rim":
        return LesionSolid(shape, hyper, kind, inner, hypo)
    spot_semi = tuple(float(s) * rng.uniform(0.15, 0.35) for s in semi)
    spot = random_shape(rng, family, centre, spot_semi, irregularity=0.5, edge=0.5)  # type: ignore[arg-type]
    return LesionSolid(shape, hypo if rng.random() < 0.5 else hyper, kind, spot, calc)


def _grid_box(
    bounds: Box, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> tuple[slice, slice, slice]:
    """Index slices of the sorted coordinate vectors that fall in a mm box."""
    out = []
    for (lo, hi), axis in zip(bounds, (zs, ys, xs), strict=True):
        a, b = np.searchsorted(axis, lo, "left"), np.searchsorted(axis, hi, "right")
        out.append(slice(int(a), int(b)))
    return tuple(out)  # type: ignore[return-value]


def _paint(
    image: np.ndarray,
    shape: Shape,
    value: float,
    zs: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    texture: np.ndarray | None = None,
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    box = _grid_box(shape.bounds(), zs, ys, xs)
    if any(s.stop <= s.start for s in box):
        return None
    z, y, x = np.meshgrid(zs[box[0]], ys[box[1]], xs[box[2]], indexing="ij", sparse=True)
    occ = shape.occupancy(z, y, x)
    region = image[box]
    target = value if texture is None else value + texture[box]
    region += occ * (target - region)
    return box, occ


def render(
    scene: Scene,
    zs: np.ndarray,
    rows: int,
    cols: int,
    *,
    noise_seed: int | None = None,
    fov_mm: float | None = None,
    centre: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Image (len(zs), rows, cols) float32 and lesion labels (uint8, 1..n, 0 = none).

    The in-plane grid spans the scene's field of view (pixel centres), or a square of
    ``fov_mm`` around ``centre`` (y, x mm: a zoomed view, as a prompt's crop sees it);
    ``zs`` are slice positions in mm. Noise, blur and bias are applied per plane, so any
    set of planes of one scene is a valid sample of the same series.
    """
    zs = np.asarray(zs, dtype=np.float64)
    fov = scene.fov_mm if fov_mm is None else float(fov_mm)
    spacing_y, spacing_x = fov / rows, fov / cols
    ys = (np.arange(rows) + 0.5) * spacing_y - fov / 2 + centre[0]
    xs = (np.arange(cols) + 0.5) * spacing_x - fov / 2 + centre[1]
    rng = np.random.default_rng(
        [scene.seed, 7] if noise_seed is None else [scene.seed, 7, noise_seed]
    )
    image = np.full((len(zs), rows, cols), scene.background, dtype=np.float32)
    texture = _texture(rng, scene, image.shape, spacing_x)
    for solid in scene.solids:
        _paint(image, solid.shape, solid.value, zs, ys, xs, solid.texture * texture)
    labels = np.zeros(image.shape, dtype=np.uint8)
    for number, lesion in enumerate(scene.lesions, start=1):
        painted = _paint(image, lesion.shape, lesion.value, zs, ys, xs, 0.6 * texture)
        if painted is None:
            continue
        box, occ = painted
        labels[box][occ >= 0.5] = number
        if lesion.inner is not None:
            _paint(image, lesion.inner, lesion.inner_value, zs, ys, xs)
    body = np.zeros(image.shape, dtype=np.float32)
    _paint(body, scene.body, 1.0, zs, ys, xs)
    image = scene.air + body * (image - scene.air)
    labels[body < 0.5] = 0
    sigma = scene.blur_mm / spacing_x
    if sigma > 0.05:
        image = ndimage.gaussian_filter(image, (0, sigma, sigma), mode="nearest")
    if scene.modality == "MR":
        z, y, x = np.meshgrid(zs, ys, xs, indexing="ij", sparse=True)
        field_ = np.zeros(image.shape, dtype=np.float32)
        for kz, ky, kx, amp in scene.bias:
            field_ += amp * np.sin(kz * z + ky * y + kx * x + 1.0)
        image *= np.exp(field_)
        n1, n2 = (
            _noise(rng, scene, image.shape, spacing_x),
            _noise(rng, scene, image.shape, spacing_x),
        )
        image = np.sqrt((image + n1) ** 2 + n2**2)  # Rician magnitude noise
    else:
        image += _noise(rng, scene, image.shape, spacing_x)
    return image.astype(np.float32), labels


def _noise(
    rng: np.random.Generator, scene: Scene, shape: tuple[int, ...], spacing: float
) -> np.ndarray:
    """Gaussian noise of the scene's SD, correlated over its grain (in mm)."""
    white = rng.standard_normal(shape).astype(np.float32)
    sigma = scene.noise_grain_mm / spacing
    if sigma > 0.3:
        white = ndimage.gaussian_filter(white, (0, sigma, sigma))
        white /= max(float(white.std()), 1e-6)
    return white * np.float32(scene.noise)


def _texture(
    rng: np.random.Generator, scene: Scene, shape: tuple[int, ...], spacing: float
) -> np.ndarray:
    """Tissue texture, one model per family: smooth mottle, blob mottle or ripples."""
    n, rows, cols = shape
    amp = np.float32(0.8 * scene.noise)
    if scene.family == "lobulated":
        t = ndimage.gaussian_filter(
            rng.standard_normal(shape).astype(np.float32), (0, 3 / spacing, 3 / spacing)
        )
        return t / max(float(t.std()), 1e-6) * amp
    if scene.family == "metaball":
        coarse = rng.standard_normal((n, max(rows // 16, 2), max(cols // 16, 2))).astype(np.float32)
        t = ndimage.zoom(coarse, (1, rows / coarse.shape[1], cols / coarse.shape[2]), order=1)
        t = t[:, :rows, :cols]
        return np.abs(t) * amp
    y = (np.arange(rows)[:, None] + 0.5) * spacing
    x = (np.arange(cols)[None, :] + 0.5) * spacing
    t = np.zeros((rows, cols), dtype=np.float32)
    for _ in range(6):
        k = rng.uniform(0.2, 1.2)
        a = rng.uniform(0, np.pi)
        t += np.sin(k * (np.cos(a) * x + np.sin(a) * y) + rng.uniform(0, 6.3)).astype(np.float32)
    return np.broadcast_to(t / 2.5 * amp, shape)
