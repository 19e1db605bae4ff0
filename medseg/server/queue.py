"""The job queue: huey carries job ids from the listener to the workers.

SqliteHuey (a file in the spool) for the embedded default, RedisHuey for workers on other
machines; the same consumer runs in-process (``medseg serve``) or alone (``medseg worker``).
huey is at-most-once, so a message is only a wake-up call: the durable truth is the job
record (``jobs.py``) and a sweep re-sends ids whose message was lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from huey import RedisHuey, SqliteHuey
from huey.api import Huey
from huey.consumer import Consumer

from medseg.server.config import QueueConfig

logger = logging.getLogger(__name__)

TASK_NAME = "medseg.run_job"


def _noop(job_id: str) -> None:  # pragma: no cover - only runs where no worker is registered
    logger.warning("job %s reached a queue with no worker", job_id)


class JobQueue:
    """A huey instance with the one task medseg uses: ``run_job(job_id)``."""

    def __init__(
        self, config: QueueConfig, spool_root: Path, handler: Callable[[str], None] | None = None
    ) -> None:
        self.config = config
        self.huey: Huey
        if config.backend == "redis":
            self.huey = RedisHuey(config.name, url=config.redis_url, results=False)
        else:
            self.huey = SqliteHuey(
                config.name, filename=str(spool_root / "huey.db"), fsync=True, results=False
            )
        self._task = self.huey.task(name=TASK_NAME)(handler or _noop)

    def enqueue(self, job_id: str, delay: float = 0.0) -> None:
        if delay > 0:
            self._task.schedule((job_id,), delay=delay)
        else:
            self._task(job_id)

    def depth(self) -> int:
        """Messages waiting (ready or scheduled for later)."""
        return int(self.huey.pending_count()) + int(self.huey.scheduled_count())

    def consumer(self, workers: int, shutdown_timeout: float) -> Consumer:
        """A thread-based consumer; SIGTERM is graceful (running jobs finish or are released)."""
        return self.huey.create_consumer(
            workers=workers,
            worker_type="thread",
            periodic=False,
            initial_delay=0.05,
            max_delay=0.5,
            shutdown_timeout=shutdown_timeout,
            graceful_signal="TERM",
            check_worker_health=True,
        )
