"""Delivery: the outbox sends each job's result files to each destination until confirmed.

A delivery is retried with exponential backoff (``initial * 2**(attempts-1)`` up to the
maximum) and given up after ``give_up_after_hours`` (then it shows as undeliverable in
``medseg status``); a peer that refuses it for good (``permanent_status``: 0xCxxx,
0xA9xx, ...) is given up after ``permanent_failure_tries`` attempts instead. Sends run on
a small thread pool, one at a time per peer, so a destination that hangs until its timeout
never holds up deliveries to others. 0x0111 (duplicate SOP instance) from a peer means it
already has the file: delivered. Each (destination, file) of a job is one delivery (a prompt
job sends its SEG and its measurement report), claimed, retried and recorded on its own.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from medseg.errors import MedsegError
from medseg.server.config import DeliveryConfig
from medseg.server.jobs import (
    DELIVERED,
    DELIVERING,
    PENDING,
    SEG_FILE,
    UNDELIVERABLE,
    Delivery,
    Job,
    JobBook,
)

logger = logging.getLogger(__name__)

OK_STATUSES = {0x0000, 0x0111, 0xB000, 0xB007, 0xB006}


class DeliveryError(MedsegError):
    """A destination did not take a result (unreachable, rejected, or a failure status).

    ``permanent``: the peer understood and refused (trying again later will not help)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def permanent_status(status: int) -> bool:
    """C-STORE failures that a retry cannot cure: 0xCxxx (cannot understand), 0xA9xx
        (data set does not match the SOP class), 0x0122 (SOP class not supported), 0x0124 (not
        authorised). Out of resources (0xA7xx) and anything else may pass later. A peer that
    accepts no presentation context for the file's SOP class refuses it the same way."""
    return (status & 0xF000) == 0xC000 or (status & 0xFF00) == 0xA900 or status in (0x0122, 0x0124)


def send_file(
    path: Path,
    delivery: Delivery,
    *,
    calling_ae: str,
    timeout: float,
    tls_context: ssl.SSLContext | None = None,
) -> int:
    """C-STORE one DICOM file to ``delivery``'s address; returns the peer's status.

    The presentation context asked for is the file's own SOP class (a SEG, an SR), with its
    transfer syntax first.
    """
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError) as exc:
        raise DeliveryError(f"{delivery.label}: cannot read {path.name}: {exc}") from exc
    sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
    if not sop_class:
        raise DeliveryError(f"{delivery.label}: {path.name} names no SOP class")
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
    own = meta.get("TransferSyntaxUID")
    if own and own not in syntaxes:
        syntaxes.insert(0, own)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.add_requested_context(sop_class, syntaxes)
    # Verification too, so that a peer that stores no such object still associates and the
    # refusal is told apart from a peer that is down (pynetdicom aborts with no context).
    ae.add_requested_context(Verification)
    if delivery.tls and tls_context is None:
        raise DeliveryError(f"{delivery.name}: TLS destination but no TLS client context")
    tls_args = (tls_context, delivery.host) if delivery.tls else None
    assoc = ae.associate(
        delivery.host, delivery.port, ae_title=delivery.ae_title, tls_args=tls_args
    )
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "unreachable or aborted"
        raise DeliveryError(
            f"{delivery.ae_title}@{delivery.host}:{delivery.port}: association {reason}"
        )
    if not any(c.abstract_syntax == sop_class for c in assoc.accepted_contexts):
        assoc.release()  # the peer does not store this kind of object (e.g. no SR): refused
        raise DeliveryError(
            f"{delivery.ae_title}: does not accept {pydicom.uid.UID(sop_class).name}",
            permanent=True,
        )
    try:
        response = assoc.send_c_store(path)
    finally:
        assoc.release()
    status = getattr(response, "Status", None)
    if status is None:
        raise DeliveryError(f"{delivery.ae_title}: no response to C-STORE (timeout or abort)")
    if int(status) not in OK_STATUSES:
        raise DeliveryError(
            f"{delivery.ae_title}: C-STORE failed with status 0x{status:04X}",
            permanent=permanent_status(int(status)),
        )
    return int(status)


class Sender:
    """Sends due deliveries of all delivering jobs; call ``run_once`` periodically."""

    def __init__(
        self,
        book: JobBook,
        config: DeliveryConfig,
        *,
        calling_ae: str,
        tls_context: ssl.SSLContext | None = None,
        threads: int = 4,
    ) -> None:
        self.book = book
        self.config = config
        self.calling_ae = config.calling_ae_title or calling_ae
        self.tls_context = tls_context
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="medseg-send")
        self._in_flight: set[tuple[str, str, str]] = set()
        self._busy_peers: set[tuple[str, int, str]] = set()
        self._lock = threading.Lock()
        # Told (destination, delivered?) after every attempt (the web side's metrics).
        self.on_attempt: Callable[[str, bool], None] | None = None

    def backoff(self, attempts: int) -> float:
        delay = self.config.initial_backoff_seconds * 2 ** max(0, attempts - 1)
        return min(delay, self.config.max_backoff_seconds)

    def run_once(self, now: float | None = None) -> int:
        """Start every due delivery not already in flight; returns how many started."""
        now = time.time() if now is None else now
        started = 0
        for job in self.book.store.jobs((DELIVERING,)):
            for delivery in job.pending:
                key = (job.id, delivery.name, delivery.file)
                peer = (delivery.host, delivery.port, delivery.ae_title)
                with self._lock:
                    # One send at a time per peer: a peer that hangs until the timeout
                    # occupies one thread, never the whole pool.
                    if delivery.next_attempt > now or key in self._in_flight:
                        continue
                    if peer in self._busy_peers:
                        continue
                    self._in_flight.add(key)
                    self._busy_peers.add(peer)
                self._pool.submit(self._attempt, job, delivery)
                started += 1
        return started

    def _attempt(self, job: Job, delivery: Delivery) -> None:
        try:
            path = Path(job.output).parent / delivery.file
            self.deliver(job.id, delivery.name, path, job.created, file=delivery.file)
        except Exception:  # a bug must not kill the pool thread silently
            logger.exception("delivery of job %s to %s crashed", job.id, delivery.label)
        finally:
            with self._lock:
                self._in_flight.discard((job.id, delivery.name, delivery.file))
                self._busy_peers.discard((delivery.host, delivery.port, delivery.ae_title))

    def lease_seconds(self) -> float:
        """How long a claimed delivery is ours: longer than one send can take.

        A send waits at most for the connection, the association, the C-STORE response and
        the release, each bounded by ``timeout_seconds``; the margin covers the rest.
        """
        return 4 * self.config.timeout_seconds + 30.0

    def claim(
        self, job_id: str, name: str, now: float | None = None, file: str = SEG_FILE
    ) -> Job | None:
        """Take one delivery for sending, or None when it is not due or another sender has it.

        One compare-and-swap on the job record, so of several senders (the listener's and
        every worker's, in Redis mode) that saw the same pending delivery exactly one wins:
        it must be pending *and* due, and the claim moves ``next_attempt`` past the lease,
        so a sender that read the job list before the claim finds it no longer due. If the
        sender dies mid-send, the lease expires and another one retries (0x0111 or a second
        identical SEG instance at the peer: the same SOP Instance UID).
        """
        t = time.time() if now is None else now

        def change(d: Delivery) -> Delivery | None:
            if d.state != PENDING or d.next_attempt > t:
                return None
            return dataclasses.replace(
                d,
                attempts=d.attempts + 1,
                next_attempt=t + max(self.backoff(d.attempts + 1), self.lease_seconds()),
            )

        return self.book.update_delivery(job_id, name, change, file)

    def deliver(
        self, job_id: str, name: str, output: Path, created: float, file: str = SEG_FILE
    ) -> bool:
        """One attempt to send ``output`` (the job's ``file``) to destination ``name``;
        records the outcome on the job. True when delivered."""
        claimed = self.claim(job_id, name, file=file)
        if claimed is None:
            return False
        delivery = next(d for d in claimed.deliveries if (d.name, d.file) == (name, file))
        try:
            status = send_file(
                output,
                delivery,
                calling_ae=self.calling_ae,
                timeout=self.config.timeout_seconds,
                tls_context=self.tls_context,
            )
        except (DeliveryError, OSError, RuntimeError) as exc:
            if self.on_attempt is not None:
                self.on_attempt(name, False)
            error = str(exc)
            refused = getattr(exc, "permanent", False)
            give_up = (refused and delivery.attempts >= self.config.permanent_failure_tries) or (
                self.config.give_up_after_hours > 0
                and time.time() - created > self.config.give_up_after_hours * 3600
            )
            state = UNDELIVERABLE if give_up else PENDING
            retry_at = time.time() + self.backoff(delivery.attempts)
            self.book.update_delivery(
                job_id,
                name,
                lambda d: dataclasses.replace(d, error=error, state=state, next_attempt=retry_at),
                file,
            )
            logger.warning(
                "job %s: delivery to %s failed (attempt %d%s): %s",
                job_id,
                delivery.label,
                delivery.attempts,
                (", refused: giving up" if refused else ", giving up")
                if give_up
                else f", retry in {self.backoff(delivery.attempts):.0f} s",
                error,
            )
            return False
        if self.on_attempt is not None:
            self.on_attempt(name, True)
        self.book.update_delivery(
            job_id, name, lambda d: dataclasses.replace(d, state=DELIVERED, error=""), file
        )
        what = "SEG" if file == SEG_FILE else file
        logger.info("job %s: %s delivered to %s (status 0x%04X)", job_id, what, name, status)
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
