"""The one small interface every inference backend implements.

Engines always receive float32 NCHW batches and return float32 (N, 1, H, W) logits (or
probabilities, as the model card says); layout changes and fixed-batch splitting happen
inside the backend so the pipeline never knows which backend runs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Engine(Protocol):
    """An opened model ready to run batches."""

    name: str

    def run(self, batch: np.ndarray, prompt: np.ndarray | None = None) -> np.ndarray:
        """(N, C, H, W) float32 in -> (N, 1, H, W) float32 out.

        ``prompt``: (N, 2, H, W) prompt maps for a promptable model (None: all zero,
        automatic mode); a model without a prompt input refuses one.
        """
        ...

    def close(self) -> None:
        """Release the model (NPU contexts in particular must be freed explicitly)."""
        ...
