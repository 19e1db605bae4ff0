"""INT8 with ONNX Runtime: static QDQ calibrated on real slices, dynamic as a fallback.

The accuracy loss is always measured against the FP32 file on held-out slices (not the
calibration slices) and reported in the vendor model-table columns: precision, inference
time, accuracy loss (mean |delta logit|, Dice between the two masks), file size.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ConfigError, ModelError
from medseg.prompt_maps import INPUT_NAME as PROMPT_INPUT_NAME
from medseg.prompt_maps import no_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecisionRow:
    """One line of the model table."""

    precision: str
    ms_per_slice: float
    mean_abs_dlogit: float
    dice_vs_fp32: float
    file_mb: float


@dataclass(frozen=True)
class QuantizationReport:
    method: str
    calibration_slices: int
    heldout_slices: int
    rows: tuple[PrecisionRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "calibration_slices": self.calibration_slices,
            "heldout_slices": self.heldout_slices,
            "rows": [asdict(r) for r in self.rows],
        }

    def table(self) -> str:
        head = (
            f"{'precision':<10} {'ms/slice':>9} {'mean|dlogit|':>13} {'Dice vs FP32':>13} {'MB':>8}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.precision:<10} {r.ms_per_slice:>9.1f} {r.mean_abs_dlogit:>13.4f} "
                f"{r.dice_vs_fp32:>13.4f} {r.file_mb:>8.2f}"
            )
        return "\n".join(lines)


class _SliceReader:
    """ONNX Runtime's CalibrationDataReader over preprocessed slices, one at a time."""

    def __init__(self, slices: np.ndarray, prompt: bool = False) -> None:
        self._slices = slices
        self._prompt = prompt  # a promptable model calibrates in automatic mode (zero maps)
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._slices):
            return None
        item = {"image": self._slices[self._index : self._index + 1]}
        if self._prompt:
            item[PROMPT_INPUT_NAME] = no_prompt(1, item["image"].shape[2:])
        self._index += 1
        return item

    def rewind(self) -> None:
        self._index = 0


def quantize_int8(
    fp32_path: Path, out_path: Path, calibration: np.ndarray | None, *, method: str = "static"
) -> str:
    """Write an INT8 model; returns the method actually used (``static-qdq``/``dynamic``).

    Static QDQ: per-channel S8 weights, U8 activations with ``reduce_range`` (no VNNI on
    this kind of CPU: avoids VPMADDUBSW saturation). If static quantization fails, or
    ``method="dynamic"``, dynamic quantization (weights only, activations at run time).
    Only a finished file ever appears at ``out_path``.
    """
    if method not in ("static", "dynamic"):
        raise ConfigError(f"INT8 method must be static or dynamic, not {method!r}")
    if method == "static" and (calibration is None or not len(calibration)):
        raise ConfigError("static INT8 needs calibration slices (--calibration DIR)")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        result = Path(tmp) / "int8.onnx"
        used = _quantize_into(Path(fp32_path), Path(tmp), result, calibration, method)
        result.replace(out_path)
    return used


def _quantize_into(
    fp32_path: Path, tmp: Path, out_path: Path, calibration: np.ndarray | None, method: str
) -> str:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    if method == "static":
        try:
            quantize_static(
                str(prepared),
                str(out_path),
                _SliceReader(calibration, _takes_prompt(prepared)),  # type: ignore[arg-type]
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
                op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                calibrate_method=CalibrationMethod.MinMax,
            )
            return "static-qdq"
        except (RuntimeError, ValueError) as exc:
            log.warning("static INT8 failed (%s); falling back to dynamic", exc)
    try:
        quantize_dynamic(
            str(prepared), str(out_path), weight_type=QuantType.QInt8, per_channel=True
        )
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"INT8 quantization failed: {exc}") from exc
    return "dynamic"


def _takes_prompt(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(i.name == PROMPT_INPUT_NAME for i in graph.input)


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (they agree)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _run_timed(session: Any, batch: np.ndarray) -> tuple[np.ndarray, float]:
    """Logits slice by slice (batch 1, as served) and the median ms per slice."""
    outs, times = [], []
    prompt = any(i.name == PROMPT_INPUT_NAME for i in session.get_inputs())
    for i in range(len(batch)):
        feed = {"image": batch[i : i + 1]}
        if prompt:
            feed[PROMPT_INPUT_NAME] = no_prompt(1, feed["image"].shape[2:])
        start = time.perf_counter()
        outs.append(session.run(["logits"], feed)[0])
        times.append((time.perf_counter() - start) * 1000.0)
    return np.concatenate(outs), float(np.median(times))


def compare_precisions(
    fp32_path: Path,
    others: dict[str, Path],
    heldout: np.ndarray,
    *,
    threshold: float = 0.5,
    threads: int | None = None,
) -> tuple[PrecisionRow, ...]:
    """FP32 row plus one row per other file, all on the same held-out slices."""
    from medseg.model.export import ort_session

    cut = math.log(threshold / (1.0 - threshold))  # sigmoid(x) > t  <=>  x > logit(t)
    ref, ref_ms = _run_timed(ort_session(fp32_path, threads), heldout)
    ref_mask = ref > cut
    rows = [PrecisionRow("fp32", ref_ms, 0.0, 1.0, Path(fp32_path).stat().st_size / 1e6)]
    for name, path in others.items():
        out, ms = _run_timed(ort_session(path, threads), heldout)
        rows.append(
            PrecisionRow(
                precision=name,
                ms_per_slice=ms,
                mean_abs_dlogit=float(np.abs(out - ref).mean()),
                dice_vs_fp32=mask_dice(out > cut, ref_mask),
                file_mb=Path(path).stat().st_size / 1e6,
            )
        )
    return tuple(rows)


def split_calibration(
    slices: np.ndarray, heldout_fraction: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved split so both parts span every series: (calibration, held-out)."""
    if len(slices) < 2:
        raise ConfigError("INT8 needs at least 2 real slices (calibration + held-out)")
    step = max(2, round(1.0 / heldout_fraction))
    held = np.zeros(len(slices), dtype=bool)
    held[step - 1 :: step] = True
    if not held.any():
        held[-1] = True
    return slices[~held], slices[held]
