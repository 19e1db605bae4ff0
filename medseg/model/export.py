"""PyTorch -> ONNX with the runtime's contract, checked against PyTorch, with its model card.

The graph takes ``image`` [N, 3, H, W] and returns only ``logits`` [N, 1, H, W] (the
``out`` head); ``static=True`` fixes N=1 because NPU converters need fully static shapes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import ModelError, OutputError
from medseg.model.sam2unet import LogitsOnly, PromptedLogitsOnly, SAM2UNet
from medseg.modelcard import ModelCard, card_path_for
from medseg.prompt_maps import INPUT_NAME as PROMPT_INPUT_NAME
from medseg.prompt_maps import no_prompt

log = logging.getLogger(__name__)

OPSET = 18
MAX_DYNAMIC_BATCH = 64


@dataclass(frozen=True)
class ParityReport:
    """Largest |ONNX Runtime - PyTorch| logit difference on each input kind.

    ``logit_scale`` is the largest |PyTorch logit| seen: float32 round-off grows with the
    size of the activations, so a trained model with logits of +-40 differs by more than
    a fresh one with logits near 0, and a fixed absolute bound would reject the former.
    """

    random_max_abs_diff: float
    real_max_abs_diff: float | None
    real_slices: int
    logit_scale: float = 0.0

    @property
    def worst(self) -> float:
        return max(self.random_max_abs_diff, self.real_max_abs_diff or 0.0)

    def limit(self, absolute: float, relative: float) -> float:
        """The allowed difference: ``absolute + relative * logit_scale`` (numpy.allclose's
        form, with the largest |logit| in place of each element's)."""
        return absolute + relative * self.logit_scale

    def to_dict(self) -> dict[str, Any]:
        return {
            "random_max_abs_diff": self.random_max_abs_diff,
            "real_max_abs_diff": self.real_max_abs_diff,
            "real_slices": self.real_slices,
            "logit_scale": self.logit_scale,
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_onnx(
    model: SAM2UNet,
    path: Path,
    *,
    input_size: tuple[int, int] = (352, 352),
    static: bool = False,
    fp16: bool = False,
) -> Path:
    """Write ``model`` as a single-file ONNX graph at ``path`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 1 if static else 2
    batch_dim = torch.export.Dim("N", min=1, max=MAX_DYNAMIC_BATCH)
    if model.config.promptable:
        # a second input, prompt (N, 2, H, W), with the same batch axis as the image
        wrapped: torch.nn.Module = PromptedLogitsOnly(model).eval()
        example: tuple[torch.Tensor, ...] = (
            torch.zeros(n, 3, *input_size),
            torch.zeros(n, model.config.prompt_channels, *input_size),
        )
        names = ["image", PROMPT_INPUT_NAME]
        dynamic = None if static else {"image": {0: batch_dim}, PROMPT_INPUT_NAME: {0: batch_dim}}
    else:
        wrapped = LogitsOnly(model).eval()
        example = (torch.zeros(n, 3, *input_size),)
        names = ["image"]
        dynamic = None if static else {"image": {0: batch_dim}}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        try:
            with _quiet():
                torch.onnx.export(
                    wrapped,
                    example,
                    str(tmp_path),
                    input_names=names,
                    output_names=["logits"],
                    dynamo=True,
                    dynamic_shapes=dynamic,
                    opset_version=OPSET,
                    external_data=False,
                    verbose=False,
                )
        except torch.onnx.errors.OnnxExporterError as exc:  # pragma: no cover - torch bug
            raise ModelError(f"ONNX export failed: {str(exc).splitlines()[0]}") from exc
        if fp16:
            _to_fp16(tmp_path)
        try:
            tmp_path.replace(path)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    log.info(
        "exported %s (%s, %s)",
        path,
        "static N=1" if static else "dynamic N",
        "fp16" if fp16 else "fp32",
    )
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress to stdout and warns about torchvision; keep the CLI clean."""
    exporter_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        exporter_log.setLevel(level)


def _to_fp16(path: Path) -> None:
    """Weights and compute in float16; the file still takes and returns float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    model = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(model, str(path))


def ort_session(path: Path, threads: int | None = None) -> Any:
    """A CPU ONNX Runtime session (verification and benchmarks)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_logits(
    model: SAM2UNet, batch: np.ndarray, chunk: int = 4, prompt: np.ndarray | None = None
) -> np.ndarray:
    """PyTorch eval-mode ``out`` logits for a float32 (n, C, H, W) batch (and prompt maps)."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(batch), chunk):
            maps = None if prompt is None else torch.from_numpy(prompt[start : start + chunk])
            image = torch.from_numpy(batch[start : start + chunk])
            outs.append(model(image, maps)[0].numpy())
    return np.concatenate(outs)


def onnx_logits(
    session: Any,
    batch: np.ndarray,
    static: bool = False,
    chunk: int = 4,
    prompt: np.ndarray | None = None,
) -> np.ndarray:
    step = 1 if static else chunk
    takes_prompt = any(i.name == PROMPT_INPUT_NAME for i in session.get_inputs())
    if takes_prompt and prompt is None:
        prompt = no_prompt(len(batch), batch.shape[2:])
    outs = []
    for start in range(0, len(batch), step):
        feed = {"image": batch[start : start + step]}
        if takes_prompt:
            feed[PROMPT_INPUT_NAME] = prompt[start : start + step]  # type: ignore[index]
        outs.append(session.run(["logits"], feed)[0])
    return np.concatenate(outs).astype(np.float32)


def check_parity(
    model: SAM2UNet,
    path: Path,
    *,
    real: np.ndarray | None = None,
    static: bool = False,
    input_size: tuple[int, int] = (352, 352),
    seed: int = 0,
) -> ParityReport:
    """Run PyTorch and ONNX Runtime on random and (if given) real slices."""
    session = ort_session(path)
    rng = np.random.default_rng(seed)
    random = rng.standard_normal((1 if static else 2, 3, *input_size)).astype(np.float32)
    prompt = None
    if model.config.promptable:  # random binary maps: the prompt path is checked too
        shape = (len(random), model.config.prompt_channels, *input_size)
        prompt = (rng.random(shape) < 0.05).astype(np.float32)
    diff_random, scale = _compare(model, session, random, static, prompt)
    diff_real = None
    if real is not None and len(real):
        diff_real, scale_real = _compare(model, session, real, static)
        scale = max(scale, scale_real)
    return ParityReport(diff_random, diff_real, 0 if real is None else len(real), scale)


def _compare(
    model: SAM2UNet,
    session: Any,
    images: np.ndarray,
    static: bool,
    prompt: np.ndarray | None = None,
) -> tuple[float, float]:
    """(max |ONNX Runtime - PyTorch|, max |PyTorch logit|) on ``images`` (no prompt maps:
    both sides run a promptable model in automatic mode)."""
    reference = torch_logits(model, images, prompt=prompt)
    got = onnx_logits(session, images, static, prompt=prompt)
    diff = float(np.abs(got - reference).max())
    return diff, float(np.abs(reference).max())


def build_card(
    base: ModelCard,
    model_path: Path,
    *,
    config_name: str | None,
    model: SAM2UNet,
    static: bool,
    precision: str,
    provenance: dict[str, Any],
) -> ModelCard:
    """The card for an exported file: contract, config, provenance and the file's sha256."""
    extra = dict(base.extra)
    extra.update(
        {
            "config_name": config_name,
            "config": model.config.to_dict(),
            "precision": precision,
            "sha256": sha256_of(model_path),
            "file_bytes": Path(model_path).stat().st_size,
            "provenance": provenance,
        }
    )
    return replace(
        base,
        architecture="SAM2-UNet",
        input_name="image",
        prompt_input=PROMPT_INPUT_NAME if model.config.promptable else "",
        output_name="logits",
        output="logits",
        layout="NCHW",
        batch=1 if static else None,
        quantized=precision == "int8",
        extra=extra,
    )


def write_card(card: ModelCard, model_path: Path) -> Path:
    path = card_path_for(model_path)
    card.save(path)
    return path
