"""Inference backends behind one interface (``medseg.engine.base.Engine``).

``open_engine`` picks the backend by name or by the model file's extension; each backend
imports its runtime lazily so a missing one is a clear ``EngineUnavailableError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medseg.engine.base import Engine
from medseg.errors import ConfigError, ModelError
from medseg.modelcard import ModelCard

BACKENDS = ("onnxruntime", "aidlite")
_AIDLITE_SUFFIXES = (".bin", ".dlc")


def backend_for(model_path: Path, backend: str = "auto") -> str:
    """The backend name for ``backend`` ("auto" = by extension: .onnx, .bin/.ctx.bin/.dlc)."""
    choice = (backend or "auto").strip().lower()
    if choice in BACKENDS:
        return choice
    if choice != "auto":
        raise ConfigError(f"unknown backend {backend!r}: choose auto, {', '.join(BACKENDS)}")
    name = Path(model_path).name.lower()
    if name.endswith(".onnx"):
        return "onnxruntime"
    if name.endswith(_AIDLITE_SUFFIXES):
        return "aidlite"
    raise ConfigError(
        f"cannot tell the backend from {Path(model_path).name!r} "
        "(.onnx -> onnxruntime, .bin/.ctx.bin/.dlc -> aidlite); pass --backend"
    )


def open_engine(
    model_path: Path,
    card: ModelCard,
    *,
    backend: str = "auto",
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> Engine:
    """Open ``model_path`` with the chosen backend; the caller must ``close()`` it."""
    model_path = Path(model_path)
    chosen = backend_for(model_path, backend)
    if not model_path.is_file():
        raise ModelError(f"model file not found: {model_path}")
    if chosen == "onnxruntime":
        from medseg.engine.onnx_runtime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(model_path, card, threads=threads, providers=providers)
    if providers:
        raise ConfigError("--providers applies to the onnxruntime backend only")
    from medseg.engine.aidlite_npu import AidliteEngine

    return AidliteEngine(model_path, card)


__all__ = ["BACKENDS", "Engine", "backend_for", "open_engine"]
