"""The dashboard page, rendered on the server from ``api.snapshot`` (no template engine,
no external assets: every value goes through ``html.escape``). ``static/dashboard.js``
renders the same tables again from ``/api/`` every ``refresh_seconds``.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any

from medseg.server.jobs import DELIVERED, FAILED, QUEUED


def _clock(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


def _form(action: str, label: str, csrf: str, extra: str = "") -> str:
    return (
        f'<form method="post" action="{escape(action)}">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">{extra}'
        f'<button type="submit">{escape(label)}</button></form>'
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{escape(k)} {v}" for k, v in counts.items()) or "none"


def _summary(status: dict[str, Any]) -> str:
    rows = [
        ("queue depth", str(status["queue_depth"])),
        ("jobs", _counts(status["jobs"])),
        ("series", _counts(status["series"])),
        ("marks", _counts(status.get("marks", {}).get("counts", {}))),
    ]
    return "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)


def _destinations(status: dict[str, Any]) -> str:
    out = []
    for d in status["destinations"]:
        next_try = f"in {d['next_try_seconds']:.0f} s" if d["waiting"] else ""
        out.append(
            f"<tr><td>{escape(d['destination'])}</td><td>{d['waiting']}</td>"
            f"<td>{escape(next_try)}</td><td>{d['undeliverable']}</td><td>{d['delivered']}</td>"
            f"<td>{escape(d.get('last_error', ''))}</td></tr>"
        )
    return "".join(out) or '<tr><td colspan="6">no destinations used yet</td></tr>'


def _job_row(job: dict[str, Any], csrf: str, show_patient: bool) -> str:
    timings = ", ".join(f"{k} {v:.1f}" for k, v in job["timings"].items() if v)
    links = job["links"]
    result = ""
    if "preview.png" in links:
        result += (
            f'<a href="{links["preview.png"]}"><img class="preview" alt="preview of job '
            f'{escape(job["id"])}" src="{links["preview.png"]}"></a>'
        )
    if job["volume_ml"] or job["seg_uid"]:
        result += f'<div class="volume">{job["volume_ml"]:.1f} ml</div>'
    for name, label in (("seg.dcm", "SEG"), ("report.sr.dcm", "report")):
        if name in links:
            result += f' <a class="download" href="{links[name]}" download>{label}</a>'
    actions = ""
    if job["state"] == FAILED:
        actions += _form(f"/jobs/{job['id']}/retry", "retry", csrf)
    if job["state"] == QUEUED:
        actions += _form(f"/jobs/{job['id']}/cancel", "cancel", csrf)
    deliveries = []
    for d in job["deliveries"]:
        text = f"{escape(d['destination'])} {escape(d['file'])}: {escape(d['state'])}"
        if d["error"] and d["state"] != DELIVERED:
            text += f" ({escape(d['error'])})"
            hidden = f'<input type="hidden" name="file" value="{escape(d["file"])}">'
            text += _form(
                f"/jobs/{job['id']}/deliveries/{d['destination']}/retry", "send again", csrf, hidden
            )
        deliveries.append(f"<div>{text}</div>")
    patient = ""
    if show_patient:
        p = job.get("patient", {})
        patient = f"<td>{escape(p.get('name', ''))}<br>{escape(p.get('id', ''))}</td>"
    return (
        f'<tr class="job state-{escape(job["state"])}" data-job="{escape(job["id"])}">'
        f"<td>{escape(_clock(job['created']))}</td>{patient}"
        f'<td class="state">{escape(job["state"])}</td>'
        f"<td>{escape(job['series_description'])}<br><small>{escape(job['series'])}</small></td>"
        f"<td>{escape(job['modality'])}</td><td>{job['slices'] or job['instances']}</td>"
        f"<td>{escape(job['rule'])}</td><td>{escape(timings)}</td>"
        f'<td class="error">{escape(job["error"])}</td>'
        f"<td>{''.join(deliveries)}</td><td>{result}</td><td>{actions}</td></tr>"
    )


def render_dashboard(data: dict[str, Any], csrf: str) -> str:
    """The whole page; ``data`` is ``api.snapshot``'s dictionary."""
    status = data["status"]
    show_patient = data["show_patient"]
    rows = "".join(_job_row(job, csrf, show_patient) for job in data["jobs"])
    patient_head = "<th>patient</th>" if show_patient else ""
    config = json.dumps({"refresh": data["refresh_seconds"], "showPatient": show_patient})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>medseg</title>
<meta name="csrf-token" content="{escape(csrf)}">
<link rel="stylesheet" href="/static/dashboard.css">
</head><body data-config="{escape(config)}">
<header><h1>medseg</h1><span id="updated">{escape(data["time"])}</span>
<span class="note">research software, not for clinical use</span></header>
<section><h2>Queue</h2><table id="summary">{_summary(status)}</table></section>
<section><h2>Delivery</h2><table id="destinations"><thead><tr><th>destination</th>
<th>waiting</th><th>next try</th><th>undeliverable</th><th>delivered</th><th>last error</th>
</tr></thead><tbody>{_destinations(status)}</tbody></table></section>
<section><h2>Jobs</h2><table id="jobs"><thead><tr><th>created</th>{patient_head}<th>state</th>
<th>series</th><th>modality</th><th>slices</th><th>rule</th><th>stage seconds</th>
<th>error</th><th>deliveries</th><th>result</th><th></th></tr></thead>
<tbody>{rows or '<tr><td colspan="12">no jobs yet</td></tr>'}</tbody></table></section>
<script src="/static/dashboard.js"></script>
</body></html>
"""
