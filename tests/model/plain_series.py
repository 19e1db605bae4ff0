"""Series written with plain pydicom, by no medseg generator: an ellipsoid lesion in an
organ, at fields of view and spacings the generators do not default to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid


@dataclass(frozen=True)
class PlainSeries:
    folder: Path
    lesion: np.ndarray  # bool (slices, rows, cols) in file order (slice k = file k)
    centre: tuple[int, int, int]  # k, row, col of the lesion's centre
    box: tuple[int, int, int, int]  # r0, c0, r1, c1 of the lesion on slice centre[0]


def write_plain_series(
    folder: Path,
    modality: str,
    *,
    matrix: int,
    fov_mm: float,
    slices: int,
    thickness: float,
    lesion: bool = True,
    seed: int = 0,
) -> PlainSeries:
    """Body ellipse, an organ, one ellipsoid lesion (CT: hypodense; MR: bright), noise."""
    rng = np.random.default_rng(seed)
    spacing = fov_mm / matrix
    mm = (np.arange(matrix) + 0.5) * spacing - fov_mm / 2
    z = (np.arange(slices) - (slices - 1) / 2) * thickness
    zz, yy, xx = np.meshgrid(z, mm, mm, indexing="ij")
    body = (yy / (0.33 * fov_mm)) ** 2 + (xx / (0.45 * fov_mm)) ** 2 <= 1
    organ = ((yy + 0.05 * fov_mm) / (0.18 * fov_mm)) ** 2 + (
        (xx - 0.1 * fov_mm) / (0.22 * fov_mm)
    ) ** 2 <= 1
    centre_mm = (0.0, -0.05 * fov_mm, 0.1 * fov_mm)
    semi = (9.0, 11.0, 13.0)
    inside = (
        sum(((a - c) / s) ** 2 for a, c, s in zip((zz, yy, xx), centre_mm, semi, strict=True)) <= 1
    )
    inside &= lesion
    if modality == "CT":
        image = np.where(body, -90.0, -1000.0)
        image = np.where(organ, 65.0, image)
        image = np.where(inside, 15.0, image) + rng.normal(0, 9.0, image.shape)
        stored = np.rint(image + 1024).astype(np.int16)
    else:
        image = np.where(body, 250.0, 5.0)
        image = np.where(organ, 420.0, image)
        image = np.where(inside, 900.0, image)
        noisy = np.hypot(image + rng.normal(0, 18.0, image.shape), rng.normal(0, 18.0, image.shape))
        stored = np.rint(noisy).astype(np.uint16)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(slices):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID = "PLAIN^Series", "PLAIN1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = modality
        ds.SeriesNumber, ds.InstanceNumber = 3, slices - k  # numbered head to feet
        ds.ImagePositionPatient = [
            -fov_mm / 2 + spacing / 2,
            -fov_mm / 2 + spacing / 2,
            float(z[k]),
        ]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = thickness
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = matrix
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        if modality == "CT":
            ds.PixelRepresentation = 1
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        else:
            ds.PixelRepresentation = 0
        ds.PixelData = stored[k].tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    k0 = slices // 2
    r0 = int(np.argmin(np.abs(mm - centre_mm[1])))
    c0 = int(np.argmin(np.abs(mm - centre_mm[2])))
    rows, cols = np.nonzero(inside[k0]) if inside[k0].any() else ([r0], [c0])
    return PlainSeries(folder, inside, (k0, r0, c0), (min(rows), min(cols), max(rows), max(cols)))


def seg_mask(seg_path: Path, folder: Path, algorithm: str | None = None) -> np.ndarray:
    """The SEG's mask on ``folder``'s file order (slice k = file k), by its frames' source
    images; ``algorithm`` keeps only the frames of segments of that SegmentAlgorithmType."""
    import pydicom

    seg = pydicom.dcmread(seg_path)
    files = sorted(folder.iterdir())
    index = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: k for k, p in enumerate(files)
    }
    kept = {
        int(item.SegmentNumber)
        for item in seg.SegmentSequence
        if algorithm is None or item.SegmentAlgorithmType == algorithm
    }
    mask = np.zeros((len(files), seg.Rows, seg.Columns), dtype=bool)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        where = (
            item
            if "SegmentIdentificationSequence" in item
            else seg.SharedFunctionalGroupsSequence[0]
        )
        number = int(where.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if number not in kept:
            continue
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        mask[index[source]] |= frame.astype(bool)
    return mask
