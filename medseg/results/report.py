"""The TID 1500 Measurement Report: each lesion of a SEG measured, as a DICOM SR a PACS keeps.

highdicom builds the document (a Comprehensive SR): one TID 1411 Volumetric ROI measurement
group per SEG segment, referencing that segment and the source images it lies on, with its
volume, long and short axis (each with its two ends as an SCOORD line on the image, so a
viewer can draw it) and, for CT, mean / SD / maximum HU. Tracking identifier and UID are the
segment's own, so a reader pairs group and segment. The model card names the algorithm;
a research model's report says so in its Series Description and in every group
(docs/report.md).
"""

from __future__ import annotations

import logging
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from medseg import __version__
from medseg.dicom.volume import Volume
from medseg.errors import DicomInputError, OutputError
from medseg.modelcard import ModelCard
from medseg.results.measurements import Axis, LesionMeasurements, measure_segments
from medseg.seg import (
    ARTIFICIAL_INTELLIGENCE,
    MANUFACTURER,
    PERSON_NAME_WARNING,
    RESEARCH_LABEL,
    completed_sources,
    labelled_description,
    research_only,
    save_atomically,
)

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
MILLILITER = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
ATTENUATION = codes.DCM.AttenuationCoefficient
HU_STATISTICS = (
    (codes.SCT.Mean, "mean"),
    (codes.SCT.StandardDeviation, "std"),
    (codes.SCT.Maximum, "maximum"),
)
PROCEDURES = {"CT": codes.LN.CTUnspecifiedBodyRegion}
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging")
COMMENT = codes.DCM.Comment
DEVICE_UID_NAMESPACE = "medseg device observer"


def _concept(item: pydicom.Dataset) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(
        value=str(item.CodeValue),
        scheme_designator=str(item.CodingSchemeDesignator),
        meaning=str(item.CodeMeaning),
    )


def _algorithm(card: ModelCard) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=card.name[:64],
        version=card.version[:64],
        family=hd.sr.CodedConcept(
            ARTIFICIAL_INTELLIGENCE.value,
            ARTIFICIAL_INTELLIGENCE.scheme,
            ARTIFICIAL_INTELLIGENCE.meaning,
        ),
    )


def _source_image(volume: Volume, k: int) -> hd.sr.SourceImageForMeasurement:
    """The image (and frame) of slice ``k``, as a measurement's INFERRED FROM IMAGE."""
    frame = volume.frames[k]
    return hd.sr.SourceImageForMeasurement(
        referenced_sop_class_uid=frame.sop_class_uid,
        referenced_sop_instance_uid=frame.sop_instance_uid,
        referenced_frame_numbers=None if frame.frame_number is None else [frame.frame_number],
    )


def _length(name: pydicom.sr.coding.Code, axis: Axis, volume: Volume) -> hd.sr.Measurement:
    """A Long axis / Short axis NUM in mm, inferred from the image of its slice.

    TID 1411 allows no coordinates under a measurement: the axis' ends are not stated.
    """
    return hd.sr.Measurement(
        name=name,
        value=round(axis.length_mm, 2),
        unit=codes.UCUM.Millimeter,
        referenced_images=[_source_image(volume, axis.slice_index)],
    )


def _measurements(lesion: LesionMeasurements, volume: Volume) -> list[hd.sr.Measurement]:
    """Volume, the two axes, and for CT the HU statistics; the group names the algorithm."""
    out = [
        hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=round(lesion.volume_ml, 4),  # 0.1 mm³: far below one voxel
            unit=MILLILITER,
        )
    ]
    if lesion.long_axis is not None:
        out.append(_length(codes.SCT.LongAxis, lesion.long_axis, volume))
    if lesion.short_axis is not None:
        out.append(_length(codes.SCT.ShortAxis, lesion.short_axis, volume))
    if lesion.intensity is not None:
        out += [
            hd.sr.Measurement(
                name=ATTENUATION,
                value=round(getattr(lesion.intensity, field), 2),
                unit=codes.UCUM.HounsfieldUnit,
                derivation=derivation,
            )
            for derivation, field in HU_STATISTICS
        ]
    return out


def _segment_items(seg: pydicom.Dataset) -> dict[int, pydicom.Dataset]:
    items = {int(item.SegmentNumber): item for item in seg.get("SegmentSequence", [])}
    if str(seg.get("SOPClassUID", "")) != SEG_SOP_CLASS or not items:
        raise OutputError("a measurement report needs the DICOM-SEG it measures")
    return items


def _referenced_segment(
    seg: pydicom.Dataset, number: int, mask: np.ndarray, volume: Volume
) -> hd.sr.ReferencedSegment:
    """The SEG segment and the source images it lies on (the source series when empty)."""
    slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    common = {
        "sop_class_uid": str(seg.SOPClassUID),
        "sop_instance_uid": str(seg.SOPInstanceUID),
        "segment_number": number,
    }
    if not len(slices):
        source = hd.sr.SourceSeriesForSegmentation(volume.series_instance_uid)
        return hd.sr.ReferencedSegment(**common, source_series=source)
    frames = [volume.frames[k] for k in slices]
    if frames[0].frame_number is not None:  # one multi-frame source: one image, its frames
        images = [
            hd.sr.SourceImageForSegmentation(
                frames[0].sop_class_uid,
                frames[0].sop_instance_uid,
                sorted(int(f.frame_number) for f in frames if f.frame_number is not None),
            )
        ]
    else:
        images = [
            hd.sr.SourceImageForSegmentation(f.sop_class_uid, f.sop_instance_uid) for f in frames
        ]
    return hd.sr.ReferencedSegment(**common, source_images=images)


def _caveat(card: ModelCard) -> list[hd.sr.TextContentItem]:
    """A research model's groups carry its intended use as a Comment (TID 1411 TEXT)."""
    if not research_only(card):
        return []
    text = f"{RESEARCH_LABEL}: {card.name} {card.version}, {card.intended_use}"
    return [
        hd.sr.TextContentItem(
            name=COMMENT, value=text[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    ]


def _group(
    seg: pydicom.Dataset,
    item: pydicom.Dataset,
    lesion: LesionMeasurements,
    mask: np.ndarray,
    volume: Volume,
    card: ModelCard,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    identifier = str(item.get("TrackingID", "") or item.get("SegmentLabel", ""))
    uid = str(item.get("TrackingUID", "") or "") or hd.UID()
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=identifier[:64]),
        referenced_segment=_referenced_segment(seg, lesion.segment_number, mask, volume),
        finding_type=_concept(item.SegmentedPropertyTypeCodeSequence[0]),
        finding_category=_concept(item.SegmentedPropertyCategoryCodeSequence[0]),
        algorithm_id=_algorithm(card),
        measurements=_measurements(lesion, volume),
    )
    group[0].ContentSequence.extend(_caveat(card))
    return group


def _observer(card: ModelCard) -> hd.sr.ObservationContext:
    """The device that measured: medseg running the card's model (TID 1004)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=pydicom.uid.generate_uid(entropy_srcs=[DEVICE_UID_NAMESPACE, card.name, card.version]),
        name=f"{card.name} {card.version}"[:64],
        manufacturer_name=MANUFACTURER,
        model_name=f"medseg {card.architecture}"[:64],
        serial_number=(platform.node() or "medseg")[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def build_report(
    volume: Volume,
    seg: pydicom.Dataset,
    masks: np.ndarray,
    card: ModelCard,
    *,
    series_number: int = 9002,
    series_description: str = "medseg measurements",
    lesions: Sequence[LesionMeasurements] | None = None,
) -> pydicom.Dataset:
    """The Measurement Report SR for ``seg`` on ``volume``, unwritten.

    ``masks`` (segments, slices, rows, cols) bool are the SEG's segments in segment order
    (segment n = ``masks[n - 1]``), as written; ``lesions`` their measurements when already
    computed (else computed here).
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 3:
        masks = masks[None]
    items = _segment_items(seg)
    if sorted(items) != list(range(1, len(masks) + 1)):
        raise OutputError(
            f"the SEG has segments {sorted(items)}, the report was given {len(masks)} mask(s)"
        )
    lesions = list(lesions) if lesions is not None else measure_segments(masks, volume)
    groups = [
        _group(seg, items[lesion.segment_number], lesion, masks[i], volume, card)
        for i, lesion in enumerate(lesions)
    ]
    content = hd.sr.MeasurementReport(
        observation_context=_observer(card),
        procedure_reported=PROCEDURES.get(volume.modality.upper(), IMAGING_PROCEDURE),
        imaging_measurements=groups,
    )
    sources = completed_sources(list(volume.datasets), volume, report=False)
    try:
        with warnings.catch_warnings():
            # highdicom quotes the patient's name in this warning: keep it out of logs
            warnings.filterwarnings("ignore", message=PERSON_NAME_WARNING, category=UserWarning)
            sr = hd.sr.ComprehensiveSR(
                evidence=[seg, *sources],
                content=content,
                series_instance_uid=hd.UID(),
                series_number=int(series_number),
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer=MANUFACTURER,
                is_complete=True,
                series_description=labelled_description(series_description, card),
                manufacturer_model_name=f"medseg {card.architecture}"[:64],
                software_versions=__version__,
            )
    except (ValueError, AttributeError) as exc:  # highdicom's verdict on the headers
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DicomInputError(f"cannot build the measurement report: {reason}") from exc
    return sr


def write_report(
    volume: Volume,
    seg: pydicom.Dataset,
    masks: np.ndarray,
    card: ModelCard,
    path: Path,
    *,
    series_number: int = 9002,
    series_description: str = "medseg measurements",
) -> pydicom.Dataset:
    """Build the report (``build_report``) and write it atomically to ``path``."""
    sr = build_report(
        volume,
        seg,
        masks,
        card,
        series_number=series_number,
        series_description=series_description,
    )
    save_atomically(sr, Path(path))
    log.info("wrote measurement report %s: %d lesion(s)", path, len(seg.SegmentSequence))
    return sr


__all__ = ["build_report", "write_report"]
