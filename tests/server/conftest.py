"""Fixtures for the listener tests: processes that are always stopped, configs, a receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from medseg.server.config import ServerConfig, load_config
from medseg.server.service import Service
from tests.server.peers import (
    DCMTK_ENV,
    STORESCP,
    CountingReceiver,
    Processes,
    Running,
    free_port,
    port_open,
    wait_until,
    write_config,
)


@pytest.fixture
def running() -> Iterator[Callable[..., Service]]:
    """Start in-process services; every one started is stopped at teardown."""
    services: list[Service] = []

    def start(config: ServerConfig, **kw: object) -> Service:
        service = Service(config, **kw)
        services.append(service)
        service.start()
        return service

    yield start
    for service in services:
        service.stop()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path / "logs")
    try:
        yield processes
    finally:
        processes.stop_all()


@dataclass
class Receiver:
    """A dcmtk storescp writing what it receives into ``folder``."""

    ae_title: str
    port: int
    folder: Path

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


@pytest.fixture
def start_receiver(procs: Processes, tmp_path: Path) -> Callable[..., Receiver]:
    def start(port: int | None = None, ae_title: str = "RECEIVER") -> Receiver:
        port = port or free_port()
        folder = tmp_path / f"received-{port}"
        folder.mkdir(exist_ok=True)
        args = [STORESCP, "-aet", ae_title, "-od", str(folder), str(port)]
        procs.start(args, f"storescp-{port}", env=DCMTK_ENV)
        wait_until(lambda: port_open(port), 20, "storescp to listen")
        return Receiver(ae_title, port, folder)

    return start


@pytest.fixture
def counting_receiver(tmp_path: Path) -> Iterator[CountingReceiver]:
    """A receiver that keeps every C-STORE it answers as its own file (duplicates count)."""
    with CountingReceiver(folder=tmp_path / "counted") as receiver:
        yield receiver


@pytest.fixture
def server_config(tmp_path: Path, bright_model: Path) -> Callable[..., tuple[Path, ServerConfig]]:
    """Write a test configuration: free port, tmp spool, tiny model, 1 s series idle time."""

    def make(
        *,
        peers: list[dict] | None = None,
        rules: list[dict] | None = None,
        destinations: list[dict] | None = None,
        name: str = "server.toml",
        **tables: dict,
    ) -> tuple[Path, ServerConfig]:
        base: dict[str, dict] = {
            "listener": {"host": "127.0.0.1", "port": free_port()},
            "web": {"port": 0},  # any free port: several services may run at once
            "storage": {"spool": str(tmp_path / "spool"), "min_free_mb": 0},
            "completion": {"series_idle_seconds": 1.0, "check_interval_seconds": 0.2},
            "queue": {"lease_seconds": 3, "sweep_interval_seconds": 0.5, "retry_delay_seconds": 1},
            "delivery": {"initial_backoff_seconds": 0.5, "max_backoff_seconds": 2},
            "model": {"path": str(bright_model)},
        }
        for key, values in tables.items():
            base.setdefault(key, {}).update(values)
        arrays = {
            "peers": peers if peers is not None else [{"ae_title": "PACS"}],
            "rules": rules if rules is not None else [{"name": "all", "modalities": ["CT"]}],
            "destinations": destinations or [],
        }
        path = write_config(tmp_path / name, base, {k: v for k, v in arrays.items() if v})
        return path, load_config(path)

    return make


@pytest.fixture
def listen(server_config: Callable) -> Iterator[Callable[..., Running]]:
    """Start in-process listeners on the test configuration; all shut down at teardown."""
    from medseg.server.completion import SeriesTracker
    from medseg.server.listener import start_listener
    from medseg.server.spool import Spool

    servers = []

    def start(min_free_bytes: int = 0, **kw: object) -> Running:
        _, config = server_config(**kw)
        spool = Spool(config.spool_dir, min_free_bytes=min_free_bytes)
        tracker = SeriesTracker(spool.database)
        server = start_listener(config, spool, tracker)
        servers.append(server)
        return Running(config, spool, tracker, int(server.server_address[1]))

    yield start
    for server in servers:
        server.shutdown()
