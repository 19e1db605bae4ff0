"""A received C-STORE dataset, read from its encoded bytes without decoding its pixel data.

The listener checks a received instance (UIDs, SOP class, pixel data complete) and then
stores the bytes as the peer encoded them. Decoding the whole dataset for those checks
copies the pixel data (most of an image's bytes) into a pydicom element that is thrown
away; here the elements before the pixel data are decoded as usual, the pixel data
element is located by its header and measured in place (a view, no copy), and the
elements after it (rare: a digital signature, trailing padding) are decoded too, so a
dataset broken anywhere is still refused as before.

A deflated dataset has no byte offsets to use before it is inflated, so it is decoded
whole, as pynetdicom would.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom.dsutils import encode_file_meta

from medseg.server.pixels import IncompletePixelDataError, check_pixel_value

PIXEL_TAGS = {
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
    0x7FE00010: "PixelData",
}
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_ITEM = struct.Struct("<HHL")  # (FFFE,xxxx) items: always little endian in encapsulation


@dataclass(frozen=True, eq=False)
class PixelValue:
    """The pixel data element as received: its keyword and the value bytes present.

    ``value`` is a view into the received bytes. For an undefined-length (encapsulated)
    value it runs up to, not including, the sequence delimiter; ``complete`` says whether
    the declared length (or the delimiter) was there at all.
    """

    keyword: str
    value: memoryview
    complete: bool


@dataclass(frozen=True, eq=False)
class ReceivedDataset:
    """The decoded elements of a received dataset (pixel data left out) and its pixel value.

    ``header`` holds every top-level element but the pixel data; ``pixels`` is None when
    the dataset has no pixel data element.
    """

    header: Dataset
    pixels: PixelValue | None


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in PIXEL_TAGS


def read_received(encoded: bytes, transfer_syntax: UID) -> ReceivedDataset:
    """Decode ``encoded`` (a C-STORE data set) but for the bytes of its pixel data.

    Raises what pydicom raises for bytes that do not decode (the caller answers 0xC210).
    """
    implicit, little = transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian
    if transfer_syntax.is_deflated:
        encoded = zlib.decompress(encoded, -zlib.MAX_WBITS)
        implicit, little = False, True
    stream = BytesIO(encoded)  # shares ``encoded``'s buffer (CPython copies on write only)
    header = read_dataset(stream, implicit, little, stop_when=_stop_at_pixels)
    # pydicom reads a data set encoded with the other VR encoding than its transfer
    # syntax says as it is encoded (with a warning); the pixel element is read alike
    detected = header.original_encoding[0]
    implicit = implicit if detected is None else bool(detected)
    start = stream.tell()
    if start >= len(encoded):
        return ReceivedDataset(header, None)
    view = memoryview(encoded)
    pixels, end = _pixel_element(view, start, implicit, little)
    if end < len(encoded):  # elements after the pixel data: they must decode as well
        stream.seek(end)
        read_dataset(stream, implicit, little)
    return ReceivedDataset(header, pixels)


def _pixel_element(
    view: memoryview, start: int, implicit: bool, little: bool
) -> tuple[PixelValue, int]:
    """The pixel element at ``start``: its value and where the next element begins."""
    order = "<" if little else ">"
    if len(view) < start + 8:
        raise EOFError("pixel data element header cut short")
    group, element = struct.unpack_from(f"{order}HH", view, start)
    keyword = PIXEL_TAGS[group << 16 | element]
    if implicit:
        (length,) = struct.unpack_from(f"{order}L", view, start + 4)
        offset = start + 8
    elif bytes(view[start + 4 : start + 6]) in _LONG_VRS:
        if len(view) < start + 12:
            raise EOFError("pixel data element header cut short")
        (length,) = struct.unpack_from(f"{order}L", view, start + 8)
        offset = start + 12
    else:
        (length,) = struct.unpack_from(f"{order}H", view, start + 6)
        offset = start + 8
    if length != _UNDEFINED:
        stop = min(offset + length, len(view))
        return PixelValue(keyword, view[offset:stop], stop == offset + length), offset + length
    delimiter = _find_delimiter(view, offset)
    if delimiter is None:
        return PixelValue(keyword, view[offset:], False), len(view)
    return PixelValue(keyword, view[offset:delimiter], True), delimiter + _ITEM.size


def _find_delimiter(view: memoryview, offset: int) -> int | None:
    """Where the sequence delimiter of encapsulated pixel data starts, walking its items;
    None when the bytes end first (or an item is not an item: the check says which)."""
    while offset + _ITEM.size <= len(view):
        group, element, length = _ITEM.unpack_from(view, offset)
        if (group, element) == (0xFFFE, 0xE0DD):
            return offset
        if (group, element) != (0xFFFE, 0xE000) or length == _UNDEFINED:
            return None
        offset += _ITEM.size + length
    return None


def check_received_pixels(
    received: ReceivedDataset, transfer_syntax: UID, *, is_image: bool
) -> None:
    """``medseg.server.pixels.check_pixel_data`` on a received dataset's pixel value.

    An encapsulated value that lacks its sequence delimiter was cut short (pydicom leaves
    such a value out altogether, so the full decode refused it as having no pixel data).
    """
    pixels = received.pixels
    if pixels is None:
        check_pixel_value(received.header, None, b"", transfer_syntax, is_image=is_image)
        return
    encapsulated = pixels.keyword == "PixelData" and transfer_syntax.is_encapsulated
    if encapsulated and not pixels.complete:
        raise IncompletePixelDataError(
            "encapsulated pixel data without its sequence delimiter (dataset cut short?)"
        )
    check_pixel_value(
        received.header, pixels.keyword, pixels.value, transfer_syntax, is_image=is_image
    )


def part10_prefix(event: Any) -> bytes:
    """The DICOM file format's preamble, prefix and file meta for a C-STORE's data set.

    The file meta (pynetdicom's ``Event.file_meta``) names the SOP class and instance of
    the request and the transfer syntax of its presentation context, i.e. the encoding of
    the bytes that follow it unchanged.
    """
    return b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta)
