"""Bounded random-mutation fuzzing of what a hostile or careless peer feeds medseg.

    python3 benchmarks/fuzz_dicom.py [--seconds 120] [--target all|dataset|pdu] [--seed 1]

Two targets, each for its share of ``--seconds`` (minutes, not hours):

- ``dataset``: the decoding path a received series goes through (``load_series``: header
  read, pixel decode, frame geometry, volume selection). Seeds: a classic CT series and an
  Enhanced CT written here with pydicom, plus pydicom's own test files (compressed,
  big-endian, no meta, truncated). Each case is one seed file mutated (bytes flipped,
  inserted, deleted, cut, a 2/4-byte length overwritten with an extreme value, a chunk
  repeated) and loaded in a worker process under a memory limit. Expected answers: a
  ``MedsegError`` (one-line refusal) or a loaded volume; anything else is a crash.
- ``pdu``: a real ``medseg serve`` on 127.0.0.1 (subprocess, ``acse_timeout`` and
  ``network_timeout`` of 2 s). Each case opens a connection and sends a mutated
  A-ASSOCIATE-RQ, or a valid one followed by a mutated P-DATA-TF (C-ECHO and C-STORE
  command/dataset fragments), then half-closes; the server must answer or close within the
  per-case timeout. Every 25 cases a real pynetdicom C-ECHO must still succeed, and the
  server log must hold no traceback.

Reported per target: iterations, crashes (unexpected exception types, with the first
traceback of each kind), hangs (cases past ``--case-timeout``) and peak RSS (the worker's
for ``dataset``, the server's VmHWM for ``pdu``). Exit status 1 when anything crashed or
hung. ``tests/test_fuzz.py`` runs it for a few seconds so it cannot rot.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SERVER_TIMEOUT = 2.0  # the fuzzed server's acse_timeout and network_timeout, seconds
SLOT_GRACE = 2 * SERVER_TIMEOUT + 4  # how long a case's association may hold its slot
WORKER_MEMORY = 2 << 30  # bytes of address space for the decoding worker: a bound, not a goal


@dataclass
class Report:
    """What one target's run found."""

    target: str
    iterations: int = 0
    crashes: Counter = field(default_factory=Counter)
    first_traceback: dict[str, str] = field(default_factory=dict)
    hangs: int = 0
    hang_examples: list[str] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    handled: int = 0  # pdu: bad PDUs pynetdicom logged with a traceback and aborted
    known_races: int = 0  # pdu: pynetdicom's Evt9-in-Sta13 race (KNOWN_RACE)

    def crash(self, kind: str, text: str) -> None:
        self.crashes[kind] += 1
        self.first_traceback.setdefault(kind, text)

    def lines(self) -> list[str]:
        out = [
            f"{self.target}: {self.iterations} iterations in {self.seconds:.0f} s, "
            f"{sum(self.crashes.values())} crash(es), {self.hangs} hang(s), "
            f"peak RSS {self.peak_rss_mb:.0f} MB"
            + (f", {self.handled} bad PDU(s) aborted by pynetdicom" if self.handled else "")
            + (f", {self.known_races} known pynetdicom race(s)" if self.known_races else "")
        ]
        for kind, count in self.crashes.most_common():
            out.append(f"  crash {kind} x{count}:")
            out += ["    " + line for line in _short(self.first_traceback[kind])]
        out += [f"  hang: {example}" for example in self.hang_examples[:5]]
        return out


def _short(text: str) -> list[str]:
    """A traceback cut to medseg's own frames and the exception line."""
    lines = text.rstrip().splitlines()
    keep = [line for line in lines if "/medseg/" in line and line.strip().startswith("File")]
    return keep[-4:] + lines[-1:]


# -- mutation ------------------------------------------------------------------------------
EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFE)


def mutate(data: bytes, rng: random.Random, protect: int = 0) -> bytes:
    """1-4 random edits of ``data``; the first ``protect`` bytes are left alone."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if len(buf) <= protect + 8:
            break
        at = rng.randrange(protect, len(buf))
        op = rng.randrange(7)
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at] = rng.randrange(256)
        elif op == 2:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3:
            del buf[at : at + rng.randint(1, 64)]
        elif op == 4:
            del buf[at:]  # cut short
        elif op == 5:
            size = rng.choice((2, 4))
            value = rng.choice(EXTREMES) & ((1 << (8 * size)) - 1)
            order = rng.choice(("<", ">"))
            buf[at : at + size] = struct.pack(order + ("H" if size == 2 else "I"), value)
        else:
            start = rng.randrange(protect, len(buf))
            chunk = buf[start : start + rng.randint(1, 256)]
            buf[at:at] = chunk * rng.randint(1, 8)
    return bytes(buf)


# -- target 1: dataset decoding ------------------------------------------------------------
def dataset_seeds(folder: Path) -> list[bytes]:
    """Small DICOM files: two written here (classic and Enhanced CT), pydicom's test files."""
    import numpy as np
    import pydicom.data

    from tests.dicom.series_factory import write_series

    values = np.full((3, 16, 16), 40.0)
    values[1, 4:12, 4:12] = 900.0
    seeds = [p.read_bytes() for p in write_series(folder / "classic", values).paths[:2]]
    seeds.append(write_series(folder / "enhanced", values, multiframe=True).paths[0].read_bytes())
    names = (
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "JPEG-lossy.dcm",
        "image_dfl.dcm",
        "no_meta.dcm",
        "ExplVR_BigEndNoMeta.dcm",
        "MR_truncated.dcm",
        "liver_1frame.dcm",
    )
    base = Path(pydicom.data.__file__).parent / "test_files"
    seeds += [(base / n).read_bytes() for n in names if (base / n).is_file()]
    return seeds


def _decode_worker(conn: mp.connection.Connection, folder: str) -> None:
    """Load each file the parent sends; answer ok/refused/crash and the peak RSS."""
    import logging
    import warnings

    logging.disable(logging.CRITICAL)
    os.environ["RUST_BACKTRACE"] = "0"  # a decoder's panic is reported, not printed
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    from medseg.dicom import load_series
    from medseg.errors import MedsegError

    path = Path(folder) / "case.dcm"
    while True:
        data = conn.recv()
        if data is None:
            return
        path.write_bytes(data)
        try:
            load_series(path)
            outcome, detail = "ok", ""
        except MedsegError:
            outcome, detail = "refused", ""
        except BaseException as exc:  # the point of fuzzing: anything else is reported
            outcome = f"{type(exc).__module__}.{type(exc).__name__}"
            detail = traceback.format_exc()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn.send((outcome, detail, rss))


class DecodeWorker:
    """A decoding process that is replaced when a case hangs or kills it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ctx = mp.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(
            target=_decode_worker, args=(child, str(self.folder)), daemon=True
        )
        self.proc.start()

    def run(self, data: bytes, timeout: float) -> tuple[str, str, float] | None:
        """The case's outcome, or None when it did not finish in ``timeout`` s."""
        self.conn.send(data)
        if self.conn.poll(timeout):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        else:
            self.restart()
            return None
        code = self.proc.exitcode
        self.restart()
        return (f"worker died (exit {code})", "the decoding process died", 0.0)

    def restart(self) -> None:
        self.stop(kill=True)
        self._start()

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                self.proc.kill()
        self.proc.join(10)


def fuzz_dataset(seconds: float, rng: random.Random, case_timeout: float) -> Report:
    report = Report("dataset")
    with tempfile.TemporaryDirectory(prefix="medseg-fuzz-") as tmp:
        seeds = dataset_seeds(Path(tmp))
        worker = DecodeWorker(Path(tmp))
        started = time.monotonic()
        # The first answer includes the worker's imports: not a hang.
        worker.run(seeds[0], 120)
        try:
            while time.monotonic() - started < seconds:
                seed = rng.choice(seeds)
                case = mutate(seed, rng, protect=rng.choice((0, 132)))
                result = worker.run(case, case_timeout)
                report.iterations += 1
                if result is None:
                    report.hangs += 1
                    report.hang_examples.append(f"{len(case)}-byte file, seed of {len(seed)}")
                    continue
                outcome, detail, rss = result
                report.peak_rss_mb = max(report.peak_rss_mb, rss)
                if outcome not in ("ok", "refused"):
                    report.crash(outcome, detail)
        finally:
            worker.stop()
        report.seconds = time.monotonic() - started
    return report


# -- target 2: association and PDUs against a real medseg serve ---------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def capture_associate_rq() -> bytes:
    """The A-ASSOCIATE-RQ pynetdicom sends (Verification and CT Image Storage), recorded by
    a socket that never answers."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    ae = AE(ae_title="PACS")
    ae.acse_timeout = ae.network_timeout = 2
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    thread = threading.Thread(
        target=lambda: ae.associate("127.0.0.1", port, ae_title="MEDSEG"), daemon=True
    )
    thread.start()
    conn, _ = server.accept()
    conn.settimeout(5)
    header = conn.recv(6, socket.MSG_WAITALL)
    body = conn.recv(struct.unpack(">I", header[2:6])[0], socket.MSG_WAITALL)
    conn.close()
    server.close()
    thread.join(10)
    return header + body


def _pdv(context: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context, control) + data


def p_data(items: list[bytes]) -> bytes:
    body = b"".join(items)
    return struct.pack(">BxI", 0x04, len(body)) + body


def command_and_dataset_pdus() -> list[bytes]:
    """P-DATA-TF PDUs a peer sends after association: a C-ECHO-RQ, and a C-STORE-RQ with a
    small CT dataset (presentation contexts 1 and 3: Verification, CT Image Storage)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage, generate_uid
    from pynetdicom.dsutils import encode

    echo = Dataset()
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo.CommandField = 0x0030
    echo.MessageID = 1
    echo.CommandDataSetType = 0x0101
    sop = generate_uid()
    store = Dataset()
    store.AffectedSOPClassUID = CTImageStorage
    store.CommandField = 0x0001
    store.MessageID = 2
    store.Priority = 0
    store.CommandDataSetType = 0x0000
    store.AffectedSOPInstanceUID = sop
    image = Dataset()
    image.SOPClassUID, image.SOPInstanceUID = CTImageStorage, sop
    image.StudyInstanceUID, image.SeriesInstanceUID = generate_uid(), generate_uid()
    image.Modality = "CT"
    image.Rows = image.Columns = 4
    image.BitsAllocated = image.BitsStored = 16
    image.HighBit, image.PixelRepresentation, image.SamplesPerPixel = 15, 0, 1
    image.PhotometricInterpretation = "MONOCHROME2"
    image.PixelData = bytes(32)

    def command(ds: Dataset) -> bytes:
        ds.CommandGroupLength = 0
        raw = encode(ds, True, True)
        ds.CommandGroupLength = len(raw) - 12
        return encode(ds, True, True)

    data = encode(image, True, True)
    return [
        p_data([_pdv(1, 0x03, command(echo))]),
        p_data([_pdv(3, 0x03, command(store))]) + p_data([_pdv(3, 0x02, data)]),
    ]


def _ends(data: bytes) -> bool:
    """Whether the PDUs in ``data`` include an A-ASSOCIATE-RJ or A-ABORT (the server's end;
    a real peer closes on it)."""
    at = 0
    while at + 6 <= len(data):
        pdu_type, length = struct.unpack(">BxI", data[at : at + 6])
        if pdu_type in (0x03, 0x07):
            return True
        at += 6 + length
    return False


def _exchange(port: int, payload: bytes, setup: bytes | None, timeout: float) -> bool:
    """Send ``payload`` (after a valid association ``setup``), half-close, and wait for the
    server to reject or abort, or to close. False when neither came within ``timeout``."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            if setup is not None:
                sock.sendall(setup)
                sock.recv(6)  # the A-ASSOCIATE-AC (or RJ) header
                sock.recv(65536)  # and its body
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                received += chunk
                if not chunk or _ends(received):
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True  # reset or refused: closed, which is an answer
    return False


def _echo(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="PACS")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
    if not assoc.is_established:
        return False
    ok = getattr(assoc.send_c_echo(), "Status", None) == 0
    assoc.release()
    return ok


def _echo_within(port: int, seconds: float) -> bool:
    """A C-ECHO succeeds within ``seconds``: associations of earlier cases may hold every
    slot until their timeouts end them (bounded, like any peer's); a leak never frees one."""
    deadline = time.monotonic() + seconds
    while not _echo(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _server_tracebacks(log: Path) -> tuple[list[str], int]:
    """Tracebacks that are crashes, and how many were pynetdicom's handled ones.

    A crash: an exception that ended a thread (``Exception in thread``) or one medseg
    logged with its traceback (a bug by its own rules). pynetdicom logs the PDUs it cannot
    decode with a traceback and aborts that association: handled, only counted.
    """
    lines = log.read_text(errors="replace").splitlines()
    crashes, handled = [], 0
    for i, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        before = lines[i - 1] if i else ""
        # other threads' log lines, and the first lines of their own tracebacks, may land
        # inside a traceback: they are not its end
        block = [line]
        for following in lines[i + 1 :]:
            if LOG_LINE.match(following) or following.startswith(INTERLEAVED):
                continue
            block.append(following)
            if not following.startswith(" "):
                break
        if before.startswith("Exception in thread") or " medseg." in before:
            crashes.append("\n".join([before, *block]))
        else:
            handled += 1
    return crashes, handled


INTERLEAVED = ("Traceback (most recent call last)", "Exception in thread")
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


# pynetdicom's own race, not fixed in medseg: a response or abort the association thread
# queued reaches the reactor after the peer's bad PDU aborted the association (Sta13), and
# the state machine raises in that reactor thread, which was ending anyway. Reported apart.
KNOWN_RACE = re.compile(
    r"InvalidEventError: Invalid event 'Evt(9|15)' for the current state 'Sta13'$"
)


def fuzz_pdu(
    seconds: float, rng: random.Random, case_timeout: float, keep_log: Path | None = None
) -> Report:
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    report = Report("pdu")
    with tempfile.TemporaryDirectory(prefix="medseg-fuzz-") as tmp:
        port = _free_port()
        config = Path(tmp) / "fuzz.toml"
        config.write_text(
            f'[listener]\nhost = "127.0.0.1"\nport = {port}\nacse_timeout = {SERVER_TIMEOUT}\n'
            f"network_timeout = {SERVER_TIMEOUT}\nmax_connections_per_ip = 0\n"
            f'[storage]\nspool = "{tmp}/spool"\nmin_free_mb = 0\nfsync = false\n'
            '[[peers]]\nae_title = "PACS"\n'
        )
        log = Path(tmp) / "serve.log"
        with open(log, "wb") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", "medseg", "serve", "-c", str(config), "--workers", "0"],
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while not _echo_quiet(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"medseg serve did not start:\n{log.read_text()}")
                time.sleep(0.2)
            request = capture_associate_rq()
            data_pdus = command_and_dataset_pdus()
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                if rng.random() < 0.4:
                    payload, setup = mutate(request, rng), None
                else:
                    payload, setup = mutate(rng.choice(data_pdus), rng), request
                report.iterations += 1
                if not _exchange(port, payload, setup, case_timeout):
                    report.hangs += 1
                    report.hang_examples.append(payload[:24].hex())
                if report.iterations % 25 == 0 and not _echo_within(port, SLOT_GRACE):
                    report.crash("server stopped answering C-ECHO", log.read_text()[-2000:])
                    break
                if proc.poll() is not None:
                    report.crash(f"server exited ({proc.returncode})", log.read_text()[-2000:])
                    break
            report.seconds = time.monotonic() - started
            if proc.poll() is None and not _echo_within(port, SLOT_GRACE):
                report.crash("server stopped answering C-ECHO", log.read_text()[-2000:])
            if proc.poll() is None:
                report.peak_rss_mb = _vm_hwm_mb(proc.pid)
            crashes, report.handled = _server_tracebacks(log)
            for text in crashes:
                if KNOWN_RACE.search(text.rstrip()):
                    report.known_races += 1
                else:
                    report.crash(f"server: {text.splitlines()[-1][:80]}", text)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait(10)
            if keep_log is not None:
                keep_log.write_bytes(log.read_bytes())
    return report


def _echo_quiet(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            pass
    except OSError:
        return False
    return _echo(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="total run time")
    parser.add_argument("--target", choices=("all", "dataset", "pdu"), default="all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--case-timeout", type=float, default=10.0, help="a hang, in seconds")
    parser.add_argument("--json", type=Path, help="also write the reports as JSON")
    parser.add_argument("--server-log", type=Path, help="keep the pdu target's server log here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    targets = ("dataset", "pdu") if args.target == "all" else (args.target,)
    share = args.seconds / len(targets)
    reports = []
    for target in targets:
        if target == "dataset":
            reports.append(fuzz_dataset(share, rng, args.case_timeout))
        else:
            reports.append(fuzz_pdu(share, rng, args.case_timeout, args.server_log))
    for report in reports:
        print("\n".join(report.lines()))
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "target": r.target,
                        "iterations": r.iterations,
                        "crashes": dict(r.crashes),
                        "hangs": r.hangs,
                        "peak_rss_mb": round(r.peak_rss_mb, 1),
                        "handled": r.handled,
                        "known_races": r.known_races,
                        "seconds": round(r.seconds, 1),
                    }
                    for r in reports
                ],
                indent=2,
            )
        )
    return 1 if any(r.crashes or r.hangs for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
