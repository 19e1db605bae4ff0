"""Deterministic, well-scaled weights for any SAM2-UNet state_dict, from key names alone.

The original SAM2-UNet code and medseg's model get the same values for the same key, so
their outputs can be compared without shipping weight files (hiera_l alone is 870 MB).
numpy's PCG64 stream is used because it is platform-independent.
"""

from __future__ import annotations

import zlib

import numpy as np

INPUT_SEED = 20261124


def reference_input(batch: int = 1) -> np.ndarray:
    """A normalised-image-like (batch, 3, 352, 352) float32 input."""
    return np.random.default_rng(INPUT_SEED).standard_normal((batch, 3, 352, 352), np.float32)


def reference_value(key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The value of one state_dict entry; seeded by the key so order does not matter."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if np.issubdtype(dtype, np.integer):  # BatchNorm's num_batches_tracked
        return np.zeros(shape, dtype=dtype)
    noise = rng.standard_normal(shape, dtype=np.float32)
    if key.endswith("running_var"):
        return (0.5 + np.abs(noise)).astype(np.float32)
    if key.endswith("running_mean"):
        return 0.1 * noise
    if key.endswith(".bias"):
        return 0.02 * noise
    if key.endswith(".weight") and len(shape) == 1:  # LayerNorm / BatchNorm scale
        return 1.0 + 0.1 * noise
    if key.endswith(".weight"):
        fan_in = int(np.prod(shape[1:]))
        return noise / np.float32(np.sqrt(fan_in))
    return 0.02 * noise  # positional embeddings


def reference_state(module) -> dict:
    """``module``'s state_dict with every entry replaced by ``reference_value``."""
    import torch

    return {
        key: torch.from_numpy(
            reference_value(key, tuple(t.shape), np.dtype(str(t.dtype).removeprefix("torch.")))
        )
        for key, t in module.state_dict().items()
    }
