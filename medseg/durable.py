"""Atomic, durable file writing: temp file in the same folder + fsync + rename + folder fsync.

A reader sees the old file, no file or the complete new file, never a partial one; on any
failure the temp file is removed and the exception (usually ``OSError``) propagates, so each
caller keeps its own error mapping (``SpoolFullError``, ``OutputError``, ...).
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


def fsync_dir(path: Path, *, required: bool = True) -> None:
    """Make a rename in ``path`` durable (POSIX needs the directory itself synced).

    With ``required=False`` a folder that cannot be synced (not every filesystem allows it)
    is only logged at debug level.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        if required:
            raise
        log.debug("cannot open %s to fsync the rename: %s", path, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if required:
            raise
        log.debug("fsync of folder %s failed: %s", path, exc)
    finally:
        os.close(fd)


def write_with(
    path: Path,
    write: Callable[[BinaryIO], object],
    *,
    fsync: bool = True,
    dir_fsync_required: bool = True,
    mode: int = 0o666,
) -> None:
    """Let ``write`` fill a binary handle on a temp file beside ``path``, then rename it there.

    ``fsync=False`` skips both fsyncs (tests, a spool on tmpfs); ``dir_fsync_required=False``
    tolerates a folder that cannot be synced after the rename. The file is created with
    ``mode`` less the umask, as ``open()`` would.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = _create_temp(folder, path.name, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(folder, required=dir_fsync_required)


def _create_temp(folder: Path, name: str, mode: int) -> tuple[int, Path]:
    """A new, exclusively created ``.NAME.RANDOM.tmp`` in ``folder`` and its descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name for {folder / name}")


def write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Atomically and durably replace ``path`` with ``data``."""
    write_with(path, lambda handle: handle.write(data), fsync=fsync)


def write_text(path: Path, text: str, *, fsync: bool = True) -> None:
    """Atomically and durably replace ``path`` with ``text`` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"), fsync=fsync)


def _syncfs_function() -> Callable[[int], int] | None:
    """Linux ``syncfs(2)`` through libc, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def syncfs(folder: Path, function: Callable[[int], int]) -> None:
    """Flush every written file and metadata change of the filesystem holding ``folder``."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        if function(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), str(folder))
    finally:
        os.close(fd)


@dataclass(eq=False)
class _Pending:
    """One caller's file waiting in a group commit, and its outcome."""

    tmp: Path
    path: Path
    done: bool = False
    error: OSError | None = None


class GroupCommit:
    """Durable renames for many threads at once, their flushes shared (group commit).

    A caller writes its temp file (no fsync) and calls :meth:`commit`, which returns once
    the file is durable under its final name, or raises that file's ``OSError``. The first
    caller to find no flush under way leads: it takes every file waiting, flushes them
    (one ``syncfs`` for several files on Linux, else one fsync each), renames them and
    fsyncs each of their folders once; callers that arrive meanwhile wait for the next
    flush, which takes all of them. One caller alone costs what ``write_with`` costs, and
    concurrent callers (several associations) share two flushes per batch instead of
    paying two each. Nothing waits for company: a batch is whatever queued during the
    previous flush.
    """

    def __init__(self, root: Path, *, use_syncfs: bool = True) -> None:
        self.root = Path(root)
        self._syncfs = _syncfs_function() if use_syncfs else None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: list[_Pending] = []
        self._leading = False
        self.batches = 0  # flushes done (for tests and logs)
        self.committed = 0  # files made durable

    def write_bytes(self, path: Path, data: bytes | memoryview, *, prefix: bytes = b"") -> None:
        """Atomically and durably put ``prefix + data`` at ``path`` (shared flushes)."""
        path = Path(path)
        fd, tmp = _create_temp(path.parent, path.name, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                if prefix:
                    handle.write(prefix)
                handle.write(data)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.commit(tmp, path)

    def commit(self, tmp: Path, path: Path) -> None:
        """Make written ``tmp`` durable as ``path``; on failure ``tmp`` is gone."""
        entry = _Pending(tmp, path)
        with self._changed:
            self._queue.append(entry)
            while not entry.done and self._leading:
                self._changed.wait()
            if entry.done:
                self._raise(entry)
                return
            self._leading = True
            batch, self._queue = self._queue, []
        try:
            self._flush(batch)
        except BaseException as exc:  # a bug, not an I/O error: no caller may think it durable
            for pending in batch:
                if pending.error is None:
                    pending.error = OSError(f"group commit failed: {exc!r}")
            raise
        finally:
            with self._changed:
                self._leading = False
                for pending in batch:
                    pending.done = True
                self._changed.notify_all()
        self._raise(entry)

    @staticmethod
    def _raise(entry: _Pending) -> None:
        if entry.error is not None:
            raise entry.error

    def _flush(self, batch: list[_Pending]) -> None:
        """fsync (or syncfs), rename, fsync folders; each failure goes to its own files."""
        try:
            self._sync_files(batch)
        except OSError as exc:  # syncfs failed: the files' state is unknown, all fail
            for pending in batch:
                pending.error = exc
        folders: dict[Path, list[_Pending]] = {}
        for pending in batch:
            if pending.error is None:
                try:
                    os.replace(pending.tmp, pending.path)
                except OSError as exc:
                    pending.error = exc
            if pending.error is not None:
                pending.tmp.unlink(missing_ok=True)
                continue
            folders.setdefault(pending.path.parent, []).append(pending)
        for folder, entries in folders.items():
            try:
                fsync_dir(folder)
            except OSError as exc:
                for pending in entries:
                    pending.error = exc
        self.batches += 1
        self.committed += sum(1 for pending in batch if pending.error is None)

    def _sync_files(self, batch: list[_Pending]) -> None:
        if len(batch) > 1 and self._syncfs is not None:
            syncfs(self.root, self._syncfs)
            return
        for pending in batch:
            try:
                fd = os.open(pending.tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                pending.error = exc
