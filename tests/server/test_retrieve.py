"""Retrieving the series behind a mark (``[retrieve]``): the configuration keys, the
retrievals table, bounded retries with backoff against a PACS that is not there, and what
``medseg status`` says. Against a real PACS (Orthanc, C-MOVE and C-GET): test_orthanc.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from medseg.errors import ConfigError
from medseg.server.config import RetrieveConfig, parse_config
from medseg.server.retrieve import DONE, FAILED, PENDING, RUNNING, RetrievalBook, Retriever
from medseg.server.service import Service
from tests.server.peers import free_port, run_medseg, storescu, wait_until, write_ct
from tests.server.test_mark_jobs import MARKS_RULE, gsps_line

PEERS = [{"ae_title": "PACS"}]
PACS = {"method": "move", "ae_title": "PACS", "host": "pacs.example", "port": 104}


def test_retrieve_keys_are_checked_when_the_configuration_loads() -> None:
    def load(retrieve: dict, peers: list[dict] = PEERS) -> None:
        parse_config({"peers": peers, "rules": [{"name": "r"}], "retrieve": retrieve})

    load({})  # no [retrieve]: nothing is retrieved
    load(PACS)
    load({**PACS, "method": "get", "ae_title": "OTHER"})  # C-GET: the PACS never calls us
    cases = [
        ({**PACS, "method": "fetch"}, r"retrieve\.method: must be 'move', 'get'"),
        ({**PACS, "host": ""}, r"retrieve\.host: is required with method = 'move'"),
        ({**PACS, "port": 0}, r"retrieve\.port: must be 1\.\.65535"),
        ({**PACS, "ae_title": "A" * 17}, r"retrieve\.ae_title: .* is not a valid AE title"),
        ({**PACS, "max_tries": 0}, r"retrieve\.max_tries: must be >= 1"),
        ({**PACS, "max_backoff_seconds": 1.0}, r"retrieve\.max_backoff_seconds"),
        ({**PACS, "timeout_seconds": 0}, r"retrieve\.timeout_seconds: must be positive"),
        ({**PACS, "tries": 3}, r"retrieve\.tries: unknown key"),
        ({**PACS, "ae_title": "ORTHANC"}, r"retrieve\.ae_title: .* add it to \[\[peers\]\]"),
    ]
    for retrieve, message in cases:
        with pytest.raises(ConfigError, match=message):
            load(retrieve)


def test_retrievals_are_asked_once_retried_after_failure_and_recovered_after_a_kill(
    tmp_path: Path,
) -> None:
    book = RetrievalBook(tmp_path / "medseg.db")
    first = book.request("1.2.3", "1.2.3.4", now=100.0)
    assert (first.state, first.attempts, first.next_attempt) == (PENDING, 0, 100.0)
    assert book.request("1.2.3", "1.2.3.4", now=200.0).requested == 100.0  # asked once
    assert [r.series_uid for r in book.due(now=100.0)] == ["1.2.3.4"]
    assert book.claim("1.2.3.4") and not book.claim("1.2.3.4")  # one claimant
    assert book.get("1.2.3.4").state == RUNNING
    assert book.recover() == 1  # a process killed mid-retrieval: asked again at start
    assert book.get("1.2.3.4").state == PENDING
    book.claim("1.2.3.4")
    book.settle("1.2.3.4", FAILED, error="unreachable")
    again = book.request("1.2.3", "1.2.3.4", now=300.0)  # a failed one starts over
    assert (again.state, again.attempts, again.error) == (PENDING, 0, "")
    book.claim("1.2.3.4")
    book.settle("1.2.3.4", DONE, instances=8)
    assert book.request("1.2.3", "1.2.3.4").state == DONE
    assert book.forget_before(cutoff=1e12) == 1 and book.all() == []


def test_backoff_doubles_up_to_its_cap() -> None:
    config = RetrieveConfig(**PACS, initial_backoff_seconds=5, max_backoff_seconds=30)
    retriever = Retriever(
        config, None, calling_ae="MEDSEG", store=lambda event: 0, storage_contexts=[]
    )  # type: ignore[arg-type]
    assert [retriever.backoff(n) for n in range(1, 6)] == [5, 10, 20, 30, 30]


def test_a_pacs_that_does_not_answer_leaves_the_mark_unresolved_after_bounded_tries(
    running: Callable,
    server_config: Callable,
    prompted_bright_model: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = free_port()  # nothing listens there
    retrieve = {
        **PACS,
        "ae_title": "ORTHANC",
        "host": "127.0.0.1",
        "port": closed,
        "max_tries": 3,
        "initial_backoff_seconds": 0.2,
        "max_backoff_seconds": 0.4,
        "timeout_seconds": 2.0,
    }
    path, config = server_config(
        peers=[{"ae_title": "PACS"}, {"ae_title": "ORTHANC"}],
        rules=[MARKS_RULE],
        model={"path": str(prompted_bright_model)},
        marks={"wait_seconds": 600.0},  # a failed retrieval does not wait for this
        retrieve=retrieve,
    )
    caplog.set_level("INFO", logger="medseg")
    service: Service = running(config, workers=0)
    series = write_ct(tmp_path / "never-sent")
    assert storescu(service.port, [gsps_line(series, tmp_path / "marks")]).returncode == 0

    wait_until(lambda: not service.inbox.waiting(), 60, "the mark settled")
    (record,) = service.inbox.all()
    assert record.state == "unresolved"
    assert f"series {series.series_uid} could not be retrieved (3 attempt(s))" in record.detail
    item = service.retriever.book.get(series.series_uid)
    assert (item.state, item.attempts, item.study_uid) == (FAILED, 3, series.study_uid)
    assert "association rejected, unreachable or aborted" in item.error
    assert service.store.jobs() == []

    result = run_medseg("status", "-c", str(path))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"retrieve     ORTHANC@127.0.0.1:{closed} by C-MOVE: failed 1" in text, text
    assert f"retrieval failed (series {series.series_uid}, attempt 3)" in text, text
    assert "marks        unresolved 1" in text
    ds = pydicom.dcmread(series.paths[0])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "retrieving it from ORTHANC" in logged
    for secret in (str(ds.PatientName), str(ds.PatientID)):
        assert secret not in text and secret not in logged
