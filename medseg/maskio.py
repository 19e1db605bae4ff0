"""Masks in: DICOM-SEG, NIfTI and NRRD read into patient space and mapped between grids.

Every mask carries a ``Grid``: its array shape (slices, rows, cols) and the 4x4 affine that
maps a voxel index (k, j, i) to DICOM patient coordinates (LPS, mm) — highdicom's
convention. Two masks are only ever compared after being placed on one grid, so a SEG whose
empty frames were omitted, a reversed slice order or a NIfTI in RAS on disk all line up.
Grids that share a lattice (same spacing and voxel centres, axes possibly permuted or
flipped) are re-indexed exactly; anything else is resampled nearest-neighbour with a warning.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.errors import DicomInputError

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

    from medseg.dicom.volume import Volume

log = logging.getLogger(__name__)

ITK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
STEM_SUFFIXES = (*ITK_SUFFIXES, ".seg.nrrd", ".seg.dcm", ".dcm", ".seg", ".dicom")
ALL_SEGMENTS = "*"  # the union of every segment, e.g. for a label map of lesion instances
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
_LATTICE_TOL = 1e-3  # voxels: how far from an integer a lattice offset may be


class MaskInputError(DicomInputError):
    """A mask file cannot be read, or cannot be placed in the same space as another."""


@dataclass(frozen=True, eq=False)
class Grid:
    """Array shape (slices, rows, cols) and the affine from index (k, j, i) to LPS mm."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise MaskInputError(f"a mask grid must be 3-D and non-empty, got {self.shape}")
        if self.affine.shape != (4, 4) or not np.all(np.isfinite(self.affine)):
            raise MaskInputError("a mask grid needs a finite 4x4 affine")
        if min(self.spacing) <= 0:
            raise MaskInputError("a mask grid has a zero voxel spacing")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (slice, row, col) in mm."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Grid:
        """The grid of a SimpleITK image (whose axes are ordered i, j, k)."""
        size = image.GetSize()
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        steps = direction * np.asarray(image.GetSpacing())  # columns: i, j, k
        affine = np.eye(4)
        affine[:3, :3] = steps[:, ::-1]
        affine[:3, 3] = image.GetOrigin()
        return cls((int(size[2]), int(size[1]), int(size[0])), affine)

    @classmethod
    def from_volume(cls, volume: Volume) -> Grid:
        """The grid of a loaded ``medseg.dicom.Volume``."""
        spacing_ijk = np.array([volume.spacing[2], volume.spacing[1], volume.spacing[0]])
        steps = np.asarray(volume.direction, dtype=np.float64) * spacing_ijk
        affine = np.eye(4)
        affine[:3, :3] = steps[:, ::-1]
        affine[:3, 3] = volume.origin
        return cls(tuple(int(n) for n in volume.shape), affine)  # type: ignore[arg-type]

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        """``array`` (this grid's shape) as a SimpleITK image with this geometry."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(array)
        spacing = np.asarray(self.spacing)
        steps = self.affine[:3, :3][:, ::-1] / spacing[::-1]
        image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        image.SetOrigin(tuple(float(v) for v in self.affine[:3, 3]))
        image.SetDirection(tuple(float(v) for v in steps.ravel()))
        return image

    def corners_in(self, other: Grid) -> np.ndarray:
        """This grid's 8 outer voxel *edges* as continuous (k, j, i) indices of ``other``."""
        lo, hi = -0.5, np.asarray(self.shape) - 0.5
        corners = np.array(
            [[a, b, c, 1.0] for a in (lo, hi[0]) for b in (lo, hi[1]) for c in (lo, hi[2])]
        )
        return (np.linalg.inv(other.affine) @ self.affine @ corners.T).T[:, :3]

    def overlaps(self, other: Grid) -> bool:
        """Whether the two grids' fields of view share any patient-space volume."""
        corners = self.corners_in(other)
        upper = np.asarray(other.shape) - 0.5
        return bool(np.all(corners.max(axis=0) > -0.5) and np.all(corners.min(axis=0) < upper))

    def enclosing(self, other: Grid) -> Grid:
        """This lattice, extended (never shrunk) to cover ``other``'s field of view."""
        corners = other.corners_in(self)
        lo = np.minimum(0, np.floor(corners.min(axis=0) + 0.5 + _LATTICE_TOL)).astype(int)
        hi = np.maximum(
            np.asarray(self.shape) - 1, np.ceil(corners.max(axis=0) - 0.5 - _LATTICE_TOL)
        ).astype(int)
        affine = self.affine.copy()
        affine[:3, 3] = (self.affine @ np.array([*lo, 1.0]))[:3]
        return Grid(tuple(int(n) for n in hi - lo + 1), affine)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a mask file: its number (SEG segment / label value) and its label."""

    number: int
    label: str


@dataclass(frozen=True, eq=False)
class MaskFile:
    """A mask file read into memory: its grid, its segments and the series it references.

    ``array`` is either a label map (slices, rows, cols) whose voxel value is the segment
    number, or, for a DICOM-SEG (segments may overlap), one channel per segment
    (slices, rows, cols, segments) in the order of ``segments``.
    """

    path: Path
    kind: str
    grid: Grid
    segments: tuple[SegmentInfo, ...]
    array: np.ndarray = field(repr=False)
    referenced_series_uid: str | None = None

    def find_segment(self, segment: int | str) -> SegmentInfo:
        """The segment with this number, or this label (case-insensitive); clear error if none."""
        if isinstance(segment, str) and segment.strip().isdigit():
            segment = int(segment)
        for info in self.segments:
            if info.number == segment if isinstance(segment, int) else _same(info.label, segment):
                return info
        available = ", ".join(f"{s.number} ({s.label})" for s in self.segments) or "none"
        raise MaskInputError(f"{self.path.name}: no segment {segment!r}; it has: {available}")

    def mask(self, segment: int | str = 1) -> np.ndarray:
        """Boolean (slices, rows, cols) mask of one segment (``"*"``: all), on its own grid."""
        if segment == ALL_SEGMENTS:
            return self.array.any(axis=3) if self.array.ndim == 4 else self.array > 0
        info = self.find_segment(segment)
        if self.array.ndim == 4:
            return self.array[..., self.segments.index(info)].astype(bool, copy=False)
        return self.array == info.number


def _same(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def mask_stem(path: Path) -> str:
    """The file name without its mask suffix: ``case01.nii.gz`` -> ``case01``."""
    name = Path(path).name
    for suffix in sorted(STEM_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_itk_file(path: Path) -> bool:
    return Path(path).name.lower().endswith(ITK_SUFFIXES)


def read_mask(path: Path) -> MaskFile:
    """Read a DICOM-SEG, NIfTI or NRRD mask; any other file is a ``MaskInputError``."""
    path = Path(path)
    if not path.is_file():
        raise MaskInputError(f"mask file not found: {path}")
    if is_itk_file(path):
        return _read_itk(path)
    return _read_seg(path)


def _read_itk(path: Path) -> MaskFile:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise MaskInputError(f"cannot read {path.name} as NIfTI/NRRD: {_first_line(exc)}") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise MaskInputError(
            f"{path.name}: a mask must be a 3-D scalar label image, got "
            f"{image.GetDimension()}-D with {image.GetNumberOfComponentsPerPixel()} component(s)"
        )
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise MaskInputError(f"{path.name}: voxel values must be integer segment labels")
        array = array.astype(np.int64)
    if array.dtype.kind not in "iub":
        raise MaskInputError(f"{path.name}: unsupported voxel type {array.dtype}")
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.min() < 0:
        raise MaskInputError(f"{path.name}: negative label values are not segment numbers")
    names = _itk_segment_names(image)
    numbers = [int(v) for v in np.unique(array) if v != 0]
    if not numbers and not names:
        numbers = [1]  # an empty binary mask still has its one segment, just with no voxels
    numbers = sorted(set(numbers) | set(names))
    segments = tuple(SegmentInfo(n, names.get(n, str(n))) for n in numbers)
    kind = "nifti" if ".nii" in path.name.lower() else "nrrd"
    return MaskFile(path, kind, Grid.from_sitk(image), segments, array)


def _itk_segment_names(image: sitk.Image) -> dict[int, str]:
    """Label names a 3D Slicer ``.seg.nrrd`` stores as ``SegmentN_Name``/``_LabelValue``."""
    keys = set(image.GetMetaDataKeys())
    names: dict[int, str] = {}
    for key in keys:
        match = re.fullmatch(r"Segment(\d+)_Name", key)
        value_key = f"Segment{match.group(1)}_LabelValue" if match else ""
        if match and value_key in keys:
            try:
                names[int(image.GetMetaData(value_key))] = image.GetMetaData(key)
            except ValueError:
                log.warning("%s: ignoring non-integer %s", value_key, value_key)
    return names


def _read_seg(path: Path) -> MaskFile:
    import highdicom as hd
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as exc:
        raise MaskInputError(
            f"{path.name} is neither DICOM-SEG nor NIfTI/NRRD ({_first_line(exc)})"
        ) from exc
    sop_class = str(header.get("SOPClassUID", ""))
    if sop_class not in (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE):
        raise MaskInputError(
            f"{path.name} is DICOM but not a Segmentation (SOP class {sop_class or 'missing'})"
        )
    try:
        seg = hd.seg.segread(path)
        numbers = [int(n) for n in seg.segment_numbers]
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=False)
    except (ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise MaskInputError(f"cannot read SEG {path.name}: {_first_line(exc)}") from exc
    if volume is None:
        raise MaskInputError(f"SEG {path.name}: its frames do not form a regular 3-D volume")
    array = np.asarray(volume.array)
    if array.ndim == 3:
        array = array[..., np.newaxis]
    if seg.segmentation_type.value == "FRACTIONAL":
        array = array >= 0.5  # highdicom rescales fractional values to [0, 1]
    segments = tuple(
        SegmentInfo(n, str(seg.get_segment_description(n).segment_label)) for n in numbers
    )
    referenced = header.get("ReferencedSeriesSequence")
    series_uid = str(referenced[0].SeriesInstanceUID) if referenced else None
    grid = Grid(tuple(int(n) for n in array.shape[:3]), np.asarray(volume.affine, float))
    return MaskFile(path, "seg", grid, segments, array.astype(bool), series_uid)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lattice_map(src: Grid, dst: Grid, tol: float = _LATTICE_TOL) -> np.ndarray | None:
    """Integer 4x4 map from ``src`` to ``dst`` indices when both share one lattice, else None.

    Sharing a lattice means every ``src`` voxel centre is a ``dst`` voxel centre: the index
    map is a signed permutation plus an integer offset (within ``tol`` voxels).
    """
    m = np.linalg.inv(dst.affine) @ src.affine
    rounded = np.round(m)
    if not np.allclose(m, rounded, atol=tol):
        return None
    rot = rounded[:3, :3]
    if not (np.all(np.abs(rot).sum(axis=0) == 1) and np.all(np.abs(rot).sum(axis=1) == 1)):
        return None
    return rounded


def _reindex(array: np.ndarray, m: np.ndarray, dst_shape: tuple[int, int, int]) -> np.ndarray:
    """Copy ``array`` into a zero ``dst_shape`` array through a lattice map (no resampling)."""
    rot, offset = m[:3, :3].astype(int), m[:3, 3].astype(int)
    src_axes = [int(np.flatnonzero(rot[a])[0]) for a in range(3)]
    aligned = np.transpose(array, src_axes)
    start = np.empty(3, dtype=int)
    for a, b in enumerate(src_axes):
        if rot[a, b] < 0:
            aligned = np.flip(aligned, axis=a)
            start[a] = offset[a] - (array.shape[b] - 1)
        else:
            start[a] = offset[a]
    out = np.zeros(dst_shape, dtype=array.dtype)
    dst_lo = np.maximum(start, 0)
    dst_hi = np.minimum(start + aligned.shape, dst_shape)
    if np.any(dst_hi <= dst_lo):
        return out
    src_lo = dst_lo - start
    src_hi = src_lo + (dst_hi - dst_lo)
    out[tuple(slice(lo, hi) for lo, hi in zip(dst_lo, dst_hi, strict=True))] = aligned[
        tuple(slice(lo, hi) for lo, hi in zip(src_lo, src_hi, strict=True))
    ]
    return out


def place_on_grid(
    mask: np.ndarray, src: Grid, dst: Grid, *, what: str = "mask"
) -> tuple[np.ndarray, bool]:
    """Map a boolean ``mask`` on ``src`` onto ``dst``; returns (mask, was_resampled).

    Exact re-indexing when the grids share a lattice; otherwise nearest-neighbour
    resampling (logged as a warning, since it can move boundaries by half a voxel).
    Grids that do not overlap in patient space raise ``MaskInputError``.
    """
    if mask.shape != src.shape:
        raise MaskInputError(f"{what}: array shape {mask.shape} does not match its grid")
    if not src.overlaps(dst):
        raise MaskInputError(f"{what} and the reference grid do not overlap in patient space")
    m = _lattice_map(src, dst)
    if m is not None:
        if mask.shape == dst.shape and np.array_equal(m, np.eye(4)):
            return mask.astype(bool, copy=False), False
        return _reindex(mask.astype(bool, copy=False), m, dst.shape), False
    log.warning(
        "%s: grid differs (spacing %s mm vs %s mm); resampling nearest-neighbour",
        what,
        _fmt(src.spacing),
        _fmt(dst.spacing),
    )
    return _resample_nearest(mask, src, dst), True


def _fmt(values: tuple[float, ...]) -> str:
    return "x".join(f"{v:.3g}" for v in values)


def _resample_nearest(mask: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    import SimpleITK as sitk

    try:
        moving = src.to_sitk(mask.astype(np.uint8))
        reference = dst.to_sitk(np.zeros((1, 1, 1), np.uint8))  # geometry only; size below
    except RuntimeError as exc:  # e.g. a sheared (gantry-tilt) grid SimpleITK cannot hold
        raise MaskInputError(f"cannot resample between these grids: {_first_line(exc)}") from exc
    resample = sitk.ResampleImageFilter()
    resample.SetOutputSpacing(reference.GetSpacing())
    resample.SetOutputOrigin(reference.GetOrigin())
    resample.SetOutputDirection(reference.GetDirection())
    resample.SetSize([int(n) for n in dst.shape[::-1]])
    resample.SetInterpolator(sitk.sitkNearestNeighbor)
    resample.SetDefaultPixelValue(0)
    return sitk.GetArrayFromImage(resample.Execute(moving)).astype(bool)


def mask_on_volume(path: Path, volume: Volume, segment: int | str = 1) -> np.ndarray:
    """One segment of a SEG/NIfTI/NRRD file as a bool (slices, rows, cols) mask on ``volume``.

    For training and evaluation against a loaded series: voxels of the volume outside the
    mask file's field of view are False. ``segment`` is a number, a label or ``"*"`` (the
    union of all segments). Resampled nearest-neighbour (with a warning) only
    when the mask's grid is not the volume's lattice.
    """
    mask_file = read_mask(path)
    mask, _ = place_on_grid(
        mask_file.mask(segment), mask_file.grid, Grid.from_volume(volume), what=Path(path).name
    )
    return mask
