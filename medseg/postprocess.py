"""Model outputs back to slice geometry, then mask clean-up.

Logits are resized to each slice's rows x cols *before* thresholding: thresholding first
and resizing a binary mask would give blocky 352-pixel staircase edges on a 512 slice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import expit

from medseg.errors import ConfigError
from medseg.modelcard import ModelCard
from medseg.preprocess import resize_stack

log = logging.getLogger(__name__)

# Components are 6-connected in 3-D (faces only), scipy.ndimage.label's default.
_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)
# Hole filling works slice by slice: only in-plane neighbours.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class CleanupOptions:
    """Mask clean-up after thresholding; all off by default."""

    min_component_mm3: float = 0.0
    largest_component: bool = False
    fill_holes: bool = False

    def __post_init__(self) -> None:
        if not np.isfinite(self.min_component_mm3) or self.min_component_mm3 < 0:
            raise ConfigError(
                "minimum component volume must be a finite value >= 0 mm3, "
                f"got {self.min_component_mm3}"
            )


def to_probabilities(output: np.ndarray, shape: tuple[int, int], card: ModelCard) -> np.ndarray:
    """Model output (n, 1, H, W) -> probabilities (n, rows, cols) float32 in [0, 1].

    Resized with the same bilinear filter as the input (antialiased if it shrinks), then a
    sigmoid unless the card says the model already outputs probabilities.
    """
    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 4 or output.shape[1] != 1:
        raise ValueError(f"model output must be (n, 1, H, W), got {output.shape}")
    resized = resize_stack(output[:, 0], shape)
    if card.output == "logits":
        return expit(resized, out=resized)
    return np.clip(resized, 0.0, 1.0, out=resized)


def threshold(probabilities: np.ndarray, level: float) -> np.ndarray:
    """Probabilities -> bool mask (strictly greater than ``level``)."""
    if not 0.0 < level < 1.0:
        raise ConfigError(f"threshold must lie in (0, 1), got {level}")
    return np.asarray(probabilities) > np.float32(level)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """3-D connected components (6-connected) of a bool mask: (labels, count)."""
    labels, count = ndimage.label(mask, structure=_CONNECTIVITY)
    return labels, int(count)


def clean_mask(
    mask: np.ndarray, spacing: tuple[float, float, float], options: CleanupOptions
) -> np.ndarray:
    """Apply hole filling, the minimum component volume and largest-only, in that order.

    ``mask`` is (slices, rows, cols) bool; ``spacing`` is (slice, row, col) in mm. Holes are
    filled per slice (a lesion's necrotic core is rarely closed in 3-D at the volume's edge).
    """
    mask = np.asarray(mask, dtype=bool)
    if options.fill_holes:
        mask = ndimage.binary_fill_holes(mask, structure=_IN_PLANE)
    if options.min_component_mm3 <= 0 and not options.largest_component:
        return mask
    labels, count = label_components(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    keep = np.ones(count + 1, dtype=bool)
    keep[0] = False
    if options.min_component_mm3 > 0:
        voxel_mm3 = float(np.prod(spacing))
        keep &= sizes * voxel_mm3 >= options.min_component_mm3
    if options.largest_component and keep.any():
        largest = int(np.argmax(np.where(keep, sizes, 0)))
        keep[:] = False
        keep[largest] = True
    log.debug("kept %d of %d components", int(keep.sum()), count)
    return keep[labels]
