"""Edge refinement (medseg.refine): the guided filter, its limits, and the pipeline's use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.engine import open_engine
from medseg.errors import ConfigError
from medseg.modelcard import ModelCard
from medseg.pipeline import (
    SegmentOptions,
    fractional_masks,
    segment_volume,
    segment_volume_result,
)
from medseg.preprocess import IntensityWindow
from medseg.refine import (
    Refinement,
    box_radius,
    continue_across_slices,
    guided_filter,
    refine_probabilities,
)
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
    refined = refine_probabilities(prob, voxels, WINDOW, (1.0, 1.0), prob > 0.5, Refinement(3.0))
    before, after = _dice(prob > 0.5, truth), _dice(refined > 0.5, truth)
    assert before < 0.89 and after > 0.96
    assert refined.min() >= 0.0 and refined.max() <= 1.0


def test_refinement_changes_nothing_far_from_what_the_network_marked() -> None:
    voxels, truth = _disk_volume()
    prob = np.zeros(voxels.shape, dtype=np.float32)
    prob[1] = np.where(truth[1], 0.9, 0.2)  # only the middle slice has a finding
    prob[1, :, :12] = 0.2  # and far from it the image has no edge the filter may use
    refined = refine_probabilities(prob, voxels, WINDOW, (1.0, 1.0), prob > 0.5, Refinement(2.0))
    np.testing.assert_array_equal(refined[[0, 2]], prob[[0, 2]])
    near = np.zeros(truth[1].shape, dtype=bool)
    rows, cols = np.nonzero(truth[1])
    near[rows.min() - 2 : rows.max() + 3, cols.min() - 2 : cols.max() + 3] = True
    np.testing.assert_array_equal(refined[1][~near], prob[1][~near])
    assert not np.array_equal(refined[1][near], prob[1][near])


def test_refinement_off_returns_an_unchanged_copy() -> None:
    voxels, truth = _disk_volume()
    prob = truth.astype(np.float32)
    refined = refine_probabilities(prob, voxels, WINDOW, (1.0, 1.0), truth, Refinement(0.0))
    np.testing.assert_array_equal(refined, prob)
    assert refined is not prob


def test_the_box_radius_follows_each_axis_spacing() -> None:
    assert box_radius(3.0, (1.4, 1.4)) == (2, 2)
    assert box_radius(3.0, (0.5, 1.5)) == (6, 2)
    assert box_radius(0.2, (1.0, 1.0)) == (1, 1)  # never smaller than one pixel


@pytest.mark.parametrize(
    ("radius", "eps"), [(-1.0, 1e-4), (float("nan"), 1e-4), (2.0, 0.0), (2.0, 1e-9)]
)
def test_bad_refinement_settings_are_refused(radius: float, eps: float) -> None:
    with pytest.raises(ConfigError, match="refinement"):
        ModelCard(name="t", refine_radius_mm=radius, refine_eps=eps)
    with pytest.raises(ConfigError, match="refinement"):
        Refinement(radius, eps)
    if not radius >= 0:  # a job names only the radius
        with pytest.raises(ConfigError, match="refine-radius"):
            SegmentOptions(refine_radius_mm=radius)


@pytest.mark.parametrize("spacing", [(2.0, 1.0, 1.0), (2.0, 0.5, 1.0)])
def test_segmenting_with_the_cards_refinement_follows_the_image(
    tmp_path: Path, spacing: tuple[float, float, float]
) -> None:
    """A stand-in for a stride-8 network (logits averaged over 8x8 cells): its mask has a
    blocky border; the card's refinement puts it back on the disk's edge (also with
    rectangular pixels, where the box is 6 x 3 pixels), a job can turn it off, and a
    FRACTIONAL SEG carries the refined probabilities."""
    voxels, truth = _disk_volume()
    path = tmp_path / "coarse.onnx"
    plain = make_coarse_bright_model(path, (64, 64), stride=8, level=0.55, gain=20.0)
    card = ModelCard.from_dict({**plain.to_dict(), "refine_radius_mm": 3.0})
    volume = make_volume(voxels, spacing=spacing)
    engine = open_engine(path, card, threads=1)
    try:
        result = segment_volume_result(volume, engine, card, SegmentOptions(window="60/400"))
        off = SegmentOptions(window="60/400", refine_radius_mm=0.0)
        unrefined, _ = segment_volume(volume, engine, card, off)
        baseline, _ = segment_volume(volume, engine, plain, SegmentOptions(window="60/400"))
    finally:
        engine.close()
    np.testing.assert_array_equal(unrefined, baseline)
    assert _dice(unrefined, truth) < 0.93
    assert _dice(result.mask, truth) > 0.98
    np.testing.assert_array_equal(fractional_masks(result) > result.level, result.mask)


def test_refining_only_around_the_findings_equals_refining_whole_slices() -> None:
    """The filter runs on the findings' bounding box plus three radii, not the whole
    slice: findings at a corner and far apart must get what whole slices would give
    (more slices than one chunk, different radii per axis)."""
    rng = np.random.default_rng(3)
    image = rng.normal(40.0, 30.0, (20, 80, 90)).astype(np.float32)
    prob = rng.uniform(0.0, 0.4, image.shape).astype(np.float32)
    prob[1, 0:5, 0:6] = 0.9  # at the corner
    prob[1, 60:66, 70:80] = 0.8  # far from it, same slice
    prob[3, 30:34, 40:43] = 0.7
    prob[19, 75:80, 84:90] = 0.95  # the opposite corner, in the second chunk
    marked = prob > 0.5
    settings = Refinement(2.0)
    refined = refine_probabilities(prob, image, WINDOW, (1.0, 2.0), marked, settings)
    whole = np.clip(guided_filter(WINDOW.apply(image), prob, (2, 1), settings.eps), 0, 1)
    core = ndimage.binary_erosion(marked, structure=np.ones((1, 3, 3), dtype=bool))
    whole[core] = np.maximum(whole[core], prob[core])
    near = ndimage.binary_dilation(marked, structure=np.ones((1, 5, 3), dtype=bool))
    np.testing.assert_allclose(refined[near], whole[near], atol=1e-6)
    np.testing.assert_array_equal(refined[~near], prob[~near])


def test_a_finding_the_image_does_not_support_shrinks_to_its_core_but_stays() -> None:
    """A confident 7x7 finding on a flat, noisy image: no edge to follow, so its rim is
    averaged away, but the voxels one pixel inside it keep their probability."""
    rng = np.random.default_rng(4)
    image = rng.normal(40.0, 10.0, (1, 40, 40)).astype(np.float32)
    prob = np.zeros(image.shape, dtype=np.float32)
    prob[0, 17:24, 17:24] = 0.95
    refined = refine_probabilities(prob, image, WINDOW, (1.0, 1.0), prob > 0.5, Refinement(3.0))
    kept = refined > 0.5
    assert kept[0, 18:23, 18:23].all()  # the core
    assert kept.sum() < 49  # the rim was not kept as it was


def test_a_bad_guide_region_does_not_make_wild_values() -> None:
    """A constant image (zero variance, where float32 round-off can go negative) with the
    smallest eps allowed: the output stays a box average, no blow-up."""
    image = np.full((1, 30, 30), 1234.5678, dtype=np.float32)
    prob = np.zeros(image.shape, dtype=np.float32)
    prob[0, 10:20, 10:20] = 0.9
    refined = refine_probabilities(
        prob, image, WINDOW, (1.0, 1.0), prob > 0.5, Refinement(2.0, eps=1e-6)
    )
    assert refined.min() >= 0.0 and refined.max() <= 0.9 + 1e-6


ACROSS = Refinement(3.0, across_slices=True)


def _sphere_volume(
    seed: int = 0, centre: float = 4.0, fat: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Nine noisy 1 mm slices (1 mm pixels) through a 70 HU ball of radius 3.6 mm in 130 HU
    tissue, with 0 HU fat within the box radius of it if ``fat``: (voxels, truth). The
    ball's centre is on slice ``centre`` (by default it spans slices 1-7)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:9, :40, :40]
    ball = (zz - centre) ** 2 + (yy - 20.2) ** 2 + (xx - 19.7) ** 2 <= 3.6**2
    voxels = np.where(ball, 70.0, 130.0)
    if fat:
        voxels[:, :, 26:] = 0.0  # darker still than the ball, 3 px from it
    voxels += rng.normal(0.0, 6.0, voxels.shape)
    return voxels.astype(np.float32), ball


def test_a_finding_is_continued_onto_the_slices_the_network_missed() -> None:
    """The network found the ball's three middle slices only; its smaller ends, on the
    slices either side, come back from the image, and nothing else (not the fat, not the
    slices past the ball)."""
    voxels, ball = _sphere_volume()
    found = ball.copy()
    found[:3] = found[6:] = False
    grown = continue_across_slices(found, voxels, WINDOW, (1.0, 1.0), ACROSS)
    assert (grown >= found).all()
    assert not grown[0].any() and not grown[8].any()
    assert not grown[:, :, 24:].any()  # fat is further from the ball than from the tissue
    ends = np.r_[1:3, 6:8]  # 13 and 29 pixels of ball: smoothing trims their rims
    assert (grown[ends] <= ball[ends]).all()
    assert grown[ends].sum() > 0.5 * ball[ends].sum()
    assert _dice(grown, ball) > 0.9 > _dice(found, ball)


def test_continuation_needs_contrast_and_leaves_slices_the_network_marked() -> None:
    voxels, ball = _sphere_volume()
    found = ball.copy()
    found[:3] = found[6:] = False
    flat = np.random.default_rng(1).normal(130.0, 6.0, voxels.shape).astype(np.float32)
    same = continue_across_slices(found, flat, WINDOW, (1.0, 1.0), ACROSS)
    np.testing.assert_array_equal(same, found)  # no edge around the finding: nothing to follow
    marked = found.copy()
    marked[2, 20, 19] = True  # the network saw something on slice 2's footprint: its answer
    grown = continue_across_slices(marked, voxels, WINDOW, (1.0, 1.0), ACROSS)
    np.testing.assert_array_equal(grown[2], marked[2])
    assert grown[6].sum() > 5  # the other side still grows


def test_continuation_never_spreads_into_a_larger_structure() -> None:
    """The next slice holds a large region of the finding's intensity (a vessel or another
    organ under the lesion): taking it would make the finding grow, so nothing is added."""
    voxels, ball = _sphere_volume()
    found = ball.copy()
    found[:3] = found[6:] = False
    voxels[2] = np.where(np.abs(np.mgrid[:40, :40][0] - 20) < 12, 70.0, voxels[2])
    grown = continue_across_slices(found, voxels, WINDOW, (1.0, 1.0), ACROSS)
    np.testing.assert_array_equal(grown[:3], found[:3])
    assert grown[6].sum() > 5


def test_continuation_is_off_unless_asked() -> None:
    voxels, ball = _sphere_volume()
    found = ball.copy()
    found[:3] = found[6:] = False
    for off in (Refinement(3.0), Refinement(0.0, across_slices=True)):
        same = continue_across_slices(found, voxels, WINDOW, (1.0, 1.0), off)
        np.testing.assert_array_equal(same, found)
        assert same is not found


def test_a_card_that_refines_across_slices_finds_the_ends_a_coarse_network_misses(
    tmp_path: Path,
) -> None:
    """End to end: the stride-8 stand-in network finds only the large middle slices of a
    ball; the card's refinement across slices adds its ends, and the FRACTIONAL SEG marks
    them as certain."""
    rng = np.random.default_rng(7)
    zz, yy, xx = np.mgrid[:9, :64, :64]
    ball = (zz - 4.0) ** 2 * 8.4 + (yy - 31.5) ** 2 + (xx - 32.2) ** 2 <= 12.0**2  # ends: r 3
    voxels = (np.where(ball, 120.0, 40.0) + rng.normal(0.0, 5.0, ball.shape)).astype(np.float32)
    path = tmp_path / "coarse.onnx"
    plain = make_coarse_bright_model(path, (64, 64), stride=8, level=0.55, gain=20.0)
    edges = {**plain.to_dict(), "refine_radius_mm": 3.0}
    card = ModelCard.from_dict({**edges, "refine_across_slices": True})
    volume = make_volume(voxels, spacing=(1.0, 1.0, 1.0))
    options = SegmentOptions(window="60/400")
    engine = open_engine(path, card, threads=1)
    try:
        in_plane, _ = segment_volume(volume, engine, ModelCard.from_dict(edges), options)
        result = segment_volume_result(volume, engine, card, options)
    finally:
        engine.close()
    missed = ball.any(axis=(1, 2)) & ~in_plane.any(axis=(1, 2))
    assert missed.any()  # the stand-in misses the ball's ends ...
    assert result.mask[missed].any()  # ... which the continuation brings back
    assert (result.mask >= in_plane).all()
    assert _dice(result.mask, ball) > _dice(in_plane, ball)
    np.testing.assert_array_equal(fractional_masks(result) > result.level, result.mask)


def test_a_card_must_say_true_or_false_for_refining_across_slices() -> None:
    with pytest.raises(ConfigError, match="refine_across_slices"):
        ModelCard(name="t", refine_across_slices="yes")  # type: ignore[arg-type]


def _found_middle(ball: np.ndarray) -> np.ndarray:
    found = ball.copy()
    found[:3] = found[6:] = False
    return found


def test_continuation_does_not_take_a_structure_that_only_reaches_under_the_finding() -> None:
    """A larger region of the finding's intensity whose corner lies under the finding on
    the slices below (another organ, a vessel): the region as a whole is larger than the
    finding, so none of it joins, not even the corner within reach."""
    voxels, ball = _sphere_volume(fat=False)
    voxels[:3, 23:, 23:] = np.random.default_rng(2).normal(70.0, 6.0, (3, 17, 17))
    grown = continue_across_slices(_found_middle(ball), voxels, WINDOW, (1.0, 1.0), ACROSS)
    assert not grown[:3].any()
    assert grown[6].sum() > 5  # the other end, clear of it, still grows


def test_continuation_needs_the_findings_own_contrast() -> None:
    """A finding 10 HU from its surroundings (below the 16 HU floor) in 6 HU noise: the
    image cannot tell its end from noise, so nothing is added."""
    voxels, ball = _sphere_volume(fat=False)
    faint = np.where(ball, 120.0, 130.0) + (voxels - np.where(ball, 70.0, 130.0))
    grown = continue_across_slices(_found_middle(ball), faint, WINDOW, (1.0, 1.0), ACROSS)
    np.testing.assert_array_equal(grown, _found_middle(ball))


def test_continuation_reaches_no_further_than_the_box_radius() -> None:
    """A thin lesion-like strip runs from the ball's end on slice 2 to 10 px beyond it:
    only the part within the box radius (3 px) of the finding on slice 3 is added."""
    voxels, ball = _sphere_volume(fat=False)
    voxels[2, 20:22, 22:33] = 70.0
    grown = continue_across_slices(_found_middle(ball), voxels, WINDOW, (1.0, 1.0), ACROSS)
    assert grown[2].sum() > 5
    assert not grown[2, :, 27:].any()  # slice 3's part ends at column 23


def test_a_finding_outlined_a_little_inside_the_lesion_is_still_continued() -> None:
    """Networks draw their outline slightly inside a lesion; the first continuation is
    compared with that outline with some slack (1.5x), so the lesion's end, larger than
    the eroded outline, still joins."""
    voxels, ball = _sphere_volume(fat=False)
    cross = np.zeros((3, 3, 3), dtype=bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)
    inside = ndimage.binary_erosion(_found_middle(ball), structure=cross)  # 38 -> 21 pixels
    grown = continue_across_slices(inside, voxels, WINDOW, (1.0, 1.0), ACROSS)
    assert grown[2].sum() > inside[3].sum() or grown[6].sum() > inside[5].sum()
    assert grown[1].any() and grown[7].any()
    assert not (grown & ~ball).any()


def test_continuation_stops_where_a_finding_stops_narrowing() -> None:
    """A noise-free tube of constant cross-section through 30 slices, found on one: the
    smoothed band trims its rim on the next slices, and after that nothing narrows, so
    the growth stops there (a vessel is not continued through the volume)."""
    yy, xx = np.mgrid[:40, :40]
    tube = np.broadcast_to((yy - 20) ** 2 + (xx - 20) ** 2 <= 9, (30, 40, 40))
    voxels = np.where(tube, 70.0, 130.0).astype(np.float32)
    found = np.zeros(tube.shape, dtype=bool)
    found[15] = tube[15]
    grown = continue_across_slices(found, voxels, WINDOW, (1.0, 1.0), ACROSS)
    assert grown[14].any() and grown[16].any()
    assert not grown[:14].any() and not grown[17:].any()


def test_continuation_takes_only_what_connects_to_the_finding() -> None:
    """A separate speck of the finding's intensity within reach on the next slice is not
    part of the lesion's end."""
    voxels, ball = _sphere_volume()
    voxels[2, 14:16, 14:16] = 70.0  # 3 px from the ball's end on slice 2, not touching it
    grown = continue_across_slices(_found_middle(ball), voxels, WINDOW, (1.0, 1.0), ACROSS)
    assert grown[2].any()
    assert not grown[2, 13:17, 13:17].any()


@pytest.mark.parametrize("end", [0, 8])
def test_continuation_reaches_the_first_and_last_slice_and_does_not_wrap(end: int) -> None:
    """A ball centred on the first or last slice, with the same ball's image also at the
    other end of the volume: found on the end slice it is continued inwards only; found
    on the next slice in it is continued onto the end slice."""
    voxels, ball = _sphere_volume(centre=float(end), fat=False)
    inward = 1 if end == 0 else -1
    other = (end - inward) % len(ball)  # where a negative index would wrap to
    voxels[other] = voxels[end + inward]
    found = np.zeros(ball.shape, dtype=bool)
    found[end] = ball[end]
    grown = continue_across_slices(found, voxels, WINDOW, (1.0, 1.0), ACROSS)
    assert grown[end + inward].any()
    assert not grown[other].any()
    found = np.zeros(ball.shape, dtype=bool)
    found[end + inward] = ball[end + inward]
    grown = continue_across_slices(found, voxels, WINDOW, (1.0, 1.0), ACROSS)
    assert grown[end].any()


def test_refining_in_place_gives_the_same_values_without_a_copy() -> None:
    rng = np.random.default_rng(4)
    voxels = rng.normal(40.0, 30.0, size=(5, 40, 40)).astype(np.float32)
    voxels[1:4, 12:28, 10:30] += 120.0
    prob = np.zeros_like(voxels)
    prob[1:4, 13:27, 11:29] = 0.9
    settings = Refinement(3.0)
    copied = refine_probabilities(prob, voxels, WINDOW, (1.0, 1.0), prob > 0.5, settings)
    original = prob.copy()
    same = refine_probabilities(
        prob, voxels, WINDOW, (1.0, 1.0), original > 0.5, settings, in_place=True
    )
    assert same is prob
    np.testing.assert_array_equal(same, copied)
    assert not np.array_equal(copied, original), "the refinement changed something"
