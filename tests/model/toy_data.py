"""Tiny CT series with a bright round "lesion" and its mask, for training tests.

Images are written with the DICOM test factory; masks with medseg's own SEG writer (and as
NIfTI for the NIfTI pairing rule), so training reads them through the real readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.dicom.series_factory import write_series


def toy_volume(
    seed: int, shape: tuple[int, int, int] = (6, 64, 64)
) -> tuple[np.ndarray, np.ndarray]:
    """(HU values, lesion mask): air, a soft-tissue body disk and one 150 HU lesion."""
    rng = np.random.default_rng(seed)
    n, rows, cols = shape
    yy, xx = np.mgrid[:rows, :cols]
    body = (yy - rows / 2) ** 2 + (xx - cols / 2) ** 2 <= (0.42 * rows) ** 2
    cy, cx = rng.uniform(0.35, 0.65, 2) * (rows, cols)
    radius = rng.uniform(0.08, 0.14) * rows
    values = np.where(body, 40.0, -1000.0)[None].repeat(n, axis=0)
    mask = np.zeros(shape, dtype=bool)
    for k in range(1, n - 1):  # first and last slice stay lesion-free
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= (radius * (1.0 - 0.15 * abs(k - n / 2))) ** 2
        mask[k] = disk
    values[mask] = 150.0
    values += rng.normal(0.0, 8.0, shape)
    return values, mask


def write_toy_pair(folder: Path, seed: int, *, nifti: bool = False) -> str:
    """Write one series (+ SEG or NIfTI mask) under ``folder``; returns its SeriesInstanceUID."""
    from medseg.dicom import load_series
    from medseg.modelcard import ModelCard
    from medseg.seg import write_seg

    values, mask = toy_volume(seed)
    written = write_series(folder / "images", values, seed=seed)
    volume = load_series([folder / "images"]).volume
    if nifti:
        import SimpleITK as sitk

        sitk.WriteImage(
            volume.to_sitk(mask.astype(np.uint8)), str(folder / "images" / "mask.nii.gz")
        )
    else:
        write_seg(volume, mask[None], ModelCard(name="truth"), folder / "truth.seg.dcm")
    return written.series_uid
