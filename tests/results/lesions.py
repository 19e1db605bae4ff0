"""A CT series with two lesions of known shape, its SEG and its measurement report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from medseg.dicom import Volume, load_series
from medseg.modelcard import ModelCard, SegmentSpec
from medseg.results.report import write_report
from medseg.seg import write_seg
from tests.dicom.series_factory import write_series

SHAPE = (9, 72, 88)  # (slices, rows, cols)
SPACING = (2.0, 0.7, 0.9)  # slice, row (PixelSpacing[0]), col (PixelSpacing[1]) in mm
TILT = np.deg2rad(30.0)  # the ellipsoid's long axis, from the columns towards the rows
SEMI_AXES = (18.0, 10.0, 5.0)  # mm: along the tilt, across it, along the slices
CENTRE = (4, 34.0, 40.0)  # slice, row, col (voxel indices) of the ellipsoid's centre
BOX = (slice(2, 6), slice(55, 67), slice(62, 82))  # 4 slices, 12 rows, 20 columns
HU = (40.0, 100.0, -20.0)  # background, ellipsoid, box
NOISE_HU = 8.0


def ellipsoid(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """The tilted ellipsoid as a bool mask (slices, rows, cols), voxel centres inside."""
    k, r, c = np.indices(shape, dtype=np.float64)
    z = (k - CENTRE[0]) * SPACING[0]
    y = (r - CENTRE[1]) * SPACING[1]
    x = (c - CENTRE[2]) * SPACING[2]
    along = x * np.cos(TILT) + y * np.sin(TILT)
    across = -x * np.sin(TILT) + y * np.cos(TILT)
    a, b, h = SEMI_AXES
    return (along / a) ** 2 + (across / b) ** 2 + (z / h) ** 2 <= 1.0


def box() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[BOX] = True
    return mask


@dataclass(frozen=True)
class Written:
    """The series, its SEG and report, and what they were made from."""

    folder: Path
    volume: Volume
    hu: np.ndarray  # (slices, rows, cols) the values written (after rescale), volume order
    masks: np.ndarray  # (2, slices, rows, cols) bool: ellipsoid, box
    seg_path: Path
    seg: pydicom.Dataset
    sr_path: Path
    card: ModelCard


CARD = ModelCard(
    name="lesion-finder",
    version="2.1.0",
    segments=(SegmentSpec("Lesion 1"), SegmentSpec("Lesion 2")),
)


def write_case(
    folder: Path,
    *,
    modality: str = "CT",
    multiframe: bool = False,
    card: ModelCard = CARD,
    seed: int = 3,
) -> Written:
    """Series -> SEG (two segments, SEMIAUTOMATIC) -> report, all in ``folder``."""
    masks = np.stack([ellipsoid(), box()])
    values = np.full(SHAPE, HU[0])
    values[masks[0]] = HU[1]
    values[masks[1]] = HU[2]
    values += np.random.default_rng(seed).normal(0.0, NOISE_HU, SHAPE)
    if modality != "CT":
        values += 1100.0  # MR: positive signal
    written = write_series(
        folder / "images",
        values,
        spacing=SPACING,
        modality=modality,
        multiframe=multiframe,
        intercept=-1024.0 if modality == "CT" else 0.0,
    )
    volume = load_series(folder / "images").volume
    seg_path, sr_path = folder / "lesions.seg.dcm", folder / "lesions.sr.dcm"
    seg = write_seg(volume, masks, card, seg_path, semiautomatic=True)
    write_report(volume, seg, masks, card, sr_path)
    return Written(folder, volume, written.voxels, masks, seg_path, seg, sr_path, card)
