"""One way to open the service's SQLite files: WAL, full sync, a busy timeout.

Every thread opens its own connection (sqlite3 connections are not shared across threads).
``synchronous=FULL`` (the default here) makes a committed row survive a power cut, which the
job records rely on; ``NORMAL`` survives a process crash but may lose the last commits on a
power cut, which suits data that can be rebuilt from the spool (the series idle timers).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection in autocommit mode; use ``with transaction(conn):`` for writes."""
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.row_factory = sqlite3.Row
    return conn


class transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on one connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


class PerThread:
    """One connection per calling thread to one database file, opened on first use."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._local = threading.local()

    def __call__(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, self.synchronous)
        return conn

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
