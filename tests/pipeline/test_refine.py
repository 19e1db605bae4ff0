"""Edge refinement (medseg.refine): the guided filter, its limits, and the pipeline's use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.engine import open_engine
from medseg.errors import ConfigError
from medseg.modelcard import ModelCard
from medseg.pipeline import SegmentOptions, segment_volume
from medseg.preprocess import IntensityWindow
from medseg.refine import Refinement, box_radius, guided_filter, refine_probabilities
from tests.pipeline.helpers import make_volume
from tests.tiny_models import make_coarse_bright_model

WINDOW = IntensityWindow.from_centre_width(60.0, 400.0)


def _disk_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three noisy slices of a 120 HU disk (radius 11 px, centre off the pixel grid) on
    40 HU: (voxels, truth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 30.3) ** 2 + (xx - 33.6) ** 2 <= 11.0**2
    voxels = np.where(disk, 120.0, 40.0)[None].repeat(3, axis=0)
    voxels += rng.normal(0.0, 5.0, voxels.shape)
    return voxels.astype(np.float32), np.broadcast_to(disk, voxels.shape)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_guided_filter_passes_the_guide_through_and_averages_where_it_is_flat() -> None:
    rng = np.random.default_rng(1)
    guide = rng.uniform(0.0, 1.0, (2, 20, 24)).astype(np.float32)
    # values that are a linear function of the guide come back unchanged (eps -> 0)
    np.testing.assert_allclose(
        guided_filter(guide, 0.3 * guide + 0.1, (2, 2), 1e-8), 0.3 * guide + 0.1, atol=1e-4
    )
    # a flat guide carries no edges: the output is the values box-averaged (twice: the
    # filter averages the per-box fits), within each slice only
    flat = np.full_like(guide, 0.5)
    values = rng.uniform(0.0, 1.0, guide.shape).astype(np.float32)
    out = guided_filter(flat, values, (1, 1), 1e-4)
    box = (1, 3, 3)
    twice = ndimage.uniform_filter(
        ndimage.uniform_filter(values, box, mode="nearest"), box, mode="nearest"
    )
    np.testing.assert_allclose(out, twice, atol=1e-5)


@pytest.mark.parametrize("border", [9.5, 12.5])
def test_refinement_moves_a_blurred_border_onto_the_image_edge(border: float) -> None:
    """The network's answer in the right place, but soft and with its border 1.5 px
    inside (9.5) or outside (12.5) the disk's edge (11)."""
    voxels, truth = _disk_volume()
    yy, xx = np.mgrid[:64, :64]
    dist = np.sqrt((yy - 30.3) ** 2 + (xx - 33.6) ** 2)
    prob = np.broadcast_to(1.0 / (1.0 + np.exp((dist - border) / 1.5)), voxels.shape)
    prob = prob.astype(np.float32)
    refined = refine_probabilities(prob, voxels, WINDOW, (1.0, 1.0), 0.5, Refinement(3.0))
    before, after = _dice(prob > 0.5, truth), _dice(refined > 0.5, truth)
    assert before < 0.89 and after > 0.96
    assert refined.min() >= 0.0 and refined.max() <= 1.0


def test_refinement_changes_nothing_far_from_what_the_network_marked() -> None:
    voxels, truth = _disk_volume()
    prob = np.zeros(voxels.shape, dtype=np.float32)
    prob[1] = np.where(truth[1], 0.9, 0.2)  # only the middle slice has a finding
    prob[1, :, :12] = 0.2  # and far from it the image has no edge the filter may use
    refined = refine_probabilities(prob, voxels, WINDOW, (1.0, 1.0), 0.5, Refinement(2.0))
    np.testing.assert_array_equal(refined[[0, 2]], prob[[0, 2]])
    near = np.zeros(truth[1].shape, dtype=bool)
    rows, cols = np.nonzero(truth[1])
    near[rows.min() - 2 : rows.max() + 3, cols.min() - 2 : cols.max() + 3] = True
    np.testing.assert_array_equal(refined[1][~near], prob[1][~near])
    assert not np.array_equal(refined[1][near], prob[1][near])


def test_refinement_off_returns_an_unchanged_copy() -> None:
    voxels, truth = _disk_volume()
    prob = truth.astype(np.float32)
    refined = refine_probabilities(prob, voxels, WINDOW, (1.0, 1.0), 0.5, Refinement(0.0))
    np.testing.assert_array_equal(refined, prob)
    assert refined is not prob


def test_the_box_radius_follows_each_axis_spacing() -> None:
    assert box_radius(3.0, (1.4, 1.4)) == (2, 2)
    assert box_radius(3.0, (0.5, 1.5)) == (6, 2)
    assert box_radius(0.2, (1.0, 1.0)) == (1, 1)  # never smaller than one pixel


@pytest.mark.parametrize(("radius", "eps"), [(-1.0, 1e-4), (float("nan"), 1e-4), (2.0, 0.0)])
def test_bad_refinement_settings_are_refused(radius: float, eps: float) -> None:
    with pytest.raises(ConfigError, match="refinement"):
        ModelCard(name="t", refine_radius_mm=radius, refine_eps=eps)
    with pytest.raises(ConfigError, match="refinement"):
        Refinement(radius, eps)
    if eps > 0:
        with pytest.raises(ConfigError, match="refinement"):
            SegmentOptions(refine_radius_mm=radius)


def test_segmenting_with_the_cards_refinement_follows_the_image(tmp_path: Path) -> None:
    """A stand-in for a stride-8 network (logits averaged over 8x8 cells): its mask has a
    blocky border; the card's refinement puts it back on the disk's edge, and a job can
    turn it off."""
    voxels, truth = _disk_volume()
    path = tmp_path / "coarse.onnx"
    plain = make_coarse_bright_model(path, (64, 64), stride=8, level=0.55, gain=20.0)
    card = ModelCard.from_dict({**plain.to_dict(), "refine_radius_mm": 3.0})
    volume = make_volume(voxels, spacing=(2.0, 1.0, 1.0))
    engine = open_engine(path, card, threads=1)
    try:
        refined, _ = segment_volume(volume, engine, card, SegmentOptions(window="60/400"))
        off = SegmentOptions(window="60/400", refine_radius_mm=0.0)
        unrefined, _ = segment_volume(volume, engine, card, off)
        baseline, _ = segment_volume(volume, engine, plain, SegmentOptions(window="60/400"))
    finally:
        engine.close()
    np.testing.assert_array_equal(unrefined, baseline)
    assert _dice(unrefined, truth) < 0.93
    assert _dice(refined, truth) > 0.98


def test_refining_only_around_the_findings_equals_refining_whole_slices() -> None:
    """The filter runs on the findings' bounding box plus three radii, not the whole
    slice: findings at a corner and far apart must get what whole slices would give."""
    rng = np.random.default_rng(3)
    image = rng.normal(40.0, 30.0, (4, 80, 90)).astype(np.float32)
    prob = rng.uniform(0.0, 0.4, image.shape).astype(np.float32)
    prob[1, 0:5, 0:6] = 0.9  # at the corner
    prob[1, 60:66, 70:80] = 0.8  # far from it, same slice
    prob[3, 30:34, 40:43] = 0.7
    settings = Refinement(2.0)
    refined = refine_probabilities(prob, image, WINDOW, (1.0, 1.0), 0.5, settings)
    whole = guided_filter(WINDOW.apply(image), prob, (2, 2), settings.eps)
    near = ndimage.binary_dilation(prob > 0.5, structure=np.ones((1, 5, 5), dtype=bool))
    np.testing.assert_allclose(refined[near], np.clip(whole[near], 0, 1), atol=1e-6)
    np.testing.assert_array_equal(refined[~near], prob[~near])
