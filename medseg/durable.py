"""Atomic, durable file writing: temp file in the same folder + fsync + rename + folder fsync.

A reader sees the old file, no file or the complete new file, never a partial one; on any
failure the temp file is removed and the exception (usually ``OSError``) propagates, so each
caller keeps its own error mapping (``SpoolFullError``, ``OutputError``, ...).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
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
