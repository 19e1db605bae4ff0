"""Training data: DICOM series paired with their masks, as preprocessed 2-D slices.

Pairing rules (under one data folder, searched recursively):

* a DICOM-SEG is paired with the image series named by its ReferencedSeriesSequence;
* a NIfTI/NRRD mask is paired with the image series whose SeriesInstanceUID appears in its
  file name, else with the only image series in the mask's own folder.

Slices go through ``medseg.preprocess.preprocess_slices`` exactly as at inference; masks
are mapped onto the series by ``medseg.maskio.mask_on_volume`` and resized with the same
area-weighted filter (soft targets in [0, 1]).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import DicomInputError
from medseg.modelcard import ModelCard

log = logging.getLogger(__name__)

MASK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class TrainingPair:
    """One image series (its files) and the mask file that labels it."""

    series_uid: str
    image_files: tuple[Path, ...]
    mask_path: Path


@dataclass(frozen=True, eq=False)
class SliceSet:
    """Preprocessed slices of one series.

    ``images`` holds channel 0 of the model input (n, H, W) float32: preprocessing
    replicates one grey image into every channel, so the others are rebuilt exactly from
    the card's mean/std (``to_model_input``) and memory drops threefold. ``masks`` is the
    soft target (n, H, W) float32 in [0, 1]. (H, W) is the card's input size, or the
    series' own matrix when the card has a pixel spacing (``medseg.tiling``).
    """

    series_uid: str
    images: np.ndarray
    masks: np.ndarray
    slice_spacing: float = 0.0  # mm between slices, for slice context
    # mm between rows and between columns of the stored slices: source pixels for a card
    # with a pixel spacing (windows are cut at training time), unused without one
    pixel_spacing: tuple[float, float] = (1.0, 1.0)

    def model_images(self, ks: np.ndarray | list[int], card: ModelCard) -> np.ndarray:
        """Slices ``ks`` as stored (n, H, W), or with slice context (n, C, H, W), both in
        channel 0's normalisation (``to_model_input`` finishes them)."""
        if card.slice_context_mm <= 0:
            return self.images[ks]
        from medseg.preprocess import context_planes

        return context_planes(self.images, ks, self.slice_spacing, card)

    @property
    def lesion_slices(self) -> np.ndarray:
        return self.masks.reshape(len(self.masks), -1).max(axis=1) >= 0.5


def find_pairs(folder: Path) -> list[TrainingPair]:
    """Every (image series, mask) pair under ``folder``; a clear error when there is none."""
    from medseg.dicom.files import read_headers
    from medseg.dicom.series import group_by_series, is_image_header

    folder = Path(folder)
    if not folder.is_dir():
        raise DicomInputError(f"training data folder not found: {folder}")
    headers, _ = read_headers([folder])
    seg_refs: list[tuple[Path, str]] = []
    images = []
    for header in headers:
        ds = header.dataset
        if str(ds.get("SOPClassUID", "")) == SEGMENTATION_STORAGE:
            refs = ds.get("ReferencedSeriesSequence")
            if refs:
                seg_refs.append((header.path, str(refs[0].SeriesInstanceUID)))
            else:
                log.warning("SEG %s references no series; ignored", header.path.name)
        elif is_image_header(header):
            images.append(header)
    series = {uid: tuple(h.path for h in group) for uid, group in group_by_series(images).items()}
    pairs: dict[str, TrainingPair] = {}
    for path, uid in seg_refs:
        if uid in series and uid not in pairs:
            pairs[uid] = TrainingPair(uid, series[uid], path)
        elif uid not in series:
            log.warning("SEG %s: its series is not under %s; ignored", path.name, folder)
    for path in sorted(p for p in folder.rglob("*") if p.name.lower().endswith(MASK_SUFFIXES)):
        uid = _series_for_mask(path, series)
        if uid is not None and uid not in pairs:
            pairs[uid] = TrainingPair(uid, series[uid], path)
    if not pairs:
        raise DicomInputError(
            f"no training pairs under {folder}: need image series with a DICOM-SEG "
            "(or a NIfTI/NRRD mask) of the same series"
        )
    return [pairs[uid] for uid in sorted(pairs)]


def _series_for_mask(path: Path, series: dict[str, tuple[Path, ...]]) -> str | None:
    named = [uid for uid in series if uid and uid in path.name]
    if named:
        return max(named, key=len)
    here = [uid for uid, files in series.items() if all(f.parent == path.parent for f in files)]
    if len(here) == 1:
        return here[0]
    log.warning("mask %s: cannot tell which series it labels; ignored", path.name)
    return None


def load_pair(pair: TrainingPair, card: ModelCard, window: str | None = None) -> SliceSet:
    """Load one pair as preprocessed slices (the inference preprocessing, no shortcut)."""
    from medseg.dicom import load_series
    from medseg.maskio import mask_on_volume
    from medseg.preprocess import (
        channel0_values,
        preprocess_slices,
        resize_stack,
        resolve_window,
    )

    volume = load_series(list(pair.image_files), series_uid=pair.series_uid).volume
    mask = mask_on_volume(pair.mask_path, volume, segment=1)
    resolved = resolve_window(volume, window, card)
    if card.pixel_spacing_mm > 0:  # kept at the source matrix: windows are cut per step
        images = channel0_values(resolved.apply(volume.voxels), card)
        masks = mask.astype(np.float32)
    else:
        chunks = range(0, volume.shape[0], 16)  # bounded memory: 3-channel float32 is large
        images = np.concatenate(
            [preprocess_slices(volume.voxels[i : i + 16], resolved, card)[:, 0] for i in chunks]
        )
        masks = resize_stack(mask.astype(np.float32), card.input_size)
    return SliceSet(
        pair.series_uid,
        images,
        np.clip(masks, 0.0, 1.0),
        volume.spacing[0],
        (volume.spacing[1], volume.spacing[2]),
    )


def to_model_input(channel0: np.ndarray, card: ModelCard) -> np.ndarray:
    """(n, H, W) channel 0 -> (n, C, H, W): undo channel 0's normalisation, redo per channel.

    (n, C, H, W) input (one image per channel, slice context) is renormalised per channel.
    """
    from medseg.preprocess import renormalise_channels

    return renormalise_channels(channel0, card)


def split_series(
    sets: list[SliceSet], val_fraction: float, seed: int
) -> tuple[list[SliceSet], list[SliceSet]]:
    """Hold out whole series (never slices of a training series) for validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise DicomInputError(f"--val-fraction must lie in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(sets))
    n_val = round(len(sets) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(sets) > 1:
        n_val = 1
    n_val = min(n_val, len(sets) - 1)
    val = [sets[i] for i in sorted(order[:n_val])]
    train = [sets[i] for i in sorted(order[n_val:])]
    return train, val


def sampling_weights(sets: list[SliceSet], lesion_share: float = 0.5) -> np.ndarray:
    """Per-slice weights so that about ``lesion_share`` of draws contain lesion.

    Lesions occupy few slices of a series; uniform sampling would mostly show the network
    empty slices. Empty slices keep their share so it also learns to stay quiet.
    """
    has = np.concatenate([s.lesion_slices for s in sets])
    weights = np.ones(len(has), dtype=np.float64)
    n_pos, n_neg = int(has.sum()), int((~has).sum())
    if n_pos and n_neg:
        weights[has] = lesion_share / n_pos
        weights[~has] = (1.0 - lesion_share) / n_neg
    return weights / weights.sum()
