"""Series completion and routing: the idle timer lives in SQLite and survives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.server.completion import (
    InstanceInfo,
    SeriesInfo,
    SeriesStudyConflictError,
    SeriesTracker,
)
from medseg.server.config import RuleConfig
from medseg.server.routing import route


def info(series: str = "1.2.3", **kw: object) -> InstanceInfo:
    base = {"study_uid": "1.2", "series_uid": series, "sop_uid": "1.2.3.1", "modality": "CT"}
    return InstanceInfo(**{**base, **kw})


def test_series_is_due_only_after_idle_time(tmp_path: Path) -> None:
    tracker = SeriesTracker(tmp_path / "s.db")
    tracker.seen(info(), now=100.0)
    tracker.seen(info(), now=105.0)
    assert tracker.due(10, now=114.0) == []
    (series,) = tracker.due(10, now=115.0)
    assert series.received == 2 and series.epoch == 0


def test_series_seen_under_a_second_study_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    tracker = SeriesTracker(tmp_path / "s.db")
    tracker.seen(info(), now=100.0)
    with pytest.raises(SeriesStudyConflictError, match=r"already belongs to study 1\.2, not 9\.9"):
        tracker.seen(info(study_uid="9.9", sop_uid="9.9.1"), now=105.0)
    series = tracker.get("1.2.3")
    assert (series.study_uid, series.received, series.last_seen) == ("1.2", 1, 100.0)


def test_idle_timer_survives_a_restart(tmp_path: Path) -> None:
    SeriesTracker(tmp_path / "s.db").seen(info(), now=100.0)
    reopened = SeriesTracker(tmp_path / "s.db")
    assert [s.series_uid for s in reopened.due(10, now=200.0)] == ["1.2.3"]


def test_late_instance_reopens_a_completed_series_as_a_new_epoch(tmp_path: Path) -> None:
    tracker = SeriesTracker(tmp_path / "s.db")
    tracker.seen(info(), now=100.0)
    (series,) = tracker.due(10, now=200.0)
    assert tracker.close_epoch(series, "submitted", "job-1")
    assert tracker.due(10, now=300.0) == []
    tracker.seen(info(), now=400.0)
    (again,) = tracker.due(10, now=500.0)
    assert again.epoch == 1


def test_close_epoch_loses_against_a_newer_arrival(tmp_path: Path) -> None:
    tracker = SeriesTracker(tmp_path / "s.db")
    tracker.seen(info(), now=100.0)
    (series,) = tracker.due(10, now=200.0)
    tracker.seen(info(), now=201.0)
    assert not tracker.close_epoch(series, "submitted")
    assert tracker.get("1.2.3").state == "receiving"


def series(**kw: object) -> SeriesInfo:
    base = dict(
        series_uid="1",
        study_uid="2",
        modality="CT",
        body_part="",
        description="",
        calling_ae="",
        peer_host="",
        received=1,
        first_seen=0.0,
        last_seen=0.0,
        epoch=0,
        state="receiving",
        job_id="",
        is_image=True,
    )
    return SeriesInfo(**{**base, **kw})


def test_routing_takes_the_first_matching_rule() -> None:
    rules = (
        RuleConfig("chest", modalities=("CT",), body_parts=("CHEST",), min_slices=5),
        RuleConfig("liver", modalities=("ct",), series_description="portal|venous"),
        RuleConfig("mr", modalities=("MR",)),
    )

    assert route(rules, series(body_part="CHEST"), 10).name == "chest"
    assert route(rules, series(body_part="CHEST", description="x"), 4) is None
    assert route(rules, series(description="Portal Venous 2mm"), 1).name == "liver"
    assert route(rules, series(modality="MR"), 1).name == "mr"
    assert route(rules, series(modality="SEG"), 100) is None


def test_recover_tracks_spooled_series_the_table_lost(tmp_path: Path) -> None:
    from medseg.server.spool import Spool
    from tests.server.peers import write_ct

    series = write_ct(tmp_path / "series", slices=2)
    spool = Spool(tmp_path / "spool")
    for path, sop in zip(series.paths, series.sop_uids, strict=True):
        spool.store(path.read_bytes(), series.study_uid, series.series_uid, sop)
    tracker = SeriesTracker(tmp_path / "other.db")  # a table that never saw the series
    assert tracker.recover(spool.incoming, now=100.0) == 1
    assert tracker.recover(spool.incoming, now=100.0) == 0, "known series are left alone"
    (found,) = tracker.due(10, now=200.0)
    assert (found.series_uid, found.study_uid, found.modality) == (
        series.series_uid,
        series.study_uid,
        "CT",
    )


def test_routing_never_takes_a_non_image_series() -> None:
    catch_all = (RuleConfig("any"),)
    assert route(catch_all, series(), 1).name == "any"
    assert route(catch_all, series(modality="SEG", is_image=False), 1) is None


def test_a_series_is_an_image_series_only_while_every_instance_is_one(tmp_path: Path) -> None:
    tracker = SeriesTracker(tmp_path / "s.db")
    tracker.seen(info(is_image=True), now=100.0)
    assert tracker.get("1.2.3").is_image
    tracker.seen(info(sop_uid="1.2.3.2", is_image=False), now=101.0)
    assert not tracker.get("1.2.3").is_image


def test_a_spool_from_before_is_image_keeps_its_ct_series_routable(tmp_path: Path) -> None:
    import sqlite3

    database = tmp_path / "s.db"
    with sqlite3.connect(database) as conn:
        conn.execute(
            "CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL,"
            " modality TEXT NOT NULL DEFAULT '', body_part TEXT NOT NULL DEFAULT '',"
            " description TEXT NOT NULL DEFAULT '', calling_ae TEXT NOT NULL DEFAULT '',"
            " peer_host TEXT NOT NULL DEFAULT '', received INTEGER NOT NULL DEFAULT 0,"
            " first_seen REAL NOT NULL, last_seen REAL NOT NULL,"
            " epoch INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT 'receiving',"
            " job_id TEXT NOT NULL DEFAULT '')"
        )
        conn.execute(
            "INSERT INTO series VALUES ('1', '2', 'CT', '', '', '', '', 3, 0, 0, 0,"
            " 'receiving', '')"
        )
        conn.execute(
            "INSERT INTO series VALUES ('3', '2', 'SEG', '', '', '', '', 1, 0, 0, 0,"
            " 'receiving', '')"
        )
    conn.close()
    tracker = SeriesTracker(database)
    assert tracker.get("1").is_image and not tracker.get("3").is_image
