"""The service in-process: routing of unmatched series, output folders, retention, SIGTERM."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from medseg.errors import PromptError
from medseg.server.jobstore import SqliteJobStore
from medseg.server.service import Service
from tests.server.peers import Processes, log_text, make_slow_model, storescu, wait_until, write_ct
from tests.server.test_serve import serve, status


def test_unmatched_series_is_kept_and_not_processed(
    running: Callable, server_config: Callable, tmp_path: Path
) -> None:
    path, config = server_config(rules=[{"name": "mr-only", "modalities": ["MR"]}])
    service = running(config, workers=0)
    series = write_ct(tmp_path / "series", slices=3)
    assert storescu(service.port, tmp_path / "series").returncode == 0
    wait_until(
        lambda: service.tracker.get(series.series_uid).state == "unmatched", 30, "completion"
    )
    assert service.store.jobs() == []
    assert len(service.spool.series_files(series.study_uid, series.series_uid)) == 3
    assert status(path)["series"] == {"unmatched": 1}


def test_output_folder_gets_the_seg_and_retention_cleans_up(
    running: Callable, server_config: Callable, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    rule = {"name": "folder", "destinations": [], "output_folder": str(out)}
    _, config = server_config(rules=[rule], storage={"retention_hours": 1.0})
    service = running(config, workers=1)
    series = write_ct(tmp_path / "series")
    assert storescu(service.port, tmp_path / "series").returncode == 0
    (job,) = wait_until(lambda: service.store.jobs(("done",)), 60, "the job to finish")
    (seg_file,) = out.glob("*.seg.dcm")
    seg = hd.seg.segread(seg_file)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert service.spool.job_dir(job.id).is_dir()

    assert service.apply_retention(now=time.time() + 1800) == 0, "within retention: kept"
    assert service.apply_retention(now=time.time() + 2 * 3600) == 2  # the job and the series
    assert not service.spool.job_dir(job.id).exists()
    assert service.spool.series_files(series.study_uid, series.series_uid) == []
    assert service.store.jobs() == [] and service.tracker.get(series.series_uid) is None
    assert seg_file.is_file(), "the output folder is the user's: never cleaned"


def test_rule_box_prompt_segments_its_lesion_through_the_volume(
    running: Callable, server_config: Callable, prompted_bright_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    box = "box=16,16,23,31@3"  # the left half of the bright cube (slices 1-6) on slice 3
    rule = {"name": "boxed", "prompts": [box], "destinations": [], "output_folder": str(out)}
    _, config = server_config(rules=[rule], model={"path": str(prompted_bright_model)})
    service = running(config, workers=1)
    series = write_ct(tmp_path / "series")
    assert storescu(service.port, tmp_path / "series").returncode == 0
    (job,) = wait_until(lambda: service.store.jobs(("done",)), 60, "the job to finish")
    assert job.prompts == (box,), "the rule's prompts travel on the stored job record"
    (seg_file,) = out.glob("*.seg.dcm")
    seg = hd.seg.segread(seg_file)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    assert len(frames) == 6, "carried from slice 3 to every slice of the cube (1-6)"
    _, rows, cols = np.nonzero(frames)
    # the whole cube (16-31), give or take the pixel the crop's zoom in and out may add
    for axis in (rows, cols):
        assert set(range(16, 32)) <= set(axis.tolist()) <= set(range(15, 33))


def test_a_rule_with_prompts_and_a_prompt_free_model_stops_the_start(
    server_config: Callable, tmp_path: Path
) -> None:
    _, plain = server_config()
    rule = {"name": "boxed", "prompts": ["box=1,1,5,5@2"], "output_folder": str(tmp_path)}
    # the rule names the prompt-free model itself (naming none, its prompted jobs would run
    # the bundled promptable model: tests/server/test_mark_jobs.py)
    _, config = server_config(rules=[{**rule, "model": plain.model.path}])
    service = Service(config, workers=0)
    with pytest.raises(PromptError, match="rule 'boxed' has prompts: model test-bright takes no"):
        service.check_models()


@pytest.mark.slow
def test_sigterm_lets_the_running_job_finish(
    procs: Processes, server_config: Callable, tmp_path: Path
) -> None:
    slow = make_slow_model(tmp_path / "slow" / "slow.onnx", matmuls=80)
    rule = {"name": "folder", "destinations": [], "output_folder": str(tmp_path / "out")}
    path, config = server_config(rules=[rule], model={"path": str(slow), "threads": 1})
    proc = serve(procs, path, config)
    write_ct(tmp_path / "series")
    assert storescu(config.listener.port, tmp_path / "series").returncode == 0
    store = SqliteJobStore(config.spool_dir / "medseg.db")
    wait_until(lambda: store.jobs(("running",)), 60, "the job to start running")
    assert procs.stop(proc, signal.SIGTERM, timeout=60) == 0, log_text(proc)
    (job,) = store.jobs()
    assert job.state == "done" and job.attempts == 1, job
    assert len(list((tmp_path / "out").glob("*.seg.dcm"))) == 1


@pytest.mark.slow
def test_failed_job_stays_visible_with_its_error(
    running: Callable, server_config: Callable, tmp_path: Path
) -> None:
    # "dicom" loads (a valid spec) but the series states no window: the job fails
    rule = {"name": "bad-window", "window": "dicom", "destinations": []}
    rule["output_folder"] = str(tmp_path / "out")
    path, config = server_config(rules=[rule])
    service = running(config, workers=1)
    write_ct(tmp_path / "series", slices=3, window=None)
    assert storescu(service.port, tmp_path / "series").returncode == 0
    (job,) = wait_until(lambda: service.store.jobs(("failed",)), 60, "the job to fail")
    assert job.attempts == 1, "a configuration error is not retried"
    assert "no WindowCenter" in job.error
    state = status(path)
    assert state["failed"] == 1
    assert state["last_errors"][0]["job"] == job.id
    assert "no WindowCenter" in state["last_errors"][0]["error"]
    assert not (tmp_path / "out").exists()


def test_series_over_several_associations_is_one_job(
    running: Callable, server_config: Callable, tmp_path: Path
) -> None:
    _, config = server_config(completion={"series_idle_seconds": 2.0})
    service = running(config, workers=0)
    series = write_ct(tmp_path / "series", slices=6)
    for half in (series.paths[:3], series.paths[3:]):
        assert storescu(service.port, list(half)).returncode == 0
    (job,) = wait_until(lambda: service.store.jobs(), 30, "the series to complete")
    assert job.series_uid == series.series_uid
    tracked = service.tracker.get(series.series_uid)
    assert tracked.received == 6 and tracked.state == "submitted" and tracked.job_id == job.id
    assert len(service.spool.series_files(series.study_uid, series.series_uid)) == 6


def send_pynetdicom(port: int, path: Path) -> int:
    """C-STORE one file with a pynetdicom SCU (dcmtk's storescu does not propose SEG)."""
    import pydicom
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def write_seg_like(path: Path, study_uid: str) -> tuple[str, str]:
    """A Segmentation Storage instance (header only: the listener stores bytes as sent)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pynetdicom.sop_class import SegmentationStorage

    ds = Dataset()
    ds.SOPClassUID = SegmentationStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SEG"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return ds.SeriesInstanceUID, ds.SOPInstanceUID


def test_catch_all_rule_never_turns_a_seg_into_a_job(
    running: Callable, server_config: Callable, tmp_path: Path
) -> None:
    rule = {"name": "any", "modalities": [], "destinations": [], "output_folder": str(tmp_path)}
    _, config = server_config(rules=[rule])
    service = running(config, workers=0)
    ct = write_ct(tmp_path / "ct", slices=3)
    seg_series, seg_sop = write_seg_like(tmp_path / "seg.dcm", ct.study_uid)
    assert storescu(service.port, ct.paths).returncode == 0
    assert send_pynetdicom(service.port, tmp_path / "seg.dcm") == 0x0000
    wait_until(lambda: service.tracker.get(seg_series).state == "unmatched", 30, "the SEG")
    (job,) = wait_until(lambda: service.store.jobs(), 30, "the CT series' job")
    assert job.series_uid == ct.series_uid, "the catch-all rule still takes image series"
    assert [p.stem for p in service.spool.series_files(ct.study_uid, seg_series)] == [seg_sop]
    assert service.tracker.get(ct.series_uid).is_image
