"""2.5-D input (slice context): channels are the series at -d, 0, +d mm from each slice.

The model here answers ``gain * (intensity of channel 2 - intensity of channel 0)``: it
marks where the series gets brighter from the slice before to the slice after, which only
a pipeline that feeds the right neighbours into the right channels gets right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from medseg import pipeline
from medseg.engine import open_engine
from medseg.errors import ConfigError
from medseg.model.data import SliceSet, to_model_input
from medseg.model.slices import volume_batch
from medseg.model.train import _gather
from medseg.modelcard import IMAGENET_MEAN, IMAGENET_STD, ModelCard
from medseg.pipeline import SegmentOptions, segment_volume
from medseg.preprocess import context_taps, resolve_window
from medseg.tiling import Region, Tile
from tests.pipeline.helpers import make_volume
from tests.tiny_models import channel_slice, save_nchw_model

SIZE = (16, 16)
SPACING = (2.0, 1.0, 1.0)


def _make_gradient_model(path: Path, context_mm: float, gain: float = 20.0) -> ModelCard:
    """logit = gain * ((x2 * std2 + mean2) - (x0 * std0 + mean0))."""
    const = {
        "s0": -gain * IMAGENET_STD[0],
        "s2": gain * IMAGENET_STD[2],
        "bias": gain * (IMAGENET_MEAN[2] - IMAGENET_MEAN[0]),
    }
    first, first_inits = channel_slice("ch0", 0)
    last, last_inits = channel_slice("ch2", 2)
    nodes = [
        first,
        last,
        helper.make_node("Mul", ["ch0", "s0"], ["a"]),
        helper.make_node("Mul", ["ch2", "s2"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Add", ["ab", "bias"], ["logits"]),
    ]
    inits = first_inits + last_inits
    inits += [helper.make_tensor(k, TensorProto.FLOAT, [], [float(v)]) for k, v in const.items()]
    save_nchw_model(path, "gradient", nodes, inits, SIZE)
    card = ModelCard(name="gradient", input_size=SIZE, slice_context_mm=context_mm)
    card.save(path.with_suffix(".json"))
    return card


def _step_volume() -> np.ndarray:
    """Slices 0-4 at 0 HU, slices 5-9 at 300 HU (the 150/300 window maps them to 0 and 1)."""
    voxels = np.zeros((10, *SIZE), dtype=np.float32)
    voxels[5:] = 300.0
    return voxels


def _segment(tmp_path: Path, context_mm: float, **options) -> np.ndarray:
    path = tmp_path / "gradient.onnx"
    card = _make_gradient_model(path, context_mm)
    volume = make_volume(_step_volume(), spacing=SPACING)
    engine = open_engine(path, card, threads=1)
    try:
        mask, _ = segment_volume(
            volume, engine, card, SegmentOptions(window="150/300", batch_size=3, **options)
        )
    finally:
        engine.close()
    return mask


@pytest.mark.parametrize(
    ("context_mm", "marked"),
    [(0.0, []), (2.0, [4, 5]), (4.0, [3, 4, 5, 6]), (3.0, [3, 4, 5, 6])],
)
def test_neighbours_reach_the_right_channels(tmp_path: Path, context_mm, marked) -> None:
    """2 mm slices: 2 mm is the next slice, 4 mm the one after, 3 mm halfway between."""
    mask = _segment(tmp_path, context_mm)
    assert [k for k in range(10) if mask[k].all()] == marked
    assert all(not mask[k].any() for k in range(10) if k not in marked)


def test_context_taps_hold_the_ends_and_interpolate_between_slices() -> None:
    card = ModelCard(name="x", slice_context_mm=2.5)
    assert context_taps(0, 10, 2.5, card) == ((0, 0, 0.0), (0, 0, 0.0), (1, 1, 0.0))
    assert context_taps(9, 10, 2.5, card) == ((8, 8, 0.0), (9, 9, 0.0), (9, 9, 0.0))
    assert context_taps(4, 10, 1.0, card)[2] == (6, 7, 0.5)
    assert context_taps(4, 10, 1.0, ModelCard(name="x"))[0] == (4, 4, 0.0)


def test_training_export_and_serving_build_the_same_input(tmp_path: Path) -> None:
    """The slices training stores, the export's calibration slices and the served batch."""
    card = ModelCard(name="x", input_size=SIZE, slice_context_mm=2.0)
    rng = np.random.default_rng(3)
    volume = make_volume(rng.normal(40, 100, size=(6, *SIZE)).astype(np.float32), spacing=SPACING)
    window = resolve_window(volume, "150/300", card)
    tiles = [Tile(k, Region(0, SIZE[0], 0, SIZE[1])) for k in range(6)]
    served, _ = pipeline._prepare(volume.voxels, tiles, window, card, SPACING[0])
    exported = volume_batch(volume, card, "150/300")
    stored = volume_batch(volume, ModelCard(name="x", input_size=SIZE), "150/300")[:, 0]
    sset = SliceSet("1.2.3", stored, np.zeros_like(stored), SPACING[0])
    gathered = _gather([(sset, k) for k in range(6)], np.arange(6), card)[0]
    trained = to_model_input(np.stack(gathered), card)
    np.testing.assert_array_equal(served, exported)
    np.testing.assert_allclose(trained, served, atol=1e-6)
    unit = (
        served * np.float32(IMAGENET_STD)[:, None, None] + np.float32(IMAGENET_MEAN)[:, None, None]
    )
    np.testing.assert_allclose(unit[1:, 0], unit[:-1, 1], atol=1e-6)  # channel 0: slice before
    np.testing.assert_allclose(unit[:-1, 2], unit[1:, 1], atol=1e-6)  # channel 2: slice after


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_slice_context_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="slice_context_mm"):
        ModelCard(name="x", slice_context_mm=bad)


def test_slice_context_needs_three_channels() -> None:
    with pytest.raises(ConfigError, match="3 input channels"):
        ModelCard(name="x", channels=1, mean=(0.5,), std=(0.5,), slice_context_mm=2.0)
