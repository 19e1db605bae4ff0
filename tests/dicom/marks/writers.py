"""Write marks the way viewers save them: GSPS with pydicom, TID 1500 SR with highdicom and
with dcmqi's tid1500writer; and check each with an independent dcmtk tool."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

GSPS = "1.2.840.10008.5.1.4.1.1.11.1"


@dataclass(frozen=True)
class Graphic:
    """One graphic object of a GSPS annotation."""

    graphic_type: str
    points: Sequence[Sequence[float]]
    units: str = "PIXEL"


@dataclass(frozen=True)
class Annotation:
    """One Graphic Annotation item: graphics on one image (index into the series' files),
    on ``layer``; ``image=None`` leaves out its Referenced Image Sequence."""

    graphics: Sequence[Graphic]
    image: int | None = 0
    layer: str = "MARKS"
    frame: int | None = None


@dataclass(frozen=True)
class DisplayedArea:
    """A Displayed Area Selection item: 1-based corners on ``images`` (None: all)."""

    tlhc: tuple[int, int]
    brhc: tuple[int, int]
    images: Sequence[int] | None = None


def _ref(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


@dataclass
class GspsWriter:
    """Builds a GSPS on the images of one series, with every module dcmpschk checks."""

    images: Sequence[Path]
    annotations: list[Annotation] = field(default_factory=list)
    areas: list[DisplayedArea] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=lambda: {"MARKS": "reader's marks"})
    rotation: int = 0
    series_images: Sequence[int] | None = None  # the images it applies to (None: all)

    def dataset(self) -> Dataset:
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in self.images]
        first = headers[0]
        ds = Dataset()
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "StudyID",
            "AccessionNumber",
            "ReferringPhysicianName",
        ):
            setattr(ds, keyword, getattr(first, keyword, ""))  # type 2: may be empty
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = GSPS
        ds.SOPInstanceUID = generate_uid()
        ds.Modality = "PR"
        ds.SeriesInstanceUID = generate_uid()
        ds.SeriesNumber = 900
        ds.Manufacturer = "tests"
        ds.InstanceNumber = 1
        ds.ContentLabel = "MARKS"
        ds.ContentDescription = "reader marks"
        ds.PresentationCreationDate = "20240102"
        ds.PresentationCreationTime = "101500"
        ds.ContentCreatorName = "Reader^One"
        series = Dataset()
        series.SeriesInstanceUID = first.SeriesInstanceUID
        chosen = range(len(headers)) if self.series_images is None else self.series_images
        series.ReferencedImageSequence = DicomSequence([_ref(headers[i]) for i in chosen])
        ds.ReferencedSeriesSequence = DicomSequence([series])
        areas = self.areas or [DisplayedArea((1, 1), (int(first.Columns), int(first.Rows)))]
        selections = []
        for area in areas:
            item = Dataset()
            if area.images is not None:
                item.ReferencedImageSequence = DicomSequence(
                    [_ref(headers[i]) for i in area.images]
                )
            item.DisplayedAreaTopLeftHandCorner = list(area.tlhc)
            item.DisplayedAreaBottomRightHandCorner = list(area.brhc)
            item.PresentationSizeMode = "SCALE TO FIT"
            if "PixelSpacing" in first:
                item.PresentationPixelSpacing = [float(v) for v in first.PixelSpacing]
            else:  # a multi-frame image keeps it in its functional groups
                item.PresentationPixelAspectRatio = [1, 1]
            selections.append(item)
        ds.DisplayedAreaSelectionSequence = DicomSequence(selections)
        annotations = []
        for annotation in self.annotations:
            item = Dataset()
            if annotation.image is not None:
                ref = _ref(headers[annotation.image])
                if annotation.frame is not None:
                    ref.ReferencedFrameNumber = annotation.frame
                item.ReferencedImageSequence = DicomSequence([ref])
            item.GraphicLayer = annotation.layer
            objects = []
            for graphic in annotation.graphics:
                obj = Dataset()
                obj.GraphicAnnotationUnits = graphic.units
                obj.GraphicDimensions = 2
                obj.NumberOfGraphicPoints = len(graphic.points)
                obj.GraphicData = [float(v) for p in graphic.points for v in p]
                obj.GraphicType = graphic.graphic_type
                if graphic.graphic_type in ("CIRCLE", "ELLIPSE") or (
                    graphic.graphic_type in ("POLYLINE", "INTERPOLATED")
                    and list(graphic.points[0]) == list(graphic.points[-1])
                ):
                    obj.GraphicFilled = "N"
                objects.append(obj)
            item.GraphicObjectSequence = DicomSequence(objects)
            annotations.append(item)
        ds.GraphicAnnotationSequence = DicomSequence(annotations)
        layers = []
        for order, (name, description) in enumerate(self.layers.items(), start=1):
            layer = Dataset()
            layer.GraphicLayer = name
            layer.GraphicLayerOrder = order
            layer.GraphicLayerDescription = description
            layers.append(layer)
        ds.GraphicLayerSequence = DicomSequence(layers)
        ds.ImageRotation = self.rotation
        ds.ImageHorizontalFlip = "N"
        if "RescaleSlope" in first:  # a multi-frame image keeps its own per frame
            ds.RescaleIntercept = first.RescaleIntercept
            ds.RescaleSlope = first.RescaleSlope
            ds.RescaleType = "HU"
        voi = Dataset()
        voi.WindowCenter = 40
        voi.WindowWidth = 400
        ds.SoftcopyVOILUTSequence = DicomSequence([voi])
        ds.PresentationLUTShape = "IDENTITY"
        return ds

    def write(self, path: Path) -> Path:
        ds = self.dataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(path, enforce_file_format=True)
        return path


def dcmpschk(path: Path) -> str:
    """dcmtk's presentation state checker; its report (the caller asserts on it)."""
    tool = shutil.which("dcmpschk")
    assert tool, "dcmtk's dcmpschk is installed by tests/install-deps.sh"
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr + f"\nexit {done.returncode}"


def header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def image_region(image: Path, graphic_type: str, points: Sequence[Sequence[float]]):
    """A TID 1500 SCOORD image region on ``image`` (column, row image coordinates)."""
    return hd.sr.ImageRegion(
        graphic_type=graphic_type,
        graphic_data=np.asarray(points, dtype=float),
        source_image=hd.sr.SourceImageForRegion.from_source_image(header(image)),
    )


def image_region_3d(graphic_type: str, points: Sequence[Sequence[float]], frame_of_reference: str):
    """A TID 1500 SCOORD3D image region (LPS mm)."""
    return hd.sr.ImageRegion3D(
        graphic_type=graphic_type,
        graphic_data=np.asarray(points, dtype=float),
        frame_of_reference_uid=frame_of_reference,
    )


def length(image: Path, ends: Sequence[Sequence[float]], mm: float) -> hd.sr.Measurement:
    """A Length NUM measured from a 2-point SCOORD POLYLINE, as OHIF and Slicer write it."""
    return hd.sr.Measurement(
        name=codes.SCT.Length,
        value=mm,
        unit=codes.UCUM.Millimeter,
        referenced_coordinates=[
            hd.sr.CoordinatesForMeasurement(
                graphic_type="POLYLINE",
                graphic_data=np.asarray(ends, dtype=float),
                source_image=hd.sr.SourceImageForRegion.from_source_image(header(image)),
            )
        ],
    )


def volume_3d(graphic_type: str, points: Sequence[Sequence[float]], frame_of_reference: str):
    """A Volume NUM measured from a SCOORD3D (an ELLIPSOID's three axes, say)."""
    return hd.sr.Measurement(
        name=codes.SCT.Volume,
        value=1.0,
        unit=codes.UCUM.CubicMillimeter,
        referenced_coordinates=[
            hd.sr.CoordinatesForMeasurement3D(
                graphic_type=graphic_type,
                graphic_data=np.asarray(points, dtype=float),
                frame_of_reference_uid=frame_of_reference,
            )
        ],
    )


def group(
    identifier: str,
    region=None,
    measurements: Sequence[hd.sr.Measurement] = (),
    uid: str | None = None,
    finding: tuple[str, str, str] | None = None,
):
    """One measurement group with a tracking identifier (and UID): TID 1410 around an image
    region, TID 1501 for measurements alone (a Length and its endpoints)."""
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=uid or generate_uid(), identifier=identifier
        ),
        "measurements": list(measurements) or None,
        "finding_type": hd.sr.CodedConcept(*finding) if finding else None,
    }
    if region is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)


def write_report(
    path: Path, images: Sequence[Path], groups: Sequence, sop: str = "comprehensive3d"
) -> Path:
    """A TID 1500 Measurement Report as a Comprehensive 3D, Comprehensive or Enhanced SR."""
    evidence = [pydicom.dcmread(p) for p in images]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name="Reader^One"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=list(groups),
    )
    kinds = {
        "comprehensive3d": hd.sr.Comprehensive3DSR,
        "comprehensive": hd.sr.ComprehensiveSR,
        "enhanced": hd.sr.EnhancedSR,
    }
    sr = kinds[sop](
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="tests",
    )
    sr.save_as(path, enforce_file_format=True)
    return path


def dsrdump(path: Path) -> subprocess.CompletedProcess[str]:
    """dcmtk's SR dump: a report it cannot parse or finds invalid gives E: lines / exit 1."""
    tool = shutil.which("dsrdump")
    assert tool, "dcmtk's dsrdump is installed by tests/install-deps.sh"
    return subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)


def tid1500writer_sr(tmp_path: Path, shared_dir: Path) -> Path:
    """An SR written by dcmqi: volumetric measurements of a DICOM-SEG segment."""
    ct = shared_dir / "data" / "dcmqi" / "ct-3slice"
    seg = shared_dir / "data" / "dcmqi" / "liver.dcm"
    context = tmp_path / "context"
    context.mkdir(parents=True)
    shutil.copy(seg, context / "liver.dcm")
    image = pydicom.dcmread(ct / "01.dcm", stop_before_pixels=True)
    code = {"CodingSchemeDesignator": "SCT"}
    meta = {
        "SeriesDescription": "Measurements",
        "SeriesNumber": "1001",
        "InstanceNumber": "1",
        "compositeContext": ["liver.dcm"],
        "imageLibrary": ["01.dcm", "02.dcm", "03.dcm"],
        "observerContext": {"ObserverType": "PERSON", "PersonObserverName": "Reader1"},
        "VerificationFlag": "VERIFIED",
        "CompletionFlag": "COMPLETE",
        "activitySession": "1",
        "timePoint": "1",
        "Measurements": [
            {
                "TrackingIdentifier": "liver",
                "ReferencedSegment": 1,
                "SourceSeriesForImageSegmentation": str(image.SeriesInstanceUID),
                "segmentationSOPInstanceUID": str(pydicom.dcmread(seg).SOPInstanceUID),
                "Finding": {"CodeValue": "10200004", "CodeMeaning": "Liver", **code},
                "FindingSite": {"CodeValue": "10200004", "CodeMeaning": "Liver", **code},
                "measurementItems": [
                    {
                        "value": "70.3",
                        "quantity": {"CodeValue": "118565006", "CodeMeaning": "Volume", **code},
                        "units": {
                            "CodeValue": "cm3",
                            "CodingSchemeDesignator": "UCUM",
                            "CodeMeaning": "cubic centimeter",
                        },
                    }
                ],
            }
        ],
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "dcmqi-sr.dcm"
    tool = shutil.which("tid1500writer")
    assert tool, "dcmqi's tid1500writer is part of the test extras"
    done = subprocess.run(
        [
            tool,
            "--inputMetadata",
            str(tmp_path / "meta.json"),
            "--inputImageLibraryDirectory",
            str(ct),
            "--inputCompositeContextDirectory",
            str(context),
            "--outputDICOM",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and out.is_file(), done.stdout + done.stderr
    return out
