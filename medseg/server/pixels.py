"""Pixel data must be complete before an instance is acknowledged.

pydicom decodes a dataset cut short without complaint: the last element simply holds fewer
bytes than its header announced, and an encapsulated Pixel Data element cut short is left
out altogether. Acknowledging such an instance with 0x0000 would make the sender drop it
and the job later fail (or run on a partial series), so the listener answers 0xC210 instead.
"""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

from medseg.errors import DicomInputError

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_ITEM = struct.Struct("<HHL")  # (FFFE,E000) item tag and length, always little endian


class IncompletePixelDataError(DicomInputError):
    """A received instance's pixel data is missing or shorter than its image says."""


def check_pixel_data(dataset: Dataset, transfer_syntax: UID, *, is_image: bool) -> None:
    """Raise ``IncompletePixelDataError`` unless ``dataset`` holds all of its pixel data.

    Native pixel data must be at least Rows x Columns x Samples x Frames x BitsAllocated
    bits long; encapsulated pixel data must be whole items, at least one per frame. An
    instance of an image storage class (``is_image``) must have pixel data at all.
    """
    keyword = next((k for k in _PIXEL_KEYWORDS if k in dataset), None)
    value = (dataset[keyword].value or b"") if keyword is not None else b""
    check_pixel_value(dataset, keyword, value, transfer_syntax, is_image=is_image)


def check_pixel_value(
    dataset: Dataset,
    keyword: str | None,
    value: bytes | memoryview,
    transfer_syntax: UID,
    *,
    is_image: bool,
) -> None:
    """``check_pixel_data`` on a pixel value held apart from its dataset's other elements
    (the listener measures it in the received bytes: ``medseg.server.received``).

    ``keyword`` None means the dataset has no pixel data element.
    """
    if keyword is None:
        if is_image:
            raise IncompletePixelDataError("the image has no pixel data (dataset cut short?)")
        return
    if keyword == "PixelData" and transfer_syntax.is_encapsulated:
        _check_fragments(value, int(dataset.get("NumberOfFrames", 1) or 1))
        return
    try:
        expected = get_expected_length(dataset, unit="bytes")
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise IncompletePixelDataError(
            f"pixel data without a usable image description: {exc}"
        ) from exc
    if len(value) < expected:
        raise IncompletePixelDataError(
            f"pixel data holds {len(value)} of {expected} bytes (truncated instance)"
        )


def _check_fragments(value: bytes | memoryview, frames: int) -> None:
    """Encapsulated pixel data: the offset table and fragments are whole items."""
    offset, items = 0, 0
    while offset + _ITEM.size <= len(value):
        group, element, length = _ITEM.unpack_from(value, offset)
        if (group, element) == (0xFFFE, 0xE0DD):  # sequence delimiter: nothing follows
            break
        if (group, element) != (0xFFFE, 0xE000):
            raise IncompletePixelDataError(f"encapsulated pixel data: no item at byte {offset}")
        offset += _ITEM.size + length
        if offset > len(value):
            raise IncompletePixelDataError("encapsulated pixel data: its last fragment is cut")
        items += 1
    if items - 1 < frames:  # the first item is the basic offset table
        raise IncompletePixelDataError(
            f"encapsulated pixel data holds {max(items - 1, 0)} fragments for {frames} frames"
        )
