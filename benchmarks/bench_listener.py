"""Listener throughput and result latency, beside dcmtk's own storescp on this machine.

    python3 benchmarks/bench_listener.py [--slices 300] [--size 512] [--repeats 3] [--model M]
        [--compare /path/to/other/checkout]

Prints a table: instances per second received for a phantom CT (default 300 slices of
512x512) sent by dcmtk ``storescu`` to (a) dcmtk ``storescp`` writing to disk and (b)
``medseg serve`` (with fsync per instance, the default, and without), TCP_NODELAY=1 on both
dcmtk sides; each once over one association and once split over 4 parallel associations
(4 storescu processes; storescp then runs with ``--fork``, one process per association).
The last column is the ratio to dcmtk with the same number of associations. With
``--compare``, ``medseg serve`` of another checkout (e.g. the main branch, the baseline)
runs in the same invocation, beside this one. Then the time from the last instance
acknowledged to the SEG delivered to a storescp receiver, and that time minus the
configured series idle time. The model is ``--model`` or the bundled one, else the tiny
bright-pixel test model (inference cost then near zero: the figure is the service's own
overhead plus loading and writing).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The test suite's peer helpers (free ports, bounded waits, dcmtk paths with TCP_NODELAY=1).
from tests.server.peers import DCMTK_ENV, STORESCP, STORESCU, free_port, port_open, wait_until  # noqa: E402


def send(port: int, folders: list[Path], called: str) -> float:
    """Seconds to send every folder, each over its own association, all at once."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [STORESCU, "-aet", "PACS", "-aec", called, "127.0.0.1", str(port), "+sd", str(f)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for f in folders
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - start


def split(files: list[Path], parts: int, tmp: Path) -> list[Path]:
    """The series as ``parts`` folders of interleaved instances (hard links)."""
    folders = []
    for part in range(parts):
        folder = tmp / f"part-{parts}-{part}"
        folder.mkdir()
        for path in files[part::parts]:
            (folder / path.name).hardlink_to(path)
        folders.append(folder)
    return folders


def start(args: list[str], log: Path, pythonpath: Path | None = None) -> subprocess.Popen:
    env = dict(DCMTK_ENV)
    if pythonpath is not None:  # another checkout's medseg (the baseline)
        env["PYTHONPATH"] = str(pythonpath)
    with open(log, "ab") as handle:
        return subprocess.Popen(
            args,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=pythonpath or REPO,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def write_config(
    path: Path,
    port: int,
    spool: Path,
    model: Path | None,
    fsync: bool,
    workers: int,
    return_port: int,
    idle: float,
) -> None:
    path.write_text(
        f"""[listener]
host = "127.0.0.1"
port = {port}
max_pdu = 0
[storage]
spool = "{spool}"
min_free_mb = 0
fsync = {"true" if fsync else "false"}
[completion]
series_idle_seconds = {idle}
check_interval_seconds = 0.1
[queue]
workers = {workers}
[model]
path = "{model or ""}"
[[peers]]
ae_title = "PACS"
return_port = {return_port}
return_ae_title = "RECEIVER"
[[rules]]
name = "all"
"""
    )


def pick_model(tmp: Path, given: str | None) -> tuple[Path | None, str]:
    if given:
        return Path(given), Path(given).name
    from medseg.errors import ConfigError
    from medseg.modelcard import default_model_path

    try:
        return None, default_model_path().name + " (bundled)"
    except ConfigError:
        from tests.tiny_models import make_bright_model

        path = tmp / "bright.onnx"
        make_bright_model(path)
        return path, "tiny bright-pixel test model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--idle", type=float, default=2.0, help="series_idle_seconds")
    parser.add_argument("--model", help="model for the latency run (default: bundled)")
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput table")
    parser.add_argument("--compare", type=Path, help="another checkout to time beside this one")
    parser.add_argument("--associations", type=int, default=4, help="parallel associations")
    args = parser.parse_args()

    from medseg.phantom import write_phantom

    tmp = Path(tempfile.mkdtemp(prefix="bench-listener-"))
    try:
        phantom = write_phantom(tmp / "phantom", 0, slices=args.slices, size=(args.size, args.size))
        folder = phantom.series_dir
        files = sorted(folder.glob("*.dcm"))
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        model, model_name = pick_model(tmp, args.model)
        rows: list[tuple[str, int, float]] = []
        repeats = 0 if args.latency_only else args.repeats
        layouts = [(1, [folder]), (args.associations, split(files, args.associations, tmp))]

        # (a) dcmtk storescp writing every instance to disk
        for parallel, folders in layouts:
            times = []
            for i in range(repeats):
                port, out = free_port(), tmp / f"dcmtk-{parallel}-{i}"
                out.mkdir()
                fork = ["--fork"] if parallel > 1 else []
                proc = start(
                    [STORESCP, *fork, "-aet", "MEDSEG", "-od", str(out), str(port)],
                    tmp / "scp.log",
                )
                try:
                    wait_until(lambda p=port: port_open(p), 30, "the receiver")
                    times.append(send(port, folders, "MEDSEG"))
                    wait_until(lambda o=out: len(list(o.iterdir())) == len(files), 60, "files")
                finally:
                    stop(proc)
                shutil.rmtree(out)
            if times:
                rows.append(("dcmtk storescp", parallel, statistics.median(times)))

        # (b) medseg serve, listener only, with and without fsync per instance
        checkouts: list[tuple[str, Path | None]] = [("", None)]
        if args.compare:
            checkouts.insert(0, (" [baseline]", args.compare.resolve()))
        cases = [(True, 1), (True, args.associations), (False, 1)]
        for suffix, checkout in checkouts:
            for fsync, parallel in cases:
                folders = dict(layouts)[parallel]
                times = []
                for i in range(repeats):
                    port, spool = free_port(), tmp / f"spool-{fsync}-{parallel}-{i}"
                    cfg = tmp / "bench.toml"
                    write_config(cfg, port, spool, model, fsync, 0, free_port(), 3600)
                    proc = start(
                        [sys.executable, "-m", "medseg", "serve", "-c", str(cfg)],
                        tmp / "serve.log",
                        checkout,
                    )
                    try:
                        wait_until(lambda p=port: port_open(p), 60, "the receiver")
                        times.append(send(port, folders, "MEDSEG"))
                    finally:
                        stop(proc)
                    shutil.rmtree(spool)
                if times:
                    label = "medseg serve (fsync each)" if fsync else "medseg serve (no fsync)"
                    rows.append((label + suffix, parallel, statistics.median(times)))

        # (c) last instance acknowledged -> SEG delivered, one run
        port, back = free_port(), free_port()
        received = tmp / "received"
        received.mkdir()
        cfg = tmp / "latency.toml"
        write_config(cfg, port, tmp / "spool-latency", model, True, 1, back, args.idle)
        scp = start(
            [STORESCP, "-aet", "RECEIVER", "-od", str(received), str(back)], tmp / "recv.log"
        )
        serve = start(
            [sys.executable, "-m", "medseg", "serve", "-c", str(cfg)], tmp / "latency.log"
        )
        try:
            wait_until(lambda: port_open(port) and port_open(back), 60, "medseg and the receiver")
            send(port, [folder], "MEDSEG")
            acked = time.perf_counter()
            wait_until(lambda: any(received.iterdir()), 1800, "the SEG")
            latency = time.perf_counter() - acked
        finally:
            stop(serve)
            stop(scp)

        print(
            f"series: {len(files)} instances of {args.size}x{args.size}, {megabytes:.0f} MB; "
            f"median of {args.repeats} runs; TCP_NODELAY=1"
        )
        dcmtk = {n: seconds for label, n, seconds in rows if label == "dcmtk storescp"}
        print(
            f"{'receiver':<40} {'assoc':>5} {'seconds':>8} {'inst/s':>8} {'MB/s':>8} {'x dcmtk':>8}"
        )
        for label, parallel, seconds in rows:
            ratio = dcmtk[parallel] / seconds if parallel in dcmtk else float("nan")
            print(
                f"{label:<40} {parallel:>5} {seconds:>8.2f} {len(files) / seconds:>8.0f} "
                f"{megabytes / seconds:>8.0f} {ratio:>8.2f}"
            )
        print()
        print(
            f"last instance acknowledged -> SEG delivered: {latency:.1f} s "
            f"(series_idle_seconds {args.idle:g} s, so {latency - args.idle:.1f} s of work; "
            f"model: {model_name})"
        )
        log = (tmp / "latency.log").read_text(errors="replace").splitlines()
        for line in log:
            if "written (" in line or "delivered to" in line:
                print("  " + line.split(": ", 1)[1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
