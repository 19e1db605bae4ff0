"""STOW-RS in over 127.0.0.1: ``dicomweb-client`` (an independent client) stores a CT
series into a running ``medseg serve``; each part is checked and stored like a C-STORE
instance, and the series becomes a job."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from prometheus_client.parser import text_string_to_metric_families

from medseg.server.config import ServerConfig
from medseg.server.jobs import DONE
from medseg.server.spool import Spool
from medseg.server.web.stow import StowRequestError, boundary_of, split_parts
from tests.server.peers import Processes, free_port, log_text, port_open, wait_until, write_ct
from tests.server.test_serve import check_seg_references, serve
from tests.server.test_web import get_json, http, sample

TOKEN = "stow-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STORED_SEQ, FAILED_SEQ = "ReferencedSOPSequence", "FailedSOPSequence"
BOUNDARY = "medseg-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _serve(
    procs: Processes, server_config: Callable, web: dict | None = None, **kw: object
) -> tuple[str, ServerConfig]:
    port = free_port()
    settings = {"port": port, "tokens_sha256": [hashlib.sha256(TOKEN.encode()).hexdigest()]}
    path, config = server_config(web={**settings, **(web or {})}, **kw)
    proc = serve(procs, path, config)
    wait_until(lambda: port_open(port) or proc.poll() is not None, 30, "the web side")
    assert proc.poll() is None, log_text(proc)
    return f"http://127.0.0.1:{port}", config


def _client(base: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{base}/dicomweb", headers=AUTH)


def _multipart(parts: list[bytes]) -> bytes:
    body = b""
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
        body += b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.slow
def test_dicomweb_client_stores_a_series_and_its_seg_reaches_the_destination(
    procs: Processes, start_receiver: Callable, server_config: Callable, tmp_path: Path
) -> None:
    receiver = start_receiver()
    archive = {"name": "archive", "ae_title": receiver.ae_title, "host": "127.0.0.1"}
    base, config = _serve(
        procs,
        server_config,
        destinations=[{**archive, "port": receiver.port}],
        rules=[{"name": "all", "modalities": ["CT"], "destinations": ["archive"]}],
    )
    series = write_ct(tmp_path / "ct", slices=6)
    datasets = [pydicom.dcmread(p) for p in series.paths]

    answer = _client(base).store_instances(datasets)
    stored = answer.get(STORED_SEQ, [])
    assert {item.ReferencedSOPInstanceUID for item in stored} == set(series.sop_uids)
    assert FAILED_SEQ not in answer
    first = stored[0]
    assert first.ReferencedSOPClassUID == datasets[0].SOPClassUID
    # (dicomweb-client sends "Host: 127.0.0.1" without the port: the URL says what it said)
    assert first.RetrieveURL.endswith(
        f"/dicomweb/studies/{series.study_uid}/series/{series.series_uid}"
        f"/instances/{first.ReferencedSOPInstanceUID}"
    )

    # On disk before the answer: the spool holds every instance, as sent.
    spool = Spool(Path(config.storage.spool))
    files = spool.series_files(series.study_uid, series.series_uid)
    assert len(files) == len(series.sop_uids)
    for path in files:
        again = pydicom.dcmread(path)
        assert again.file_meta.MediaStorageSOPInstanceUID == again.SOPInstanceUID
        assert again.pixel_array.shape == (64, 64)

    # The same series completion and routing as C-STORE: a job, done.
    api = f"{base}/api/"
    wait_until(lambda: get_json(api, headers=AUTH)["status"]["jobs"][DONE] == 1, 90, "the STOW job")
    (job,) = get_json(api, headers=AUTH)["jobs"]
    assert job["series"] == series.series_uid and job["instances"] == len(series.sop_uids)
    (seg_file,) = wait_until(receiver.files, 60, "the SEG at the destination")
    check_seg_references(seg_file, series)
    found = metrics_with_token(base)
    assert sample(found, "medseg_stow_instances_total", status="0x0000") == len(datasets)


def metrics_with_token(base: str) -> dict:
    """Every sample of /metrics (with the bearer token), by prometheus_client's parser."""
    status, _, body = http("GET", f"{base}/metrics", headers=AUTH)
    assert status == 200, body
    text = body.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.slow
def test_a_bad_part_fails_while_the_others_are_stored(
    procs: Processes, server_config: Callable, tmp_path: Path
) -> None:
    base, config = _serve(procs, server_config)
    series = write_ct(tmp_path / "ct", slices=4)
    parts = [p.read_bytes() for p in series.paths]
    bad = pydicom.dcmread(series.paths[1])
    buffer = BytesIO()
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = "1.2.3.x/../4"
        bad.save_as(buffer, enforce_file_format=True)
    parts[1] = buffer.getvalue()

    status, headers, body = http(
        "POST",
        f"{base}/dicomweb/studies",
        headers={**AUTH, "Content-Type": MULTIPART, "Accept": "application/dicom+json"},
        data=_multipart(parts),
    )
    assert status == 202, body
    assert headers["Content-Type"] == "application/dicom+json"
    answer = pydicom.Dataset.from_json(body.decode())
    stored = {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence}
    assert stored == set(series.sop_uids) - {series.sop_uids[1]}
    (failed,) = answer.FailedSOPSequence
    assert failed.FailureReason == 0xC210  # what C-STORE answers for a UID that is not one
    assert failed.ReferencedSOPClassUID == bad.SOPClassUID
    assert "ReferencedSOPInstanceUID" not in failed, "not a UID: not echoed"
    spool = Spool(Path(config.storage.spool))
    assert len(spool.series_files(series.study_uid, series.series_uid)) == 3
    assert len(list(Path(config.storage.spool).rglob("*.dcm"))) == 3, "nothing else written"

    # To /studies/{study}: an instance of another study fails (0xA900), none stored -> 409.
    other = write_ct(tmp_path / "other", slices=1)
    with pytest.raises(requests.HTTPError) as refused:
        _client(base).store_instances(
            [pydicom.dcmread(other.paths[0])], study_instance_uid=series.study_uid
        )
    assert refused.value.response.status_code == 409
    answer = pydicom.Dataset.from_json(refused.value.response.json())
    assert [item.FailureReason for item in answer.FailedSOPSequence] == [0xA900]
    assert answer.RetrieveURL.endswith(f"/dicomweb/studies/{series.study_uid}")
    assert not spool.series_files(other.study_uid, other.series_uid)


def _raw_post(port: int, headers: dict[str, str], data: bytes) -> int:
    """POST /dicomweb/studies with ``headers`` and the raw bytes ``data`` (not necessarily
    the whole body), then read the status line of the answer."""
    lines = ["POST /dicomweb/studies HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in {**AUTH, "Content-Type": MULTIPART, **headers}.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + data)
        status_line = conn.makefile("rb").readline()
    return int(status_line.split()[1])


@contextmanager
def _stalled_post(port: int, size: int) -> Iterator[BinaryIO]:
    """A chunked POST that sends ``size`` bytes of its body and then nothing more; yields
    the connection's reader for the answer."""
    lines = ["POST /dicomweb/studies HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in AUTH.items()]
    lines += [f"Content-Type: {MULTIPART}", "Transfer-Encoding: chunked"]
    data = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _chunks(size))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + data)
        yield conn.makefile("rb")


def _chunks(size: int) -> Iterator[bytes]:
    yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    for _ in range(size // 65536):
        yield b"\0" * 65536


@pytest.mark.slow
def test_oversize_wrong_type_and_unauthenticated_requests_are_refused(
    procs: Processes, server_config: Callable, tmp_path: Path
) -> None:
    base, config = _serve(procs, server_config, {"max_stow_mb": 1, "stow_stall_seconds": 1})
    url = f"{base}/dicomweb/studies"
    part = write_ct(tmp_path / "ct", slices=1).paths[0].read_bytes()
    body = _multipart([part])
    assert http("POST", url, data=body, headers={"Content-Type": MULTIPART})[0] == 401
    wrong = {**AUTH, "Content-Type": "application/dicom"}
    assert http("POST", url, data=body, headers=wrong)[0] == 415
    wrong["Content-Type"] = f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'
    assert http("POST", url, data=body, headers=wrong)[0] == 415

    # Announced over the limit: refused before any of the body is sent.
    port = int(base.rsplit(":", 1)[1])
    assert _raw_post(port, {"Content-Length": str(2 << 20)}, b"") == 413
    # Chunked (no Content-Length): refused once the limit is passed (the client stops
    # sending just past it and waits for the answer).
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _chunks((1 << 20) + (1 << 17)))
    assert _raw_post(port, {"Transfer-Encoding": "chunked"}, chunks) == 413
    assert not list(Path(config.storage.spool).rglob("*.dcm"))

    # Several bodies at once share the limit: while one holds most of it, another gets 503;
    # a client that stops sending is cut off after stow_stall_seconds (408), which frees it.
    def probe() -> int:
        junk = b"\0" * (300 << 10)  # no multipart boundary in it: 400 once it was read
        return _raw_post(port, {"Content-Length": str(len(junk))}, junk)

    assert probe() == 400
    with _stalled_post(port, 800 << 10) as stalled:
        wait_until(
            lambda: metrics_with_token(base)["medseg_stow_body_bytes", ()] >= 768 << 10,
            10,
            "the stalled body read",
        )
        assert probe() == 503
        assert int(stalled.readline().split()[1]) == 408
    assert probe() == 400
    # Still serving, and the small body is stored.
    assert http("POST", url, data=body, headers={**AUTH, "Content-Type": MULTIPART})[0] == 200
    assert metrics_with_token(base)["medseg_stow_body_bytes", ()] == 0, "all given back"


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ("multipart/form-data; boundary=x", 415),
        ('multipart/related; type="application/dicom+xml"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),
    ],
)
def test_boundary_of_refuses_other_content_types(content_type: str, status: int) -> None:
    with pytest.raises(StowRequestError) as refused:
        boundary_of(content_type)
    assert refused.value.status == status


def test_boundary_of_takes_quoted_and_untyped_multipart_related() -> None:
    assert boundary_of('Multipart/Related; type="application/dicom"; boundary="a b"') == "a b"
    assert boundary_of("multipart/related; boundary=xyz") == "xyz"


def test_split_parts_gives_each_part_and_its_headers_without_copying() -> None:
    body = _multipart([b"one\r\n--not-the-boundary", b""])
    parts = list(split_parts(body, BOUNDARY))
    assert [bytes(p) for _, p in parts] == [b"one\r\n--not-the-boundary", b""]
    assert all(h.get_content_type() == "application/dicom" for h, _ in parts)
    assert isinstance(parts[0][1], memoryview)


@pytest.mark.parametrize(
    "body",
    [
        b"no boundary at all",
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nno close".encode(),
        f"--{BOUNDARY}\r\nContent-Type: application/dicom".encode(),
    ],
)
def test_split_parts_refuses_a_malformed_body(body: bytes) -> None:
    with pytest.raises(StowRequestError) as refused:
        list(split_parts(body, BOUNDARY))
    assert refused.value.status == 400
