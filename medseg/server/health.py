"""Housekeeping health: which steps keep failing, told to ``medseg status``.

A failing step (series completion, the sweep, deliveries, retention) or a single bad item
inside one (a series folder that is not a UID, a job record that does not parse) must not
stop the others, and an administrator must see it without reading logs. The service keeps
its current problems here and mirrors them into a small file in the spool that
``medseg status`` reads.

The file has a fixed size and is rewritten in place (``pwrite`` at offset 0, padded with
spaces) rather than replaced: overwriting blocks a file already owns needs no new space, so
the report still gets through when the disk is full, which is when it matters most. One
file per process (``health/<host>-<pid>.json``), removed at a clean stop.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HEALTH_DIR = "health"
REPORT_SIZE = 4096  # bytes; the report is cut to fit
REFRESH_SECONDS = 10.0  # an unchanged report is rewritten this often (its time: a heartbeat)
MAX_ERROR_CHARS = 160
MAX_PROBLEMS = 8


@dataclass(frozen=True)
class Problem:
    """One step or item that keeps failing: since when, how often, the latest error."""

    what: str  # e.g. "series completion", "job record 2.25.1234"
    error: str  # one line
    since: float
    last: float
    count: int = 1


def one_line(exc: BaseException) -> str:
    """An exception as a short single line (type name when it has no message)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:MAX_ERROR_CHARS]


class Health:
    """The current problems of one process, mirrored to ``path`` when they change."""

    def __init__(self, path: Path | None, role: str) -> None:
        self.path = path
        self.role = role
        self._problems: dict[str, Problem] = {}
        self._lock = threading.Lock()
        self._written: tuple[tuple[str, str], ...] | None = None
        self._written_at = 0.0

    @classmethod
    def in_spool(cls, spool_root: Path, role: str) -> Health:
        folder = Path(spool_root) / HEALTH_DIR
        return cls(folder / f"{socket.gethostname()}-{os.getpid()}.json", role)

    def failed(self, what: str, exc: BaseException) -> None:
        """Record a failure of ``what``; the first one of a run is logged with its traceback."""
        now = time.time()
        error = one_line(exc)
        with self._lock:
            known = self._problems.get(what)
            if known is None:
                self._problems[what] = Problem(what, error, since=now, last=now)
            else:
                self._problems[what] = replace(known, error=error, last=now, count=known.count + 1)
        if known is None:
            logger.error("%s failed (the rest of housekeeping goes on): %s", what, error)
            logger.debug("%s failed", what, exc_info=exc)
        self.save()

    def ok(self, what: str) -> None:
        """``what`` succeeded: clear its problem (and say so when it had one)."""
        with self._lock:
            known = self._problems.pop(what, None)
        if known is not None:
            logger.warning("%s works again after %d failure(s)", what, known.count)
            self.save()

    def clear_prefix(self, prefix: str, keep: set[str]) -> None:
        """Forget per-item problems under ``prefix`` whose item is gone (not in ``keep``)."""
        with self._lock:
            gone = [w for w in self._problems if w.startswith(prefix) and w not in keep]
            for what in gone:
                del self._problems[what]
        if gone:
            self.save()

    def problems(self) -> list[Problem]:
        with self._lock:
            return sorted(self._problems.values(), key=lambda p: p.since)

    def report(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.time(),
            "problems": [asdict(p) for p in self.problems()],
        }

    def start(self) -> None:
        """Create the report file at its full size (while there is space) and write it."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as handle:
                handle.write(b" " * REPORT_SIZE)
        except OSError as exc:
            logger.warning("cannot create the health report %s: %s", self.path, exc)
            return
        self._written = None
        self.save()

    def save(self) -> None:
        """Rewrite the report in place when the problems changed, else every
        ``REFRESH_SECONDS``; never raises (a report is no reason to stop housekeeping)."""
        if self.path is None:
            return
        key = tuple((p.what, p.error) for p in self.problems())
        now = time.monotonic()
        if key == self._written and now - self._written_at < REFRESH_SECONDS:
            return
        data = encode_report(self.report())
        try:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.pwrite(fd, data, 0)
            finally:
                os.close(fd)
        except OSError as exc:
            logger.debug("cannot update the health report %s: %s", self.path, exc)
            return
        self._written, self._written_at = key, now

    def stop(self) -> None:
        """A clean stop: the process no longer reports, so its file goes."""
        if self.path is not None:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                logger.debug("cannot remove the health report %s: %s", self.path, exc)


def encode_report(report: dict[str, Any]) -> bytes:
    """The report as JSON padded with spaces to ``REPORT_SIZE``; problems cut to fit."""
    report = dict(report)
    every = list(report.get("problems", []))
    problems = every[:MAX_PROBLEMS]
    while True:
        report["problems"] = problems
        report["more_problems"] = len(every) - len(problems)
        data = json.dumps(report, sort_keys=True).encode()
        if len(data) <= REPORT_SIZE or not problems:
            return data[:REPORT_SIZE].ljust(REPORT_SIZE, b" ")
        problems = problems[:-1]


def read_reports(spool_root: Path) -> list[dict[str, Any]]:
    """Every process's report in the spool; ``running`` is False for a dead local process.

    A report being rewritten at this very moment may not parse; it is skipped.
    """
    folder = Path(spool_root) / HEALTH_DIR
    reports: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            report = json.loads(path.read_bytes().decode().strip() or "null")
        except (OSError, ValueError) as exc:
            logger.debug("skipping health report %s: %s", path, exc)
            continue
        if not isinstance(report, dict):
            continue
        report["running"] = _alive(report)
        reports.append(report)
    return reports


def _alive(report: dict[str, Any]) -> bool | None:
    """Whether the reporting process still runs (None: on another host, unknown)."""
    if report.get("host") != socket.gethostname():
        return None
    try:
        pid = int(report.get("pid", 0))
        if pid <= 0:
            return None
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return None
    return True
