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
    """All slices of a Volume as the model's float32 input (n, C, H, W)."""
    from medseg.preprocess import (
        context_planes,
        preprocess_slices,
        renormalise_channels,
        resolve_window,
    )

    resolved = resolve_window(volume, window, card)  # type: ignore[arg-type]
    batch = preprocess_slices(volume.voxels, resolved, card)  # type: ignore[attr-defined]
    if card.slice_context_mm <= 0:
        return batch
    spacing = volume.spacing[0]  # type: ignore[attr-defined]
    planes = context_planes(batch[:, 0], range(len(batch)), spacing, card)
    return renormalise_channels(planes, card)


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
