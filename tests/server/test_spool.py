"""Spool: durable, idempotent writes under checked UIDs; a full spool leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.server.spool import Spool, SpoolFullError
from medseg.server.uids import UnsafeUidError, checked_uid


@pytest.mark.parametrize(
    "value",
    ["../../x", "1.2/../3", "", "1.2.3a", "1..2", "." + "1" * 10, "1" * 65, "/etc/passwd", None],
)
def test_non_uid_is_refused(value: object) -> None:
    with pytest.raises(UnsafeUidError):
        checked_uid(value, "SOPInstanceUID")


def test_uid_with_padding_is_accepted() -> None:
    assert checked_uid("1.2.840.10008.1.2\x00", "x") == "1.2.840.10008.1.2"


def test_store_writes_under_uids_and_duplicates_are_idempotent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.store(b"DICM-bytes", "1.2.3", "1.2.3.4", "1.2.3.4.5")
    again = spool.store(b"DICM-bytes", "1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert first == again == tmp_path / "spool/incoming/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    assert first.read_bytes() == b"DICM-bytes"
    assert spool.series_files("1.2.3", "1.2.3.4") == [first]
    assert not list(first.parent.glob(".*tmp")), "no temp file may remain"


def test_traversal_uid_writes_nothing_outside_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for study, series, sop in [("../..", "1.2", "1.3"), ("1.2", "1.3", "../../x")]:
        with pytest.raises(UnsafeUidError):
            spool.store(b"x", study, series, sop)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == []


def test_reserve_below_free_space_refuses_and_corrupts_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = spool.store(b"first", "1.2", "1.2.3", "1.2.3.1")
    full = Spool(tmp_path / "spool", min_free_bytes=2**62)  # more than any disk has
    with pytest.raises(SpoolFullError, match="below the reserve"):
        full.store(b"second", "1.2", "1.2.3", "1.2.3.2")
    assert spool.series_files("1.2", "1.2.3") == [kept]
    assert kept.read_bytes() == b"first"


def test_unwritable_spool_is_out_of_resources(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.incoming / "1.2").write_text("a file where the study folder should be")
    with pytest.raises(SpoolFullError, match="cannot write"):
        spool.store(b"x", "1.2", "1.2.3", "1.2.3.1")
