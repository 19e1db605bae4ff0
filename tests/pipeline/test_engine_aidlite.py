"""The AidLite (Qualcomm NPU) adapter against a fake ``aidlite`` module.

The fake records every SDK call and checks what a real SDK needs: the documented call
order, float32 contiguous NHWC tensors of the declared shape, and ``destory`` at the end.
It computes the bright test model so the returned values can be checked too.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medseg.engine import open_engine
from medseg.engine.aidlite_npu import framework_type_name
from medseg.errors import EngineUnavailableError, ModelError
from medseg.modelcard import ModelCard
from tests.pipeline.helpers import bright_logits

SIZE = (16, 24)


class FakeSdk:
    """State shared by the fake module's objects: the call log and injected failures."""

    def __init__(self, failures: dict[str, Any] | None = None) -> None:
        self.calls: list[str] = []
        self.failures = failures or {}
        self.in_shape: list[int] | None = None
        self.in_shapes: list[list[int]] = []
        self.image: np.ndarray | None = None
        self.prompt: np.ndarray | None = None
        self.config: Any = None
        self.output: np.ndarray | None = None
        self.reuse_buffer = False  # hand out one output buffer, overwritten by each input
        self.invoke_delay = 0.0  # widen the set/invoke/get window for the threading test
        self.in_flight = 0  # set_input_tensor seen, get_output_tensor not yet
        self.overlaps = 0  # a second set_input_tensor while one was in flight
        self.guard = threading.Lock()

    def result(self, name: str, ok: Any) -> Any:
        self.calls.append(name)
        return self.failures.get(name, ok)


def make_fake_aidlite(sdk: FakeSdk) -> types.ModuleType:
    module = types.ModuleType("aidlite")
    module.ImplementType = Enum("ImplementType", "TYPE_LOCAL TYPE_FAST TYPE_REMOTE")
    module.FrameworkType = Enum("FrameworkType", "TYPE_QNN TYPE_QNN223 TYPE_QNN236 TYPE_SNPE2")
    module.AccelerateType = Enum("AccelerateType", "TYPE_CPU TYPE_GPU TYPE_DSP")
    module.DataType = Enum("DataType", "TYPE_UINT8 TYPE_FLOAT32")

    class Config:
        @staticmethod
        def create_instance() -> Any:
            sdk.config = types.SimpleNamespace()
            return sdk.result("Config.create_instance", sdk.config)

    class Interpreter:
        def init(self) -> int:
            return sdk.result("init", 0)

        def load_model(self) -> int:
            return sdk.result("load_model", 0)

        def set_input_tensor(self, index: int, array: np.ndarray) -> int:
            assert index < len(sdk.in_shapes)
            assert isinstance(array, np.ndarray) and array.dtype == np.float32
            assert array.flags.c_contiguous
            expected = sdk.in_shapes[index]
            assert list(array.shape) == expected, (array.shape, expected)
            if index == 1:  # a promptable model's prompt maps, after the image
                sdk.prompt = array
                return sdk.result("set_input_tensor(1)", 0)
            with sdk.guard:
                sdk.in_flight += 1
                sdk.overlaps += sdk.in_flight > 1
            sdk.image = array
            sdk.prompt = None
            return sdk.result("set_input_tensor", 0)

        def invoke(self) -> int:
            if sdk.invoke_delay:
                time.sleep(sdk.invoke_delay)
            nchw = sdk.image.transpose(0, 3, 1, 2)  # the fake model is NHWC like Model Farm's
            logits = bright_logits(nchw)
            if sdk.prompt is not None:  # the fake promptable model: bright inside the prompt
                inside = sdk.prompt.transpose(0, 3, 1, 2)[:, :1] > 0
                logits = np.where(inside, logits, -10.0).astype(np.float32)
            flat = logits.ravel()  # flat, as the SDK returns it
            if sdk.reuse_buffer and sdk.output is not None and sdk.output.size == flat.size:
                sdk.output[...] = flat
            else:
                sdk.output = flat
            return sdk.result("invoke", 0)

        def get_output_tensor(self, index: int) -> Any:
            assert index == 0
            with sdk.guard:
                sdk.in_flight -= 1
            return sdk.result("get_output_tensor", sdk.output)

        def destory(self) -> int:
            return sdk.result("destory", 0)

    class Model:
        @staticmethod
        def create_instance(path: str) -> Any:
            assert isinstance(path, str)
            return sdk.result("Model.create_instance", Model())

        def set_model_properties(
            self, in_shapes: Any, in_type: Any, out_shapes: Any, out_type: Any
        ) -> Any:
            assert in_type is module.DataType.TYPE_FLOAT32
            assert out_type is module.DataType.TYPE_FLOAT32
            sdk.in_shape = in_shapes[0]
            sdk.in_shapes = [list(s) for s in in_shapes]
            return sdk.result("set_model_properties", None)

    class InterpreterBuilder:
        @staticmethod
        def build_interpretper_from_model_and_config(model: Any, config: Any) -> Any:
            assert isinstance(model, Model) and config is sdk.config
            return sdk.result("build_interpretper_from_model_and_config", Interpreter())

    module.Config, module.Model, module.InterpreterBuilder = Config, Model, InterpreterBuilder
    return module


OPEN_SEQUENCE = [
    "Config.create_instance",
    "Model.create_instance",
    "set_model_properties",
    "build_interpretper_from_model_and_config",
    "init",
    "load_model",
]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "sam2unet.qnn236.ctx.bin"
    path.write_bytes(b"\0" * 64)
    return path


def _card(**fields: Any) -> ModelCard:
    return ModelCard(name="npu", input_size=SIZE, layout="NHWC", **fields)


def _install(monkeypatch: pytest.MonkeyPatch, failures: dict[str, Any] | None = None) -> FakeSdk:
    sdk = FakeSdk(failures)
    monkeypatch.setitem(sys.modules, "aidlite", make_fake_aidlite(sdk))
    return sdk


def test_aidlite_call_sequence_config_and_outputs(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    sdk = _install(monkeypatch)
    engine = open_engine(model_file, _card(quantized=True))
    aidlite = sys.modules["aidlite"]
    assert sdk.calls == OPEN_SEQUENCE
    assert sdk.config.implement_type is aidlite.ImplementType.TYPE_LOCAL
    assert sdk.config.framework_type is aidlite.FrameworkType.TYPE_QNN236  # pinned by file name
    assert sdk.config.accelerate_type is aidlite.AccelerateType.TYPE_DSP
    assert sdk.config.is_quantify_model == 1
    assert sdk.in_shape == [1, *SIZE, 3]
    batch = np.random.default_rng(0).normal(size=(3, 3, *SIZE)).astype(np.float32)
    out = engine.run(batch)
    assert out.shape == (3, 1, *SIZE)
    np.testing.assert_allclose(out, bright_logits(batch), rtol=1e-5, atol=1e-4)
    assert (
        sdk.calls[len(OPEN_SEQUENCE) :] == ["set_input_tensor", "invoke", "get_output_tensor"] * 3
    )
    engine.close()
    engine.close()  # idempotent: destory only once
    assert sdk.calls[-1] == "destory" and sdk.calls.count("destory") == 1
    assert engine.name == "aidlite-qnn236-dsp"


def test_aidlite_fixed_batch_from_the_card_is_padded(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    sdk = _install(monkeypatch)
    engine = open_engine(model_file, _card(batch=2))
    batch = np.random.default_rng(1).normal(size=(3, 3, *SIZE)).astype(np.float32)
    out = engine.run(batch)
    assert sdk.in_shape == [2, *SIZE, 3]
    assert sdk.calls.count("invoke") == 2  # 3 items in batches of 2: one padded call
    np.testing.assert_allclose(out, bright_logits(batch), rtol=1e-5, atol=1e-4)
    engine.close()


def test_aidlite_float_model_is_not_flagged_quantized(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sdk = _install(monkeypatch)
    path = tmp_path / "plain.ctx.bin"
    path.write_bytes(b"\0")
    open_engine(path, _card()).close()
    aidlite = sys.modules["aidlite"]
    assert sdk.config.is_quantify_model == 0
    assert sdk.config.framework_type is aidlite.FrameworkType.TYPE_QNN


@pytest.mark.parametrize(
    ("call", "bad", "message"),
    [
        ("Config.create_instance", None, "Config.create_instance"),
        ("Model.create_instance", None, "Model.create_instance"),
        ("set_model_properties", 1, "set_model_properties"),
        ("build_interpretper_from_model_and_config", None, "build_interpretper"),
        ("init", 1, r"init\(\)"),
        ("init", None, r"init\(\)"),
        ("load_model", -1, "load_model"),
    ],
)
def test_aidlite_open_failures_name_the_call(
    monkeypatch: pytest.MonkeyPatch, model_file: Path, call: str, bad: Any, message: str
) -> None:
    sdk = _install(monkeypatch, {call: bad})
    with pytest.raises(ModelError, match=message):
        open_engine(model_file, _card())
    if call in ("init", "load_model"):
        assert sdk.calls[-1] == "destory"  # the half-opened context is freed


@pytest.mark.parametrize(
    ("call", "bad"),
    [("set_input_tensor", 3), ("invoke", None), ("invoke", 2), ("get_output_tensor", None)],
)
def test_aidlite_run_failures_name_the_call(
    monkeypatch: pytest.MonkeyPatch, model_file: Path, call: str, bad: Any
) -> None:
    _install(monkeypatch, {call: bad})
    engine = open_engine(model_file, _card())
    with pytest.raises(ModelError, match=call):
        engine.run(np.zeros((1, 3, *SIZE), dtype=np.float32))
    engine.close()


def test_aidlite_wrong_output_size_is_a_model_error(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    _install(monkeypatch, {"get_output_tensor": np.zeros(7, dtype=np.float32)})
    engine = open_engine(model_file, _card())
    with pytest.raises(ModelError, match="output has 7 values"):
        engine.run(np.zeros((1, 3, *SIZE), dtype=np.float32))
    engine.close()


def test_aidlite_destory_failure_is_reported(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    _install(monkeypatch, {"destory": 5})
    engine = open_engine(model_file, _card())
    with pytest.raises(ModelError, match="destory"):
        engine.close()


def test_aidlite_sdk_without_the_pinned_qnn_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _install(monkeypatch)
    path = tmp_path / "m.qnn299.ctx.bin"
    path.write_bytes(b"\0")
    with pytest.raises(EngineUnavailableError, match="TYPE_QNN299"):
        open_engine(path, _card())


@pytest.mark.parametrize(
    ("name", "framework"),
    [
        ("sam2unet.qnn236.ctx.bin", "TYPE_QNN236"),
        ("x.QNN223.bin", "TYPE_QNN223"),
        ("x.ctx.bin", "TYPE_QNN"),
        ("x.dlc", "TYPE_SNPE2"),
    ],
)
def test_framework_type_follows_the_file_name(name: str, framework: str) -> None:
    assert framework_type_name(Path(name)) == framework


def test_aidlite_output_is_copied_out_of_the_sdk_buffer(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    """An SDK that reuses its output buffer must not make every chunk the last one."""
    sdk = _install(monkeypatch)
    sdk.reuse_buffer = True
    engine = open_engine(model_file, _card())  # compiled batch 1: three invokes
    batch = np.random.default_rng(2).normal(size=(3, 3, *SIZE)).astype(np.float32)
    np.testing.assert_allclose(engine.run(batch), bright_logits(batch), rtol=1e-5, atol=1e-4)
    engine.close()


def test_aidlite_engine_shared_by_threads_takes_turns(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    """Listener workers share one engine: set/invoke/get must not interleave."""
    sdk = _install(monkeypatch)
    sdk.invoke_delay = 0.002
    engine = open_engine(model_file, _card())
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(2, 3, *SIZE)).astype(np.float32) for _ in range(16)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(engine.run, batches))
    for batch, out in zip(batches, outputs, strict=True):
        np.testing.assert_allclose(out, bright_logits(batch), rtol=1e-5, atol=1e-4)
    assert sdk.overlaps == 0 and sdk.calls.count("invoke") == 32
    engine.close()
    with pytest.raises(ModelError, match="after close"):
        engine.run(batches[0])


def test_a_promptable_model_gets_its_prompt_as_the_second_input(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    """Both inputs are declared (image, then prompt, in the card's layout) and fed per
    chunk; without prompt maps the adapter feeds zeros (automatic mode)."""
    sdk = _install(monkeypatch)
    engine = open_engine(model_file, _card(prompt_input="prompt", batch=2), backend="aidlite")
    assert sdk.in_shapes == [[2, *SIZE, 3], [2, *SIZE, 2]]
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(3, 3, *SIZE)).astype(np.float32)
    prompt = np.zeros((3, 2, *SIZE), dtype=np.float32)
    prompt[:, 0, 4:10, 5:12] = 1.0
    out = engine.run(batch, prompt)
    expected = np.where(prompt[:, :1] > 0, bright_logits(batch), -10.0)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert sdk.calls.count("set_input_tensor(1)") == 2  # two chunks of the compiled batch 2
    auto = engine.run(batch)
    np.testing.assert_allclose(auto, np.full_like(auto, -10.0))  # zero maps: nothing inside
    engine.close()


def test_a_prompt_free_model_refuses_prompt_maps(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    sdk = _install(monkeypatch)
    engine = open_engine(model_file, _card(), backend="aidlite")
    assert len(sdk.in_shapes) == 1
    batch = np.zeros((1, 3, *SIZE), dtype=np.float32)
    with pytest.raises(ModelError, match="no prompt input"):
        engine.run(batch, np.zeros((1, 2, *SIZE), dtype=np.float32))
    engine.close()
