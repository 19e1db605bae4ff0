"""Sliding windows at a model's pixel spacing: layout, padding, blending, and that serving,
export calibration and training cut the same windows at the same scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.special import expit

from medseg import pipeline
from medseg.engine import open_engine
from medseg.errors import ConfigError
from medseg.model.data import SliceSet, to_model_input
from medseg.model.slices import volume_batch
from medseg.model.train import _crop_batch, _padding_value, _resized
from medseg.modelcard import ModelCard
from medseg.pipeline import SegmentOptions, segment_volume
from medseg.preprocess import channel0_values, resolve_window
from medseg.tiling import (
    MIN_OVERLAP,
    Region,
    TileBlender,
    crop_padded,
    slice_regions,
    tile_extent,
    window_starts,
)
from tests.pipeline.helpers import make_volume
from tests.tiny_models import make_bright_model


@pytest.mark.parametrize(("length", "extent"), [(256, 176), (512, 328), (100, 99), (1000, 64)])
def test_windows_cover_the_slice_and_overlap_enough(length: int, extent: int) -> None:
    starts = window_starts(length, extent)
    assert starts[0] == 0 and starts[-1] + extent == length
    steps = np.diff(starts)
    assert (steps > 0).all() and (steps <= extent * (1 - MIN_OVERLAP) + 1).all()
    assert len(starts) == 1 + int(np.ceil((length - extent) / (extent * (1 - MIN_OVERLAP))))


def test_a_slice_smaller_than_a_window_gets_one_centred_padded_window() -> None:
    assert window_starts(100, 176) == (-38,)
    assert window_starts(176, 176) == (0,)
    regions = slice_regions((100, 300), (176, 176))
    assert [(r.r0, r.r1) for r in regions] == [(-38, 138)] * 2
    assert [r.c0 for r in regions] == [0, 124]


def test_window_extent_follows_the_card_spacing_per_axis() -> None:
    card = ModelCard(name="t", input_size=(352, 320), pixel_spacing_mm=0.7)
    assert tile_extent(card, (256, 256), (1.4, 0.7)) == (176, 320)
    assert tile_extent(ModelCard(name="t"), (256, 200), (1.4, 0.7)) == (256, 200)


def test_padded_crop_puts_the_slice_where_it_belongs() -> None:
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    crop = crop_padded(image, Region(-1, 3, 2, 6), fill=-5.0)
    expected = [[-5, -5, -5, -5], [2, 3, -5, -5], [6, 7, -5, -5], [10, 11, -5, -5]]
    assert crop.tolist() == expected
    assert crop_padded(image, Region(0, 2, 1, 3), 0.0).base is not None  # inside: a view


def test_blending_a_constant_answer_gives_it_back_everywhere() -> None:
    shape = (100, 130)
    regions = slice_regions(shape, (48, 48))
    blender = TileBlender(shape, regions)
    stack = np.zeros((2, *shape), dtype=np.float32)
    for k, value in ((0, 0.25), (1, 0.9)):
        for region in regions:
            blender.add(stack[k], region, np.full(region.shape, value, dtype=np.float32))
    blender.finish(stack)
    np.testing.assert_allclose(stack[0], 0.25, rtol=1e-5)
    np.testing.assert_allclose(stack[1], 0.9, rtol=1e-5)


def test_blending_favours_the_window_that_has_the_pixel_near_its_centre() -> None:
    shape = (10, 100)
    regions = slice_regions(shape, (10, 60))  # columns 0-60 and 40-100
    blender = TileBlender(shape, regions)
    plane = np.zeros(shape, dtype=np.float32)
    blender.add(plane, regions[0], np.zeros(regions[0].shape, dtype=np.float32))
    blender.add(plane, regions[1], np.ones(regions[1].shape, dtype=np.float32))
    blender.finish(plane[None])
    assert plane[5, 42] < 0.05 and plane[5, 57] > 0.95  # each side near the other's edge
    assert plane[5, 49] < 0.5 < plane[5, 50]  # the centres are 30.0 and 70.0
    assert plane[5, 49] + plane[5, 50] == pytest.approx(1.0, abs=1e-5)
    assert (np.diff(plane[5, 40:60]) > 0).all()


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_a_bad_card_pixel_spacing_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="pixel_spacing_mm"):
        ModelCard(name="x", pixel_spacing_mm=bad)


SIZE = (32, 32)


def _bright_volume() -> np.ndarray:
    """Squares of 300 HU on 0 HU, two touching the edges and one across the window seams."""
    voxels = np.zeros((3, 40, 56), dtype=np.float32)
    voxels[:, 0:10, 0:10] = 300.0
    voxels[:, 28:40, 44:56] = 300.0
    voxels[1, 12:28, 20:36] = 300.0
    return voxels


@pytest.mark.parametrize("pixel_spacing", [0.0, 0.5, 0.8, 2.0])
def test_tiled_serving_returns_each_voxel_its_own_answer(tmp_path: Path, pixel_spacing) -> None:
    """A pointwise model (logit = gain * (intensity - 0.5)): however a slice is cut into
    windows and resampled, every voxel away from an edge must come back with its own
    probability. 0 mm: whole slices; 0.5 mm: 3x5 zoomed windows of 16 pixels; 0.8 mm:
    windows of 26 pixels; 2 mm: one 64-pixel window, the slice padded inside it."""
    path = tmp_path / "bright.onnx"
    card = make_bright_model(path, size=SIZE, gain=8.0)
    if pixel_spacing:
        card = ModelCard.from_dict({**card.to_dict(), "pixel_spacing_mm": pixel_spacing})
    voxels = _bright_volume()
    volume = make_volume(voxels, spacing=(2.0, 1.0, 1.0))
    engine = open_engine(path, card, threads=1)
    try:
        mask, prob = segment_volume(volume, engine, card, SegmentOptions(window="150/300"))
    finally:
        engine.close()
    truth = voxels > 150
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    inside = ndimage.binary_erosion(truth, in_plane, iterations=4)
    outside = ~ndimage.binary_dilation(truth, in_plane, iterations=4)
    far = inside | outside
    expected = expit(np.where(truth, 4.0, -4.0))
    np.testing.assert_allclose(prob[far], expected[far], atol=2e-3)
    assert inside.sum() > 100 and mask[inside].all() and not mask[outside].any()


def test_serving_cuts_windows_of_the_card_spacing(tmp_path: Path) -> None:
    card = ModelCard(name="t", input_size=SIZE, pixel_spacing_mm=0.5)
    volume = make_volume(np.zeros((2, 40, 56), np.float32), spacing=(2.0, 1.0, 1.0))
    tiles, _ = pipeline._sliding_tiles(volume, card)
    # 16-pixel windows, neighbours at most 12 apart: rows 0/12/24, columns 0/10/20/30/40
    assert len(tiles) == 2 * 3 * 5
    assert {t.shape for t in tiles} == {(16, 16)}
    starts = [(r, c) for r in (0, 12, 24) for c in (0, 10, 20, 30, 40)]
    assert [(t.region.r0, t.region.c0) for t in tiles if t.k == 1] == starts


def test_a_job_reports_the_windows_it_ran(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Automatic segmentation counts its sliding windows (not the prompt crops it has none
    of), in the result and in the job's log line."""
    path = tmp_path / "bright.onnx"
    card = make_bright_model(path, size=SIZE, gain=8.0)
    card = ModelCard.from_dict({**card.to_dict(), "pixel_spacing_mm": 0.5})
    volume = make_volume(np.zeros((2, 40, 56), np.float32), spacing=(2.0, 1.0, 1.0))
    engine = open_engine(path, card, threads=1)
    try:
        with caplog.at_level("INFO", logger="medseg.pipeline"):
            result = pipeline.segment_volume_result(volume, engine, card, SegmentOptions())
    finally:
        engine.close()
    assert result.tiles == 2 * 3 * 5
    assert "segmenting 2 slices as 30 windows" in caplog.text


def test_training_export_and_serving_cut_the_same_window_inputs() -> None:
    # 24-pixel windows on 20x30 slices: rows padded (-2 to 22), columns at 0 and 6
    card = ModelCard(name="x", input_size=SIZE, pixel_spacing_mm=0.75, slice_context_mm=2.0)
    rng = np.random.default_rng(5)
    voxels = rng.normal(40, 100, size=(4, 20, 30)).astype(np.float32)
    volume = make_volume(voxels, spacing=(2.0, 1.0, 1.0))
    window = resolve_window(volume, "150/300", card)
    tiles, _ = pipeline._sliding_tiles(volume, card)
    assert {t.region for t in tiles} == {Region(-2, 22, 0, 24), Region(-2, 22, 6, 30)}
    served, _ = pipeline._prepare(volume.voxels, list(tiles), window, card, 2.0)
    # export calibration orders window-major (all slices of window 0, then window 1, ...)
    per_window = len(tiles) // 4
    exported = volume_batch(volume, card, "150/300")
    order = [k * per_window + w for w in range(per_window) for k in range(4)]
    np.testing.assert_allclose(exported, served[order], atol=1e-6)
    # training stores the source matrix in channel-0 normalisation and cuts per step
    stored = channel0_values(window.apply(voxels), card)
    sset = SliceSet("1.2.3", stored, np.zeros_like(stored), 2.0, (1.0, 1.0))
    fill = _padding_value(card)
    trained = np.stack(
        [
            _resized(crop_padded(sset.model_images([t.k], card)[0], t.region, fill), SIZE)
            for t in tiles
        ]
    )
    np.testing.assert_allclose(to_model_input(trained, card), served, atol=1e-5)


def test_training_windows_have_the_serving_scale_and_padding() -> None:
    """A 20x20 slice at 1 mm, a 16-pixel input at 2 mm: a whole input covers 32 source
    pixels, so the slice sits centred in padding at half its size."""
    card = ModelCard(name="x", input_size=(16, 16), pixel_spacing_mm=2.0)
    image = np.full((20, 20), 3.0, dtype=np.float32)
    mask = np.zeros((20, 20), dtype=np.float32)
    mask[8:12, 8:12] = 1.0
    rng = np.random.default_rng(0)
    images, masks = _crop_batch([image], [mask], [(32, 32)], (16, 16), card, rng)
    assert images.shape == (1, 16, 16)
    assert masks[0].sum() == pytest.approx(4.0, abs=0.3)  # 16 source pixels at half scale
    assert images[0, 0, 0] == pytest.approx(_padding_value(card))
    assert images[0, 8, 8] == pytest.approx(3.0)
    rows, cols = np.nonzero(masks[0] > 0.5)
    assert rows.mean() == pytest.approx(7.5, abs=0.6) and cols.mean() == pytest.approx(7.5, abs=0.6)
