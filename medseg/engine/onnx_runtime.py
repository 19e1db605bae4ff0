"""ONNX Runtime backend: CPU by default, CUDA or Qualcomm QNN (HTP) when installed and asked for.

Named ``onnx_runtime`` so it never shadows the ``onnxruntime`` package it wraps.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
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

log = logging.getLogger(__name__)

# Short names accepted in ``providers``; full ONNX Runtime names pass through unchanged.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "qnn": "QNNExecutionProvider",
}
PROVIDER_PACKAGES = {
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (instead of onnxruntime)",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu with TensorRT",
    "QNNExecutionProvider": "pip install onnxruntime-qnn (instead of onnxruntime)",
}
DEFAULT_QNN_BACKEND = "libQnnHtp.so"
CPU_SYSFS = Path("/sys/devices/system/cpu")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineUnavailableError(
            "the onnxruntime backend needs the onnxruntime package: pip install onnxruntime"
        ) from exc
    return onnxruntime


def physical_cores(
    cpu_root: Path = CPU_SYSFS,
    allowed: Iterable[int] | None = None,
    cpu_max: Path = CGROUP_CPU_MAX,
) -> int:
    """Physical cores among the CPUs this process may run on, within its cgroup CPU quota.

    Hyper-threads of one core share its arithmetic units, so ONNX Runtime gains little from
    them; counting distinct (package, core) pairs from sysfs over the affinity mask gives
    the physical cores (the allowed logical CPUs where sysfs has no topology). A container
    limited to e.g. 2 CPUs by a cgroup v2 quota (``cpu.max``) on a big host gets 2, not the
    host's cores: more threads than the quota only queue.
    """
    cpus = sorted(allowed) if allowed is not None else sorted(_affinity())
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topology = cpu_root / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            cores = {("cpu", str(c)) for c in cpus}
            break
        cores.add((package, core))
    count = len(cores)
    quota = _cgroup_quota(cpu_max)
    if quota is not None:
        count = min(count, quota)
    return max(1, count)


def _cgroup_quota(cpu_max: Path) -> int | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"), rounded up."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _affinity() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _provider_entries(
    providers: Sequence[str] | None, card: ModelCard, available: Sequence[str]
) -> list[Any]:
    """User provider names -> ONNX Runtime's (name, options) list, CPU always last."""
    names = [PROVIDER_ALIASES.get(p.strip().lower(), p.strip()) for p in providers or ()]
    entries: list[Any] = []
    for name in names:
        if name == "CPUExecutionProvider":
            continue
        if name not in available:
            hint = PROVIDER_PACKAGES.get(name, "install an onnxruntime build that has it")
            raise EngineUnavailableError(
                f"ONNX Runtime provider {name} is not available here "
                f"(available: {', '.join(available)}); {hint}"
            )
        if name == "QNNExecutionProvider":
            backend = str(card.extra.get("qnn_backend_path", DEFAULT_QNN_BACKEND))
            entries.append((name, {"backend_path": backend}))
        else:
            entries.append(name)
    entries.append("CPUExecutionProvider")
    return entries


class OnnxRuntimeEngine:
    """An ONNX model in an InferenceSession; float32 NCHW in, (N, 1, H, W) out."""

    def __init__(
        self,
        model_path: Path,
        card: ModelCard,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        ort = _import_onnxruntime()
        self.card = card
        entries = _provider_entries(providers, card, ort.get_available_providers())
        options = ort.SessionOptions()
        if threads is not None and threads < 1:
            raise ModelError(f"threads must be >= 1, got {threads}")
        # one graph runs at a time (sequential execution), so inter-op threads would only
        # idle; intra-op: the physical cores this process may use unless told otherwise
        options.intra_op_num_threads = int(threads) if threads is not None else physical_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        qnn = any(isinstance(e, tuple) and e[0] == "QNNExecutionProvider" for e in entries)
        if card.batch or qnn:  # HTP compiles static graphs: pin a symbolic batch axis
            self._pin_batch(ort, model_path, options, card.batch or 1)
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=entries)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"cannot load ONNX model {model_path}: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        wanted = 2 if card.promptable else 1
        if len(inputs) != wanted or not outputs:
            raise ModelError(
                f"{model_path}: expected {wanted} input(s) and an output, got {len(inputs)}"
                + (" (is the model card's prompt_input right?)" if len(inputs) in (1, 2) else "")
            )
        names = [i.name for i in inputs]
        if card.promptable:
            if sorted(names) != sorted([card.input_name, card.prompt_input]):
                raise ModelError(
                    f"{model_path}: inputs {names} are not the model card's "
                    f"{card.input_name!r} and {card.prompt_input!r}"
                )
            image_input = inputs[names.index(card.input_name)]
        else:
            image_input = inputs[0]
        self._input = image_input.name
        self._output = outputs[0].name
        self._fixed_batch = self._check_input_shape(image_input.shape, model_path)
        used = self._session.get_providers()
        self.name = "onnxruntime-" + used[0].removesuffix("ExecutionProvider").lower()
        log.info("opened %s with %s (batch %s)", model_path, used, self._fixed_batch or "dynamic")

    @staticmethod
    def _pin_batch(ort: Any, model_path: Path, options: Any, batch: int) -> None:
        """Fix a symbolic batch dimension (read with a throw-away CPU session: no onnx dep)."""
        try:
            probe = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"cannot load ONNX model {model_path}: {exc}") from exc
        dim = probe.get_inputs()[0].shape[0]
        if isinstance(dim, str) and dim:
            options.add_free_dimension_override_by_name(dim, int(batch))

    def _check_input_shape(self, shape: Sequence[Any], model_path: Path) -> int | None:
        """Compare the model's declared input with the card; return a fixed batch or None."""
        card = self.card
        height, width = card.input_size
        expected = (
            (card.channels, height, width)
            if card.layout == "NCHW"
            else (height, width, card.channels)
        )
        if len(shape) != 4:
            raise ModelError(f"{model_path}: input must be 4-D, the model declares {list(shape)}")
        for got, want in zip(shape[1:], expected, strict=True):
            if isinstance(got, int) and got != want:
                raise ModelError(
                    f"{model_path}: input shape {list(shape)} does not match the model card "
                    f"({card.layout} {card.channels}x{height}x{width})"
                )
        model_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        if model_batch and card.batch and model_batch != card.batch:
            raise ModelError(
                f"{model_path}: fixed batch {model_batch} but the model card says {card.batch}"
            )
        return model_batch or card.batch

    def _run_raw(self, batch: np.ndarray, prompt: np.ndarray | None = None) -> np.ndarray:
        session = self._session  # a call already running keeps its session through close()
        if session is None:
            raise ModelError("onnxruntime engine used after close()")
        feed = {self._input: batch}
        if prompt is not None:
            feed[self.card.prompt_input] = prompt
        try:
            return session.run([self._output], feed)[0]
        except Exception as exc:  # onnxruntime's errors carry no useful type
            raise ModelError(f"ONNX Runtime inference failed: {exc}") from exc

    def run(self, batch: np.ndarray, prompt: np.ndarray | None = None) -> np.ndarray:
        """(N, C, H, W) float32 (and (N, 2, H, W) prompt maps) -> (N, 1, H, W) float32."""
        n = batch.shape[0]
        feed = to_layout(batch, self.card.layout)
        prompts = prompt_feed(self.card, batch, prompt)
        more = () if prompts is None else (prompts,)
        raw = (
            run_in_fixed_batches(self._run_raw, feed, self._fixed_batch, *more)
            if self._fixed_batch
            else self._run_raw(feed, *more)
        )
        return to_nchw_logits(raw, n, self.card.input_size, self.card.layout)

    def close(self) -> None:
        self._session = None
