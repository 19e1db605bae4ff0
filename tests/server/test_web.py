"""The web side of ``medseg serve`` over 127.0.0.1: ``/api/``, ``/metrics``, the dashboard,
authentication beyond loopback and CSRF on the POST actions."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path

import pytest
import skimage.io
from prometheus_client.parser import text_string_to_metric_families

from medseg.errors import ConfigError
from medseg.server.config import WebConfig, parse_config
from medseg.server.jobs import DONE, FAILED, QUEUED, Job
from medseg.server.service import Service
from medseg.server.web.passwords import check_password, hash_password
from tests.server.peers import (
    REPO_ROOT,
    Processes,
    free_port,
    log_text,
    port_open,
    wait_until,
)
from tests.server.test_serve import serve
from tests.server.test_tls import pki  # noqa: F401 - the test CA fixture

TOKEN = "s3cret-test-token"
TOKEN_SHA256 = hashlib.sha256(TOKEN.encode()).hexdigest()


def http(
    method: str, url: str, *, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, Message, bytes]:
    """One request; 4xx/5xx answers are returned, not raised (headers: case-insensitive)."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def get_json(url: str, **kw: object) -> dict:
    status, _, body = http("GET", url, **kw)  # type: ignore[arg-type]
    assert status == 200, body
    return json.loads(body)


def metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus_client's own text parser."""
    status, headers, body = http("GET", f"{base}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def sample(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def _serve_and_demo(
    procs: Processes, server_config: Callable
) -> tuple[subprocess.Popen, str, int, dict]:
    """``medseg serve`` with its web side, then ``medseg demo`` until its job is done:
    (the serve process, the web side's URL, instances sent, /metrics before the demo)."""
    back, web = free_port(), free_port()
    peer = {"ae_title": "MEDSEG-DEMO", "addresses": ["127.0.0.1"], "return_port": back}
    path, config = server_config(peers=[peer], web={"port": web, "refresh_seconds": 1.0})
    proc = serve(procs, path, config)
    base = f"http://127.0.0.1:{web}"
    wait_until(lambda: port_open(web) or proc.poll() is not None, 30, "the web side")
    before = metrics(base)
    args = [sys.executable, "-m", "medseg", "demo", "--port", str(config.listener.port)]
    args += ["--receive-port", str(back), "--timeout", "120"]
    demo = subprocess.run(args, capture_output=True, text=True, cwd=REPO_ROOT, timeout=180)
    assert demo.returncode == 0, demo.stderr + log_text(proc)
    found = re.search(r"sent\s+(\d+) CT instances", demo.stdout)
    assert found is not None, demo.stdout
    wait_until(
        lambda: get_json(f"{base}/api/")["status"]["jobs"][DONE] == 1,
        60,
        "the demo job done in /api/",
    )
    return proc, base, int(found.group(1)), before


@pytest.mark.slow
def test_api_metrics_dashboard_and_files_after_a_demo_job(
    procs: Processes, server_config: Callable
) -> None:
    proc, base, sent, before = _serve_and_demo(procs, server_config)
    assert sample(before, "medseg_instances_received_total") == 0
    assert sample(before, "medseg_spool_free_bytes") > 0
    data = get_json(f"{base}/api/")
    assert data["status"]["queue_depth"] == 0
    (job,) = data["jobs"]
    assert job["state"] == DONE and job["error"] == ""
    assert job["modality"] == "CT" and job["series_description"]
    assert job["slices"] == sent == job["instances"]
    assert job["timings"]["infer"] > 0 and job["timings"]["preview"] > 0
    assert job["volume_ml"] > 0, "seed 1's phantom has a lesion"
    assert [d["state"] for d in job["deliveries"]] == ["delivered"]
    assert set(job["links"]) == {"preview.png", "seg.dcm"}
    text = json.dumps(data)
    assert "PHANTOM^" not in text and "PHANTOM-0" not in text, "patient identifiers shown"
    assert "patient" not in job

    status, headers, png = http("GET", base + job["links"]["preview.png"])
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert png.startswith(b"\x89PNG")
    status, _, seg = http("GET", base + job["links"]["seg.dcm"])
    assert status == 200 and seg[128:132] == b"DICM"
    assert http("GET", f"{base}/jobs/{job['id']}/../../medseg.db")[0] == 404
    assert http("GET", f"{base}/jobs/1.2.3/seg.dcm")[0] == 404

    status, _, page = http("GET", f"{base}/")
    html = page.decode()
    assert status == 200 and f'data-job="{job["id"]}"' in html
    assert f'src="/jobs/{job["id"]}/preview.png"' in html
    assert '<script src="/static/dashboard.js"></script>' in html
    assert "https://" not in html and "http://" not in html, "nothing from outside"
    assert http("GET", f"{base}/static/dashboard.js")[0] == 200

    after = metrics(base)
    assert sample(after, "medseg_instances_received_total") == sent
    assert sample(after, "medseg_received_bytes_total") > sent * 1000
    assert sample(after, "medseg_dimse_responses_total", service="C-STORE", status="0x0000") == sent
    assert sample(after, "medseg_series_completed_total", outcome="submitted") == 1
    assert sample(after, "medseg_job_duration_seconds_count") == 1
    assert sample(after, "medseg_stage_duration_seconds_count", stage="infer") == 1
    assert sample(after, "medseg_delivery_attempts_total", destination="caller") == 1
    assert sample(after, "medseg_delivery_failures_total", destination="caller") == 0
    assert sample(after, "medseg_jobs", state=DONE) == 1
    assert sample(after, "medseg_queue_depth") == 0

    # The POST actions: without the page's CSRF token refused, with it applied (a done job
    # cannot be retried: 409), and logged.
    retry = f"{base}/jobs/{job['id']}/retry"
    assert http("POST", retry, data=b"")[0] == 403
    assert http("POST", retry, data=b"csrf=forged")[0] == 403
    token = data["csrf_token"]
    evil = {"X-CSRF-Token": token, "Origin": "http://evil.example"}
    assert http("POST", retry, headers=evil, data=b"")[0] == 403
    assert http("POST", retry, headers={"X-CSRF-Token": token}, data=b"")[0] == 409
    assert procs.stop(proc) == 0
    log = log_text(proc)
    assert "refused a /jobs/" in log and "web side on http://127.0.0.1" in log
    assert "PHANTOM^" not in log


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Set to a folder to keep the browser's screenshot (docs/images/dashboard.png is one).
SCREENSHOTS = os.environ.get("MEDSEG_SCREENSHOTS", "")


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Headless chromium (no sandbox: tests may run as root), its own throwaway profile."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu"]
        command += ["--no-first-run", f"--user-data-dir={profile}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_dashboard_in_a_headless_browser_shows_the_finished_job_and_its_preview(
    procs: Processes, server_config: Callable, tmp_path: Path
) -> None:
    proc, base, _, _ = _serve_and_demo(procs, server_config)
    (job,) = get_json(f"{base}/api/")["jobs"]
    # Virtual time lets the page's 1 s refresh run a few times before the DOM is dumped.
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", f"{base}/").stdout
    row = re.search(rf'<tr class="job state-done" data-job="{re.escape(job["id"])}">.*?</tr>', dom)
    assert row is not None, dom[:3000]
    assert f'src="/jobs/{job["id"]}/preview.png"' in row.group(0)
    assert f'href="/jobs/{job["id"]}/seg.dcm"' in row.group(0)
    assert re.search(r'data-refreshed="[1-9]', dom), "the page never refreshed from /api/"
    assert "refresh failed" not in dom
    shot = tmp_path / "dashboard.png"
    result = chromium(
        "--window-size=1500,700", "--hide-scrollbars", f"--screenshot={shot}", f"{base}/"
    )
    assert shot.is_file(), result.stderr
    image = skimage.io.imread(shot)
    assert image.shape[:2] == (700, 1500) and image.std() > 10, "a blank screenshot"
    if SCREENSHOTS:
        shutil.copy(shot, Path(SCREENSHOTS) / "dashboard.png")
    assert procs.stop(proc) == 0


def _queued_job(service: Service, uid: str) -> Job:
    job = Job(id=uid, series_uid="1.2.3.4", study_uid="1.2.3", rule="all")
    service.book.create(job)
    return job


def test_cancel_and_retry_from_the_dashboard_need_the_csrf_token(
    running: Callable[..., Service], server_config: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    _, config = server_config()
    service = running(config, workers=0)
    base = f"http://127.0.0.1:{service.web.port}"
    job = _queued_job(service, "2.25.1234")
    cancel = f"{base}/jobs/{job.id}/cancel"
    assert http("POST", cancel, data=b"")[0] == 403
    assert service.book.store.get(job.id).state == QUEUED
    token = get_json(f"{base}/api/")["csrf_token"]
    with caplog.at_level("INFO", logger="medseg"):
        status, _, body = http("POST", cancel, data=f"csrf={token}".encode())
        assert status == 200, body
        assert service.book.store.get(job.id).state == FAILED
        assert "cancelled from the dashboard" in service.book.store.get(job.id).error
        # A browser's form post gets the dashboard back; the failed job is retried.
        status, _, _ = http(
            "POST", f"{base}/jobs/{job.id}/retry", headers={"X-CSRF-Token": token}, data=b""
        )
        assert status == 200
    assert service.book.store.get(job.id).state == QUEUED
    assert "cancelled queued job 2.25.1234" in caplog.text
    assert "retried failed job 2.25.1234" in caplog.text
    # cancelling again is fine, a second cancel of a failed job is a conflict
    assert http("POST", cancel, headers={"X-CSRF-Token": token}, data=b"")[0] == 200
    assert http("POST", cancel, headers={"X-CSRF-Token": token}, data=b"")[0] == 409


def test_web_beyond_loopback_without_authentication_refuses_to_start(
    server_config: Callable,
) -> None:
    path, _ = server_config(web={"port": free_port()})
    text = path.read_text().replace("[web]\n", '[web]\nhost = "0.0.0.0"\n', 1)
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "medseg", "serve", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "web.host: '0.0.0.0' is reachable beyond this machine" in err


def test_web_beyond_loopback_requires_a_token_or_password(
    running: Callable[..., Service], server_config: Callable
) -> None:
    user = f"admin:{hash_password('correct horse', iterations=1000)}"
    _, config = server_config(
        web={"host": "0.0.0.0", "port": 0, "tokens_sha256": [TOKEN_SHA256], "users": [user]}
    )
    service = running(config, workers=0)
    base = f"http://127.0.0.1:{service.web.port}"
    for url in (f"{base}/", f"{base}/api/", f"{base}/metrics", f"{base}/static/dashboard.js"):
        status, headers, _ = http("GET", url)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert http("GET", url, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert http("GET", f"{base}/api/", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    good = base64.b64encode(b"admin:correct horse").decode()
    bad = base64.b64encode(b"admin:wrong").decode()
    assert http("GET", f"{base}/metrics", headers={"Authorization": f"Basic {good}"})[0] == 200
    assert http("GET", f"{base}/metrics", headers={"Authorization": f"Basic {bad}"})[0] == 401
    # a POST is still refused without the CSRF token, even when authenticated
    job = _queued_job(service, "2.25.99")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert http("POST", f"{base}/jobs/{job.id}/cancel", headers=auth, data=b"")[0] == 403


def test_two_services_keep_their_own_metrics(
    running: Callable[..., Service], server_config: Callable
) -> None:
    first = running(server_config(name="a.toml")[1], workers=0)
    second = running(server_config(name="b.toml")[1], workers=0)
    first.web.metrics.instances.inc(3)
    one = metrics(f"http://127.0.0.1:{first.web.port}")
    two = metrics(f"http://127.0.0.1:{second.web.port}")
    assert sample(one, "medseg_instances_received_total") == 3
    assert sample(two, "medseg_instances_received_total") == 0


@pytest.mark.parametrize(
    ("web", "words"),
    [
        ({"port": 70000}, "web.port: must be 0..65535"),
        ({"host": "10.0.0.5"}, "web.host: '10.0.0.5' is reachable beyond this machine"),
        ({"tokens_sha256": ["abc"]}, "web.tokens_sha256[0]: must be the 64 hex digits"),
        ({"users": ["admin:plaintext"]}, "web.users[0]: must be 'name:pbkdf2_sha256$"),
        ({"tls": True}, "web.tls: needs tls.certificate and tls.private_key"),
        ({"refresh_seconds": 0}, "web.refresh_seconds: must be positive"),
        ({"max_stow_mb": 0}, "web.max_stow_mb: must be 1..16384"),
        ({"max_stow_mb": "big"}, "web.max_stow_mb"),
        ({"stow_stall_seconds": 0}, "web.stow_stall_seconds: must be positive"),
        ({"colour": "red"}, "web.colour: unknown key"),
    ],
)
def test_web_configuration_is_checked_at_start(web: dict, words: str) -> None:
    data = {"peers": [{"ae_title": "PACS"}], "web": web}
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert words in str(raised.value)


def test_web_defaults_and_allowed_settings() -> None:
    default = parse_config({"peers": [{"ae_title": "PACS"}]}).web
    assert (default.enabled, default.host, default.port) == (True, "127.0.0.1", 11180)
    assert not default.authenticated and not default.show_patient
    assert WebConfig(host="0.0.0.0", tokens_sha256=(TOKEN_SHA256,)).authenticated
    assert WebConfig(host="::1").host == "::1"  # loopback: no credentials needed
    assert not WebConfig(enabled=False, host="0.0.0.0").enabled


def test_password_hashes_check_only_the_right_password() -> None:
    stored = hash_password("pw", iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert check_password("pw", stored) and not check_password("pW", stored)
    assert not check_password("pw", "pbkdf2_sha256$x$y$z")


def test_web_port_in_use_stops_the_service_at_start_with_one_error(server_config: Callable) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        path, config = server_config(web={"port": taken.getsockname()[1]})
        result = subprocess.run(
            [sys.executable, "-m", "medseg", "serve", "-c", str(path)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
        )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "web: cannot listen on 127.0.0.1:" in errors[0], errors
    assert not port_open(config.listener.port), "the DICOM listener must not have started"


def test_web_tls_serves_https_with_the_dicom_certificate_and_shows_patients_when_asked(
    pki: Path,  # noqa: F811 - the fixture imported above
    running: Callable[..., Service],
    server_config: Callable,
) -> None:
    tls = {"certificate": str(pki / "server.pem"), "private_key": str(pki / "server.key")}
    _, config = server_config(tls=tls, web={"port": 0, "tls": True, "show_patient": True})
    service = running(config, workers=0)
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    url = f"https://127.0.0.1:{service.web.port}/api/"
    with urllib.request.urlopen(url, context=context, timeout=30) as response:
        data = json.loads(response.read())
    assert data["show_patient"] is True and data["jobs"] == []
    with pytest.raises(OSError):  # plain HTTP on the HTTPS port: closed, no answer
        urllib.request.urlopen(url.replace("https", "http"), timeout=10)
