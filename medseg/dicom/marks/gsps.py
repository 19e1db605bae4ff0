"""Marks from a Grayscale Softcopy Presentation State (how Weasis, Horos and most PACS
viewers save what a reader drew on an image).

Each Graphic Annotation item names the image(s) it is drawn on and holds graphic objects in
PIXEL units (image coordinates) or DISPLAY units (0..1 of the displayed area, which the
Displayed Area Selection module places on the image). Text objects are not marks and are
ignored. Two conventions medseg chooses (docs/marks.md): a graphic on a layer whose name or
description says ARROW is an arrow whose first point is its tip, and one on a layer that says
NEGATIVE or EXCLUDE marks something to leave out (a negative point).
"""

from __future__ import annotations

import logging

import numpy as np
import pydicom

from medseg.dicom.marks.mark import Mark, has_word
from medseg.dicom.marks.shapes import shapes
from medseg.errors import DicomInputError

log = logging.getLogger(__name__)

GSPS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
ARROW_WORDS = ("ARROW",)
NEGATIVE_WORDS = ("NEGATIVE", "EXCLUDE")

ImageRef = tuple[str, int | None]  # (SOP Instance UID, 1-based frame or None)


def _image_refs(items: pydicom.Sequence) -> list[ImageRef]:
    """(uid, frame) of each image and frame a Referenced Image Sequence names."""
    refs: list[ImageRef] = []
    for item in items:
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        frames = item.get("ReferencedFrameNumber")
        if frames is None or frames == "":
            refs.append((uid, None))
        else:
            values = frames if isinstance(frames, pydicom.multival.MultiValue) else [frames]
            refs.extend((uid, int(f)) for f in values)
    return refs


def _series_images(ds: pydicom.Dataset) -> list[ImageRef]:
    refs: list[ImageRef] = []
    for series in ds.get("ReferencedSeriesSequence", []):
        refs.extend(_image_refs(series.get("ReferencedImageSequence", [])))
    return refs


def _displayed_areas(ds: pydicom.Dataset) -> list[tuple[list[ImageRef] | None, np.ndarray]]:
    """Each displayed area as (images it applies to or None for all, its pixel extent).

    The corners are 1-based pixels and the area holds them whole, so in image coordinates
    it spans (tlhc - 1) to brhc: ``[[x0, y0], [x1, y1]]``.
    """
    areas = []
    for item in ds.get("DisplayedAreaSelectionSequence", []):
        refs = None  # no Referenced Image Sequence: the area applies to every image
        if "ReferencedImageSequence" in item:
            refs = _image_refs(item.ReferencedImageSequence)
        try:
            tlhc = [float(v) for v in item.DisplayedAreaTopLeftHandCorner]
            brhc = [float(v) for v in item.DisplayedAreaBottomRightHandCorner]
        except (AttributeError, TypeError, ValueError):
            raise DicomInputError("GSPS: a displayed area has no valid corners") from None
        areas.append((refs, np.array([[tlhc[0] - 1.0, tlhc[1] - 1.0], brhc])))
    return areas


def _area_for(
    areas: list[tuple[list[ImageRef] | None, np.ndarray]], ref: ImageRef
) -> np.ndarray | None:
    uid, frame = ref
    for refs, extent in areas:
        if refs is None or any(u == uid and (f is None or f == frame) for u, f in refs):
            return extent
    return None


def _check_untransformed(ds: pydicom.Dataset) -> None:
    """DISPLAY units are relative to the displayed area after rotation and flip; medseg
    maps them back only for an unrotated, unflipped image."""
    rotation = int(ds.get("ImageRotation", 0) or 0)
    flipped = str(ds.get("ImageHorizontalFlip", "N") or "N").upper() == "Y"
    if rotation or flipped:
        raise DicomInputError(
            "GSPS: DISPLAY-unit graphics on a rotated or flipped image are not supported"
        )


def _layers(ds: pydicom.Dataset) -> dict[str, str]:
    return {
        str(item.get("GraphicLayer", "")): str(item.get("GraphicLayerDescription", "") or "")
        for item in ds.get("GraphicLayerSequence", [])
    }


def _target(annotation: pydicom.Dataset, series_images: list[ImageRef]) -> ImageRef:
    """The one image an annotation is drawn on."""
    if "ReferencedImageSequence" in annotation:
        refs = _image_refs(annotation.ReferencedImageSequence)
        where = "its Referenced Image Sequence names"
    else:  # the annotation applies to every image of the presentation state
        refs = series_images
        where = "it applies to all images of the presentation state, which are"
    if len(refs) != 1 or not refs[0][0]:
        raise DicomInputError(
            f"GSPS: a graphic annotation must be drawn on one image, but {where} {len(refs)} images"
        )
    return refs[0]


def read_gsps(ds: pydicom.Dataset) -> list[Mark]:
    """Every graphic object of a GSPS as a Mark on its image (pixel space)."""
    layers = _layers(ds)
    areas = _displayed_areas(ds)
    series_images = _series_images(ds)
    marks: list[Mark] = []
    for annotation in ds.get("GraphicAnnotationSequence", []):
        objects = annotation.get("GraphicObjectSequence", [])
        if not objects:
            continue  # text only
        uid, frame = _target(annotation, series_images)
        layer = str(annotation.get("GraphicLayer", ""))
        names = (layer, layers.get(layer))
        arrow = has_word(names, ARROW_WORDS)
        negative = has_word(names, NEGATIVE_WORDS)
        for graphic in objects:
            graphic_type = str(graphic.get("GraphicType", "")).upper()
            source = f"GSPS {graphic_type or 'graphic'}"
            units = str(graphic.get("GraphicAnnotationUnits", "")).upper()
            dims = int(graphic.get("GraphicDimensions", 2) or 2)
            data = np.asarray(graphic.get("GraphicData", []), dtype=np.float64)
            if dims != 2 or data.size % 2:
                raise DicomInputError(f"{source}: graphic data must be (column, row) pairs")
            points = data.reshape(-1, 2)
            declared = graphic.get("NumberOfGraphicPoints")
            if declared is not None and int(declared) != len(points):
                raise DicomInputError(
                    f"{source}: Number of Graphic Points is {declared} but the data holds "
                    f"{len(points)} points"
                )
            if units == "DISPLAY":
                extent = _area_for(areas, (uid, frame))
                if extent is None:
                    raise DicomInputError(
                        f"{source}: DISPLAY units but no displayed area is given for its image"
                    )
                _check_untransformed(ds)
                points = extent[0] + points * (extent[1] - extent[0])
            elif units != "PIXEL":
                raise DicomInputError(
                    f"{source}: graphic annotation units {units or '(none)'} are not "
                    "supported (PIXEL or DISPLAY)"
                )
            for kind, pts in shapes(graphic_type, points, source, arrow=arrow):
                marks.append(
                    Mark(
                        kind,
                        pts,
                        source,
                        sop_instance_uid=uid,
                        frame_number=frame,
                        negative=negative,
                    )
                )
    log.debug("GSPS %s: %d mark(s)", ds.get("SOPInstanceUID", "?"), len(marks))
    return marks
