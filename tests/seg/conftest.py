"""A synthetic CT with a bright sphere, loaded with the real loader, shared by SEG tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medseg.dicom import Volume, load_series
from tests.dicom.series_factory import sphere, write_series


@dataclass(frozen=True)
class SphereCase:
    volume: Volume
    mask: np.ndarray  # (slices, rows, cols) bool, the true sphere


def make_sphere_case(folder: Path, **series_options: object) -> SphereCase:
    shape, spacing = (12, 30, 41), (2.0, 0.9, 0.8)
    mask = sphere(shape, spacing, center_mm=(11.0, 13.0, 16.0), radius_mm=8.0)
    values = np.where(mask, 180.0, 20.0)
    write_series(folder, values, spacing=spacing, **series_options)
    return SphereCase(load_series(folder).volume, mask)


@pytest.fixture
def oblique_sphere(tmp_path: Path) -> SphereCase:
    """Oblique, shuffled files, non-square: the geometry cannot line up by accident."""
    return make_sphere_case(
        tmp_path / "ct", order="shuffle", row_dir=(0.8, 0.6, 0.0), col_dir=(0.0, 0.0, -1.0)
    )
