"""Hostile and broken peers over 127.0.0.1 (issue 23): the listener stays up for good ones.

Raw sockets play the hostile peers (silent, dripping, lying PDU lengths); pynetdicom and
dcmtk ``storescu`` play the good ones and the careless ones (odd UIDs, truncated files).
"""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification

from medseg.server.config import ServerConfig
from medseg.server.spool import Spool
from tests.server.peers import (
    DCMTK_ENV,
    STORESCU,
    Processes,
    port_open,
    storescu,
    wait_until,
    write_ct,
)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Raw client sockets, all closed at teardown."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def connect(port: int, opened: list[socket.socket]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    opened.append(sock)
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` s (what it sends is read away)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            return False
        except OSError:  # reset
            return True
    return False


def scu(port: int, calling: str = "PACS", called: str = "MEDSEG") -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title=called)


def spooled(spool: Spool) -> list[Path]:
    return sorted(spool.incoming.rglob("*.dcm"))


# -- items 1 and 3: silent, dripping and crowding connections -----------------------------


def test_silent_sockets_neither_block_nor_hold_association_slots(
    listen: Callable, sockets: list[socket.socket]
) -> None:
    server = listen(listener={"acse_timeout": 3.0, "max_associations": 10})
    silent = [connect(server.port, sockets) for _ in range(12)]
    dripping = connect(server.port, sockets)
    dripping.sendall(b"\x01")  # the start of an A-ASSOCIATE-RQ, then a byte now and then
    started = time.monotonic()
    assoc = scu(server.port)
    took = time.monotonic() - started
    assert assoc.is_established, "12 silent sockets must not take the association slots"
    assert took < 5, f"a good peer waited {took:.1f} s"
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    for _ in range(8):  # a byte every 0.5 s does not extend the 3 s deadline
        with contextlib.suppress(OSError):
            dripping.sendall(b"\x00")
        time.sleep(0.5)
    assert closed_by_server(dripping, within=2), "a dripping connection outlived acse_timeout"
    assert all(closed_by_server(s, within=2) for s in silent)


def test_connections_per_address_are_limited(
    listen: Callable, sockets: list[socket.socket]
) -> None:
    server = listen(listener={"max_connections_per_ip": 3, "acse_timeout": 20.0})
    held = [connect(server.port, sockets) for _ in range(3)]
    extra = connect(server.port, sockets)
    assert closed_by_server(extra, within=3), "a 4th connection from one address was kept"
    assert not scu(server.port).is_established
    assert not any(closed_by_server(s, within=0.2) for s in held)
    for sock in held:
        sock.close()
    assoc = wait_until(
        lambda: (a := scu(server.port)).is_established and a, 10, "a free connection slot"
    )
    assoc.release()


# -- item 2: PDU lengths -------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def stream_bogus_pdu(sock: socket.socket, header: bytes, pid: int, total: int) -> tuple[int, int]:
    """Send ``header`` and up to ``total`` zero bytes; (bytes sent, highest server RSS KiB)."""
    chunk = bytes(1 << 20)
    sent, peak = 0, rss_kib(pid)
    sock.settimeout(10)
    try:
        sock.sendall(header)
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
            if sent % (8 << 20) == 0:
                peak = max(peak, rss_kib(pid))
    except OSError:  # the server closed the connection: what we want
        pass
    return sent, max(peak, rss_kib(pid))


@pytest.fixture
def serve_process(
    procs: Processes, server_config: Callable
) -> Callable[..., tuple[int, ServerConfig]]:
    def start(**kw: object) -> tuple[int, ServerConfig]:
        path, config = server_config(**kw)
        proc = procs.medseg("serve", "-c", str(path), "--workers", "0", name="serve")
        wait_until(lambda: port_open(config.listener.port) or proc.poll() is not None, 60, "serve")
        assert proc.poll() is None, "medseg serve did not start"
        return proc.pid, config

    return start


def test_huge_pdu_before_association_is_refused_without_reading_it(
    serve_process: Callable, sockets: list[socket.socket]
) -> None:
    pid, config = serve_process()
    baseline = rss_kib(pid)
    sock = connect(config.listener.port, sockets)
    header = b"\x04\x00\xff\xff\xff\xff"  # a P-DATA-TF claiming 4 GiB, before any association
    sent, peak = stream_bogus_pdu(sock, header, pid, total=300 << 20)
    assert (peak - baseline) < 50 * 1024, f"server RSS grew by {(peak - baseline) // 1024} MiB"
    assert sent < 300 << 20, "the server read the whole bogus PDU instead of closing"
    assert scu(config.listener.port).send_c_echo().Status == 0  # still serving


def test_pdu_longer_than_max_pdu_aborts_the_association(serve_process: Callable) -> None:
    pid, config = serve_process()
    baseline = rss_kib(pid)
    assoc = scu(config.listener.port)
    assert assoc.is_established
    sock = assoc.dul.socket.socket  # the raw connection under the established association
    header = b"\x04\x00\xff\xff\xff\xff"
    sent, peak = stream_bogus_pdu(sock, header, pid, total=300 << 20)
    assert (peak - baseline) < 50 * 1024, f"server RSS grew by {(peak - baseline) // 1024} MiB"
    assert sent < 300 << 20, "the server read the whole bogus PDU instead of aborting"
    wait_until(lambda: not assoc.is_established, 10, "the association to end")
    assert scu(config.listener.port).send_c_echo().Status == 0


def test_pdu_stalled_midway_closes_the_connection(listen: Callable) -> None:
    server = listen(listener={"network_timeout": 2.0})
    assoc = scu(server.port)
    assert assoc.is_established
    sock = assoc.dul.socket.socket
    sock.sendall(b"\x04\x00\x00\x00\x10\x00" + bytes(100))  # 4096 announced, 100 sent
    wait_until(lambda: not assoc.is_established, 8, "the server to close a stalled PDU")


def test_fragmented_large_images_within_max_pdu_are_stored(
    listen: Callable, tmp_path: Path
) -> None:
    """The PDU check must not refuse what real senders send at the negotiated size."""
    server = listen(listener={"max_pdu": 16384})
    series = write_ct(tmp_path / "series", slices=2, size=256)  # 128 KiB per slice
    result = storescu(server.port, list(series.paths))
    assert result.returncode == 0, result.stderr
    assoc = scu(server.port)
    assert assoc.send_c_store(series.paths[0]).Status == 0
    assoc.release()
    assert len(spooled(server.spool)) == 2


# -- item 4: called AE title ---------------------------------------------------------------


def test_wrong_called_ae_is_rejected_with_the_standard_reason(
    listen: Callable, tmp_path: Path
) -> None:
    server = listen()
    series = write_ct(tmp_path / "series", slices=2)
    result = storescu(server.port, list(series.paths), called="TOTALLYWRONG")
    assert result.returncode != 0
    assert "called ae title not recognized" in result.stderr.lower(), result.stderr
    assoc = scu(server.port, called="TOTALLYWRONG")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == 0x07  # called AE title not recognised
    assert spooled(server.spool) == []


def test_any_called_ae_is_accepted_when_configured(listen: Callable, tmp_path: Path) -> None:
    server = listen(listener={"allow_any_called_ae": True})
    series = write_ct(tmp_path / "series", slices=2)
    result = storescu(server.port, list(series.paths), called="ANY-SCP")
    assert result.returncode == 0, result.stderr
    assert len(spooled(server.spool)) == 2


# -- item 5: odd UIDs in the command set ---------------------------------------------------


def send_with_command_uid(assoc: Association, ds: pydicom.Dataset, command_uid: str) -> int:
    """C-STORE ``ds`` with ``command_uid`` as the request's Affected SOP Instance UID."""
    context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID)
    req = C_STORE()
    req.MessageID = 7
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = ds.SOPInstanceUID
    req.Priority = 2
    req.DataSet = io.BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    command = message.command_set
    command.AffectedSOPInstanceUID = command_uid  # what pynetdicom itself would never send
    command.CommandGroupLength = len(encode(command, True, True)) - 12
    assoc._reactor_checkpoint.clear()
    try:
        wait_until(lambda: assoc._is_paused, 5, "the reactor to pause")
        for pdata in message.encode_msg(context.context_id, assoc.acceptor.maximum_length):
            assoc.dul.send_pdu(pdata)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert rsp is not None, "no answer to the C-STORE"
    return int(rsp.Status)


@pytest.mark.filterwarnings("ignore:The value length")
def test_odd_command_uids_fail_that_instance_only(listen: Callable, tmp_path: Path) -> None:
    server = listen()
    series = write_ct(tmp_path / "series", slices=4)
    datasets = [pydicom.dcmread(p) for p in series.paths]
    assoc = scu(server.port)
    statuses = [assoc.send_c_store(datasets[0]).Status]
    statuses.append(send_with_command_uid(assoc, datasets[1], "1." + "2" * 70))
    statuses.append(send_with_command_uid(assoc, datasets[2], ""))
    statuses.append(assoc.send_c_store(datasets[3]).Status)
    assert assoc.is_established, "an odd UID must not end the association"
    assoc.release()
    assert statuses == [0, 0xC210, 0xC210, 0], [f"{s:#06x}" for s in statuses]
    stored = {p.stem for p in spooled(server.spool)}
    assert stored == {datasets[0].SOPInstanceUID, datasets[3].SOPInstanceUID}


@pytest.mark.filterwarnings("ignore:The value length")
def test_dcmtk_storescu_with_a_long_sop_instance_uid_loses_only_that_instance(
    listen: Callable, tmp_path: Path
) -> None:
    """A regression check with a real sender (dcmtk shortens the request's UID itself, so
    only the dataset's is long; the raw-command test above is the one pynetdicom aborted)."""
    server = listen()
    series = write_ct(tmp_path / "series", slices=3)
    long_file = tmp_path / "long.dcm"  # dcmtk sends a 74-character UID as it is
    ds = pydicom.dcmread(series.paths[1])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2." + "3" * 70
    ds.save_as(long_file)
    files = [series.paths[0], long_file, series.paths[2]]
    args = [
        STORESCU,
        "-v",
        "--no-halt",
        "-aet",
        "PACS",
        "-aec",
        "MEDSEG",
        "127.0.0.1",
        str(server.port),
    ]
    result = subprocess.run(
        [*args, *map(str, files)], env=DCMTK_ENV, capture_output=True, text=True, timeout=60
    )
    answers = [line for line in result.stderr.splitlines() if "Received Store Response" in line]
    assert len(answers) == 3, result.stderr
    assert "Success" in answers[0] and "Success" in answers[2], answers
    assert "CannotUnderstand" in answers[1], answers  # dcmtk names 0xCxxx failures so
    assert "Aborting Association" not in result.stderr
    assert len(spooled(server.spool)) == 2


# -- item 6: truncated datasets ------------------------------------------------------------


def test_truncated_pixel_data_is_refused_and_never_tracked(
    listen: Callable, tmp_path: Path
) -> None:
    server = listen()
    series = write_ct(tmp_path / "series", slices=3)
    short = pydicom.dcmread(series.paths[1])
    short.PixelData = short.PixelData[:-200]  # Rows x Columns x 16 bits needs 200 more
    assoc = scu(server.port)
    statuses = [assoc.send_c_store(series.paths[0]).Status, assoc.send_c_store(short).Status]
    statuses.append(assoc.send_c_store(series.paths[2]).Status)
    assoc.release()
    assert statuses == [0, 0xC210, 0], [f"{s:#06x}" for s in statuses]
    assert short.SOPInstanceUID not in {p.stem for p in spooled(server.spool)}
    assert server.tracker.get(series.series_uid).received == 2

    alone = write_ct(tmp_path / "alone", slices=1)  # a series made only of a truncated file
    only = pydicom.dcmread(alone.paths[0])
    only.PixelData = only.PixelData[:100]
    assoc = scu(server.port)
    assert assoc.send_c_store(only).Status == 0xC210
    assoc.release()
    assert server.tracker.get(alone.series_uid) is None, "no series, so never a job"


@pytest.mark.parametrize("cut", [200, 3000])
def test_file_cut_short_is_refused(
    listen: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: int
) -> None:
    # Send the file's bytes as they are (pynetdicom would otherwise parse and re-encode).
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    server = listen()
    series = write_ct(tmp_path / "series", slices=2)
    cut_file = tmp_path / "cut.dcm"
    cut_file.write_bytes(series.paths[0].read_bytes()[:-cut])
    assoc = scu(server.port)
    statuses = [assoc.send_c_store(cut_file).Status, assoc.send_c_store(series.paths[1]).Status]
    assoc.release()
    assert statuses == [0xC210, 0], [f"{s:#06x}" for s in statuses]
    assert [p.stem for p in spooled(server.spool)] == [
        pydicom.dcmread(series.paths[1]).SOPInstanceUID
    ]


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_encapsulated_pixel_data_short_of_its_frames_is_refused(
    listen: Callable, shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = listen()
    source = shared_dir / "data" / "transfer_syntaxes" / "7.dcm"  # JPEG-LS, one frame
    ds = pydicom.dcmread(source)
    two_frames = pydicom.dcmread(source)
    two_frames.NumberOfFrames = 2  # whole items, but the second frame's fragment is missing
    two_frames.SOPInstanceUID = ds.SOPInstanceUID + ".2"
    cut_file = tmp_path / "cut.dcm"  # the file itself cut in its last fragment
    cut_file.write_bytes(source.read_bytes()[:-5000])
    ae = AE(ae_title="PACS")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MEDSEG")
    statuses = [assoc.send_c_store(two_frames).Status]
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    statuses += [assoc.send_c_store(cut_file).Status, assoc.send_c_store(source).Status]
    assoc.release()
    assert statuses == [0xC210, 0xC210, 0], [f"{s:#06x}" for s in statuses]
    assert [p.stem for p in spooled(server.spool)] == [ds.SOPInstanceUID]


# -- item 7: one series UID under two studies ----------------------------------------------


def test_series_uid_under_a_second_study_is_refused(listen: Callable, tmp_path: Path) -> None:
    server = listen()
    first = write_ct(tmp_path / "first", slices=5, series_uid="1.2.826.0.1.3680043.8.498.777")
    second = write_ct(
        tmp_path / "second", slices=5, series_uid="1.2.826.0.1.3680043.8.498.777", seed=1
    )
    assert first.study_uid != second.study_uid
    assert storescu(server.port, list(first.paths)).returncode == 0
    assert storescu(server.port, list(second.paths)).returncode != 0  # dcmtk: a failed store
    assoc = scu(server.port)
    statuses = {assoc.send_c_store(p).Status for p in second.paths}
    assoc.release()
    assert statuses == {0xC212}
    assert len(server.spool.series_files(first.study_uid, first.series_uid)) == 5
    assert server.spool.series_files(second.study_uid, second.series_uid) == []
    tracked = server.tracker.get(first.series_uid)
    assert (tracked.study_uid, tracked.received) == (first.study_uid, 5)
