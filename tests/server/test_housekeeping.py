"""Housekeeping keeps going (issue 23 item 9): one bad series or job record, or a full disk,
must not stop the other sweeps and deliveries; ``medseg status`` says what is failing, and
the service recovers by itself when the cause goes away."""

from __future__ import annotations

import dataclasses
import json
import resource
from collections.abc import Callable
from pathlib import Path

from medseg.server.completion import InstanceInfo, SeriesTracker
from medseg.server.health import REPORT_SIZE, read_reports
from medseg.server.jobs import DONE, Job, JobBook
from medseg.server.jobstore import SqliteJobStore
from medseg.server.sqlite import transaction
from medseg.server.status import collect_status, format_status
from tests.server.peers import (
    CountingReceiver,
    Processes,
    log_text,
    run_medseg,
    storescu,
    wait_until,
    write_ct,
)
from tests.server.records import delivering_job
from tests.server.test_serve import serve
from tests.server.test_service import write_seg_like


def test_a_bad_series_and_a_bad_job_record_do_not_stop_deliveries(
    running: Callable, server_config: Callable, tmp_path: Path
) -> None:
    """Before, ``tick()`` stopped at the first exception, every round, so nothing was sent.

    The two bad items are realistic leftovers: a series row whose UID is no UID (an older
    medseg's start-up recovery took any folder name under ``incoming/``, e.g. one copied
    there by hand) and a job record written by a newer medseg with a field this one does
    not know (a rolling upgrade of workers sharing Redis or the spool). The good job's SEG
    goes to a real receiver over 127.0.0.1.
    """
    _, config = server_config(peers=[{"ae_title": "PACS"}], rules=[{"name": "all"}])
    config.spool_dir.mkdir(parents=True)
    database = config.spool_dir / "medseg.db"
    tracker = SeriesTracker(database)
    tracker.seen(InstanceInfo("1.2.3", "copied by hand", "1.2.3.5", "CT", is_image=True), 0.0)
    store = SqliteJobStore(database)
    newer = dataclasses.replace(Job("2.25.99", "1.2.3.6", "1.2.3", "all"), version=1)
    body = {**json.loads(newer.to_json()), "priority": 5}
    with transaction(store._conn()) as conn:
        conn.execute(
            "INSERT INTO jobs (id, state, version, updated, body) VALUES (?, ?, ?, ?, ?)",
            (newer.id, "queued", 1, 0.0, json.dumps(body)),
        )
    write_seg_like(tmp_path / "seg.dcm", "1.2.3")
    with CountingReceiver() as receiver:
        book = JobBook(store, lease_seconds=60, max_attempts=3)
        good = delivering_job(book, receiver.port, tmp_path / "seg.dcm", "1.2.3.4")
        service = running(config, workers=0)
        wait_until(lambda: receiver.total() == 1, 30, "the good job's SEG at the receiver")
        wait_until(lambda: store.get(good.id).state == DONE, 10, "the good job done")
        wait_until(lambda: service.health.problems(), 10, "the bad series reported")
        snapshot = collect_status(config)
    store.close()
    (report,) = snapshot["housekeeping"]
    assert report["running"] is True
    assert [p["what"] for p in report["problems"]] == ["series copied by hand"]
    assert "not a valid DICOM UID" in report["problems"][0]["error"]
    assert snapshot["unreadable_jobs"][0]["job"] == "2.25.99"
    assert "priority" in snapshot["unreadable_jobs"][0]["error"]
    text = format_status(snapshot)
    assert "1 PROBLEM(S)" in text and "series copied by hand: failing since" in text
    assert "1 unreadable job record(s)" in text and "job 2.25.99" in text


def test_a_spool_folder_that_is_not_a_uid_is_not_recovered(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    (incoming / "1.2.3" / "copied by hand").mkdir(parents=True)
    (incoming / "1.2.3" / "copied by hand" / "x.dcm").write_bytes(b"not read")
    tracker = SeriesTracker(tmp_path / "medseg.db")
    assert tracker.recover(incoming) == 0
    assert tracker.counts() == {}


def _limit_writes(pid: int, limit: int) -> None:
    """Set the soft file-size limit of process ``pid`` (Linux prlimit; hard limit kept)."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


def test_full_disk_is_reported_and_the_service_recovers_when_space_returns(
    procs: Processes, server_config: Callable, tmp_path: Path
) -> None:
    """The disk fills between a series' arrival and its completion; then space returns.

    The full disk is made for the ``medseg serve`` process alone, by lowering its file-size
    limit (RLIMIT_FSIZE, set from outside with prlimit) to the size of the health report:
    from then on every write of the process past the first 4 KiB of any file comes back
    short or fails (EFBIG), as writes to a full disk do (SQLite reports a short write as
    "database or disk is full"), while rewriting the report's own blocks still works, as on
    a full disk. Raising the limit again is space coming back. No tmpfs or loop mount: the
    tests run unprivileged.
    """
    with CountingReceiver() as receiver:
        destination = {"name": "recv", "ae_title": "RECEIVER", "host": "127.0.0.1"}
        path, config = server_config(
            rules=[{"name": "all", "modalities": ["CT"], "destinations": ["recv"]}],
            destinations=[{**destination, "port": receiver.port}],
            completion={"series_idle_seconds": 3.0, "check_interval_seconds": 0.2},
        )
        proc = serve(procs, path, config)
        wait_until(lambda: read_reports(config.spool_dir), 20, "the health report")
        series = write_ct(tmp_path / "ct", slices=4, size=32)
        sent = storescu(config.listener.port, list(series.paths))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        _limit_writes(proc.pid, REPORT_SIZE)
        try:

            def failing() -> list:
                return [p for r in read_reports(config.spool_dir) for p in r["problems"]]

            problems = wait_until(failing, 30, "the full disk reported")
            assert any("series" in p["what"] for p in problems), problems
            shown = run_medseg("status", "-c", str(path))
            assert shown.returncode == 0, shown.stderr
            assert "PROBLEM(S)" in shown.stdout and "failing since" in shown.stdout
            assert receiver.total() == 0 and proc.poll() is None
        finally:
            _limit_writes(proc.pid, resource.RLIM_INFINITY)
        wait_until(lambda: receiver.total() == 1, 90, "the SEG once space returned")
        wait_until(lambda: not failing(), 30, "the problems cleared")
        assert "works again" in log_text(proc)
        shown = run_medseg("status", "-c", str(path), "--json")
        report = json.loads(shown.stdout)
        assert report["jobs"]["done"] == 1 and report["housekeeping"][0]["problems"] == []
