"""Windowing, resizing and normalisation: the model input contract."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.modelcard import ModelCard
from medseg.preprocess import (
    IntensityWindow,
    parse_fixed_window,
    percentile_window,
    preprocess_slices,
    resize_stack,
    resolve_window,
)
from tests.pipeline.helpers import make_volume

SPEC_PRESETS = {  # centre/width from the issue text
    "soft-tissue": (40, 400),
    "abdomen": (60, 400),
    "liver": (80, 150),
    "lung": (-600, 1500),
    "bone": (400, 1800),
    "brain": (40, 80),
    "mediastinum": (50, 350),
}


@pytest.fixture
def card() -> ModelCard:
    return ModelCard(name="t", input_size=(32, 48))


@pytest.mark.parametrize("name", sorted(SPEC_PRESETS))
def test_preset_window_has_the_specified_range(name: str, card: ModelCard) -> None:
    centre, width = SPEC_PRESETS[name]
    window = resolve_window(make_volume(np.zeros((1, 4, 4))), name.upper(), card)
    assert (window.low, window.high) == (centre - width / 2, centre + width / 2)


def test_preset_names_ignore_case_and_separators(card: ModelCard) -> None:
    volume = make_volume(np.zeros((1, 4, 4)))
    assert resolve_window(volume, "Soft_Tissue", card) == resolve_window(volume, "softtissue", card)


def test_dicom_window_uses_the_files_own_centre_and_width(card: ModelCard) -> None:
    volume = make_volume(np.zeros((1, 4, 4)), window=(50.0, 350.0))
    window = resolve_window(volume, "dicom", card)
    assert (window.low, window.high) == (-125.0, 225.0)


def test_dicom_window_without_one_in_the_file_is_a_config_error(card: ModelCard) -> None:
    with pytest.raises(ConfigError, match="no WindowCenter"):
        resolve_window(make_volume(np.zeros((1, 4, 4))), "dicom", card)


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [("40/400", -160, 240), ("-600/1500", -1350, 150), (" 35.5 / 10 ", 30.5, 40.5)],
)
def test_centre_width_strings_parse(text: str, low: float, high: float) -> None:
    window = parse_fixed_window(text)
    assert (window.low, window.high) == pytest.approx((low, high))


@pytest.mark.parametrize("text", ["40", "40/0", "40/-5", "abc", "40/400/3", "", "p5"])
def test_bad_window_strings_are_config_errors(text: str, card: ModelCard) -> None:
    with pytest.raises(ConfigError, match="window"):
        resolve_window(make_volume(np.zeros((1, 4, 4))), text, card)


def test_auto_window_for_ct_is_the_cards_default(card: ModelCard) -> None:
    window = resolve_window(make_volume(np.zeros((1, 4, 4))), "auto", card)
    assert (window.low, window.high) == (60 - 200, 60 + 200)  # card default: abdomen


def test_auto_window_for_mr_uses_volume_percentiles_from_the_card() -> None:
    rng = np.random.default_rng(1)
    voxels = rng.gamma(2.0, 300.0, size=(5, 20, 20))
    volume = make_volume(voxels, modality="MR")
    for percentiles in ((0.5, 99.5), (2.0, 98.0)):
        card = ModelCard(name="t", mr_percentiles=percentiles)
        window = resolve_window(volume, None, card)
        expected = np.percentile(voxels.astype(np.float32), percentiles)
        assert (window.low, window.high) == pytest.approx(tuple(expected), rel=1e-6)


def test_explicit_percentile_spec(card: ModelCard) -> None:
    voxels = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    window = resolve_window(make_volume(voxels, modality="MR"), "p1-99", card)
    assert (window.low, window.high) == pytest.approx((9.99, 989.01))


def test_constant_volume_percentiles_still_give_a_valid_window() -> None:
    window = percentile_window(np.full((2, 3, 3), 7.0), 0.5, 99.5)
    assert window.high > window.low == 7.0


def test_window_apply_clips_to_unit_range() -> None:
    window = IntensityWindow(-100.0, 100.0)
    out = window.apply(np.array([-500.0, -100.0, 0.0, 50.0, 900.0]))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 0.75, 1.0])
    assert out.dtype == np.float32


def test_preprocess_normalises_each_channel_with_the_card() -> None:
    card = ModelCard(name="t", input_size=(16, 24), mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    window = IntensityWindow(0.0, 100.0)
    slices = np.full((2, 40, 30), 60.0, dtype=np.float32)  # windowed intensity 0.6
    out = preprocess_slices(slices, window, card)
    assert out.shape == (2, 3, 16, 24) and out.dtype == np.float32
    for channel, (mean, std) in enumerate(zip(card.mean, card.std, strict=True)):
        np.testing.assert_allclose(out[:, channel], (0.6 - mean) / std, rtol=1e-5)


def test_preprocess_windows_before_resizing() -> None:
    """A half-bright slice: clipping first keeps the step between 0 and 1 exactly."""
    card = ModelCard(name="t", input_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    slices = np.zeros((1, 16, 16), dtype=np.float32)
    slices[:, :, 8:] = 5000.0  # far above the window
    out = preprocess_slices(slices, IntensityWindow(0.0, 100.0), card)
    np.testing.assert_allclose(out[0, 0, :, :3], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[0, 0, :, 5:], 1.0, atol=1e-6)
    assert 0.0 < out[0, 0, 0, 3] < 1.0  # the antialiased edge


def test_resize_keeps_constants_and_linear_ramps_when_upsampling() -> None:
    ramp = np.tile(np.arange(10, dtype=np.float32), (3, 6, 1))  # (3, 6, 10), ramp along cols
    out = resize_stack(ramp, (12, 40))
    # half-pixel bilinear reproduces a linear ramp exactly away from the clamped borders
    centres = (np.arange(40) + 0.5) * 10 / 40 - 0.5
    inner = (centres >= 0) & (centres <= 9)
    np.testing.assert_allclose(
        out[:, :, inner], np.broadcast_to(centres[inner], (3, 12, inner.sum())), atol=1e-5
    )
    np.testing.assert_allclose(resize_stack(np.full((1, 7, 9), 3.5), (20, 4)), 3.5, rtol=1e-6)


def test_resize_antialiasing_removes_a_pixel_checkerboard() -> None:
    board = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)[None]
    smooth = resize_stack(board, (16, 16), antialias=True)
    assert np.ptp(smooth) < 0.05  # averaged to grey
    np.testing.assert_allclose(smooth, 0.5, atol=0.03)


@pytest.mark.torch
def test_resize_matches_torch_interpolate_for_training() -> None:
    """Training may resize with torch on a GPU: it must be the same filter."""
    import torch

    rng = np.random.default_rng(0)
    stack = rng.random((2, 100, 70), dtype=np.float32)
    for size in ((64, 64), (150, 90)):
        ours = resize_stack(stack, size)
        theirs = torch.nn.functional.interpolate(
            torch.from_numpy(stack)[:, None], size=size, mode="bilinear", antialias=True
        )[:, 0].numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
