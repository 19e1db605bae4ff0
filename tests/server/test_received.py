"""Reading a received data set without decoding its pixel data: same answers as a full decode."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom.dsutils import encode

from medseg.server.pixels import IncompletePixelDataError, check_pixel_data
from medseg.server.received import check_received_pixels, read_received
from tests.server.peers import write_ct


def data_set_bytes(path: Path) -> tuple[bytes, UID]:
    """A file's data set as a peer would send it (the bytes after its file meta)."""
    raw = path.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    return raw[meta_end:], pydicom.dcmread(path).file_meta.TransferSyntaxUID


def full_decode(encoded: bytes, syntax: UID) -> pydicom.Dataset:
    return read_dataset(BytesIO(encoded), syntax.is_implicit_VR, syntax.is_little_endian)


def test_every_transfer_syntax_reads_like_a_full_decode(shared_dir: Path) -> None:
    files = sorted((shared_dir / "data" / "transfer_syntaxes").glob("*.dcm"))
    assert files
    for path in files:
        encoded, syntax = data_set_bytes(path)
        full = full_decode(encoded, syntax)
        received = read_received(encoded, syntax)
        assert received.pixels is not None and received.pixels.complete, path.name
        assert bytes(received.pixels.value) == full.PixelData, path.name
        assert "PixelData" not in received.header
        for element in full:
            if element.keyword != "PixelData":
                assert received.header[element.tag].value == element.value, element.keyword
        check_received_pixels(received, syntax, is_image=True)


def test_native_pixel_data_cut_short_is_refused_as_before(tmp_path: Path) -> None:
    series = write_ct(tmp_path / "ct", slices=1)
    encoded, syntax = data_set_bytes(series.paths[0])
    cut = encoded[:-200]
    received = read_received(cut, syntax)
    assert received.pixels is not None and not received.pixels.complete
    with pytest.raises(IncompletePixelDataError, match="truncated"):
        check_received_pixels(received, syntax, is_image=True)
    with pytest.raises(IncompletePixelDataError, match="truncated"):  # the full decode agrees
        check_pixel_data(full_decode(cut, syntax), syntax, is_image=True)


def test_image_without_pixel_data_is_refused(tmp_path: Path) -> None:
    series = write_ct(tmp_path / "ct", slices=1)
    ds = pydicom.dcmread(series.paths[0])
    del ds.PixelData
    received = read_received(encode(ds, False, True), ExplicitVRLittleEndian)
    assert received.pixels is None
    with pytest.raises(IncompletePixelDataError, match="no pixel data"):
        check_received_pixels(received, ExplicitVRLittleEndian, is_image=True)
    check_received_pixels(received, ExplicitVRLittleEndian, is_image=False)  # e.g. an SR


def test_encapsulated_value_without_its_delimiter_is_refused(shared_dir: Path) -> None:
    encoded, syntax = data_set_bytes(shared_dir / "data" / "transfer_syntaxes" / "7.dcm")
    assert syntax.is_encapsulated
    whole = read_received(encoded, syntax)
    items = bytes(whole.pixels.value)
    # cut right after a whole item: every item is whole, only the delimiter is missing
    cut = encoded[: len(encoded) - 8]
    assert encoded[-8:] == struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    received = read_received(cut, syntax)
    assert bytes(received.pixels.value) == items and not received.pixels.complete
    with pytest.raises(IncompletePixelDataError, match="delimiter"):
        check_received_pixels(received, syntax, is_image=True)
    with pytest.raises(IncompletePixelDataError, match="cut"):  # cut inside a fragment
        check_received_pixels(read_received(encoded[:-5000], syntax), syntax, is_image=True)


def test_elements_after_the_pixel_data_must_decode(tmp_path: Path) -> None:
    series = write_ct(tmp_path / "ct", slices=1)
    encoded, syntax = data_set_bytes(series.paths[0])
    padding = struct.pack("<HH2sHL", 0xFFFC, 0xFFFC, b"OB", 0, 4) + b"\0" * 4
    received = read_received(encoded + padding, syntax)
    assert received.pixels is not None and received.pixels.complete
    check_received_pixels(received, syntax, is_image=True)
    broken = struct.pack("<HH2sH", 0xFFFC, 0xFFFC, b"OB", 0) + b"\xff\xff"  # length cut
    with pytest.raises(Exception):  # noqa: B017 - whatever pydicom raises: undecodable
        read_received(encoded + broken, syntax)


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_implicit_data_set_under_an_explicit_syntax_reads_as_pydicom_reads_it(
    tmp_path: Path,
) -> None:
    series = write_ct(tmp_path / "ct", slices=1)
    ds = pydicom.dcmread(series.paths[0])
    encoded = encode(ds, True, True)  # implicit VR bytes, sent under explicit VR
    full = full_decode(encoded, ExplicitVRLittleEndian)
    received = read_received(encoded, ExplicitVRLittleEndian)
    assert bytes(received.pixels.value) == full.PixelData == ds.PixelData
    assert received.header.SOPInstanceUID == ds.SOPInstanceUID
    check_received_pixels(received, ExplicitVRLittleEndian, is_image=True)
