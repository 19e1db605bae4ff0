"""Solid shapes in patient millimetres, one shape model per generator family.

Every shape answers ``occupancy(z, y, x)``: the fraction of a voxel at those mm
coordinates that lies inside, ramping from 1 to 0 over ``edge`` mm at the surface (a cheap
partial-volume model), and ``bounds()``: the mm box outside which it is 0, so a renderer
only evaluates it where it can be. The three models are built differently on purpose, so
a network trained on two of them can be scored on the third:

- ``Lobulated``: an ellipsoid whose radius is modulated by low-order harmonics of the
  direction (smooth, lobulated outlines);
- ``Metaball``: the level set of a sum of Gaussian kernels (merged blobs, necks, bays);
- ``Rippled``: a sphere-like level set pushed in and out by a few random plane waves
  (irregular, sometimes spiculated outlines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

Box = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]  # z, y, x in mm


class Shape(Protocol):
    def occupancy(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray: ...

    def bounds(self) -> Box: ...


def _ramp(signed_mm: np.ndarray, edge: float) -> np.ndarray:
    """Signed distance (mm, negative inside) -> occupancy in [0, 1] over ``edge`` mm."""
    return np.clip(0.5 - signed_mm / max(edge, 1e-3), 0.0, 1.0).astype(np.float32)


def _box(centre: np.ndarray, reach: np.ndarray) -> Box:
    return tuple((float(c - r), float(c + r)) for c, r in zip(centre, reach, strict=True))  # type: ignore[return-value]


@dataclass(frozen=True)
class Lobulated:
    """Ellipsoid (centre z, y, x; semi-axes; in-plane angle) with harmonic lobulation."""

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    angle: float
    harmonics: tuple[tuple[int, float, float], ...] = ()  # (order, amplitude, phase)
    edge: float = 1.0

    def bounds(self) -> Box:
        amp = 1.0 + sum(abs(a) for _, a, _ in self.harmonics)
        reach = np.full(3, max(self.axes) * amp + self.edge)
        reach[0] = self.axes[0] * amp + self.edge
        return _box(np.asarray(self.centre), reach)

    def occupancy(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        dz, dy, dx = z - self.centre[0], y - self.centre[1], x - self.centre[2]
        c, s = np.cos(self.angle), np.sin(self.angle)
        u, v = c * dx + s * dy, -s * dx + c * dy
        q = np.sqrt((dz / self.axes[0]) ** 2 + (v / self.axes[1]) ** 2 + (u / self.axes[2]) ** 2)
        if self.harmonics:
            phi = np.arctan2(v, u)
            elev = np.arctan2(dz / self.axes[0], np.hypot(u / self.axes[2], v / self.axes[1]))
            scale = np.ones_like(q)
            for order, amp, phase in self.harmonics:
                scale = scale + amp * np.cos(order * phi + phase) * np.cos(elev)
            q = q / np.maximum(scale, 0.2)
        return _ramp((q - 1.0) * float(np.mean(self.axes)), self.edge)


@dataclass(frozen=True)
class Metaball:
    """Level set ``sum_i exp(-|p - c_i|^2 / 2 s_i^2) = 0.5`` of Gaussian kernels."""

    centres: tuple[tuple[float, float, float], ...]
    sigmas: tuple[float, ...]
    edge: float = 1.0

    def bounds(self) -> Box:
        c = np.asarray(self.centres)
        s = np.asarray(self.sigmas)[:, None]
        lo, hi = (c - 2.5 * s).min(axis=0) - self.edge, (c + 2.5 * s).max(axis=0) + self.edge
        return tuple((float(a), float(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]

    def occupancy(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        field = np.zeros(np.broadcast(z, y, x).shape, dtype=np.float32)
        for (cz, cy, cx), s in zip(self.centres, self.sigmas, strict=True):
            d2 = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2
            field += np.exp(-d2 / (2.0 * s * s)).astype(np.float32)
        # the kernel's slope at the 0.5 level (about 1.18 sigma out) turns field into mm
        slope = 0.5 * 1.18 / float(np.mean(self.sigmas))
        return _ramp((0.5 - field) / slope, self.edge)


@dataclass(frozen=True)
class Rippled:
    """``|p - c| / r + sum_k a_k sin(w_k . p + phase_k) <= 1``: a sphere rippled by waves."""

    centre: tuple[float, float, float]
    radius: float
    z_scale: float
    waves: tuple[tuple[float, float, float, float, float], ...]  # (wz, wy, wx, amp, phase)
    edge: float = 1.0

    def bounds(self) -> Box:
        amp = 1.0 + sum(abs(w[3]) for w in self.waves)
        reach = np.full(3, self.radius * amp + self.edge)
        reach[0] = self.radius * self.z_scale * amp + self.edge
        return _box(np.asarray(self.centre), reach)

    def occupancy(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        dz = (z - self.centre[0]) / self.z_scale
        dy, dx = y - self.centre[1], x - self.centre[2]
        level = np.sqrt(dz**2 + dy**2 + dx**2) / self.radius
        for wz, wy, wx, amp, phase in self.waves:
            level = level + amp * np.sin(wz * dz + wy * dy + wx * dx + phase)
        return _ramp((level - 1.0) * self.radius, self.edge)


FAMILIES = ("lobulated", "metaball", "rippled")


def random_shape(
    rng: np.random.Generator,
    family: str,
    centre: tuple[float, float, float],
    size: tuple[float, float, float],
    *,
    irregularity: float = 1.0,
    edge: float = 1.0,
) -> Shape:
    """A random solid of ``family`` around ``centre`` with about ``size`` semi-axes (mm)."""
    cz, cy, cx = centre
    az, ay, ax = size
    if family == "lobulated":
        count = int(rng.integers(0, 4))
        harmonics = tuple(
            (
                int(rng.integers(2, 6)),
                float(rng.uniform(0, 0.12) * irregularity),
                float(rng.uniform(0, 6.3)),
            )
            for _ in range(count)
        )
        return Lobulated(centre, (az, ay, ax), float(rng.uniform(0, np.pi)), harmonics, edge)
    if family == "metaball":
        count = 1 + int(rng.integers(0, 1 + round(4 * irregularity)))
        spread = 0.45 * irregularity
        centres, sigmas = [], []
        for _ in range(count):
            offset = rng.normal(0, spread, 3) * np.array([az, ay, ax])
            centres.append((cz + offset[0], cy + offset[1], cx + offset[2]))
            sigmas.append(
                float(np.mean(size) * rng.uniform(0.55, 0.9) / np.sqrt(max(count, 1)) ** 0.5)
            )
        return Metaball(tuple(centres), tuple(sigmas), edge)
    if family == "rippled":
        radius = float(np.mean([ay, ax]))
        waves = []
        for _ in range(int(rng.integers(1, 5))):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            k = rng.uniform(1.5, 6.0) / radius
            amp = float(rng.uniform(0.02, 0.12) * irregularity)
            waves.append((*(direction * k), amp, float(rng.uniform(0, 6.3))))
        return Rippled(centre, radius, az / radius, tuple(waves), edge)  # type: ignore[arg-type]
    raise ValueError(f"unknown family {family!r}")
