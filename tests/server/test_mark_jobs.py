"""A reader's marks by C-STORE become prompt jobs: a GSPS line across a lesion, sent after
(or before) its series, comes back as a SEMIAUTOMATIC SEG and a measurement report SR; a mark
on a series medseg does not hold, or one it cannot read, shows in ``medseg status``; a
restart between receipt and processing still gives the result."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medseg.errors import ConfigError, PromptError
from medseg.server.config import parse_config
from medseg.server.jobstore import SqliteJobStore
from medseg.server.markjobs import MarkInbox
from medseg.server.service import Service
from tests.dicom.marks.writers import Annotation, Graphic, GspsWriter
from tests.dicom.series_factory import WrittenSeries
from tests.model.plain_series import seg_mask, write_plain_series
from tests.results.readers import VOLUME, highdicom_groups, highdicom_numbers
from tests.server.peers import (
    CountingReceiver,
    Processes,
    log_text,
    run_medseg,
    storescu,
    wait_until,
    write_ct,
)
from tests.server.test_serve import serve, status

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
MARKS_RULE = {"name": "marks", "modalities": ["CT"], "automatic": False, "marks": True}


def gsps_line(series: WrittenSeries, folder: Path, slice_index: int = 3, row: float = 24.0):
    """A GSPS with one measurement line across the cube on one slice (a RECIST diameter)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = list(series.paths)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    image = uids.index(series.sop_uids[slice_index])
    line = Graphic("POLYLINE", [(15.5, row), (32.5, row)])
    writer = GspsWriter(paths, [Annotation([line], image=image)])
    return writer.write(folder / f"line-{slice_index}-{row}.pr.dcm")


def by_class(files: list[Path]) -> dict[str, list[Path]]:
    """Received files by SOP class (SEG, SR)."""
    found: dict[str, list[Path]] = {}
    for path in files:
        sop_class = str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)
        found.setdefault(sop_class, []).append(path)
    return found


def check_semiautomatic_seg(seg_file: Path, series: WrittenSeries) -> hd.seg.Segmentation:
    seg = hd.seg.segread(seg_file)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    (segment,) = seg.SegmentSequence
    assert segment.SegmentAlgorithmType == "SEMIAUTOMATIC"
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    assert len(frames) == 6, "carried from the marked slice to every slice of the cube (1-6)"
    _, rows, cols = np.nonzero(frames)
    # the whole cube (16-31), give or take the pixel the crop's zoom in and out may add
    for axis in (rows, cols):
        assert set(range(16, 32)) <= set(axis.tolist()) <= set(range(15, 33))
    return seg


def dsrdump(path: Path) -> str:
    tool = shutil.which("dsrdump")
    assert tool, "dcmtk's dsrdump is installed by tests/install-deps.sh"
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    return done.stdout


def check_report(sr_file: Path, seg: hd.seg.Segmentation) -> None:
    text = dsrdump(sr_file)
    assert "Imaging Measurement Report" in text and "Volume" in text
    sr = pydicom.dcmread(sr_file)
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence
    assert int(sr.SeriesNumber) == int(seg.SeriesNumber) + 1


@pytest.mark.slow
def test_series_then_gsps_line_gives_semiautomatic_seg_and_report_at_caller(
    procs: Processes,
    start_receiver: Callable,
    server_config: Callable,
    prompted_bright_model: Path,
    tmp_path: Path,
) -> None:
    receiver = start_receiver()
    peer = {"ae_title": "PACS", "return_port": receiver.port, "return_ae_title": "RECEIVER"}
    path, config = server_config(
        peers=[peer], rules=[MARKS_RULE], model={"path": str(prompted_bright_model)}
    )
    serve(procs, path, config)
    series = write_ct(tmp_path / "series")
    assert storescu(config.listener.port, tmp_path / "series").returncode == 0
    wait_until(lambda: status(path)["series"].get("held") == 1, 60, "the series held for marks")
    first = gsps_line(series, tmp_path / "marks")
    assert storescu(config.listener.port, [first]).returncode == 0

    received = wait_until(lambda: len(receiver.files()) >= 2 and receiver.files(), 90, "results")
    found = by_class(received)
    assert set(found) == {SEG_CLASS, SR_CLASS}, "no automatic SEG: the rule has automatic = false"
    ((seg_file,), (sr_file,)) = found[SEG_CLASS], found[SR_CLASS]
    seg = check_semiautomatic_seg(seg_file, series)
    check_report(sr_file, seg)
    state = wait_until(lambda: (s := status(path))["jobs"]["done"] == 1 and s, 30, "job done")
    assert state["marks"]["counts"] == {"submitted": 1} and state["delivery_backlog"] == {}

    # a second mark object on the same series (a correction): a new result series
    second = gsps_line(series, tmp_path / "marks", slice_index=4, row=20.0)
    assert storescu(config.listener.port, [second]).returncode == 0
    wait_until(lambda: len(receiver.files()) >= 4, 90, "the second SEG and SR")
    segs = by_class(receiver.files())[SEG_CLASS]
    assert len({str(pydicom.dcmread(p).SeriesInstanceUID) for p in segs}) == 2
    wait_until(lambda: status(path)["jobs"]["done"] == 2, 30, "both jobs done")


def test_mark_before_its_series_waits_and_the_automatic_job_is_independent(
    running: Callable,
    server_config: Callable,
    prompted_bright_model: Path,
    counting_receiver: CountingReceiver,
    tmp_path: Path,
) -> None:
    peer = {"ae_title": "PACS", "return_port": counting_receiver.port}
    rule = {**MARKS_RULE, "automatic": True}
    _, config = server_config(
        peers=[peer], rules=[rule], model={"path": str(prompted_bright_model)}
    )
    service: Service = running(config, workers=1)
    series = write_ct(tmp_path / "series")
    mark = gsps_line(series, tmp_path / "marks")
    assert storescu(service.port, [mark]).returncode == 0
    assert service.inbox.waiting(), "the mark waits for its series"
    assert storescu(service.port, tmp_path / "series").returncode == 0
    files = wait_until(
        lambda: counting_receiver.total() >= 3 and counting_receiver.files(), 90, "three results"
    )
    found = by_class(files)
    assert len(found[SEG_CLASS]) == 2 and len(found[SR_CLASS]) == 1
    kinds = {pydicom.dcmread(p).SegmentSequence[0].SegmentAlgorithmType for p in found[SEG_CLASS]}
    assert kinds == {"AUTOMATIC", "SEMIAUTOMATIC"}
    jobs = wait_until(
        lambda: len(service.store.jobs(("done",))) == 2 and service.store.jobs(), 30, "jobs done"
    )
    (prompt_job,) = [j for j in jobs if j.mark_uid]
    assert sorted((d.name, d.file, d.state) for d in prompt_job.deliveries) == [
        ("caller", "report.sr.dcm", "delivered"),
        ("caller", "seg.dcm", "delivered"),
    ]
    (sr_file,) = found[SR_CLASS]
    assert prompt_job.report_uid == str(pydicom.dcmread(sr_file).SOPInstanceUID)

    # the same mark object again: looked at again, but it is the same job (no new result)
    assert storescu(service.port, [mark]).returncode == 0
    wait_until(lambda: not service.inbox.waiting(), 30, "the re-sent mark resolved")
    assert len(service.store.jobs()) == 2 and counting_receiver.total() == 3


def test_mark_on_an_unknown_series_or_unusable_shows_in_status(
    running: Callable,
    server_config: Callable,
    prompted_bright_model: Path,
    tmp_path: Path,
) -> None:
    path, config = server_config(
        rules=[MARKS_RULE],
        model={"path": str(prompted_bright_model)},
        marks={"wait_seconds": 1.0},
    )
    service: Service = running(config, workers=0)
    series = write_ct(tmp_path / "never-sent")  # medseg never sees this series
    unknown = gsps_line(series, tmp_path / "marks")
    broken = GspsWriter(
        list(series.paths), [Annotation([Graphic("POLYLINE", [(1.5, 1.5)])], image=0)]
    ).write(tmp_path / "marks" / "one-point-line.pr.dcm")
    assert storescu(service.port, [unknown, broken]).returncode == 0

    def settled() -> bool:
        return not service.inbox.waiting() and len(service.inbox.all()) == 2

    wait_until(settled, 30, "both marks settled")
    result = run_medseg("status", "-c", str(path))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "marks        unresolved 1, rejected 1" in text, text
    assert f"references series {series.series_uid}, not held here" in text, text
    assert "mark rejected" in text
    assert service.store.jobs() == []
    ds = pydicom.dcmread(series.paths[0])
    assert str(ds.PatientName) not in text and str(ds.PatientID) not in text


@pytest.mark.slow
def test_restart_between_receipt_and_processing_still_gives_the_result(
    procs: Processes,
    counting_receiver: CountingReceiver,
    server_config: Callable,
    prompted_bright_model: Path,
    tmp_path: Path,
) -> None:
    peer = {"ae_title": "PACS", "return_port": counting_receiver.port}
    common = {"peers": [peer], "rules": [MARKS_RULE], "model": {"path": str(prompted_bright_model)}}
    # the first run never completes the series; the second (same spool) does at once
    first_path, config = server_config(**common, completion={"series_idle_seconds": 600.0})
    path, restarted = server_config(**common, name="restarted.toml")
    first = serve(procs, first_path, config, name="serve-1")
    series = write_ct(tmp_path / "series")
    assert storescu(config.listener.port, tmp_path / "series").returncode == 0
    assert storescu(config.listener.port, [gsps_line(series, tmp_path / "marks")]).returncode == 0
    procs.stop(first, signal.SIGKILL)  # before the series completed: nothing processed yet
    store = SqliteJobStore(config.spool_dir / "medseg.db")
    assert store.jobs() == [] and counting_receiver.total() == 0
    assert [r.state for r in MarkInbox(config.spool_dir / "medseg.db").all()] == ["waiting"]

    second = serve(procs, path, restarted, name="serve-2")
    files = wait_until(
        lambda: counting_receiver.total() >= 2 and counting_receiver.files(), 90, "SEG and SR"
    )
    found = by_class(files)
    ((seg_file,), (sr_file,)) = found[SEG_CLASS], found[SR_CLASS]
    check_report(sr_file, check_semiautomatic_seg(seg_file, series))
    assert "mark object" in log_text(second)


def test_rule_keys_for_marks_are_checked_when_the_configuration_loads() -> None:
    peers = [{"ae_title": "PACS"}]
    with pytest.raises(ConfigError, match=r"rules\[0\]\.automatic"):
        parse_config({"peers": peers, "rules": [{"name": "r", "automatic": False}]})
    with pytest.raises(ConfigError, match=r"rules\[0\]\.marks_model"):
        parse_config({"peers": peers, "rules": [{"name": "r", "marks_model": "m.onnx"}]})
    with pytest.raises(ConfigError, match=r"rules\[0\]\.marks: must be a bool"):
        parse_config({"peers": peers, "rules": [{"name": "r", "marks": "yes"}]})
    with pytest.raises(ConfigError, match=r"marks\.wait_seconds"):
        parse_config({"peers": peers, "rules": [{"name": "r"}], "marks": {"wait_seconds": 0}})


def test_a_rule_taking_marks_needs_a_promptable_model_at_start(server_config: Callable) -> None:
    _, config = server_config(rules=[{"name": "r", "marks": True}])
    bright = config.model.path  # the prompt-free test model
    _, config = server_config(rules=[{"name": "r", "marks": True, "marks_model": bright}])
    with pytest.raises(PromptError, match="rule 'r' takes marks"):
        Service(config, workers=0).check_models()


def test_marks_use_the_bundled_promptable_model_when_the_default_takes_no_prompts(
    server_config: Callable,
) -> None:
    """[model].path names a prompt-free model and the rule names none: its automatic jobs
    run that model, its mark jobs the bundled promptable one."""
    from medseg.modelcard import default_model_path

    _, config = server_config(rules=[{"name": "r", "marks": True}])
    paths = Service(config, workers=0).check_models()
    assert Path(config.model.path).resolve() in paths
    assert default_model_path(prompted=True).resolve() in paths


@pytest.mark.slow
def test_the_default_rule_and_bundled_models_turn_a_recist_line_into_its_lesion(
    procs: Processes, start_receiver: Callable, server_config: Callable, tmp_path: Path
) -> None:
    """pacs_config/default.toml's rule and models (no model named: the bundled automatic one
    for the series, the bundled promptable one for the mark): a plain pydicom CT with one
    lesion, then a GSPS with a line across the lesion's widest extent, from MEDSEG-DEMO ->
    the automatic SEG, a SEMIAUTOMATIC SEG of that lesion (Dice >= 0.8) and a report whose
    volume is within 10 % of the truth come back."""
    from medseg.server.config import load_config

    default = load_config(Path(__file__).parents[2] / "pacs_config" / "default.toml")
    (rule,) = default.rules
    receiver = start_receiver()
    peer = {"ae_title": "MEDSEG-DEMO", "return_port": receiver.port, "return_ae_title": "RECEIVER"}
    rule_table = {"name": rule.name, "modalities": list(rule.modalities), "marks": rule.marks}
    path, config = server_config(peers=[peer], rules=[rule_table], model={"path": ""})
    serve(procs, path, config)
    series = write_plain_series(
        tmp_path / "ct", "CT", matrix=320, fov_mm=240.0, slices=30, thickness=2.0
    )
    assert storescu(config.listener.port, series.folder, calling="MEDSEG-DEMO").returncode == 0
    k, r, _ = series.centre
    cols = np.flatnonzero(series.lesion[k, r])
    line = Graphic("POLYLINE", [(cols[0] + 0.0, r + 0.5), (cols[-1] + 1.0, r + 0.5)])
    paths = sorted(series.folder.iterdir())
    mark = GspsWriter(paths, [Annotation([line], image=k)]).write(tmp_path / "line.pr.dcm")
    wait_until(lambda: status(path)["jobs"]["done"] >= 1, 120, "the automatic job")
    assert storescu(config.listener.port, [mark], calling="MEDSEG-DEMO").returncode == 0

    received = wait_until(lambda: len(receiver.files()) >= 3 and receiver.files(), 120, "results")
    found = by_class(received)
    semi = [p for p in found[SEG_CLASS] if seg_mask(p, series.folder, "SEMIAUTOMATIC").any()]
    assert len(found[SEG_CLASS]) == 2 and len(semi) == 1, "the automatic SEG and the mark's"
    mask = seg_mask(semi[0], series.folder, "SEMIAUTOMATIC")
    dice = 2.0 * float((mask & series.lesion).sum()) / float(mask.sum() + series.lesion.sum())
    assert dice >= 0.8, dice
    ((sr_file,),) = (found[SR_CLASS],)
    (group,) = highdicom_groups(sr_file)
    volume = highdicom_numbers(group)[VOLUME, None]
    truth_ml = float(series.lesion.sum()) * (240.0 / 320) ** 2 * 2.0 / 1000.0
    assert abs(volume - truth_ml) <= 0.1 * truth_ml, (volume, truth_ml)
