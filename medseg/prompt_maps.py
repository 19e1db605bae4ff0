"""Prompts as the promptable network sees them: two maps at the model's input size.

Channel 0 is positive evidence: a box's interior and a disc at each positive click (also
the click that carries a lesion to the next slice while it is propagated through the
volume: the deepest point of the previous slice's mask, ``deepest_point``). Channel 1
holds a disc at each negative click. No map ever holds a mask: a network given its
answer learns to return its prompt. All zero means "no prompt": automatic
segmentation. Training (``medseg.synthetic.samples``) and serving (the pipeline) draw the
maps with these same functions, so the network is served the prompts it was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CHANNELS = 2
INPUT_NAME = "prompt"  # a promptable model's second input (its card's prompt_input)
CLICK_RADIUS = 3.0  # model pixels (of the 352 x 352 input): about a click's own size
# A prompted lesion is run in a square crop around its prompt, zoomed to the model input
# (training renders such crops too): a click's crop has a fixed side, a box's grows with it.
POINT_CROP_MM = 96.0
BOX_CROP_FACTOR = 3.0
BOX_CROP_MM = (48.0, 400.0)


def box_crop_mm(box_side_mm: float) -> float:
    """The crop side around a box whose longer side is ``box_side_mm``."""
    low, high = BOX_CROP_MM
    return float(min(max(BOX_CROP_FACTOR * box_side_mm, low), high))


@dataclass(frozen=True)
class PromptMaps:
    """What to draw, in model-input pixel coordinates (row, col; 0-based pixel centres).

    ``boxes`` are (row0, col0, row1, col1), inclusive.
    """

    positive: tuple[tuple[float, float], ...] = ()
    negative: tuple[tuple[float, float], ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.positive or self.negative or self.boxes)


def deepest_point(mask: np.ndarray) -> tuple[float, float]:
    """(row, col) of ``mask``'s pixel farthest from its edge: the click that carries a
    lesion onto the next slice (training draws it the same way)."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), mask.shape)
    return float(row), float(col)


def _discs(
    shape: tuple[int, int], centres: Iterable[tuple[float, float]], radius: float
) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    rows = np.arange(shape[0], dtype=np.float32)[:, None]
    cols = np.arange(shape[1], dtype=np.float32)[None, :]
    for r, c in centres:
        r0, r1 = max(int(r - radius - 1), 0), min(int(r + radius + 2), shape[0])
        c0, c1 = max(int(c - radius - 1), 0), min(int(c + radius + 2), shape[1])
        if r0 >= r1 or c0 >= c1:
            continue
        d2 = (rows[r0:r1] - r) ** 2 + (cols[:, c0:c1] - c) ** 2
        inside = (d2 <= radius * radius).astype(np.float32)
        out[r0:r1, c0:c1] = np.maximum(out[r0:r1, c0:c1], inside)
    return out


def no_prompt(count: int, shape: tuple[int, int]) -> np.ndarray:
    """(count, 2, H, W) all-zero maps: automatic mode, for a model that takes prompts."""
    return np.zeros((count, CHANNELS, *shape), dtype=np.float32)


def draw(maps: PromptMaps, shape: tuple[int, int]) -> np.ndarray:
    """(2, H, W) float32 prompt tensor for one model input."""
    out = np.zeros((CHANNELS, *shape), dtype=np.float32)
    positive = _discs(shape, maps.positive, CLICK_RADIUS)
    for r0, c0, r1, c1 in maps.boxes:
        top, bottom = max(round(min(r0, r1)), 0), min(round(max(r0, r1)) + 1, shape[0])
        left, right = max(round(min(c0, c1)), 0), min(round(max(c0, c1)) + 1, shape[1])
        positive[top:bottom, left:right] = 1.0
    out[0] = positive
    out[1] = _discs(shape, maps.negative, CLICK_RADIUS)
    return out
