"""Connection guard: what a TCP connection must do before, and while, it holds an association.

pynetdicom's own server does the TLS handshake in its accept loop (one silent client stops
every other from connecting), reads a PDU of whatever length its header announces into
memory, and counts connections that never sent anything against ``max_associations``.
Here each connection gets its own thread at once, and within ``acse_timeout`` of connecting
it must finish the TLS handshake and deliver one A-ASSOCIATE-RQ of at most
``MAX_ASSOCIATE_RQ`` bytes, or it is closed; only then does pynetdicom see it (so only
then does it count as an association). Afterwards every PDU header is checked against
``max_pdu`` before its body is read: a longer PDU aborts the association at once. A peer
that sends nothing for ``network_timeout`` in the middle of a PDU is closed. Each source
address may hold at most ``max_connections_per_ip`` connections, associated or not.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ as AssociateRequest
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from medseg.dicom.files import UNREADABLE, reason_of
from medseg.server.commands import CheckedDimse

logger = logging.getLogger(__name__)

MAX_ASSOCIATE_RQ = 1 << 20  # bytes; 128 presentation contexts of 40 transfer syntaxes fit
A_ASSOCIATE_RQ, P_DATA_TF = 0x01, 0x04
_HEADER = struct.Struct(">BxL")  # PDU type, reserved, length of the rest (PS3.8 9.3)
# A-ABORT PDUs (PS3.8 9.3.8): source 2 = service provider; reason 2 = unexpected PDU,
# reason 6 = invalid PDU parameter value (here: a length over the limit).
ABORT_UNEXPECTED = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 2])
ABORT_INVALID = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits one connection lives under (from ``[listener]``)."""

    max_pdu: int  # longest P-DATA-TF body we accept; 0 = no limit
    acse_timeout: float  # seconds from connect to a complete A-ASSOCIATE-RQ (TLS included)
    network_timeout: float  # seconds without a byte in the middle of a PDU
    max_connections_per_ip: int  # 0 = no limit

    def pdu_limit(self, pdu_type: int) -> int | None:
        """Longest body allowed for a PDU of ``pdu_type`` once associated (None: any)."""
        if pdu_type == P_DATA_TF:
            return self.max_pdu or None
        return MAX_ASSOCIATE_RQ  # release, abort (4 bytes) and stray association PDUs


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def read_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Exactly ``size`` bytes from ``sock`` before ``deadline`` (monotonic), however sent.

    Raises ``TimeoutError`` at the deadline (a byte every few seconds does not extend it)
    and ``ConnectionError`` when the peer closes first.
    """
    data = bytearray()
    while len(data) < size:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(min(size - len(data), 65536))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def tls_handshake(context: ssl.SSLContext, sock: socket.socket, deadline: float) -> ssl.SSLSocket:
    """The server side of a TLS handshake on ``sock``, finished before ``deadline``."""
    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        tls.setblocking(False)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                select.select([tls], [], [], _remaining(deadline))
            except ssl.SSLWantWriteError:
                select.select([], [tls], [], _remaining(deadline))
        tls.setblocking(True)
    except BaseException:
        tls.close()
        raise
    return tls


# What the most common refusals mean, for the one log line each gets.
_TLS_HINTS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
    "CERTIFICATE_VERIFY_FAILED": "the client's certificate is not from our CA, or expired",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust our certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client does not accept our certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client does not accept our certificate",
    "WRONG_VERSION_NUMBER": "not TLS (a client without TLS?)",
    "HTTP_REQUEST": "not TLS (an HTTP request)",
    "UNKNOWN_PROTOCOL": "not TLS",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (1.2 is the minimum)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (1.2 is the minimum)",
    "NO_SHARED_CIPHER": "no cipher in common",
}


def tls_refusal(exc: BaseException) -> str:
    """Why a handshake failed, in one line: OpenSSL's reason code and what it means.

    Only the reason: never the certificate's subject or anything else the peer sent.
    """
    reason = getattr(exc, "reason", None) if isinstance(exc, ssl.SSLError) else None
    if reason:
        hint = _TLS_HINTS.get(str(reason))
        return f"{hint} ({reason})" if hint else str(reason)
    return " ".join(str(exc).split()) or type(exc).__name__


def _closed_before_a_byte(sock: socket.socket, deadline: float) -> bool:
    """Wait for the peer's first byte; True when it closed without sending one.

    Port checks and load balancers connect and close: not a refused handshake.
    """
    sock.settimeout(_remaining(deadline))
    return sock.recv(1, socket.MSG_PEEK) == b""


def _close(sock: socket.socket, farewell: bytes = b"") -> None:
    """Best-effort goodbye (an A-ABORT) and close; the peer may already be gone."""
    try:
        if farewell:
            sock.settimeout(1.0)
            sock.sendall(farewell)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def associate_rq_problem(data: bytes) -> str | None:
    """Why an A-ASSOCIATE-RQ (header and body) cannot be used, or None when it decodes.

    pynetdicom decodes it in the association's reactor thread; some malformed ones (an even
    presentation context ID: found by ``benchmarks/fuzz_dicom.py``) raised there, killing
    the thread with a traceback and no answer, others held an association slot until the
    ACSE timeout. Decoded here first, such a request is aborted before it is an association.
    """
    try:
        request = AssociateRequest()
        request.decode(data)
        request.to_primitive()
    except (*UNREADABLE, AssertionError) as exc:  # pynetdicom asserts on item lengths
        return reason_of(exc)
    return None


@dataclass(frozen=True)
class Admitted:
    """A connection that delivered its A-ASSOCIATE-RQ in time: the socket and the PDU."""

    sock: socket.socket
    request: bytes


class GuardedSocket(AssociationSocket):
    """pynetdicom's socket, fed the A-ASSOCIATE-RQ read by the guard and checking PDU sizes.

    pynetdicom's DUL reads each PDU as ``recv(6)`` (the header) then ``recv(length)``; the
    header is checked here before the body is asked for.
    """

    def __init__(
        self, assoc: Association, sock: socket.socket, request: bytes, limits: ConnectionLimits
    ) -> None:
        super().__init__(assoc, client_socket=sock)
        self._pending = bytearray(request)
        self._limits = limits
        self._body_left = 0  # bytes of the current PDU's body still to be read
        self._peer = _peer_name(sock)

    @property
    def ready(self) -> bool:
        return bool(self._pending) or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes <= 0:
            return bytearray()
        if self._pending:
            data = self._pending[:nr_bytes]
            del self._pending[:nr_bytes]
            return data
        data = self._read(nr_bytes)
        if self._body_left:
            self._body_left -= len(data)
        elif len(data) == _HEADER.size:
            pdu_type, length = _HEADER.unpack(data)
            limit = self._limits.pdu_limit(pdu_type)
            if limit is not None and length > limit:
                logger.warning(
                    "aborted the association with %s: a PDU of type 0x%02X announces %d bytes,"
                    " more than the limit of %d",
                    self._peer,
                    pdu_type,
                    length,
                    limit,
                )
                self._abort()
                return bytearray()  # a short header: pynetdicom sees the connection closed
            self._body_left = length
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        """Up to ``nr_bytes``: short when the peer closes or sends nothing for a while."""
        sock = self.socket
        data = bytearray()
        if sock is None:
            return data
        try:
            sock.settimeout(self._limits.network_timeout)
            while len(data) < nr_bytes:
                chunk = sock.recv(min(nr_bytes - len(data), 65536))
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            logger.warning(
                "closed the connection from %s: nothing received for %.0f s within a PDU",
                self._peer,
                self._limits.network_timeout,
            )
        except OSError as exc:
            logger.info("connection from %s lost: %s", self._peer, exc)
        return data

    def _abort(self) -> None:
        sock = self.socket
        if sock is None:
            return
        try:
            sock.settimeout(1.0)
            sock.sendall(ABORT_INVALID)
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _peer_name(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "a peer"


class GuardedHandler(RequestHandler):
    """Hands an admitted connection to a pynetdicom acceptor ``Association``."""

    server: GuardedServer
    assoc: Association

    def _create_association(self) -> Association:
        admitted: Admitted = self.request  # type: ignore[assignment]
        server = self.server
        assoc = Association(self.ae, MODE_ACCEPTOR)
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"  # counted by pynetdicom
        assoc.dimse = CheckedDimse(assoc)
        assoc.set_socket(GuardedSocket(assoc, admitted.sock, admitted.request, server.limits))
        acceptor = assoc.acceptor
        acceptor.maximum_length = self.ae.maximum_pdu_size
        acceptor.ae_title = server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = self.ae.implementation_class_uid
        acceptor.implementation_version_name = self.ae.implementation_version_name
        acceptor.supported_contexts = deepcopy(server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in server._handlers.items():
            if event.is_intervention:
                if handlers:
                    assoc.bind(event, *handlers)
            else:
                for handler, args in handlers:  # type: ignore[misc]
                    assoc.bind(event, handler, args)
        self.assoc = assoc
        return assoc


class _PerAddress:
    """Counts open connections per source address; refuses one over the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, address: str) -> bool:
        with self._lock:
            count = self._open.get(address, 0)
            if self.limit and count >= self.limit:
                return False
            self._open[address] = count + 1
            return True

    def release(self, address: str) -> None:
        with self._lock:
            count = self._open.get(address, 0) - 1
            if count > 0:
                self._open[address] = count
            else:
                self._open.pop(address, None)


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the guard in front of every association."""

    daemon_threads = True
    block_on_close = False  # shutdown stops listening at once; associations end on their own

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        self.limits = limits
        self._per_address = _PerAddress(limits.max_connections_per_ip)
        super().__init__(*args, request_handler=GuardedHandler, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only: TLS and everything else happen in the connection's own thread."""
        return cast(socket.socket, self.socket).accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self._per_address.acquire(client_address[0]):
            return True
        logger.warning(
            "refused a connection from %s: it already holds %d (listener.max_connections_per_ip)",
            client_address[0],
            self.limits.max_connections_per_ip,
        )
        return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            admitted = self._admit(request, client_address)
            if admitted is not None:
                handler = GuardedHandler(admitted, client_address, self)
                handler.assoc.join()
                _close(admitted.sock)
        except Exception:
            logger.exception("connection from %s failed", client_address[0])
            _close(request)
        finally:
            self._per_address.release(client_address[0])

    def _admit(self, sock: socket.socket, client_address: Any) -> Admitted | None:
        """TLS handshake and one bounded A-ASSOCIATE-RQ within ``acse_timeout``, else None."""
        peer = f"{client_address[0]}:{client_address[1]}"
        deadline = time.monotonic() + self.limits.acse_timeout
        try:
            # Small C-STORE responses must not wait for Nagle + delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                if _closed_before_a_byte(sock, deadline):
                    raise ConnectionError("closed before the TLS handshake")
                try:
                    sock = tls_handshake(self.ssl_context, sock, deadline)
                except (ssl.SSLError, ConnectionError) as exc:
                    # One line per refusal at the default level: an administrator sees a
                    # PACS whose certificate or TLS settings are wrong without -v.
                    logger.warning("refused a TLS handshake from %s: %s", peer, tls_refusal(exc))
                    _close(sock)
                    return None
            header = read_exact(sock, _HEADER.size, deadline)
            pdu_type, length = _HEADER.unpack(header)
            if pdu_type != A_ASSOCIATE_RQ:
                logger.warning(
                    "closed the connection from %s: PDU type 0x%02X before an A-ASSOCIATE-RQ",
                    peer,
                    pdu_type,
                )
                _close(sock, ABORT_UNEXPECTED)
                return None
            if length > MAX_ASSOCIATE_RQ:
                logger.warning(
                    "closed the connection from %s: an A-ASSOCIATE-RQ of %d bytes (limit %d)",
                    peer,
                    length,
                    MAX_ASSOCIATE_RQ,
                )
                _close(sock, ABORT_INVALID)
                return None
            body = read_exact(sock, length, deadline)
            problem = associate_rq_problem(header + body)
            if problem is not None:
                logger.warning(
                    "closed the connection from %s: an A-ASSOCIATE-RQ that does not decode: %s",
                    peer,
                    problem,
                )
                _close(sock, ABORT_INVALID)
                return None
        except TimeoutError:
            logger.warning(
                "closed the connection from %s: no association request within %.0f s"
                " (listener.acse_timeout)",
                peer,
                self.limits.acse_timeout,
            )
            _close(sock)
            return None
        except ConnectionError as exc:  # port checks and scanners: not worth a warning
            logger.info("connection from %s closed before association: %s", peer, exc)
            _close(sock)
            return None
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            logger.warning("closed the connection from %s before association: %s", peer, exc)
            _close(sock)
            return None
        sock.settimeout(self.limits.network_timeout)
        return Admitted(sock, header + body)
