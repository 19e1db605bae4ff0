"""The ASGI application: routes, authentication in front of every one, CSRF on POSTs.

Endpoints are plain functions (Starlette runs them in its thread pool): they read SQLite
and files, which would block an event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from medseg.server.config import ServerConfig
from medseg.server.jobs import SEG_FILE, JobBook
from medseg.server.spool import Spool
from medseg.server.uids import UnsafeUidError, checked_uid
from medseg.server.web.api import RESULT_FILES, Patients, snapshot
from medseg.server.web.auth import Authenticator, Identity
from medseg.server.web.metrics import ServiceMetrics
from medseg.server.web.pages import render_dashboard

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class WebBackend:
    """What the web side needs of the service: its configuration, spool, job book, a way
    to enqueue a job and to wake the sender, and its metrics."""

    config: ServerConfig
    spool: Spool
    book: JobBook
    enqueue: Callable[[str], None]
    wake: Callable[[], None]
    metrics: ServiceMetrics


class RequireAuth:
    """ASGI middleware: a request without valid credentials gets 401 (before any route)."""

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        identity = self.auth.identify(headers.get(b"authorization", b"").decode("latin-1"))
        if identity is None:
            response = PlainTextResponse(
                "authentication required\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="medseg", charset="UTF-8"'},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["identity"] = identity
        await self.app(scope, receive, send)


def _identity(request: Request) -> Identity:
    return request.scope["state"]["identity"]


def _job_id(request: Request) -> str | None:
    try:
        return checked_uid(request.path_params["job"], "job id")
    except UnsafeUidError:
        return None


def build_app(backend: WebBackend) -> ASGIApp:
    """The Starlette application for one service."""
    config = backend.config
    auth = Authenticator(config.web)
    patients = Patients(backend.spool) if config.web.show_patient else None

    def dashboard(request: Request) -> Response:
        data = snapshot(config, backend.spool, patients)
        csrf = auth.csrf_token(_identity(request))
        return HTMLResponse(render_dashboard(data, csrf), headers=_NO_STORE)

    def api(request: Request) -> Response:
        data = snapshot(config, backend.spool, patients)
        data["csrf_token"] = auth.csrf_token(_identity(request))
        return JSONResponse(data, headers=_NO_STORE)

    def metrics(request: Request) -> Response:
        return Response(backend.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def result_file(request: Request) -> Response:
        job_id = _job_id(request)
        wanted = RESULT_FILES.get(request.path_params["name"])
        if job_id is None or wanted is None or backend.book.store.get(job_id) is None:
            return PlainTextResponse("not found\n", status_code=404)
        file, media_type = wanted
        path = backend.spool.job_dir(job_id) / file
        if not path.is_file():
            return PlainTextResponse("not found\n", status_code=404)
        filename = f"{job_id}.{request.path_params['name']}"
        return FileResponse(path, media_type=media_type, filename=filename)

    async def action(request: Request) -> Response:
        """POST: retry a failed job, cancel a queued one, send a result again."""
        identity = _identity(request)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        presented = request.headers.get("x-csrf-token") or form.get("csrf", [""])[0]
        if not _same_origin(request) or not auth.csrf_ok(identity, presented):
            logger.warning("web: refused a %s without a valid CSRF token", request.url.path)
            return PlainTextResponse("CSRF token missing or invalid\n", status_code=403)
        job_id = _job_id(request)
        if job_id is None:
            return PlainTextResponse("not found\n", status_code=404)
        what = request.path_params.get("what", "")
        destination = request.path_params.get("destination", "")
        file = form.get("file", [request.query_params.get("file", SEG_FILE)])[0]
        done = await _run(_act, backend, identity, job_id, what, destination, file)
        if done is None:
            return PlainTextResponse(f"job {job_id}: cannot {what} now\n", status_code=409)
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/", status_code=303)
        return JSONResponse({"job": job_id, "state": done.state})

    routes = [
        Route("/", dashboard),
        Route("/api/", api),
        Route("/api", lambda r: RedirectResponse("/api/", status_code=308)),
        Route("/metrics", metrics),
        Route("/jobs/{job}/{name}", result_file),
        Route("/jobs/{job}/{what:str}", action, methods=["POST"]),
        Route("/jobs/{job}/deliveries/{destination}/{what:str}", action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    return RequireAuth(app, auth)


_NO_STORE = {"Cache-Control": "no-store"}


def _same_origin(request: Request) -> bool:
    """A POST that names its origin must come from this host (browsers send Origin)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def _run(func: Callable[..., Any], *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(func, *args)


def _act(
    backend: WebBackend, identity: Identity, job_id: str, what: str, destination: str, file: str
) -> Any:
    """Apply one action to the job record (a CAS); log who did what. None: not applicable."""
    book = backend.book
    if destination:
        if what != "retry":
            return None
        job = book.redeliver(job_id, destination, file)
        if job is not None:
            logger.info(
                "web: %s asked to send job %s's %s to %s again",
                identity.name,
                job_id,
                file,
                destination,
            )
            backend.wake()
        return job
    if what == "retry":
        job = book.retry(job_id)
        if job is not None:
            logger.info("web: %s retried failed job %s", identity.name, job_id)
            backend.enqueue(job_id)
        return job
    if what == "cancel":
        job = book.cancel(job_id, f"cancelled from the dashboard by {identity.name}")
        if job is not None:
            logger.info("web: %s cancelled queued job %s", identity.name, job_id)
        return job
    return None
