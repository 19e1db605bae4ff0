"""Models in the service: checked at start, failures that stay failed, providers, the cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from medseg.errors import ConfigError, EngineUnavailableError
from medseg.server.config import ModelConfig, load_config
from medseg.server.jobs import Job
from medseg.server.service import Service
from medseg.server.worker import PipelineSegmenter
from tests.server.peers import (
    REPO_ROOT,
    Processes,
    free_port,
    log_text,
    port_open,
    run_medseg,
    storescu,
    wait_until,
    write_ct,
)
from tests.server.test_serve import status
from tests.tiny_models import make_bright_model, make_prompted_bright_model


def corrupt_model(folder: Path) -> Path:
    """A model whose card is fine but whose ONNX file is not a model at all."""
    path = folder / "corrupt.onnx"
    make_bright_model(path)
    path.write_bytes(b"this is not an ONNX protobuf" * 8)
    return path


# -- 1. errors another attempt cannot fix fail the job at once --------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("corrupt", "cannot load ONNX model"),
        ("aidlite", "aidlite"),  # EngineUnavailableError: the SDK is not installed here
    ],
)
def test_model_error_fails_the_job_at_once_and_shows_in_status(
    running: Callable, server_config: Callable, tmp_path: Path, model: str, expected: str
) -> None:
    if model == "corrupt":
        model_table = {"path": str(corrupt_model(tmp_path / "bad"))}
    else:  # the file and card are fine; the backend is missing
        model_table = {"backend": "aidlite"}
    path, config = server_config(model=model_table, queue={"max_attempts": 3})
    # Listen only, so the start check is the cheap file + card one and the job gets to run.
    service = running(config, workers=0)
    write_ct(tmp_path / "series", slices=3)
    assert storescu(service.port, tmp_path / "series").returncode == 0
    (job,) = wait_until(lambda: service.store.jobs(("queued",)), 30, "the job")

    service.runner.run(job.id)  # what the queue's task does

    failed = service.store.get(job.id)
    assert failed.state == "failed", failed
    assert failed.attempts == 1, "a model error is not retried"
    assert expected in failed.error
    state = status(path)
    assert state["jobs"]["failed"] == 1 and state["jobs"]["queued"] == 0
    assert expected in state["last_errors"][0]["error"]
    text = run_medseg("status", "-c", str(path)).stdout
    assert "failed 1" in text and expected in text


def test_unwritable_output_folder_is_retried_then_failed(
    running: Callable, server_config: Callable, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    rule = {"name": "folder", "destinations": [], "output_folder": str(blocker / "out")}
    _, config = server_config(rules=[rule], queue={"max_attempts": 2, "retry_delay_seconds": 0})
    service = running(config, workers=0)
    write_ct(tmp_path / "series", slices=3)
    assert storescu(service.port, tmp_path / "series").returncode == 0
    (job,) = wait_until(lambda: service.store.jobs(("queued",)), 30, "the job")

    service.runner.run(job.id)
    again = service.store.get(job.id)
    assert again.state == "queued" and again.attempts == 1, "a failed write is retried"
    assert "Error" in again.error
    service.runner.run(job.id)
    final = service.store.get(job.id)
    assert final.state == "failed" and final.attempts == 2


# -- 2. the service refuses to start with a model it cannot use ------------------------------


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize("problem", ["missing", "corrupt", "no-backend"])
def test_broken_model_stops_the_service_at_start(
    server_config: Callable, tmp_path: Path, command: str, problem: str
) -> None:
    model = {
        "missing": {"path": str(tmp_path / "nowhere" / "model.onnx")},
        "corrupt": {"path": str(corrupt_model(tmp_path / "bad"))},
        "no-backend": {"backend": "aidlite"},
    }[problem]
    path, config = server_config(model=model)
    result = run_medseg(command, "-c", str(path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"medseg {command}: error: cannot start: "), lines[0]
    assert not port_open(config.listener.port)
    assert not list(config.spool_dir.glob("incoming/*")), "nothing was received"


def test_second_rule_model_is_checked_too(server_config: Callable, tmp_path: Path) -> None:
    bad = corrupt_model(tmp_path / "bad")
    rules = [{"name": "ct", "modalities": ["CT"]}, {"name": "mr", "model": str(bad)}]
    _, config = server_config(rules=rules)
    service = Service(config, workers=1)
    try:
        with pytest.raises(Exception, match=r"cannot start: .*corrupt\.onnx") as info:
            service.start()
        assert info.value.__class__.__name__ == "ModelError"
        assert service.server is None, "never listened"
    finally:
        service.stop()


def test_rule_models_are_loaded_once_at_start(
    running: Callable, server_config: Callable, tmp_path: Path, bright_model: Path
) -> None:
    other = tmp_path / "other" / "other.onnx"
    make_bright_model(other)
    rules = [
        {"name": "ct", "modalities": ["CT"]},
        {"name": "mr", "modalities": ["MR"], "model": str(other)},
        {"name": "same", "model": str(bright_model.parent / ".." / "models" / "bright.onnx")},
    ]
    _, config = server_config(rules=rules)
    service = running(config, workers=1)
    segmenter = service._segmenter
    assert set(segmenter._models) == {bright_model.resolve(), other.resolve()}


# -- 3. backend and providers from the configuration ----------------------------------------


def test_providers_and_backend_are_validated(server_config: Callable) -> None:
    with pytest.raises(ConfigError, match=r"model\.providers\[1\]: unknown ONNX Runtime"):
        server_config(model={"providers": ["cuda", "gpu"]})
    with pytest.raises(ConfigError, match=r"model\.backend: must be one of"):
        server_config(model={"backend": "tflite"})
    with pytest.raises(ConfigError, match=r"model\.providers: applies to the onnxruntime"):
        server_config(model={"backend": "aidlite", "providers": ["qnn"]})
    _, config = server_config(model={"backend": "onnxruntime", "providers": ["cuda", "cpu"]})
    assert config.model.providers == ("cuda", "cpu")


def test_providers_reach_onnx_runtime(bright_model: Path) -> None:
    segmenter = PipelineSegmenter(ModelConfig(path=str(bright_model), providers=("cpu",)))
    options = segmenter.options(Job(id="1", series_uid="1.2", study_uid="1.3", rule="r"))
    assert options.providers == ("cpu",) and options.backend == "auto"
    assert segmenter.model(options).engine.name == "onnxruntime-cpu"
    segmenter.close()

    cuda = PipelineSegmenter(ModelConfig(path=str(bright_model), providers=("cuda",)))
    options = cuda.options(Job(id="1", series_uid="1.2", study_uid="1.3", rule="r"))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert cuda.model(options).engine.name == "onnxruntime-cuda"
        cuda.close()
    else:  # asked for, so it must not silently fall back to the CPU
        with pytest.raises(EngineUnavailableError, match="CUDAExecutionProvider"):
            cuda.model(options)


# -- 4. the model cache, thresholds, and loading without blocking other models --------------


def test_model_cache_is_keyed_by_the_resolved_path(
    bright_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(bright_model.parent)
    segmenter = PipelineSegmenter(ModelConfig(path=str(bright_model)))
    job = Job(id="1", series_uid="1.2", study_uid="1.3", rule="r")
    spellings = ["", "bright.onnx", "./../models/bright.onnx", str(bright_model)]
    loaded = [segmenter.model(segmenter.options(replace(job, model=m))) for m in spellings]
    assert all(model is loaded[0] for model in loaded), "one load for one file"
    assert list(segmenter._models) == [bright_model.resolve()]
    segmenter.close()


def test_threshold_none_means_the_card_and_a_value_is_kept(
    server_config: Callable, bright_model: Path
) -> None:
    _, config = server_config(rules=[{"name": "default"}, {"name": "low", "threshold": 0.05}])
    assert config.rules[0].threshold is None and config.rules[1].threshold == 0.05
    with pytest.raises(ConfigError, match=r"rules\[0\]\.threshold: must lie in \(0, 1\)"):
        server_config(rules=[{"name": "zero", "threshold": 0.0}])
    segmenter = PipelineSegmenter(ModelConfig(path=str(bright_model)))
    job = Job(id="1", series_uid="1.2", study_uid="1.3", rule="r")
    assert segmenter.options(job).threshold is None
    low = replace(job, threshold=0.05)
    assert segmenter.options(low).threshold == 0.05
    assert Job.from_json(low.to_json()).threshold == 0.05
    assert Job.from_json(job.to_json()).threshold is None


def test_loading_one_model_does_not_block_another(bright_model: Path, tmp_path: Path) -> None:
    other = tmp_path / "other" / "other.onnx"
    make_bright_model(other)
    segmenter = PipelineSegmenter(ModelConfig(path=str(bright_model)))
    job = Job(id="1", series_uid="1.2", study_uid="1.3", rule="r")
    options_a = segmenter.options(job)
    options_b = segmenter.options(replace(job, model=str(other)))
    done: list[str] = []
    # Hold model A's loading lock, as a slow load of A would; B must still load.
    with segmenter._key_lock(options_a.model):
        loader = threading.Thread(target=lambda: done.append(segmenter.model(options_b).path.name))
        loader.start()
        loader.join(timeout=30)
        assert done == ["other.onnx"], "model B waited for model A's load"
    assert segmenter.model(options_a).path == bright_model.resolve()
    segmenter.close()


# -- 6. pacs_config/default.toml with and without the bundled model --------------------------


def copy_tree(target: Path) -> Path:
    """A throwaway copy of the package and pacs_config/, with an empty models/ folder."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "medseg", target / "medseg", ignore=ignore)
    shutil.copytree(REPO_ROOT / "pacs_config", target / "pacs_config", ignore=ignore)
    (target / "models").mkdir()
    return target


@pytest.mark.slow
def test_default_config_needs_the_bundled_model_then_runs(procs: Processes, tmp_path: Path) -> None:
    tree = copy_tree(tmp_path / "tree")
    workdir = tmp_path / "run"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "medseg",
        "serve",
        "-c",
        str(tree / "pacs_config" / "default.toml"),
    ]
    args += ["--port", str(port)]

    result = subprocess.run(args, capture_output=True, text=True, cwd=workdir, env=env, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "sam2unet_phantom.onnx" in lines[0] and "missing" in lines[0], lines[0]
    assert str(tree / "models") in lines[0], "the copy's own models folder is the one checked"
    assert not port_open(port)

    make_bright_model(tree / "models" / "sam2unet_phantom.onnx")
    result = subprocess.run(args, capture_output=True, text=True, cwd=workdir, env=env, timeout=60)
    line = result.stderr.strip()
    assert result.returncode != 0 and len(line.splitlines()) == 1, result.stderr
    assert "sam2unet_prompt.onnx" in line and "missing" in line, "its rule takes marks"
    make_prompted_bright_model(tree / "models" / "sam2unet_prompt.onnx", (352, 352))
    proc = procs.start(args, "default-serve", env=env, cwd=workdir)
    wait_until(lambda: port_open(port) or proc.poll() is not None, 60, "medseg serve")
    assert proc.poll() is None, log_text(proc)
    ae = AE(ae_title="MEDSEG-DEMO")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
    assert assoc.is_established, "the default configuration allows MEDSEG-DEMO"
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    assert "sam2unet_phantom.onnx ready" in log_text(proc)
    assert "sam2unet_prompt.onnx ready" in log_text(proc), "and the promptable one for marks"
    assert (workdir / "medseg-data").is_dir(), "spool in the folder medseg was started in"
    config = load_config(tree / "pacs_config" / "default.toml")
    assert config.rules and all(rule.model == "" for rule in config.rules)
    assert all(rule.marks for rule in config.rules) and config.model.prompt_path == ""


# -- 7. `medseg status` for an administrator -------------------------------------------------


def test_status_before_the_first_serve_says_so_and_creates_nothing(
    server_config: Callable, tmp_path: Path
) -> None:
    path, config = server_config()
    result = run_medseg("status", "-c", str(path))
    assert result.returncode == 3
    assert "'medseg serve' has not run with this configuration" in result.stderr
    assert str(config.spool_dir / "medseg.db") in result.stderr
    assert "Traceback" not in result.stderr
    assert not config.spool_dir.exists()


@pytest.mark.slow
def test_status_shows_queue_jobs_errors_and_backlog(
    running: Callable, server_config: Callable, tmp_path: Path
) -> None:
    down = free_port()  # nothing listens here: the delivery stays in the backlog
    peers = [{"ae_title": "PACS", "return_port": down, "return_ae_title": "PACSRET"}]
    rules = [
        {"name": "ct", "modalities": ["CT"]},
        # valid when the configuration loads, fails when the job runs: the series states
        # no window of its own
        {"name": "mr-bad", "modalities": ["MR"], "window": "dicom"},
    ]
    path, config = server_config(
        peers=peers,
        rules=rules,
        delivery={"initial_backoff_seconds": 30, "max_backoff_seconds": 60},
    )
    service = running(config, workers=1)
    ct = write_ct(tmp_path / "ct", slices=3)
    mr = write_ct(tmp_path / "mr", slices=3, modality="MR", seed=1, window=None)
    for folder in ("ct", "mr"):
        assert storescu(service.port, tmp_path / folder).returncode == 0
    wait_until(lambda: service.store.jobs(("failed",)), 60, "the MR job to fail")
    wait_until(
        lambda: any(d.error for j in service.store.jobs() for d in j.deliveries),
        60,
        "the first delivery attempt",
    )
    result = run_medseg("status", "-c", str(path))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    head = {line.split(maxsplit=1)[0]: line for line in text.splitlines() if line[:1] != " "}
    assert "delivering 1" in head["jobs"] and "failed 1" in head["jobs"], text
    assert "message(s) waiting" in head["queue"] and "job(s) running" in head["queue"]
    # The failed MR job's never-made SEG is not part of the destination's backlog.
    assert f"caller (PACSRET@127.0.0.1:{down}): 1 waiting" in text, text
    errors = text.split("errors       newest first\n")[1].splitlines()
    assert "job failed (rule mr-bad" in errors[0] and mr.series_uid in errors[0], text
    assert "no WindowCenter" in errors[0]
    assert f"send to caller pending (series {ct.series_uid}, attempt 1)" in errors[1], text
    state = status(path)
    assert state["delivery_backlog"] == {f"caller (PACSRET@127.0.0.1:{down})": 1}
