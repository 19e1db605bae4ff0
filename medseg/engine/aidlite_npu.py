"""Qualcomm NPU backend through the APLUX AidLite SDK (QNN context binaries, SNPE DLC).

The SDK is not on PyPI: AidLux devices install it with ``aid-pkg install aidlite-sdk
aidlite-qnnXYZ``. It is imported lazily, so the rest of medseg works without it. Every SDK
call signals failure by returning None or a non-zero code; each is checked and reported by
name. Context binaries are compiled for one batch size and (Model Farm) NHWC input: both
come from the model card.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from medseg.engine.batching import (
    prompt_feed,
    run_in_fixed_batches,
    to_layout,
    to_nchw_logits,
)
from medseg.errors import EngineUnavailableError, ModelError
from medseg.modelcard import ModelCard
from medseg.prompt_maps import CHANNELS as PROMPT_CHANNELS

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the aidlite backend needs the APLUX AidLite SDK, which is not on PyPI: on an AidLux "
    "device run `aid-pkg install aidlite-sdk aidlite-qnnXYZ` (XYZ = the QNN version the "
    "model was compiled with, e.g. qnn236)"
)
_PINNED_QNN = re.compile(r"\.qnn(\d{3})\.", re.IGNORECASE)


def _import_aidlite() -> Any:
    try:
        import aidlite
    except ImportError as exc:
        raise EngineUnavailableError(INSTALL_HINT) from exc
    return aidlite


def framework_type_name(model_path: Path) -> str:
    """``x.qnn236.ctx.bin`` -> TYPE_QNN236; other ``.bin`` -> TYPE_QNN; ``.dlc`` -> TYPE_SNPE2."""
    name = Path(model_path).name
    if name.lower().endswith(".dlc"):
        return "TYPE_SNPE2"
    match = _PINNED_QNN.search(name)
    return f"TYPE_QNN{match.group(1)}" if match else "TYPE_QNN"


def _check_status(call: str, result: Any, *, none_ok: bool = False) -> None:
    """Status calls return 0 on success. ``none_ok`` for the two calls whose success value
    the SDK leaves undocumented (its samples ignore it): only a non-zero code fails them."""
    if result is None and none_ok:
        return
    if result is None or result != 0:
        raise ModelError(f"aidlite {call} failed (returned {result!r})")


def _check_object(call: str, result: Any) -> Any:
    if result is None:
        raise ModelError(f"aidlite {call} failed (returned None)")
    return result


class AidliteEngine:
    """A QNN context binary on the Hexagon NPU via AidLite; float32 NCHW in, (N, 1, H, W) out."""

    def __init__(self, model_path: Path, card: ModelCard) -> None:
        aidlite = _import_aidlite()
        self.card = card
        self._lock = threading.Lock()
        self._batch = card.batch or 1
        height, width = card.input_size
        if card.layout == "NHWC":
            in_shape = [self._batch, height, width, card.channels]
            prompt_shape = [self._batch, height, width, PROMPT_CHANNELS]
            out_shape = [self._batch, height, width, 1]
        else:
            in_shape = [self._batch, card.channels, height, width]
            prompt_shape = [self._batch, PROMPT_CHANNELS, height, width]
            out_shape = [self._batch, 1, height, width]
        # a promptable model has two inputs, in the order the card names them: image, prompt
        in_shapes = [in_shape, prompt_shape] if card.promptable else [in_shape]
        framework = framework_type_name(model_path)
        if not hasattr(aidlite.FrameworkType, framework):
            raise EngineUnavailableError(
                f"the installed AidLite SDK has no FrameworkType.{framework} for {model_path}; "
                f"{INSTALL_HINT}"
            )
        config = _check_object("Config.create_instance()", aidlite.Config.create_instance())
        config.implement_type = aidlite.ImplementType.TYPE_LOCAL
        config.framework_type = getattr(aidlite.FrameworkType, framework)
        config.accelerate_type = aidlite.AccelerateType.TYPE_DSP
        config.is_quantify_model = 1 if card.quantized else 0
        model = _check_object(
            f"Model.create_instance({model_path})", aidlite.Model.create_instance(str(model_path))
        )
        _check_status(
            "Model.set_model_properties()",
            model.set_model_properties(
                in_shapes,
                aidlite.DataType.TYPE_FLOAT32,
                [out_shape],
                aidlite.DataType.TYPE_FLOAT32,
            ),
            none_ok=True,
        )
        interpreter = _check_object(
            "InterpreterBuilder.build_interpretper_from_model_and_config()",
            aidlite.InterpreterBuilder.build_interpretper_from_model_and_config(model, config),
        )
        self._interpreter = interpreter
        try:
            _check_status("Interpreter.init()", interpreter.init())
            _check_status("Interpreter.load_model()", interpreter.load_model())
        except ModelError:
            self._interpreter = None
            status = interpreter.destory()
            if status not in (None, 0):
                log.warning("aidlite destory() after a failed start returned %r", status)
            raise
        self._in_shape = tuple(in_shape)
        self.name = f"aidlite-{framework.removeprefix('TYPE_').lower()}-dsp"
        log.info("opened %s on the NPU (%s, input %s)", model_path, framework, in_shape)

    def _run_one(self, chunk: np.ndarray, prompt: np.ndarray | None = None) -> np.ndarray:
        # set_input/invoke/get_output on one interpreter is not atomic: jobs sharing the
        # engine (the listener's workers) take turns, and close() waits for a running call.
        with self._lock:
            interpreter = self._interpreter
            if interpreter is None:
                raise ModelError("aidlite engine used after close()")
            _check_status("Interpreter.set_input_tensor(0)", interpreter.set_input_tensor(0, chunk))
            if prompt is not None:
                _check_status(
                    "Interpreter.set_input_tensor(1)", interpreter.set_input_tensor(1, prompt)
                )
            _check_status("Interpreter.invoke()", interpreter.invoke())
            flat = _check_object(
                "Interpreter.get_output_tensor(0)", interpreter.get_output_tensor(0)
            )
            # a copy: the SDK may hand out its own output buffer, reused by the next invoke
            return np.array(flat, dtype=np.float32, copy=True)

    def run(self, batch: np.ndarray, prompt: np.ndarray | None = None) -> np.ndarray:
        """(N, C, H, W) float32 (and (N, 2, H, W) prompt maps) -> (N, 1, H, W) float32, in
        chunks of the compiled batch."""
        n = batch.shape[0]
        feed = to_layout(batch, self.card.layout)
        prompts = prompt_feed(self.card, batch, prompt)
        more = () if prompts is None else (prompts,)
        if feed.shape[1:] != self._in_shape[1:]:
            raise ModelError(f"aidlite input {feed.shape[1:]} != model {self._in_shape[1:]}")
        height, width = self.card.input_size
        per_item = height * width

        def run_chunk(chunk: np.ndarray, *prompt_chunk: np.ndarray) -> np.ndarray:
            flat = self._run_one(chunk, *prompt_chunk)
            if flat.size != chunk.shape[0] * per_item:
                raise ModelError(
                    f"aidlite output has {flat.size} values, expected {chunk.shape[0] * per_item}"
                )
            return flat.reshape(chunk.shape[0], per_item)

        raw = run_in_fixed_batches(run_chunk, feed, self._batch, *more)
        return to_nchw_logits(raw, n, self.card.input_size, self.card.layout)

    def close(self) -> None:
        """Free the NPU context (destory, sic); safe to call twice."""
        with self._lock:
            interpreter, self._interpreter = self._interpreter, None
        if interpreter is not None:
            _check_status("Interpreter.destory()", interpreter.destory(), none_ok=True)
