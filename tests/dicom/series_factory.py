"""Write synthetic CT/MR series with pydicom, with known geometry, for tests.

Reusable by every test package: ``write_series(folder, values, ...)`` writes classic
single-frame files (or one Enhanced CT multi-frame file) and returns what a correct loader
must produce (voxels after rescale, positions, direction, spacing).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    generate_uid,
)


@dataclass(frozen=True)
class WrittenSeries:
    """What was written and what a correct loader must return for it."""

    paths: tuple[Path, ...]
    voxels: np.ndarray  # (slices, rows, cols) float32 real values, ascending along the normal
    spacing: tuple[float, float, float]  # (slice, row, col)
    direction: np.ndarray  # columns i, j, k
    positions: np.ndarray  # (slices, 3) ascending along the normal
    series_uid: str
    study_uid: str
    sop_uids: tuple[str, ...]  # per slice, volume order (one repeated UID for multi-frame)


def sphere(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    center_mm: Sequence[float],
    radius_mm: float,
) -> np.ndarray:
    """A bool ball in index space (slice, row, col) with centre/radius in grid mm."""
    grids = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"
    )
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, center_mm, strict=True))
    return dist2 <= radius_mm**2


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def _base_dataset(
    modality: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    rows: int,
    cols: int,
    signed: bool,
) -> Dataset:
    ds = Dataset()
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYN0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.Manufacturer = "series_factory"
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"synthetic {modality}"
    ds.PositionReferenceIndicator = ""
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    return ds


def _file_window(
    window: tuple[float, float], monochrome1: bool, total: int, slope: float, intercept: float
) -> tuple[float, float]:
    """A MONOCHROME1 file states its window on the inverted values."""
    if not monochrome1:
        return window
    return (total * slope + 2 * intercept - window[0], window[1])


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    uid = pydicom.uid.UID(transfer_syntax)
    if uid.is_compressed:
        ds.compress(uid, generate_instance_uid=False)
    elif uid != ExplicitVRLittleEndian:
        meta.TransferSyntaxUID = uid
    ds.save_as(path, enforce_file_format=True)


def write_series(
    folder: Path,
    values: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.7),
    origin: Sequence[float] = (-120.0, -100.0, 40.0),
    row_dir: Sequence[float] = (1.0, 0.0, 0.0),
    col_dir: Sequence[float] = (0.0, 1.0, 0.0),
    modality: str = "CT",
    slopes: Sequence[float] | float = 1.0,
    intercept: float = -1024.0,
    monochrome1: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    order: str = "ascending",
    multiframe: bool = False,
    seed: int = 0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    window: tuple[float, float] | None = (40.0, 400.0),
) -> WrittenSeries:
    """Write ``values`` (slices, rows, cols; real values such as HU) as a DICOM series.

    ``order`` is how instance numbers and file names run relative to the geometry:
    ``ascending``, ``descending`` (instance 1 is the last slice along the normal) or
    ``shuffle`` (random file names and instance numbers). ``slopes`` may be one value or one
    per slice (stored = round((value - intercept) / slope)). ``monochrome1`` stores inverted
    values. ``multiframe`` writes one Enhanced CT instance with functional groups (frames in
    the order ``order`` gives).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = np.asarray(values, dtype=np.float64)
    n, rows, cols = values.shape
    rng = np.random.default_rng(seed)
    slope_list = [float(slopes)] * n if np.isscalar(slopes) else [float(s) for s in slopes]  # type: ignore[arg-type]
    stored = np.stack([np.rint((values[k] - intercept) / slope_list[k]) for k in range(n)])
    signed = stored.min() < 0
    low, high = (-32768, 32767) if signed else (0, 65535)
    if stored.min() < low or stored.max() > high:
        raise ValueError("values do not fit 16 bits with this slope/intercept")
    real = np.stack([stored[k] * slope_list[k] + intercept for k in range(n)]).astype(np.float32)
    if monochrome1:
        stored = (low + high) - stored
    dtype = np.int16 if signed else np.uint16
    stored = stored.astype(dtype)

    row, col = _unit(row_dir), _unit(col_dir)
    normal = np.cross(row, col)
    positions = np.asarray(origin, dtype=np.float64) + np.outer(np.arange(n) * spacing[0], normal)
    iop = [float(v) for v in (*row, *col)]
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    if order == "ascending":
        sequence = list(range(n))
    elif order == "descending":
        sequence = list(range(n))[::-1]
    elif order == "shuffle":
        sequence = [int(i) for i in rng.permutation(n)]
    else:
        raise ValueError(f"unknown order {order!r}")
    photometric = "MONOCHROME1" if monochrome1 else "MONOCHROME2"

    if multiframe:
        ds = _base_dataset(modality, study_uid, series_uid, frame_uid, rows, cols, signed)
        ds.SOPClassUID = EnhancedCTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
        ds.InstanceNumber = 1
        ds.NumberOfFrames = n
        ds.PhotometricInterpretation = photometric
        ds.ContentDate = "20240101"
        ds.ContentTime = "120000"
        ds.AcquisitionNumber = 1
        ds.BurnedInAnnotation = "NO"
        ds.PresentationLUTShape = "IDENTITY"
        shared = Dataset()
        orient = Dataset()
        orient.ImageOrientationPatient = iop
        shared.PlaneOrientationSequence = DicomSequence([orient])
        measures = Dataset()
        measures.PixelSpacing = [spacing[1], spacing[2]]
        measures.SliceThickness = spacing[0]
        shared.PixelMeasuresSequence = DicomSequence([measures])
        if window is not None:
            voi = Dataset()
            voi.WindowCenter, voi.WindowWidth = _file_window(
                window, monochrome1, low + high, slope_list[0], intercept
            )
            shared.FrameVOILUTSequence = DicomSequence([voi])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
        per_frame = []
        for position_number, k in enumerate(sequence, start=1):
            item = Dataset()
            pos = Dataset()
            pos.ImagePositionPatient = [float(v) for v in positions[k]]
            item.PlanePositionSequence = DicomSequence([pos])
            content = Dataset()
            content.InStackPositionNumber = position_number
            content.StackID = "1"
            item.FrameContentSequence = DicomSequence([content])
            transform = Dataset()
            transform.RescaleSlope = slope_list[k]
            transform.RescaleIntercept = intercept
            transform.RescaleType = "HU" if modality == "CT" else "US"
            item.PixelValueTransformationSequence = DicomSequence([transform])
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
        ds.PixelData = np.ascontiguousarray(stored[sequence]).tobytes()
        path = folder / "enhanced.dcm"
        _save(ds, path, transfer_syntax)
        paths: tuple[Path, ...] = (path,)
        sop_uids = (str(ds.SOPInstanceUID),) * n
    else:
        sop_class = CTImageStorage if modality == "CT" else MRImageStorage
        written = []
        uids = [""] * n
        for number, k in enumerate(sequence, start=1):
            ds = _base_dataset(modality, study_uid, series_uid, frame_uid, rows, cols, signed)
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = generate_uid()
            uids[k] = str(ds.SOPInstanceUID)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.InstanceNumber = number
            ds.ImagePositionPatient = [float(v) for v in positions[k]]
            ds.ImageOrientationPatient = iop
            ds.PixelSpacing = [spacing[1], spacing[2]]
            ds.SliceThickness = spacing[0]
            ds.PhotometricInterpretation = photometric
            ds.RescaleSlope = slope_list[k]
            ds.RescaleIntercept = intercept
            if window is not None:
                ds.WindowCenter, ds.WindowWidth = _file_window(
                    window, monochrome1, low + high, slope_list[k], intercept
                )
            ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
            name = f"x{rng.integers(1 << 30):09d}" if order == "shuffle" else f"IM{number:04d}"
            path = folder / name
            _save(ds, path, transfer_syntax)
            written.append(path)
        paths = tuple(written)
        sop_uids = tuple(uids)
    return WrittenSeries(
        paths=paths,
        voxels=real,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        direction=np.column_stack([row, col, normal]),
        positions=positions,
        series_uid=series_uid,
        study_uid=study_uid,
        sop_uids=sop_uids,
    )


def edit_file(path: Path, **changes: object) -> None:
    """Set (or, for ``None``, delete) header attributes of the DICOM file at ``path``."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def _frame_positions(ds: Dataset) -> list[np.ndarray]:
    if "PerFrameFunctionalGroupsSequence" in ds:
        return [
            np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
            for item in ds.PerFrameFunctionalGroupsSequence
        ]
    return [np.asarray(ds.ImagePositionPatient, dtype=np.float64)]


def write_jpeg_baseline_series(
    folder: Path,
    values: np.ndarray,
    *,
    quality: int = 90,
    slope: float = 1.0,
    intercept: float = -1024.0,
    **geometry: object,
) -> WrittenSeries:
    """Write 8-bit ``values`` (0..255 stored values) as a JPEG baseline (process 1) series.

    Each frame is encoded with Pillow (a single-component greyscale JPEG, so the series is
    MONOCHROME2 with 8 bits) and encapsulated. ``geometry`` goes to ``write_series``
    (orientation, order, ``multiframe``...). The returned ``voxels`` are what Pillow decodes
    from the written streams, rescaled: exact JPEG decoding is decoder-specific, the
    pre-compression values are the caller's ``values`` (rescaled the same way).
    """
    stored = np.asarray(values)
    if stored.min() < 0 or stored.max() > 255 or not np.all(stored == np.rint(stored)):
        raise ValueError("JPEG baseline values must be integers in 0..255")
    if geometry.get("monochrome1") or geometry.get("transfer_syntax") or "slopes" in geometry:
        raise ValueError("JPEG baseline series are MONOCHROME2, one slope, always JPEG")
    written = write_series(
        folder,
        stored.astype(np.float64) * slope + intercept,
        slopes=slope,
        intercept=intercept,
        **geometry,  # type: ignore[arg-type]
    )
    decoded = np.empty(written.voxels.shape, dtype=np.float32)
    for path in written.paths:
        ds = pydicom.dcmread(path)
        frames = ds.pixel_array.reshape((-1, int(ds.Rows), int(ds.Columns)))
        streams = []
        for frame, position in zip(frames, _frame_positions(ds), strict=True):
            buffer = io.BytesIO()
            Image.fromarray(frame.astype(np.uint8), mode="L").save(
                buffer, format="JPEG", quality=quality
            )
            streams.append(buffer.getvalue())
            k = int(np.argmin(np.linalg.norm(written.positions - position, axis=1)))
            pillow = np.asarray(Image.open(io.BytesIO(streams[-1])), dtype=np.float64)
            decoded[k] = (pillow * slope + intercept).astype(np.float32)
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ratio = frames.size / sum(len(stream) for stream in streams)
        ds.LossyImageCompressionRatio = f"{ratio:.2f}"[:16]
        ds.PixelData = encapsulate(streams)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(path, enforce_file_format=True)
    return replace(written, voxels=decoded)
