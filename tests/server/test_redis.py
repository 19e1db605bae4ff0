"""Scale-out: job records and the queue in a real redis-server, two ``medseg worker``s."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from medseg.server.jobstore import RedisJobStore
from tests.server.peers import (
    CountingReceiver,
    Processes,
    free_port,
    log_text,
    make_slow_model,
    port_open,
    storescu,
    wait_until,
    write_ct,
)
from tests.server.test_serve import check_seg_references, serve

REDIS_SERVER = "/usr/bin/redis-server"


@pytest.fixture
def redis_url(procs: Processes, tmp_path: Path) -> str:
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(folder)]
    procs.start(args, "redis-server")
    wait_until(lambda: port_open(port), 20, "redis-server")
    return f"redis://127.0.0.1:{port}/0"


@pytest.mark.slow
def test_two_workers_share_the_jobs(
    procs: Processes,
    redis_url: str,
    counting_receiver: CountingReceiver,
    server_config: Callable,
    tmp_path: Path,
) -> None:
    receiver = counting_receiver
    slow = make_slow_model(tmp_path / "slow" / "slow.onnx", matmuls=40)
    peer = {"ae_title": "PACS", "return_port": receiver.port, "return_ae_title": "RECEIVER"}
    queue = {"backend": "redis", "redis_url": redis_url, "name": "t", "workers": 0}
    path, config = server_config(peers=[peer], queue=queue, model={"path": str(slow), "threads": 1})
    serve(procs, path, config)
    workers = [
        procs.medseg("worker", "-c", str(path), "--workers", "1", name=f"worker-{i}")
        for i in range(2)
    ]
    for worker in workers:  # both consuming before anything is sent, or one may take both
        wait_until(
            lambda w=worker: "medseg worker started" in log_text(w) or w.poll() is not None,
            60,
            "a worker to start",
        )
        assert worker.poll() is None, log_text(worker)
    sent = [write_ct(tmp_path / f"series-{i}") for i in range(2)]
    for i in range(2):
        assert storescu(config.listener.port, tmp_path / f"series-{i}").returncode == 0

    files = wait_until(lambda: len(receiver.files()) == 2 and receiver.files(), 120, "two SEGs")
    by_series = {}
    for seg_file in files:
        uid = pydicom.dcmread(seg_file).ReferencedSeriesSequence[0].SeriesInstanceUID
        by_series[uid] = seg_file
    for series in sent:
        check_seg_references(by_series[series.series_uid], series)
    assert receiver.total() == 2, f"each SEG delivered once: {receiver.counts}"

    store = RedisJobStore(redis_url, "t")
    done = wait_until(lambda: len(store.jobs(("done",))) == 2 and store.jobs(), 30, "jobs done")
    assert len(done) == 2
    for worker in workers:
        assert worker.poll() is None, log_text(worker)
    logs = [log_text(w) for w in workers]
    ran = [sum("SEG" in line and "written" in line for line in log.splitlines()) for log in logs]
    assert ran == [1, 1], f"each worker ran one job: {ran}"
    assert receiver.total() == 2, f"no SEG sent twice: {receiver.counts}"
    store.close()
