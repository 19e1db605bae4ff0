"""Group commit: concurrent writers share flushes, and each is durable before it returns."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from medseg import durable
from medseg.durable import GroupCommit


def write_many(commit: GroupCommit, folder: Path, count: int) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def one(i: int) -> None:
        start.wait()
        try:
            commit.write_bytes(folder / f"{i}.dcm", b"data%d" % i, prefix=b"head")
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


@pytest.mark.parametrize("use_syncfs", [True, False])
def test_concurrent_writers_share_flushes_and_all_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_syncfs: bool
) -> None:
    real_fsync_dir = durable.fsync_dir

    def slow_fsync_dir(path: Path, *, required: bool = True) -> None:
        time.sleep(0.05)  # a slow disk: writers pile up behind the leader
        real_fsync_dir(path, required=required)

    monkeypatch.setattr(durable, "fsync_dir", slow_fsync_dir)
    commit = GroupCommit(tmp_path, use_syncfs=use_syncfs)
    assert write_many(commit, tmp_path, 16) == []
    assert commit.committed == 16
    assert commit.batches < 16, "later writers joined a batch"
    assert {p.name for p in tmp_path.iterdir()} == {f"{i}.dcm" for i in range(16)}
    for i in range(16):
        assert (tmp_path / f"{i}.dcm").read_bytes() == b"headdata%d" % i


def test_a_writer_returns_only_after_its_folder_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: set[str] = set()
    real_fsync_dir = durable.fsync_dir

    def record(path: Path, *, required: bool = True) -> None:
        real_fsync_dir(path, required=required)
        synced.update(p.name for p in path.glob("*.dcm"))

    monkeypatch.setattr(durable, "fsync_dir", record)
    commit = GroupCommit(tmp_path)
    for i in range(3):
        commit.write_bytes(tmp_path / f"{i}.dcm", b"x")
        assert f"{i}.dcm" in synced
    assert commit.batches == 3  # one writer alone: nothing to wait for


def test_a_failed_flush_fails_its_own_writer_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = GroupCommit(tmp_path, use_syncfs=False)
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if "bad" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        commit.write_bytes(tmp_path / "bad.dcm", b"x")
    commit.write_bytes(tmp_path / "good.dcm", b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.dcm"]


def test_a_bug_in_the_flush_is_no_success_for_anyone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = GroupCommit(tmp_path)

    def broken(batch: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(commit, "_flush", broken)
    with pytest.raises(RuntimeError):
        commit.write_bytes(tmp_path / "a.dcm", b"x")
