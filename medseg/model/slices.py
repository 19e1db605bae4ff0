"""Real slices for calibration, verification and training, preprocessed as at inference.

Everything goes through ``medseg.dicom.load_series`` and ``medseg.preprocess`` so the
network is calibrated and trained on exactly the pixels it will be served (no skew).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medseg.errors import DicomInputError
from medseg.modelcard import ModelCard

log = logging.getLogger(__name__)


def volume_batch(volume: object, card: ModelCard, window: str | None = None) -> np.ndarray:
    """Every model input of a Volume (n, C, H, W) float32: each slice whole, or each of its
    windows at the card's pixel spacing (``medseg.tiling``), window by window."""
    from medseg.preprocess import (
        context_planes,
        preprocess_slices,
        renormalise_channels,
        resolve_window,
    )
    from medseg.tiling import crop_padded, slice_regions, tile_extent

    resolved = resolve_window(volume, window, card)  # type: ignore[arg-type]
    voxels, spacing = volume.voxels, volume.spacing  # type: ignore[attr-defined]
    shape = voxels.shape[1:]
    batches = []
    for region in slice_regions(shape, tile_extent(card, shape, spacing[1:])):
        batch = preprocess_slices(crop_padded(voxels, region, resolved.low), resolved, card)
        if card.slice_context_mm > 0:
            planes = context_planes(batch[:, 0], range(len(batch)), spacing[0], card)
            batch = renormalise_channels(planes, card)
        batches.append(batch)
    return np.concatenate(batches)


def dicom_slices(
    folder: Path,
    card: ModelCard,
    *,
    max_slices: int = 64,
    window: str | None = None,
) -> np.ndarray:
    """Up to ``max_slices`` preprocessed slices (n, C, H, W) from every image series in
    ``folder``, spread evenly over each series (not just its first slices)."""
    from medseg.dicom import load_series
    from medseg.dicom.series import scan_series

    series = [s for s in scan_series([Path(folder)]) if s.is_image]
    if not series:
        raise DicomInputError(f"no CT/MR image series found under {folder}")
    per_series = max(1, max_slices // len(series))
    batches = []
    for summary in series:
        volume = load_series([Path(folder)], series_uid=summary.uid).volume
        batch = volume_batch(volume, card, window)
        if len(batch) > per_series:
            keep = np.unique(np.linspace(0, len(batch) - 1, per_series).round().astype(int))
            batch = batch[keep]
        batches.append(batch)
    slices = np.concatenate(batches)[:max_slices]
    log.info("%d slices from %d series under %s", len(slices), len(series), folder)
    return slices
