"""The ONNX Runtime backend and backend selection, on tiny models with SAM2-UNet's I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.engine import backend_for, open_engine
from medseg.engine.batching import run_in_fixed_batches
from medseg.errors import ConfigError, EngineUnavailableError, ModelError
from medseg.modelcard import ModelCard
from tests.pipeline.helpers import bright_logits, make_nhwc_model
from tests.tiny_models import make_bright_model

SIZE = (32, 40)


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, *SIZE)).astype(np.float32)


def test_onnxruntime_runs_the_tiny_model_exactly(tmp_path: Path) -> None:
    path = tmp_path / "bright.onnx"
    card = make_bright_model(path, size=SIZE)
    engine = open_engine(path, card, threads=1)
    try:
        batch = _batch(3)
        out = engine.run(batch)
        assert engine.name == "onnxruntime-cpu"
        assert out.shape == (3, 1, *SIZE) and out.dtype == np.float32
        np.testing.assert_allclose(out, bright_logits(batch), rtol=1e-5, atol=1e-4)
    finally:
        engine.close()
    with pytest.raises(ModelError, match="after close"):
        engine.run(_batch(1))


def test_fixed_batch_model_gets_split_and_padded_batches(tmp_path: Path) -> None:
    path = tmp_path / "static.onnx"
    card = make_bright_model(path, size=SIZE, static_batch=2)
    engine = open_engine(path, card)
    try:
        for n in (1, 2, 5):  # a static-2 graph rejects any other batch: success proves splitting
            batch = _batch(n, seed=n)
            np.testing.assert_allclose(engine.run(batch), bright_logits(batch), atol=1e-4)
    finally:
        engine.close()


def test_run_in_fixed_batches_pads_the_last_chunk_and_drops_the_padding() -> None:
    seen: list[tuple[int, ...]] = []

    def run(chunk: np.ndarray) -> np.ndarray:
        seen.append(chunk.shape)
        return chunk * 2

    data = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    out = run_in_fixed_batches(run, data, 3)
    assert seen == [(3, 2), (3, 2), (3, 2)]
    np.testing.assert_array_equal(out, data * 2)


def test_nhwc_model_receives_transposed_input(tmp_path: Path) -> None:
    path = tmp_path / "nhwc.onnx"
    card = make_nhwc_model(path, size=SIZE)
    engine = open_engine(path, card)
    try:
        batch = _batch(2)
        batch[:, 1:] = -100.0  # only channel 0 may reach the output: proves the transpose
        out = engine.run(batch)
        assert out.shape == (2, 1, *SIZE)
        np.testing.assert_allclose(out, bright_logits(batch), rtol=1e-5, atol=1e-4)
    finally:
        engine.close()


def test_model_that_does_not_match_its_card_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "bright.onnx"
    make_bright_model(path, size=SIZE)
    wrong = ModelCard(name="wrong", input_size=(64, 64))
    with pytest.raises(ModelError, match="does not match the model card"):
        open_engine(path, wrong)


def test_corrupt_model_file_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        open_engine(path, ModelCard(name="x"))


def test_missing_model_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        open_engine(tmp_path / "absent.onnx", ModelCard(name="x"))


def test_provider_that_is_not_installed_names_the_package(tmp_path: Path) -> None:
    path = tmp_path / "bright.onnx"
    card = make_bright_model(path, size=SIZE)
    with pytest.raises(EngineUnavailableError, match="onnxruntime-qnn"):
        open_engine(path, card, providers=["qnn"])
    with pytest.raises(EngineUnavailableError, match="onnxruntime-gpu"):
        open_engine(path, card, providers=["CUDAExecutionProvider"])


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("m.onnx", "onnxruntime"),
        ("m.qnn236.ctx.bin", "aidlite"),
        ("m.bin", "aidlite"),
        ("M.DLC", "aidlite"),
    ],
)
def test_backend_follows_the_extension(name: str, backend: str) -> None:
    assert backend_for(Path(name)) == backend


def test_backend_by_name_overrides_the_extension() -> None:
    assert backend_for(Path("m.bin"), "onnxruntime") == "onnxruntime"
    with pytest.raises(ConfigError, match="unknown backend"):
        backend_for(Path("m.onnx"), "tensorflow")
    with pytest.raises(ConfigError, match="cannot tell the backend"):
        backend_for(Path("m.pt"))


def test_aidlite_backend_without_the_sdk_says_how_to_install_it(tmp_path: Path) -> None:
    path = tmp_path / "m.qnn236.ctx.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(EngineUnavailableError, match="aid-pkg install aidlite-sdk aidlite-qnn"):
        open_engine(path, ModelCard(name="npu", layout="NHWC"))


def test_card_batch_pins_a_dynamic_model_to_that_batch(tmp_path: Path) -> None:
    path = tmp_path / "dynamic.onnx"
    make_bright_model(path, size=SIZE)
    card = ModelCard(name="pinned", input_size=SIZE, batch=2)
    engine = open_engine(path, card)
    try:
        raw = engine._session.run(None, {"image": _batch(2)})[0]
        assert raw.shape[0] == 2
        with pytest.raises(Exception, match=r"(?i)dimension|shape|invalid"):
            engine._session.run(None, {"image": _batch(3)})  # pinned: 3 is refused
        batch = _batch(5)
        np.testing.assert_allclose(engine.run(batch), bright_logits(batch), atol=1e-4)
    finally:
        engine.close()
