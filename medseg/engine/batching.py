"""Layout and fixed-batch helpers shared by the backends.

The pipeline always hands an engine float32 NCHW batches of any size; compiled models
(QNN context binaries, HTP graphs) take one static batch size and often NHWC. These helpers
keep that translation in one place so every backend does it the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from medseg.errors import ModelError
from medseg.prompt_maps import no_prompt

if TYPE_CHECKING:  # pragma: no cover
    from medseg.modelcard import ModelCard


def to_layout(batch: np.ndarray, layout: str) -> np.ndarray:
    """NCHW -> the model's layout (contiguous float32)."""
    if layout == "NHWC":
        return np.ascontiguousarray(batch.transpose(0, 2, 3, 1), dtype=np.float32)
    return np.ascontiguousarray(batch, dtype=np.float32)


def to_nchw_logits(output: np.ndarray, n: int, size: tuple[int, int], layout: str) -> np.ndarray:
    """A model output -> (n, 1, H, W) float32, whatever single-channel shape it came in."""
    height, width = size
    out = np.asarray(output, dtype=np.float32)
    if out.size != n * height * width:
        raise ModelError(
            f"model output has {out.size} values, expected {n}x1x{height}x{width} "
            f"(shape {tuple(out.shape)}): does the model card's input_size match the model?"
        )
    if out.ndim == 4 and layout == "NHWC" and out.shape[-1] == 1:
        out = out.transpose(0, 3, 1, 2)
    # one channel: NCHW and NHWC hold the values in the same order, a reshape is exact
    return np.ascontiguousarray(out.reshape(n, 1, height, width))


def run_in_fixed_batches(
    run: Callable[..., np.ndarray], batch: np.ndarray, fixed: int, *more: np.ndarray
) -> np.ndarray:
    """Feed ``batch`` (N, ...) to a model compiled for ``fixed`` items per call.

    Splits into chunks of ``fixed``, zero-pads the last one and drops the padded outputs.
    ``run`` takes and returns arrays whose first axis is ``fixed``; ``more`` are further
    inputs with the same first axis (a promptable model's prompt maps), chunked alike and
    passed after the batch.
    """
    if fixed < 1:
        raise ModelError(f"fixed batch size must be >= 1, got {fixed}")
    outputs = []
    for start in range(0, batch.shape[0], fixed):
        chunks = [a[start : start + fixed] for a in (batch, *more)]
        count = chunks[0].shape[0]
        if count < fixed:
            chunks = [
                np.concatenate([c, np.zeros((fixed - count, *c.shape[1:]), dtype=c.dtype)])
                for c in chunks
            ]
        outputs.append(np.asarray(run(*chunks))[:count])
    return np.concatenate(outputs)


def prompt_feed(card: ModelCard, batch: np.ndarray, prompt: np.ndarray | None) -> np.ndarray | None:
    """The prompt maps to feed with ``batch`` in the model's layout, or None for a model
    without a prompt input (which must not be given one: the pipeline refuses earlier)."""
    if not card.promptable:
        if prompt is not None:
            raise ModelError(f"model {card.name} has no prompt input")
        return None
    if prompt is None:
        prompt = no_prompt(batch.shape[0], batch.shape[2:])
    if prompt.shape[0] != batch.shape[0] or prompt.shape[2:] != batch.shape[2:]:
        raise ModelError(f"prompt maps {prompt.shape} do not fit the batch {batch.shape}")
    return to_layout(prompt, card.layout)
