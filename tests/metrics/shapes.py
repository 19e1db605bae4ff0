"""Analytic test shapes on voxel grids (index order z, y, x; spacing in mm)."""

from __future__ import annotations

import numpy as np

ANISO = (2.5, 0.7, 0.7)  # (z, y, x) mm: CT-like 0.7 x 0.7 in plane, 2.5 mm slices


def sphere(
    shape: tuple[int, int, int],
    centre_mm: tuple[float, float, float],
    radius_mm: float,
    spacing: tuple[float, float, float] = ANISO,
) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of ``centre_mm`` (z, y, x)."""
    axes = [np.arange(n) * s - c for n, s, c in zip(shape, spacing, centre_mm, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return z**2 + y**2 + x**2 <= radius_mm**2


def box(shape: tuple[int, int, int], lo: tuple[int, int, int], size: tuple[int, int, int]):
    """A box of voxels starting at index ``lo`` with ``size`` voxels per axis."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, a + n) for a, n in zip(lo, size, strict=True))] = True
    return mask


def box_surface_points(lo, size, spacing=ANISO) -> np.ndarray:
    """Centres (mm) of a box's face voxels, enumerated from the box definition alone."""
    ranges = [np.arange(a, a + n) for a, n in zip(lo, size, strict=True)]
    z, y, x = np.meshgrid(*ranges, indexing="ij")
    idx = np.stack([z.ravel(), y.ravel(), x.ravel()], axis=1)
    lo_arr, hi_arr = np.asarray(lo), np.asarray(lo) + np.asarray(size) - 1
    on_face = np.any((idx == lo_arr) | (idx == hi_arr), axis=1)
    return idx[on_face] * np.asarray(spacing)
