"""The listener over 127.0.0.1: access control, durable ingest, statuses for bad input."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, Association
from pynetdicom.sop_class import CTImageStorage, Verification

from medseg.server.spool import Spool
from tests.server.peers import storescu, write_ct


def scu(port: int, calling: str = "PACS") -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title="MEDSEG")


def spooled(spool: Spool) -> list[Path]:
    return sorted(spool.incoming.rglob("*.dcm"))


def test_storescu_series_is_spooled_byte_for_byte(listen: Callable, tmp_path: Path) -> None:
    server = listen()
    series = write_ct(tmp_path / "series")
    result = storescu(server.port, list(series.paths))
    assert result.returncode == 0, result.stderr
    files = server.spool.series_files(series.study_uid, series.series_uid)
    assert [f.stem for f in files] == sorted(series.sop_uids)
    for path in series.paths:
        sop = pydicom.dcmread(path).SOPInstanceUID
        stored = pydicom.dcmread(
            server.spool.series_dir(series.study_uid, series.series_uid) / f"{sop}.dcm"
        )
        assert stored.PixelData == pydicom.dcmread(path).PixelData
    tracked = server.tracker.get(series.series_uid)
    assert tracked.received == len(series.paths) and tracked.calling_ae == "PACS"


def test_echo_and_duplicate_instances_are_idempotent(listen: Callable, tmp_path: Path) -> None:
    server = listen()
    series = write_ct(tmp_path / "series", slices=2)
    assoc = scu(server.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    for _ in range(2):
        assert assoc.send_c_store(series.paths[0]).Status == 0
    assoc.release()
    assert len(spooled(server.spool)) == 1


def test_unknown_calling_ae_is_rejected(listen: Callable, tmp_path: Path) -> None:
    server = listen()
    assoc = scu(server.port, calling="STRANGER")
    assert assoc.is_rejected
    series = write_ct(tmp_path / "series", slices=2)
    result = storescu(server.port, list(series.paths), calling="STRANGER")
    assert result.returncode != 0
    assert "Rejected" in result.stderr or "rejected" in result.stderr.lower()
    assert spooled(server.spool) == []


def test_known_ae_from_wrong_address_is_rejected(listen: Callable) -> None:
    server = listen(peers=[{"ae_title": "PACS", "addresses": ["10.1.2.3"]}])
    assert scu(server.port).is_rejected


def test_garbage_dataset_refused_while_the_rest_is_stored(
    listen: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Send files as their raw bytes (pynetdicom would otherwise parse them first).
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    server = listen()
    series = write_ct(tmp_path / "series", slices=3)
    good = pydicom.dcmread(series.paths[0])
    garbage = tmp_path / "garbage.dcm"
    # A valid file meta header (so the SCU sends it as-is) followed by an undecodable body.
    pydicom.dcmwrite(garbage, good, enforce_file_format=True)
    raw = garbage.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    garbage.write_bytes(raw[:meta_end] + b"\x08\x00\x18\x00UI\xff\xff" + b"\x01" * 64)

    assoc = scu(server.port)
    statuses = [assoc.send_c_store(series.paths[0]).Status]
    statuses.append(assoc.send_c_store(garbage).Status)
    statuses += [assoc.send_c_store(p).Status for p in series.paths[1:]]
    assert assoc.is_established, "a bad dataset must not end the association"
    assoc.release()
    assert statuses[0] == 0 and statuses[2:] == [0, 0]
    assert statuses[1] == 0xC210, f"cannot understand, not a handler crash: {statuses[1]:#06x}"
    assert len(spooled(server.spool)) == 3


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_traversal_uid_is_refused_and_nothing_written_outside(
    listen: Callable, tmp_path: Path
) -> None:
    server = listen()
    series = write_ct(tmp_path / "series", slices=1)
    ds = pydicom.dcmread(series.paths[0])
    ds.SeriesInstanceUID = "../../../escaped"
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    assoc = scu(server.port)
    status = assoc.send_c_store(ds).Status
    assoc.release()
    assert status == 0xC210
    after = {p for p in tmp_path.rglob("*") if p.is_file()}
    new = {p for p in after - before if "logs" not in p.parts}
    assert all(p.parent == server.spool.root for p in new), new  # only its databases changed
    assert spooled(server.spool) == []


def test_full_spool_answers_out_of_resources_and_keeps_earlier_data(
    listen: Callable, tmp_path: Path
) -> None:
    server = listen()
    series = write_ct(tmp_path / "series", slices=2)
    assert storescu(server.port, [series.paths[0]]).returncode == 0
    kept = spooled(server.spool)
    full = listen(min_free_bytes=2**62, storage={"spool": str(server.spool.root)})
    assoc = scu(full.port)
    status = assoc.send_c_store(series.paths[1]).Status
    assoc.release()
    assert status == 0xA700
    assert spooled(server.spool) == kept
    assert pydicom.dcmread(kept[0]).SOPInstanceUID == kept[0].stem


def test_every_transfer_syntax_is_stored_as_sent_and_decodes(
    listen: Callable, shared_dir: Path
) -> None:
    server = listen()
    files = sorted((shared_dir / "data" / "transfer_syntaxes").glob("*.dcm"))
    originals = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="PACS")
    for ds in originals:  # one context per transfer syntax, so each is sent unconverted
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MEDSEG")
    assert assoc.is_established
    statuses = [assoc.send_c_store(f).Status for f in files]
    assoc.release()
    assert statuses == [0] * len(files)
    reference = originals[0].pixel_array
    for ds in originals:
        stored_path = server.spool.series_dir(ds.StudyInstanceUID, ds.SeriesInstanceUID)
        stored = pydicom.dcmread(stored_path / f"{ds.SOPInstanceUID}.dcm")
        assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert stored.PixelData == ds.PixelData, "stored exactly as sent"
        assert np.array_equal(stored.pixel_array, reference)


def test_enhanced_multiframe_instance_is_accepted(listen: Callable, shared_dir: Path) -> None:
    server = listen()
    path = shared_dir / "data" / "dcmqi" / "23x38x3" / "multiframe" / "mf.dcm"
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MEDSEG")
    assert assoc.send_c_store(path).Status == 0
    assoc.release()
    stored = server.spool.series_files(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert [p.stem for p in stored] == [ds.SOPInstanceUID]
    assert pydicom.dcmread(stored[0]).NumberOfFrames == ds.NumberOfFrames


def test_associations_beyond_the_maximum_are_rejected(listen: Callable) -> None:
    server = listen(listener={"max_associations": 1})
    first = scu(server.port)
    assert first.is_established
    second = scu(server.port)
    assert second.is_rejected
    first.release()


def data_set_of(path: Path) -> bytes:
    """A DICOM file's bytes after its file meta: what a peer sends and medseg must keep."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    return raw[132 + 12 + int.from_bytes(raw[140:144], "little") :]


def test_stored_files_are_the_sent_bytes_behind_a_proper_file_meta(
    listen: Callable, tmp_path: Path
) -> None:
    server = listen()
    series = write_ct(tmp_path / "series", slices=4)
    assert storescu(server.port, list(series.paths)).returncode == 0
    folder = server.spool.series_dir(series.study_uid, series.series_uid)
    for path in series.paths:
        sent = pydicom.dcmread(path)
        stored_path = folder / f"{sent.SOPInstanceUID}.dcm"
        assert data_set_of(stored_path) == data_set_of(path), "byte for byte as sent"
        stored = pydicom.dcmread(stored_path)
        meta = stored.file_meta
        assert meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
        assert meta.MediaStorageSOPClassUID == sent.SOPClassUID
        dump = subprocess.run(
            ["dcmdump", "-q", "+E", str(stored_path)], capture_output=True, text=True, timeout=30
        )
        assert dump.returncode == 0 and not dump.stderr, dump.stderr
        assert sent.SOPInstanceUID in dump.stdout and "(7fe0,0010)" in dump.stdout


def test_every_transfer_syntax_keeps_its_data_set_bytes(
    listen: Callable, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # send each file's data set as it is on disk (no parse and re-encode by the sender)
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    server = listen()
    files = sorted((shared_dir / "data" / "transfer_syntaxes").glob("*.dcm"))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    ae = AE(ae_title="PACS")
    for ds in headers:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MEDSEG")
    assert [assoc.send_c_store(f).Status for f in files] == [0] * len(files)
    assoc.release()
    for path, ds in zip(files, headers, strict=True):
        folder = server.spool.series_dir(ds.StudyInstanceUID, ds.SeriesInstanceUID)
        assert data_set_of(folder / f"{ds.SOPInstanceUID}.dcm") == data_set_of(path), path.name


def test_four_parallel_associations_store_everything_durably(
    listen: Callable, tmp_path: Path
) -> None:
    server = listen()
    sent = [write_ct(tmp_path / f"series{i}", slices=6, seed=i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda s: storescu(server.port, list(s.paths)), sent))
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    for series in sent:
        folder = server.spool.series_dir(series.study_uid, series.series_uid)
        for path in series.paths:
            stored = folder / f"{pydicom.dcmread(path).SOPInstanceUID}.dcm"
            assert data_set_of(stored) == data_set_of(path)
        assert server.tracker.get(series.series_uid).received == 6
    assert not list(server.spool.incoming.rglob("*.tmp")), "no temp file left behind"
