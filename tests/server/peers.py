"""Real peers for the listener tests: free ports, processes stopped by PID, test series.

Every wait is a bounded loop on a condition (a socket that accepts, a file that appears),
never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medseg.server.completion import SeriesTracker
from medseg.server.config import ServerConfig
from medseg.server.spool import Spool
from tests.dicom.series_factory import WrittenSeries, write_series

REPO_ROOT = Path(__file__).resolve().parents[2]
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def run_medseg(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m medseg ARGS`` to completion, from the checkout, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "medseg", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Processes:
    """Starts subprocesses in their own process group and always stops them by PID."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.running: list[subprocess.Popen] = []

    def start(
        self,
        args: list[str],
        name: str,
        env: dict[str, str] | None = None,
        cwd: Path = REPO_ROOT,
        **kw: object,
    ) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env or os.environ.copy(),
            cwd=cwd,
            start_new_session=True,
            **kw,  # type: ignore[arg-type]
        )
        proc.log_path = self.logs / f"{name}.log"  # type: ignore[attr-defined]
        log.close()
        self.running.append(proc)
        return proc

    def medseg(self, *args: str, name: str, **kw: object) -> subprocess.Popen:
        return self.start([sys.executable, "-m", "medseg", "-v", *args], name, **kw)

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return int(proc.returncode)

    def stop_all(self) -> None:
        for proc in reversed(self.running):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def log_text(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def bright_cube(slices: int = 8, size: int = 64) -> np.ndarray:
    """A CT volume in HU: soft tissue with a bright cube the tiny model segments."""
    values = np.full((slices, size, size), 40.0)
    lo, hi = size // 4, size // 2
    values[1 : slices - 1, lo:hi, lo:hi] = 1000.0
    return values


def write_ct(folder: Path, slices: int = 8, size: int = 64, **kw: object) -> WrittenSeries:
    return write_series(folder, bright_cube(slices, size), **kw)  # type: ignore[arg-type]


def storescu(
    port: int, files: list[Path] | Path, *, calling: str = "PACS", called: str = "MEDSEG"
) -> subprocess.CompletedProcess:
    """Send with dcmtk's storescu (TCP_NODELAY=1); returns the finished process."""
    paths = [files] if isinstance(files, Path) else files
    args = [STORESCU, "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
    args += ["+sd", str(paths[0])] if paths[0].is_dir() else [str(p) for p in paths]
    return subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=120)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, tables: dict[str, dict], arrays: dict[str, list[dict]]) -> Path:
    """A TOML configuration from plain dicts (the test's own, validated by medseg)."""
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for name, items in arrays.items():
        for item in items:
            lines.append(f"[[{name}]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_slow_model(path: Path, matmuls: int = 24) -> Path:
    """The bright model plus a costly branch that adds exactly zero: a job that takes a while.

    Used where a test must act *during* inference (kill -9, two workers sharing jobs). The
    cost is ``matmuls`` 352x352 matrix products per image channel.
    """
    import onnx
    from onnx import TensorProto, helper

    from tests.tiny_models import make_bright_model

    make_bright_model(path)
    model = onnx.load(path)
    graph = model.graph
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((352, 352)) / 352).astype(np.float32)
    graph.initializer.append(onnx.numpy_helper.from_array(weight, "slow_w"))
    graph.initializer.append(helper.make_tensor("slow_zero", TensorProto.FLOAT, [], [0.0]))
    previous = "image"
    for i in range(matmuls):
        graph.node.append(helper.make_node("MatMul", [previous, "slow_w"], [f"slow_{i}"]))
        previous = f"slow_{i}"
    graph.node.append(
        helper.make_node("ReduceMean", [previous], ["slow_mean"], axes=[1, 2, 3], keepdims=1)
    )
    graph.node.append(helper.make_node("Mul", ["slow_mean", "slow_zero"], ["slow_nil"]))
    # Rename the bright output and add the zero term to it.
    for node in graph.node:
        for j, name in enumerate(node.output):
            if name == "logits":
                node.output[j] = "bright_logits"
    graph.node.append(helper.make_node("Add", ["bright_logits", "slow_nil"], ["logits"]))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


class CountingReceiver:
    """A pynetdicom storage SCP that counts every C-STORE it answers (by SOP Instance UID).

    dcmtk's storescp names files by SOP Instance UID, so a second send of the same SEG
    overwrites the first and a file count cannot see it; this counts requests. ``on_store``
    runs in the handler before the answer (a test's hook to act mid-send). With ``folder``,
    every request is also written to its own numbered file, so duplicates stay visible.
    Use as a context manager: the server is always shut down.
    """

    def __init__(
        self,
        ae_title: str = "RECEIVER",
        on_store: Callable[[], None] | None = None,
        folder: Path | None = None,
        status: int = 0x0000,
    ) -> None:
        self.ae_title = ae_title
        self.status = status  # what every C-STORE is answered with
        self.on_store = on_store
        self.folder = folder
        self.counts: dict[str, int] = {}
        self.port = 0
        self._lock = threading.Lock()
        self._server: object = None

    def _handle(self, event: object) -> int:
        sop = str(event.request.AffectedSOPInstanceUID)  # type: ignore[attr-defined]
        with self._lock:
            self.counts[sop] = self.counts.get(sop, 0) + 1
            number = sum(self.counts.values())
        if self.folder is not None:
            data = event.encoded_dataset(include_meta=True)  # type: ignore[attr-defined]
            part = self.folder / f"{number:04d}.part"
            part.write_bytes(data)
            part.rename(self.folder / f"{number:04d}.dcm")
        if self.on_store is not None:
            self.on_store()
        return self.status

    def files(self) -> list[Path]:
        """Every received request's file (one per C-STORE, duplicates included)."""
        return sorted(self.folder.glob("*.dcm")) if self.folder else []

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def __enter__(self) -> CountingReceiver:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._handle)]
        )
        self.port = int(server.server_address[1])
        self._server = server
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()  # type: ignore[attr-defined]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): proof that it computes."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Running:
    """An in-process listener a test started (``listen`` fixture in conftest.py)."""

    config: ServerConfig
    spool: Spool
    tracker: SeriesTracker
    port: int
