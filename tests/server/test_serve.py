"""``medseg serve`` as a subprocess with real dcmtk peers: series in, SEG out, and faults."""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from medseg.server.config import ServerConfig
from medseg.server.jobstore import SqliteJobStore
from tests.dicom.series_factory import WrittenSeries
from tests.server.peers import (
    CountingReceiver,
    Processes,
    bright_cube,
    cpu_seconds,
    free_port,
    log_text,
    make_slow_model,
    port_open,
    run_medseg,
    storescu,
    wait_until,
    write_ct,
)


def status(config_path: Path) -> dict:
    result = run_medseg("status", "-c", str(config_path), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def serve(
    procs: Processes, config_path: Path, config: ServerConfig, name: str = "serve", **kw: object
) -> subprocess.Popen:
    proc = procs.medseg("serve", "-c", str(config_path), name=name, **kw)
    wait_until(
        lambda: port_open(config.listener.port) or proc.poll() is not None, 60, "medseg serve"
    )
    assert proc.poll() is None, log_text(proc)
    return proc


def check_seg_references(seg_path: Path, series: WrittenSeries) -> hd.seg.Segmentation:
    """Read the SEG back with highdicom and check it against the sent series' geometry."""
    seg = hd.seg.segread(seg_path)
    assert seg.StudyInstanceUID == series.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    referenced = {
        item.ReferencedSOPInstanceUID
        for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced <= set(series.sop_uids)
    # Every frame sits exactly on a sent slice; the cube is on slices 1..n-2.
    cube = bright_cube(len(series.sop_uids))
    expected = {k for k in range(cube.shape[0]) if (cube[k] > 500).any()}
    found = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        k = int(np.argmin(np.linalg.norm(series.positions - position, axis=1)))
        assert np.allclose(series.positions[k], position, atol=1e-3)
        found.add(k)
    assert found == expected
    return seg


@pytest.mark.slow
def test_storescu_series_comes_back_as_seg_at_receiver(
    procs: Processes, start_receiver: Callable, server_config: Callable, tmp_path: Path
) -> None:
    receiver = start_receiver()
    peer = {"ae_title": "PACS", "return_port": receiver.port, "return_ae_title": "RECEIVER"}
    path, config = server_config(peers=[peer])
    proc = serve(procs, path, config)
    series = write_ct(tmp_path / "series")
    result = storescu(config.listener.port, tmp_path / "series")
    assert result.returncode == 0, result.stderr
    (seg_file,) = wait_until(receiver.files, 90, "the SEG at the receiver")
    check_seg_references(seg_file, series)
    state = wait_until(lambda: (s := status(path))["jobs"]["done"] == 1 and s, 30, "job done")
    assert state["failed"] == 0 and state["delivery_backlog"] == {}
    assert state["series"] == {"submitted": 1}
    procs.stop(proc)
    assert proc.returncode == 0
    log = log_text(proc)
    ds = pydicom.dcmread(series.paths[0])
    for identifier in (str(ds.PatientName), str(ds.PatientID)):
        if identifier:
            assert identifier not in log, "patient identifiers must not be logged at INFO"
    assert series.series_uid in log


@pytest.mark.slow
def test_destination_down_then_up_is_delivered_after_retry(
    procs: Processes, start_receiver: Callable, server_config: Callable, tmp_path: Path
) -> None:
    archive_port = free_port()
    destination = {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1"}
    path, config = server_config(
        destinations=[{**destination, "port": archive_port}],
        rules=[{"name": "all", "destinations": ["archive"]}],
    )
    serve(procs, path, config)
    series = write_ct(tmp_path / "series")
    assert storescu(config.listener.port, tmp_path / "series").returncode == 0

    def failed_once() -> dict | None:
        s = status(path)
        return s if s["delivery_errors"] else None

    state = wait_until(failed_once, 60, "a failed delivery attempt")
    assert "archive" in next(iter(state["delivery_backlog"]))
    assert state["jobs"]["delivering"] == 1
    receiver = start_receiver(port=archive_port, ae_title="ARCHIVE")
    (seg_file,) = wait_until(receiver.files, 60, "the SEG after the destination came back")
    check_seg_references(seg_file, series)
    final = wait_until(lambda: (s := status(path))["jobs"]["done"] == 1 and s, 30, "job done")
    assert final["delivery_backlog"] == {}


@pytest.mark.slow
def test_kill_9_mid_job_then_restart_completes_once(
    procs: Processes, counting_receiver: CountingReceiver, server_config: Callable, tmp_path: Path
) -> None:
    receiver = counting_receiver  # counts C-STOREs: storescp would overwrite a duplicate
    slow = make_slow_model(tmp_path / "slow" / "slow.onnx", matmuls=240)
    peer = {"ae_title": "PACS", "return_port": receiver.port, "return_ae_title": "RECEIVER"}
    path, config = server_config(peers=[peer], model={"path": str(slow), "threads": 1})
    first = serve(procs, path, config, name="serve-1")
    series = write_ct(tmp_path / "series")
    assert storescu(config.listener.port, tmp_path / "series").returncode == 0
    store = SqliteJobStore(config.spool_dir / "medseg.db")
    (job,) = wait_until(lambda: store.jobs(("running",)), 60, "the job to start running")
    # Not at claim time: wait for the pipeline's own start line (it logs once the series is
    # read, before inference), then for the process to burn CPU in inference.
    marker = "medseg.pipeline: segmenting"
    wait_until(lambda: marker in log_text(first), 60, "the pipeline to start")
    started = cpu_seconds(first.pid)
    wait_until(lambda: cpu_seconds(first.pid) > started + 0.5, 60, "inference to be under way")
    procs.stop(first, signal.SIGKILL)
    assert store.get(job.id).state == "running", "killed mid-job"
    assert " SEG " not in log_text(first).split(marker, 1)[1], "killed before the SEG was written"
    assert not (config.spool_dir / "outbox" / job.id / "seg.dcm").exists()
    assert receiver.total() == 0

    serve(procs, path, config, name="serve-2")
    (seg_file,) = wait_until(receiver.files, 120, "the SEG after restart")
    check_seg_references(seg_file, series)
    done = wait_until(lambda: store.jobs(("done",)), 30, "job done")
    assert [j.id for j in done] == [job.id] and done[0].attempts == 2
    assert len(store.jobs()) == 1, "one job, not a duplicate"
    assert receiver.total() == 1, f"the SEG is delivered once: {receiver.counts}"
    spooled = list((config.spool_dir / "incoming").rglob("*.dcm"))
    assert len(spooled) == len(series.paths)


def _limit_file_size() -> None:
    # A real failing write: the kernel refuses file growth past 1 MiB with EFBIG.
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))


@pytest.mark.slow
def test_spool_write_failure_answers_out_of_resources(
    procs: Processes, server_config: Callable, tmp_path: Path
) -> None:
    path, config = server_config(queue={"workers": 0})
    serve(procs, path, config, preexec_fn=_limit_file_size)
    small = write_ct(tmp_path / "small", slices=2)
    assert storescu(config.listener.port, tmp_path / "small").returncode == 0
    big = write_ct(tmp_path / "big", slices=1, size=1024)  # 2 MiB of pixels
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", config.listener.port, ae_title="MEDSEG")
    assert assoc.is_established
    rsp = assoc.send_c_store(big.paths[0])
    assoc.release()
    assert rsp.Status == 0xA700
    files = sorted(p for p in (config.spool_dir / "incoming").rglob("*") if p.is_file())
    assert [f.stem for f in files] == sorted(small.sop_uids), "nothing partial or extra"
    for f in files:
        assert pydicom.dcmread(f).SOPInstanceUID == f.stem


@pytest.mark.slow
def test_hanging_destination_does_not_hold_up_another(
    procs: Processes, start_receiver: Callable, server_config: Callable, tmp_path: Path
) -> None:
    with socket.socket() as black_hole:  # accepts TCP connections, never answers DICOM
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        receiver = start_receiver(ae_title="ARCHIVE")
        destinations = [
            {
                "name": "hole",
                "ae_title": "HOLE",
                "host": "127.0.0.1",
                "port": black_hole.getsockname()[1],
            },
            {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": receiver.port},
        ]
        path, config = server_config(
            destinations=destinations,
            rules=[{"name": "all", "destinations": ["hole", "archive"]}],
            delivery={"timeout_seconds": 60},
        )
        serve(procs, path, config)
        series = write_ct(tmp_path / "series")
        assert storescu(config.listener.port, tmp_path / "series").returncode == 0
        (seg_file,) = wait_until(receiver.files, 40, "the SEG at the working destination")
        check_seg_references(seg_file, series)
        state = status(path)
        assert state["jobs"]["delivering"] == 1, "still waiting for the hanging destination"
        assert list(state["delivery_backlog"]) == [
            f"hole (HOLE@127.0.0.1:{black_hole.getsockname()[1]})"
        ]
