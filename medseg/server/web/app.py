"""The ASGI application: routes, authentication in front of every one, CSRF on POSTs.

Endpoints are plain functions (Starlette runs them in its thread pool): they read SQLite
and files, which would block an event loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
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
from medseg.server.ingest import InstanceStore, Sender
from medseg.server.jobs import SEG_FILE, JobBook
from medseg.server.spool import Spool
from medseg.server.uids import UnsafeUidError, checked_uid
from medseg.server.web.api import RESULT_FILES, Patients, snapshot
from medseg.server.web.auth import Authenticator, Identity
from medseg.server.web.metrics import ServiceMetrics
from medseg.server.web.pages import render_dashboard
from medseg.server.web.stow import (
    RESPONSE_MEDIA,
    PartOutcome,
    StowRequestError,
    boundary_of,
    http_status,
    split_parts,
    store_part,
    stow_response,
)

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class WebBackend:
    """What the web side needs of the service: its configuration, spool, job book, a way
    to enqueue a job and to wake the sender, its metrics, and the instance store that
    STOW-RS shares with the DICOM listener (None: STOW-RS answers 503)."""

    config: ServerConfig
    spool: Spool
    book: JobBook
    enqueue: Callable[[str], None]
    wake: Callable[[], None]
    metrics: ServiceMetrics
    instances: InstanceStore | None = None


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
    stow_budget = BodyBudget(config.web.max_stow_mb << 20, backend.metrics.stow_bytes.set)

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

    async def stow(request: Request) -> Response:
        """STOW-RS: store the instances of a multipart/related body (``stow.py``)."""
        if not _same_origin(request):
            logger.warning("web: refused a STOW-RS request from another site")
            return PlainTextResponse("cross-site request refused\n", status_code=403)
        instances = backend.instances
        if instances is None:
            return PlainTextResponse("this service does not store instances\n", status_code=503)
        study = request.path_params.get("study", "")
        try:
            if study:
                study = checked_uid(study, "study")
            boundary = boundary_of(request.headers.get("content-type", ""))
            body = await _read_body(request, stow_budget, config.web.stow_stall_seconds)
        except UnsafeUidError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        except StowRequestError as exc:
            logger.warning("web: refused a STOW-RS request: %s", exc)
            return _refusal(exc)
        client = request.client.host if request.client else ""
        sender = Sender("", client)
        try:
            results = await _run(
                _store_all, instances, backend.metrics, body, boundary, sender, study
            )
        except StowRequestError as exc:
            logger.warning("web: refused a STOW-RS request: %s", exc)
            return _refusal(exc)
        finally:
            stow_budget.give(len(body))
        host = request.headers.get("host") or request.url.netloc
        base = f"{request.url.scheme}://{host}/dicomweb"
        stored = sum(1 for r in results if r.outcome.ok)
        logger.info(
            "web: STOW-RS from %s (%s): %d instances stored, %d refused",
            client,
            _identity(request).name,
            stored,
            len(results) - stored,
        )
        return JSONResponse(
            stow_response(results, base, study),
            status_code=http_status(results),
            media_type=RESPONSE_MEDIA,
        )

    routes = [
        Route("/", dashboard),
        Route("/api/", api),
        Route("/api", lambda r: RedirectResponse("/api/", status_code=308)),
        Route("/metrics", metrics),
        Route("/dicomweb/studies", stow, methods=["POST"]),
        Route("/dicomweb/studies/{study}", stow, methods=["POST"]),
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


class BodyBudget:
    """Bytes of STOW-RS bodies held in memory, all requests together, at most ``limit``
    (``[web] max_stow_mb``): many clients at once cannot exhaust memory either."""

    def __init__(self, limit: int, on_change: Callable[[int], None] = lambda held: None) -> None:
        self.limit = limit
        self.held = 0
        self.on_change = on_change  # the metrics' gauge
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            self.on_change(self.held)
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.held -= size
            self.on_change(self.held)


async def _read_body(request: Request, budget: BodyBudget, stall: float) -> bytearray:
    """The request body, each chunk taken from ``budget`` as it arrives (given back by the
    caller). Refused as soon as the body is announced or found to be larger than the
    budget's whole limit (413), when other bodies hold the rest of it (503), or when no
    byte arrives for ``stall`` seconds (408); a refused body gives back what it took."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > budget.limit:
        raise StowRequestError(413, f"body of {declared} bytes over web.max_stow_mb")
    body = bytearray()
    stream = request.stream()
    try:
        while True:
            try:
                with anyio.fail_after(stall):
                    chunk = await stream.__anext__()
            except StopAsyncIteration:
                return body
            except TimeoutError:
                raise StowRequestError(408, f"no body bytes for {stall:g} s") from None
            if len(body) + len(chunk) > budget.limit:
                raise StowRequestError(413, "body over web.max_stow_mb")
            if not budget.take(len(chunk)):
                raise StowRequestError(503, "other STOW-RS bodies fill web.max_stow_mb")
            body += chunk
    except StowRequestError:
        budget.give(len(body))
        raise


def _refusal(exc: StowRequestError) -> Response:
    headers = {"Retry-After": "10"} if exc.status == 503 else None
    return PlainTextResponse(f"{exc}\n", status_code=exc.status, headers=headers)


def _store_all(
    instances: InstanceStore,
    metrics: ServiceMetrics,
    body: bytearray,
    boundary: str,
    sender: Sender,
    study: str,
) -> list[PartOutcome]:
    """Every part checked and stored in turn (a thread: the spool's fsync blocks). The
    whole body is split first, so a malformed body stores nothing."""
    parts = list(split_parts(body, boundary))
    if not parts:
        raise StowRequestError(400, "multipart body without parts")
    results = []
    for headers, part in parts:
        result = store_part(instances, headers, part, sender, study)
        metrics.stow_answered(result.outcome.status)
        results.append(result)
    return results


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
