"""uvicorn in a thread of its own, started and stopped with ``medseg serve``.

The socket is bound in the caller's thread first, so a port already in use stops the
service at start with one line (like the DICOM listener), before anything is accepted.
uvicorn installs no signal handlers outside the main thread: medseg keeps owning SIGTERM.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import uvicorn

from medseg.errors import ConfigError
from medseg.server.config import ServerConfig
from medseg.server.tls import server_context
from medseg.server.web.app import WebBackend, build_app

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise ConfigError(f"web: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def web_ssl_context(config: ServerConfig) -> ssl.SSLContext:
    """HTTPS with the DICOM TLS certificate and key (and minimum version); browsers are not
    asked for client certificates: users authenticate with a password or token."""
    context = server_context(config.tls)
    context.verify_mode = ssl.CERT_NONE
    return context


class WebServer:
    """The web side of one service: ``start()`` binds and serves, ``stop()`` ends it."""

    def __init__(self, backend: WebBackend) -> None:
        self.config = backend.config
        self.app = build_app(backend)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> None:
        web = self.config.web
        sock = _bind(web.host, web.port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        config.load()
        if web.tls:
            config.ssl = web_ssl_context(self.config)
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="medseg-web", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            self.stop()
            sock.close()
            raise ConfigError(f"web: the HTTP server did not start on {web.host}:{self.port}")
        logger.info(
            "web side on %s://%s:%d/%s",
            "https" if web.tls else "http",
            web.host,
            self.port,
            "" if web.authenticated else " (no authentication: loopback only)",
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                logger.warning("web side did not stop within %.0f s", STOP_TIMEOUT)
        self._server = None
        self._thread = None
