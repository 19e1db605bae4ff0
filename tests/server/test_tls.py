"""DICOM TLS with a test CA made here: client certificates required, both directions."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from medseg.server.completion import SeriesTracker
from medseg.server.config import TlsConfig
from medseg.server.jobs import Delivery
from medseg.server.listener import start_listener
from medseg.server.sender import send_file
from medseg.server.spool import Spool
from medseg.server.tls import client_context, server_context
from tests.server.peers import DCMTK_ENV, STORESCU, wait_until, write_ct


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    folder: Path,
    stem: str,
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    issuer_name: x509.Name | None,
    ca: bool = False,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _issue(folder, "ca", "medseg test CA", None, None, ca=True)
    _issue(folder, "server", "medseg", ca_key, ca_cert.subject)
    _issue(folder, "client", "pacs", ca_key, ca_cert.subject)
    return folder


@pytest.fixture
def tls_listener(pki: Path, server_config: Callable, tmp_path: Path) -> Iterator[tuple[int, Spool]]:
    yield from _tls_listener(pki, server_config)


def _tls_listener(
    pki: Path, server_config: Callable, **listener: object
) -> Iterator[tuple[int, Spool]]:
    tls = {
        "enabled": True,
        "certificate": str(pki / "server.pem"),
        "private_key": str(pki / "server.key"),
        "ca_certificates": str(pki / "ca.pem"),
    }
    _, config = server_config(tls=tls, listener=listener)
    spool = Spool(config.spool_dir)
    server = start_listener(
        config, spool, SeriesTracker(spool.database), ssl_context=server_context(config.tls)
    )
    yield int(server.server_address[1]), spool
    server.shutdown()


def _client(pki: Path, with_cert: bool = True) -> ssl.SSLContext:
    return client_context(
        TlsConfig(
            certificate=str(pki / "client.pem") if with_cert else "",
            private_key=str(pki / "client.key") if with_cert else "",
            ca_certificates=str(pki / "ca.pem"),
        )
    )


def _echo(port: int, context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="PACS")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    tls_args = (context, "127.0.0.1") if context else None
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG", tls_args=tls_args)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def test_client_with_certificate_from_our_ca_is_accepted(
    pki: Path, tls_listener: tuple[int, Spool]
) -> None:
    port, _ = tls_listener
    assert _echo(port, _client(pki))


def test_client_without_certificate_or_tls_is_refused(
    pki: Path, tls_listener: tuple[int, Spool]
) -> None:
    port, _ = tls_listener
    assert not _echo(port, _client(pki, with_cert=False))
    assert not _echo(port, None)


def test_idle_connections_do_not_block_the_tls_listener(pki: Path, server_config: Callable) -> None:
    """A connection that never starts its TLS handshake must not hold up anyone else."""
    listener = _tls_listener(pki, server_config, acse_timeout=3.0)
    port, _ = next(listener)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(13)]
    try:
        idle[0].sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and no more
        started = time.monotonic()
        assert _echo(port, _client(pki))
        assert time.monotonic() - started < 5, "a good TLS peer waited for an idle one"
        for sock in idle:  # each closed by the server once acse_timeout has passed
            sock.settimeout(6)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(4096) == b""
    finally:
        for sock in idle:
            sock.close()
        next(listener, None)


def test_dcmtk_storescu_over_tls_stores_the_series(
    pki: Path, tls_listener: tuple[int, Spool], tmp_path: Path
) -> None:
    port, spool = tls_listener
    series = write_ct(tmp_path / "series", slices=2)
    # dcmtk defaults: BCP 195 non-downgrading profile, peer certificate required.
    args = [STORESCU, "+tls", str(pki / "client.key"), str(pki / "client.pem")]
    args += ["+cf", str(pki / "ca.pem"), "-aet", "PACS", "-aec", "MEDSEG", "127.0.0.1"]
    args += [str(port), *map(str, series.paths)]
    result = subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(spool.series_files(series.study_uid, series.series_uid)) == 2


def test_sender_delivers_over_tls(
    pki: Path, tls_listener: tuple[int, Spool], shared_dir: Path
) -> None:
    port, spool = tls_listener
    seg = shared_dir / "data" / "dcmqi" / "liver.dcm"
    status = send_file(
        seg,
        Delivery("tls", "MEDSEG", "127.0.0.1", port, tls=True),
        calling_ae="PACS",
        timeout=10,
        tls_context=_client(pki),
    )
    assert status == 0
    ds = pydicom.dcmread(seg)
    stored = spool.series_files(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert [p.stem for p in stored] == [ds.SOPInstanceUID]


def _warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("medseg") and text in r.getMessage()
    ]


def test_each_refused_tls_handshake_logs_one_warning(
    pki: Path, tls_listener: tuple[int, Spool], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Issue 23 item 10: a refused handshake logged nothing at the default level (WARNING).

    Three refusals, each a real client over 127.0.0.1: no client certificate, plain DICOM
    on the TLS port, a client that does not trust our certificate (it aborts). One line
    each, naming the address and the TLS reason, and nothing from the certificates.
    """
    caplog.set_level(logging.WARNING, logger="medseg")
    port, _ = tls_listener
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    _issue(stranger, "ca", "another CA", None, None, ca=True)
    untrusting = client_context(
        TlsConfig(
            certificate=str(pki / "client.pem"),
            private_key=str(pki / "client.key"),
            ca_certificates=str(stranger / "ca.pem"),
        )
    )
    for number, context in enumerate((_client(pki, with_cert=False), None, untrusting), 1):
        assert not _echo(port, context)
        wait_until(
            lambda n=number: len(_warnings_about(caplog, "refused a TLS handshake")) >= n,
            10,
            f"refusal {number} logged",
        )
    refusals = _warnings_about(caplog, "refused a TLS handshake")
    assert len(refusals) == 3, [r.getMessage() for r in refusals]
    for record in refusals:
        message = record.getMessage()
        assert "127.0.0.1:" in message and "\n" not in message
        assert "pacs" not in message and "medseg test CA" not in message
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in refusals[0].getMessage().upper().replace(" ", "_")
