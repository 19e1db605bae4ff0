"""One axial slice of a synthetic series as a DICOM file: the header both writers share.

``medseg phantom`` and ``medseg.synthetic.series`` write obviously fake patients (identity
removed, 1900 birth date) with deterministic UIDs; only the pixel encoding differs: CT as
int16 with a rescale intercept to Hounsfield units, MR as plain uint16.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

CT_INTERCEPT = -1024


@dataclass(frozen=True)
class SyntheticSeries:
    """Who and what a synthetic series is (the same for all its slices)."""

    patient_name: str
    patient_id: str
    study_uid: str
    series_uid: str
    frame_uid: str
    study_id: str
    study_description: str
    series_description: str
    model_name: str
    modality: str = "CT"
    body_part: str = ""


def write_slice(
    path: Path,
    series: SyntheticSeries,
    *,
    sop_instance_uid: str,
    instance_number: int,
    position: tuple[float, float, float],
    pixel_spacing: float,
    thickness: float,
    values: np.ndarray,
) -> Dataset:
    """Write one slice (``values``: HU for CT, signal for MR) and return its dataset."""
    ct = series.modality == "CT"
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage if ct else MRImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.PatientName = series.patient_name
    ds.PatientID = series.patient_id
    ds.PatientBirthDate = "19000101"
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.FrameOfReferenceUID = series.frame_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID = series.study_id[:16]
    ds.AccessionNumber = series.study_id[:16]
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = series.study_description
    ds.SeriesDescription = series.series_description
    ds.Modality = series.modality
    if series.body_part:
        ds.BodyPartExamined = series.body_part
    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = series.model_name
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.PatientPosition = "FFS"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.SliceThickness = thickness
    ds.SpacingBetweenSlices = thickness
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    if ct:
        ds.KVP = 120
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = CT_INTERCEPT, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        stored = np.clip(np.rint(values) - CT_INTERCEPT, -32768, 32767).astype(np.int16)
    else:
        ds.PixelRepresentation = 0
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
        ds.MagneticFieldStrength = 1.5
        stored = np.clip(np.rint(values), 0, 65535).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return ds
