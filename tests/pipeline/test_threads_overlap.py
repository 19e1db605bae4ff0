"""ONNX Runtime thread defaults, and preprocessing of batch k+1 overlapping inference of k.

The overlap test counts events, never seconds: inference of batch k waits until the
preparation of batch k+1 has *started*. A pipeline that prepares the next batch only after
inference returns can never satisfy that, so it fails (the wait's deadline is only a bound
that keeps such a pipeline from hanging the suite).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

import medseg.pipeline as pipeline
from medseg.engine import open_engine
from medseg.engine.onnx_runtime import physical_cores
from medseg.pipeline import SegmentOptions, segment_volume
from tests.pipeline.helpers import balls, make_volume
from tests.tiny_models import make_bright_model


def _fake_cpus(root: Path, cores: list[tuple[int, int]]) -> Path:
    """A sysfs-like tree: logical CPU n belongs to (package, core) ``cores[n]``."""
    for cpu, (package, core) in enumerate(cores):
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_physical_cores_counts_cores_not_hyperthreads(tmp_path: Path) -> None:
    # 2 cores with 2 hyper-threads each (Linux numbers siblings 0,2 and 1,3)
    root = _fake_cpus(tmp_path / "cpu", [(0, 0), (0, 1), (0, 0), (0, 1)])
    no_quota = tmp_path / "no-cpu.max"
    assert physical_cores(root, allowed={0, 1, 2, 3}, cpu_max=no_quota) == 2
    assert physical_cores(root, allowed={0, 2}, cpu_max=no_quota) == 1  # one core's 2 threads
    assert physical_cores(root, allowed={1, 2}, cpu_max=no_quota) == 2
    two_sockets = _fake_cpus(tmp_path / "two", [(0, 0), (1, 0)])  # same core id, two packages
    assert physical_cores(two_sockets, allowed={0, 1}, cpu_max=no_quota) == 2


def test_physical_cores_without_topology_counts_allowed_cpus(tmp_path: Path) -> None:
    no_quota = tmp_path / "no-cpu.max"
    assert physical_cores(tmp_path / "missing", allowed={0, 1, 5}, cpu_max=no_quota) == 3


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", 8),
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),
        ("50000 100000", 1),
        ("garbage", 8),
    ],
)
def test_physical_cores_respects_a_cgroup_cpu_quota(
    tmp_path: Path, cpu_max: str, expected: int
) -> None:
    root = _fake_cpus(tmp_path / "cpu", [(0, core) for core in range(8)])
    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max)
    assert physical_cores(root, allowed=range(8), cpu_max=quota) == expected


def test_default_session_uses_the_physical_cores_and_one_inter_op_thread(tmp_path: Path) -> None:
    path = tmp_path / "bright.onnx"
    card = make_bright_model(path, size=(16, 16))
    cores = physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    for threads, intra in ((None, cores), (3, 3)):
        engine = open_engine(path, card, threads=threads)
        try:
            session_options = engine._session.get_session_options()
            assert session_options.intra_op_num_threads == intra
            assert session_options.inter_op_num_threads == 1
        finally:
            engine.close()


class _GatedEngine:
    """The real engine, but batch k's inference waits for batch k+1's preparation to start."""

    def __init__(self, engine, started: list[threading.Event], log: list[str]) -> None:
        self.inner, self.started, self.log = engine, started, log
        self.name = engine.name
        self.calls = 0
        self.overlapped: list[bool] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        k = self.calls
        self.calls += 1
        self.log.append(f"infer {k}")
        if k + 1 < len(self.started):
            self.overlapped.append(self.started[k + 1].wait(timeout=10))
        return self.inner.run(batch)

    def close(self) -> None:
        self.inner.close()


def test_preparing_the_next_batch_overlaps_inference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = (7, 24, 24)
    truth = balls(shape, [(3, 12, 12)], 5.0)
    volume = make_volume(np.where(truth, 300.0, 0.0))
    path = tmp_path / "bright.onnx"
    card = make_bright_model(path, size=(24, 24))
    options = SegmentOptions(window="150/300", batch_size=2)  # batches of 2, 2, 2, 1 slices
    batches = 4
    log: list[str] = []
    started = [threading.Event() for _ in range(batches)]
    real_prepare = pipeline._prepare

    def prepare(voxels, batch, window, card, slice_spacing, **kw):
        index = batch[0].k // options.batch_size
        log.append(f"prepare {index}")
        started[index].set()
        return real_prepare(voxels, batch, window, card, slice_spacing, **kw)

    engine = open_engine(path, card, threads=1)
    try:
        reference, _ = segment_volume(volume, engine, card, options)
        gated = _GatedEngine(engine, started, log)
        monkeypatch.setattr(pipeline, "_prepare", prepare)
        mask, _ = segment_volume(volume, gated, card, options)
    finally:
        engine.close()
    np.testing.assert_array_equal(mask, reference)
    assert gated.overlapped == [True] * (batches - 1)
    assert sorted(log) == sorted(
        [f"prepare {i}" for i in range(batches)] + [f"infer {i}" for i in range(batches)]
    )
    assert [e for e in log if e.startswith("infer")] == [f"infer {i}" for i in range(batches)]
    # batch k+1 is prepared before batch k's inference returns, and never more than one ahead
    for k in range(batches - 1):
        assert log.index(f"prepare {k + 1}") < log.index(f"infer {k + 1}")
    for k in range(2, batches):
        assert log.index(f"prepare {k}") > log.index(f"infer {k - 2}")


class _Announcing:
    """The real engine, announcing when each batch's inference starts."""

    def __init__(self, engine, inferring: list[threading.Event]) -> None:
        self.inner, self.inferring = engine, inferring
        self.name = engine.name
        self.calls = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.inferring[self.calls].set()
        self.calls += 1
        return self.inner.run(batch)


@pytest.mark.parametrize("overlap", [True, False])
def test_post_processing_of_a_batch_overlaps_the_next_inference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool
) -> None:
    """Batch k's post-processing waits for batch k+1's inference to start: only a
    pipeline that post-processes beside inference sees it start (the wait is bounded)."""
    volume = make_volume(np.where(balls((7, 24, 24), [(3, 12, 12)], 5.0), 300.0, 0.0))
    path = tmp_path / "bright.onnx"
    card = make_bright_model(path, size=(24, 24))
    options = SegmentOptions(window="150/300", batch_size=2, overlap=overlap)
    inferring = [threading.Event() for _ in range(4)]  # batches of 2, 2, 2, 1 slices
    real = pipeline.to_probabilities
    seen: list[bool] = []

    def to_probabilities(output, shape, card):
        k = len(seen)
        seen.append(inferring[k + 1].wait(timeout=0.5 if not overlap else 10) if k < 3 else True)
        return real(output, shape, card)

    engine = open_engine(path, card, threads=1)
    try:
        reference = pipeline.segment_volume_result(volume, engine, card, options)
        monkeypatch.setattr(pipeline, "to_probabilities", to_probabilities)
        result = pipeline.segment_volume_result(
            volume, _Announcing(engine, inferring), card, options
        )
    finally:
        engine.close()
    assert seen[:3] == [overlap] * 3
    np.testing.assert_array_equal(result.probabilities, reference.probabilities)


@pytest.mark.parametrize(
    "extra",
    [{"slice_context_mm": 2.0}, {"pixel_spacing_mm": 0.5}, {"slice_context_mm": 3.0}],
    ids=["context", "windows", "context-blended"],
)
def test_the_result_is_the_same_with_and_without_overlap(tmp_path: Path, extra: dict) -> None:
    from dataclasses import replace

    from medseg.modelcard import ModelCard

    rng = np.random.default_rng(3)
    voxels = rng.normal(40.0, 60.0, size=(9, 40, 56)) + 250.0 * balls((9, 40, 56), [(4, 20, 28)], 8)
    volume = make_volume(voxels.astype(np.float32))
    path = tmp_path / "bright.onnx"
    card = make_bright_model(path, size=(24, 24), gain=8.0)
    card = ModelCard.from_dict({**card.to_dict(), **extra})
    options = SegmentOptions(window="150/300", batch_size=3, test_time_flips=("horizontal",))
    engine = open_engine(path, card, threads=1)
    try:
        together = pipeline.segment_volume_result(volume, engine, card, options)
        apart = pipeline.segment_volume_result(
            volume, engine, card, replace(options, overlap=False)
        )
    finally:
        engine.close()
    assert together.mask.any()
    np.testing.assert_array_equal(together.probabilities, apart.probabilities)
    np.testing.assert_array_equal(together.mask, apart.mask)
