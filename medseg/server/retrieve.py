"""The series behind a mark: retrieved from the PACS when medseg does not hold it.

A reader's mark may reach medseg without its series (a PACS that routes presentation states
and reports only). With ``[retrieve]`` configured, the mark asks for each series it
references that is not in the spool (``RetrievalBook.request``), and a retriever thread
fetches it from the PACS's Query/Retrieve SCP at SERIES level:

- ``method = "move"``: a C-MOVE whose move destination is medseg's own AE title; the PACS
  opens its own association to medseg's listener and stores each instance there (so the
  PACS must know medseg's AE title, host and port, and medseg must accept it as a peer);
- ``method = "get"``: a C-GET; the PACS stores each instance back on the same association.

Either way every instance takes the listener's storage path (``StoreHandler``: checked,
written to the spool and fsynced before it is acknowledged, then tracked), so a retrieved
series is as durable as a received one and completes like one. Each retrieval is one
record in the spool's ``medseg.db`` (``retrievals`` table): ``pending`` -> ``running`` ->
``done``, or back to ``pending`` with exponential backoff after a failure, and ``failed``
after ``max_tries``; a retrieval left ``running`` by a killed process is pending again at
the next start. Logs name series by UID and the PACS by AE title, never a patient.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from medseg.errors import MedsegError
from medseg.server.config import RetrieveConfig
from medseg.server.sqlite import PerThread, transaction

logger = logging.getLogger(__name__)

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
RETRIEVAL_STATES = (PENDING, RUNNING, DONE, FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS retrievals (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    instances INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    requested REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS retrievals_state ON retrievals(state, next_attempt);
"""

# C-MOVE / C-GET statuses (PS3.4 C.4.2.1.5, C.4.3.1.4)
_PENDING_STATUSES = (0xFF00, 0xFF01)
_STATUS_WORDS = {
    0xA701: "out of resources: cannot calculate the number of matches",
    0xA702: "out of resources: cannot perform the sub-operations",
    0xA801: "move destination unknown: the PACS does not know medseg's AE title",
    0xA900: "identifier does not match the SOP class",
    0xB000: "some instances could not be sent",
    0xFE00: "cancelled",
}


class RetrieveError(MedsegError):
    """One retrieval attempt failed (unreachable PACS, refusal, failed sub-operations)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Retrieval:
    """One series asked of the PACS, as the ``retrievals`` table keeps it (UIDs only)."""

    series_uid: str
    study_uid: str
    state: str = PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    instances: int = 0
    error: str = ""
    requested: float = 0.0
    updated: float = 0.0

    @classmethod
    def from_row(cls, row: Any) -> Retrieval:
        return cls(**dict(row))


class RetrievalBook:
    """The retrievals table: series to ask the PACS for, and how that went."""

    def __init__(self, database: Path) -> None:
        self._conn = PerThread(Path(database))  # synchronous=FULL: a request is not lost
        self._conn().executescript(_SCHEMA)

    def request(self, study_uid: str, series_uid: str, now: float | None = None) -> Retrieval:
        """Ask for a series (due at once). A failed retrieval asked for again starts over;
        one pending, running or done is left as it is."""
        now = time.time() if now is None else now
        with transaction(self._conn()) as conn:
            conn.execute(
                "INSERT INTO retrievals (series_uid, study_uid, next_attempt, requested, updated)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(series_uid) DO UPDATE SET"
                " state = 'pending', attempts = 0, error = '', instances = 0,"
                " next_attempt = excluded.next_attempt, requested = excluded.requested,"
                " updated = excluded.updated WHERE retrievals.state = 'failed'",
                (series_uid, study_uid, now, now, now),
            )
        return self.get(series_uid) or Retrieval(series_uid, study_uid, requested=now)

    def get(self, series_uid: str) -> Retrieval | None:
        row = (
            self._conn()
            .execute("SELECT * FROM retrievals WHERE series_uid = ?", (series_uid,))
            .fetchone()
        )
        return Retrieval.from_row(row) if row else None

    def due(self, now: float | None = None) -> list[Retrieval]:
        now = time.time() if now is None else now
        rows = self._conn().execute(
            "SELECT * FROM retrievals WHERE state = ? AND next_attempt <= ? ORDER BY next_attempt",
            (PENDING, now),
        )
        return [Retrieval.from_row(row) for row in rows]

    def claim(self, series_uid: str, now: float | None = None) -> bool:
        """pending -> running, attempts + 1; False if another pass got there first."""
        now = time.time() if now is None else now
        with transaction(self._conn()) as conn:
            cursor = conn.execute(
                "UPDATE retrievals SET state = ?, attempts = attempts + 1, updated = ?"
                " WHERE series_uid = ? AND state = ?",
                (RUNNING, now, series_uid, PENDING),
            )
            return cursor.rowcount == 1

    def settle(
        self,
        series_uid: str,
        state: str,
        *,
        error: str = "",
        next_attempt: float = 0.0,
        instances: int = 0,
        now: float | None = None,
    ) -> None:
        now = time.time() if now is None else now
        with transaction(self._conn()) as conn:
            conn.execute(
                "UPDATE retrievals SET state = ?, error = ?, next_attempt = ?, instances = ?,"
                " updated = ? WHERE series_uid = ?",
                (state, error, next_attempt, instances, now, series_uid),
            )

    def recover(self) -> int:
        """Retrievals a killed process left running are pending again (the PACS is asked
        once more; instances it sends twice replace themselves with the same bytes)."""
        with transaction(self._conn()) as conn:
            cursor = conn.execute(
                "UPDATE retrievals SET state = ?, next_attempt = 0 WHERE state = ?",
                (PENDING, RUNNING),
            )
            return cursor.rowcount

    def all(self) -> list[Retrieval]:
        rows = self._conn().execute("SELECT * FROM retrievals ORDER BY updated DESC")
        return [Retrieval.from_row(row) for row in rows]

    def forget_before(self, cutoff: float) -> int:
        """Drop finished records not touched since ``cutoff`` (retention)."""
        with transaction(self._conn()) as conn:
            cursor = conn.execute(
                "DELETE FROM retrievals WHERE state IN (?, ?) AND updated < ?",
                (DONE, FAILED, cutoff),
            )
            return cursor.rowcount

    def close(self) -> None:
        self._conn.close()


def method_name(config: RetrieveConfig) -> str:
    return "C-MOVE" if config.method == "move" else "C-GET"


def describe_pacs(config: RetrieveConfig) -> str:
    return f"{config.ae_title}@{config.host}:{config.port} by {method_name(config)}"


StoreEvent = Callable[[Any], Any]


def retrieve_series(
    config: RetrieveConfig,
    study_uid: str,
    series_uid: str,
    *,
    calling_ae: str,
    store: StoreEvent,
    storage_contexts: list[tuple[str, list[str]]],
    tls_context: ssl.SSLContext | None = None,
) -> int:
    """Ask the PACS for one series; returns how many instances it sent.

    C-MOVE names ``calling_ae`` (medseg's own AE title) as the move destination: the
    instances arrive at the listener. C-GET proposes ``storage_contexts`` in the SCP role
    and hands each instance to ``store`` (the listener's C-STORE handler). Raises
    ``RetrieveError`` when the PACS is unreachable, refuses, stops answering for
    ``timeout_seconds`` or reports failed sub-operations.
    """
    ae = AE(ae_title=calling_ae)
    for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(ae, name, config.timeout_seconds)
    move = config.method == "move"
    model = (
        StudyRootQueryRetrieveInformationModelMove
        if move
        else StudyRootQueryRetrieveInformationModelGet
    )
    ae.add_requested_context(model)
    roles = []
    handlers = []
    if not move:
        for sop_class, syntaxes in storage_contexts:
            ae.add_requested_context(sop_class, syntaxes)
            roles.append(build_role(sop_class, scp_role=True))
        handlers.append((evt.EVT_C_STORE, store))
    tls_args = (tls_context, config.host) if config.tls and tls_context else None
    pacs = describe_pacs(config)
    assoc = ae.associate(
        config.host,
        config.port,
        ae_title=config.ae_title,
        ext_neg=roles or None,
        evt_handlers=handlers or None,
        tls_args=tls_args,
    )
    if not assoc.is_established:
        raise RetrieveError(f"{pacs}: association rejected, unreachable or aborted")
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid
        answers = (
            assoc.send_c_move(query, calling_ae, model) if move else assoc.send_c_get(query, model)
        )
        final: Dataset | None = None
        for status, _ in answers:
            if not status:  # no answer in time, or the association went away
                raise RetrieveError(f"{pacs}: no answer within {config.timeout_seconds:g} s")
            if int(status.Status) not in _PENDING_STATUSES:
                final = status
        if final is None:
            raise RetrieveError(f"{pacs}: the PACS sent no final status")
        return _completed(final, pacs)
    finally:
        if assoc.is_established:
            assoc.release()


def _completed(status: Dataset, pacs: str) -> int:
    code = int(status.Status)
    done = int(status.get("NumberOfCompletedSuboperations", 0) or 0)
    failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
    if code == 0x0000 and not failed:
        if done == 0:
            raise RetrieveError(f"{pacs}: the PACS holds no instance of the series", True)
        return done
    words = _STATUS_WORDS.get(code) or (
        "unable to process (does the PACS hold this series?)"
        if code & 0xF000 == 0xC000
        else "refused"
    )
    counts = f" ({done} sent, {failed} failed)" if done or failed else ""
    raise RetrieveError(f"{pacs}: status 0x{code:04X}, {words}{counts}")


class Retriever:
    """Works off due retrievals one at a time, on its own thread (a retrieval may take
    minutes; the housekeeping loop must not wait for it)."""

    def __init__(
        self,
        config: RetrieveConfig,
        book: RetrievalBook,
        *,
        calling_ae: str,
        store: StoreEvent,
        storage_contexts: list[tuple[str, list[str]]],
        tls_context: ssl.SSLContext | None = None,
        arrived: Callable[[str], bool] = lambda series_uid: True,
    ) -> None:
        self.config = config
        self.book = book
        self.calling_ae = calling_ae
        self.store = store
        self.storage_contexts = storage_contexts
        self.tls_context = tls_context
        self.arrived = arrived  # whether the listener now holds the series
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` failed ones (doubling, capped)."""
        delay = self.config.initial_backoff_seconds * 2 ** max(0, attempts - 1)
        return min(delay, self.config.max_backoff_seconds)

    def run_once(self, now: float | None = None) -> int:
        """Attempt every due retrieval once; returns how many were attempted."""
        attempted = 0
        for item in self.book.due(now):
            if self._stop.is_set():
                break
            if not self.book.claim(item.series_uid):
                continue
            attempted += 1
            self._attempt(item, item.attempts + 1)
        return attempted

    def _attempt(self, item: Retrieval, attempt: int) -> None:
        pacs = describe_pacs(self.config)
        logger.info(
            "series %s: retrieving from %s (attempt %d of %d)",
            item.series_uid,
            pacs,
            attempt,
            self.config.max_tries,
        )
        try:
            count = retrieve_series(
                self.config,
                item.study_uid,
                item.series_uid,
                calling_ae=self.calling_ae,
                store=self.store,
                storage_contexts=self.storage_contexts,
                tls_context=self.tls_context,
            )
            if not self.arrived(item.series_uid):
                raise RetrieveError(
                    f"{pacs}: the PACS reports {count} instance(s) sent, none arrived here "
                    "(does its entry for medseg name this host and port?)"
                )
        except RetrieveError as exc:
            self._failed(item, attempt, str(exc), exc.permanent)
            return
        except Exception as exc:  # a bug or an OS error: retried like any failure, logged
            logger.exception("series %s: retrieval failed", item.series_uid)
            self._failed(item, attempt, f"{type(exc).__name__}: {exc}", False)
            return
        self.book.settle(item.series_uid, DONE, instances=count)
        logger.info("series %s: %d instance(s) retrieved from %s", item.series_uid, count, pacs)

    def _failed(self, item: Retrieval, attempt: int, error: str, permanent: bool) -> None:
        if permanent or attempt >= self.config.max_tries:
            self.book.settle(item.series_uid, FAILED, error=error)
            logger.warning(
                "series %s: retrieval failed for good after %d attempt(s): %s",
                item.series_uid,
                attempt,
                error,
            )
            return
        delay = self.backoff(attempt)
        self.book.settle(item.series_uid, PENDING, error=error, next_attempt=time.time() + delay)
        logger.warning(
            "series %s: retrieval attempt %d failed, next in %.1f s: %s",
            item.series_uid,
            attempt,
            delay,
            error,
        )

    # -- thread --------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def start(self, interval: float = 1.0) -> None:
        recovered = self.book.recover()
        if recovered:
            logger.warning("%d retrieval(s) interrupted by a stop: asked again", recovered)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(interval,), name="medseg-retrieve", daemon=True
        )
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # keep retrieving; the error is in the log
                logger.exception("retrieval pass failed")
            self._wake.wait(interval)
            self._wake.clear()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the retrieval in progress (bounded by the association timeouts)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def retrieval_status(database: Path, config: RetrieveConfig, limit: int = 5) -> dict[str, Any]:
    """Retrievals by state and the newest with an error, for ``medseg status``."""
    if not config.method or not database.is_file():
        return {}
    book = RetrievalBook(database)
    try:
        records = book.all()
    finally:
        book.close()
    now = time.time()
    counts = {state: sum(1 for r in records if r.state == state) for state in RETRIEVAL_STATES}
    problems = [
        {
            "series": r.series_uid,
            "state": r.state,
            "attempts": r.attempts,
            "error": r.error,
            "time": r.updated,
            "next_try_seconds": max(0.0, r.next_attempt - now) if r.state == PENDING else None,
        }
        for r in records
        if r.error and r.state in (PENDING, FAILED)
    ]
    return {
        "pacs": describe_pacs(config),
        "counts": {k: v for k, v in counts.items() if v},
        "problems": problems[:limit],
    }
