"""The in-memory image series every later stage works on.

Axis order is (slices, rows, cols) — numpy's (k, j, i). Geometry follows DICOM patient
coordinates (LPS, millimetres) so a mask can be mapped back onto the exact source frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pydicom
    import SimpleITK as sitk


@dataclass(frozen=True)
class SourceFrame:
    """Where one slice of the volume came from, as a DICOM-SEG must reference it.

    ``frame_number`` is the 1-based frame of a multi-frame (Enhanced) instance, or None for
    a single-frame instance.
    """

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


@dataclass(frozen=True, eq=False)
class Volume:
    """One image series as a 3-D array with its patient-space geometry.

    Attributes
    ----------
    voxels:
        float32 array (slices, rows, cols); CT in Hounsfield units (rescale applied),
        MONOCHROME1 already inverted.
    spacing:
        (slice, row, col) spacing in mm. ``spacing[1]`` is PixelSpacing[0] (between rows),
        ``spacing[2]`` PixelSpacing[1] (between columns), ``spacing[0]`` the distance
        between consecutive slice positions along the normal.
    origin:
        ImagePositionPatient of slice 0 (LPS mm): the centre of voxel (0, 0, 0).
    direction:
        3x3 float array whose *columns* are the LPS unit vectors of the col axis (i), the
        row axis (j) and the slice axis (k) — SimpleITK's convention.
    positions:
        (slices, 3) ImagePositionPatient of every slice, in volume order.
    frames:
        One ``SourceFrame`` per slice, in volume order.
    datasets:
        The source instances' headers (PixelData removed), one per source *file*, as
        highdicom needs them to build a SEG. For a multi-frame source this has one entry.
    window:
        The file's own (WindowCenter, WindowWidth) of the first slice, if it has one.
    """

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    positions: np.ndarray
    frames: tuple[SourceFrame, ...]
    datasets: tuple[pydicom.Dataset, ...] = field(repr=False)
    modality: str
    series_instance_uid: str
    study_instance_uid: str
    window: tuple[float, float] | None = None
    series_description: str = ""

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise ValueError(f"voxels must be 3-D (slices, rows, cols), got {self.voxels.shape}")
        if len(self.frames) != self.voxels.shape[0]:
            raise ValueError("one SourceFrame per slice is required")
        if self.positions.shape != (self.voxels.shape[0], 3):
            raise ValueError("positions must be (slices, 3)")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.voxels.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_lps(self, index: np.ndarray) -> np.ndarray:
        """Map (..., 3) voxel indices given as (col i, row j, slice k) to LPS mm."""
        ijk = np.asarray(index, dtype=np.float64)
        steps = ijk * np.array([self.spacing[2], self.spacing[1], self.spacing[0]])
        return np.asarray(self.origin) + steps @ self.direction.T

    def lps_to_index(self, point: np.ndarray) -> np.ndarray:
        """Map (..., 3) LPS mm to continuous (col i, row j, slice k) indices."""
        rel = np.asarray(point, dtype=np.float64) - np.asarray(self.origin)
        steps = rel @ self.direction  # direction is orthonormal: inverse == transpose
        return steps / np.array([self.spacing[2], self.spacing[1], self.spacing[0]])

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """This geometry as a SimpleITK image holding ``array`` (default: the voxels)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.voxels if array is None else array)
        image.SetSpacing((self.spacing[2], self.spacing[1], self.spacing[0]))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image
