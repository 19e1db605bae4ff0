"""Small real DICOM objects built inside the tests: a CT series and highdicom SEGs on it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_series(
    folder: Path,
    shape: tuple[int, int, int] = (12, 20, 24),
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.7),
    origin: tuple[float, float, float] = (-10.0, -20.0, 30.0),
) -> list[pydicom.Dataset]:
    """Write a synthetic axial CT series (one file per slice) and return its datasets."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    datasets = []
    for k in range(shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PatientName, ds.PatientID = "Test^Metrics", "METRICS01"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", "A1"
        ds.ReferringPhysicianName, ds.StudyID = "", "1"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
        ds.Manufacturer = "medseg-tests"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[0]]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = rng.integers(-100, 100, shape[1:], dtype=np.int16).tobytes()
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
        datasets.append(ds)
    return datasets


def write_seg(
    path: Path,
    sources: Sequence[pydicom.Dataset],
    masks: np.ndarray,
    labels: Sequence[str],
    *,
    omit_empty_frames: bool = True,
    segmentation_type: str = "BINARY",
    series_number: int = 100,
) -> hd.seg.Segmentation:
    """Write a highdicom SEG; ``masks`` is (slices, rows, cols, segments) bool for BINARY,
    or (slices, rows, cols) segment numbers for LABELMAP."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n + 1,
            segment_label=label,
            segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morph"),
            segmented_property_type=hd.sr.CodedConcept("52988006", "SCT", "Lesion"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in enumerate(labels)
    ]
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=masks.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues[segmentation_type],
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medseg-tests",
        manufacturer_model_name="tests",
        software_versions="0",
        device_serial_number="0",
        omit_empty_frames=omit_empty_frames,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return seg


def volume_from_datasets(datasets: Sequence[pydicom.Dataset]):
    """A ``medseg.dicom.Volume`` of an axial single-frame series, built directly in the test."""
    from medseg.dicom.volume import SourceFrame, Volume

    ordered = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in ordered])
    row_dir = np.array([float(v) for v in ordered[0].ImageOrientationPatient[:3]])
    col_dir = np.array([float(v) for v in ordered[0].ImageOrientationPatient[3:]])
    normal = np.cross(row_dir, col_dir)
    slice_spacing = float(np.dot(positions[1] - positions[0], normal)) if len(ordered) > 1 else 1.0
    return Volume(
        voxels=np.stack([ds.pixel_array.astype(np.float32) for ds in ordered]),
        spacing=(
            slice_spacing,
            float(ordered[0].PixelSpacing[0]),
            float(ordered[0].PixelSpacing[1]),
        ),
        origin=tuple(positions[0]),
        direction=np.stack([row_dir, col_dir, normal], axis=1),
        positions=positions,
        frames=tuple(SourceFrame(ds.SOPClassUID, ds.SOPInstanceUID) for ds in ordered),
        datasets=tuple(ordered),
        modality="CT",
        series_instance_uid=ordered[0].SeriesInstanceUID,
        study_instance_uid=ordered[0].StudyInstanceUID,
    )
