"""Logits back to slice size, threshold, components and holes."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.modelcard import ModelCard
from medseg.postprocess import CleanupOptions, clean_mask, threshold, to_probabilities
from tests.pipeline.helpers import balls


def test_logits_are_resized_before_the_sigmoid() -> None:
    """A logit step resized to 3x the size: the edge lands between the two source pixels."""
    card = ModelCard(name="t", input_size=(8, 8))
    logits = np.full((1, 1, 8, 8), -10.0, dtype=np.float32)
    logits[..., 4:] = 10.0
    probs = to_probabilities(logits, (24, 24), card)
    assert probs.shape == (1, 24, 24) and probs.dtype == np.float32
    row = probs[0, 0]
    assert np.all(row[:11] < 0.01) and np.all(row[13:] > 0.99)
    assert 0.01 < row[11] < 0.5 < row[12] < 0.99  # a smooth edge, not a binary staircase
    # the 0.5 crossing is exactly at the middle (between output columns 11 and 12)
    np.testing.assert_allclose(row[11] + row[12], 1.0, atol=1e-6)


def test_probability_models_skip_the_sigmoid() -> None:
    card = ModelCard(name="t", input_size=(8, 8), output="probabilities")
    out = np.full((2, 1, 8, 8), 0.3, dtype=np.float32)
    np.testing.assert_allclose(to_probabilities(out, (8, 6), card), 0.3, rtol=1e-6)


def test_logits_model_output_goes_through_the_sigmoid() -> None:
    card = ModelCard(name="t", input_size=(8, 8))
    out = np.zeros((1, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(to_probabilities(out, (8, 8), card), 0.5)


def test_threshold_is_strict_and_validated() -> None:
    probs = np.array([0.2, 0.5, 0.51])
    np.testing.assert_array_equal(threshold(probs, 0.5), [False, False, True])
    with pytest.raises(ConfigError):
        threshold(probs, 1.0)


def test_minimum_component_volume_uses_millimetres() -> None:
    shape = (20, 30, 30)
    big = balls(shape, [(10, 8, 8)], 4)  # ~257 voxels
    small = balls(shape, [(10, 22, 22)], 1.5)  # ~19 voxels
    mask = big | small
    spacing = (2.0, 0.5, 0.5)  # 0.5 mm3 per voxel
    cut = 0.5 * (small.sum() + 1)  # just above the small one's volume in mm3
    out = clean_mask(mask, spacing, CleanupOptions(min_component_mm3=cut))
    np.testing.assert_array_equal(out, big)
    out = clean_mask(mask, (4.0, 1.0, 1.0), CleanupOptions(min_component_mm3=cut))
    np.testing.assert_array_equal(out, mask)  # same voxels, 8x the volume: both stay


def test_largest_component_only() -> None:
    shape = (10, 20, 20)
    big, small = balls(shape, [(5, 5, 5)], 3), balls(shape, [(5, 15, 15)], 2)
    out = clean_mask(big | small, (1, 1, 1), CleanupOptions(largest_component=True))
    np.testing.assert_array_equal(out, big)


def test_fill_holes_closes_in_plane_holes_only() -> None:
    mask = np.zeros((3, 9, 9), dtype=bool)
    mask[:, 2:7, 2:7] = True
    mask[1, 4, 4] = False  # a hole inside slice 1
    mask[:, 0, 4] = True
    out = clean_mask(mask, (1, 1, 1), CleanupOptions(fill_holes=True))
    assert out[1, 4, 4] and out.sum() == mask.sum() + 1


def test_cleanup_without_options_returns_the_mask_unchanged() -> None:
    mask = balls((6, 10, 10), [(3, 5, 5)], 2)
    np.testing.assert_array_equal(clean_mask(mask, (1, 1, 1), CleanupOptions()), mask)


def test_negative_minimum_volume_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        CleanupOptions(min_component_mm3=-1)
