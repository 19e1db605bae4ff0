"""Widening findings by their rims (medseg.refine.redraw_rims) and a card's use of it."""

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
    VolumeResult,
    fractional_masks,
    segment_volume_result,
)
from medseg.postprocess import label_components
from medseg.preprocess import IntensityWindow
from medseg.refine import Refinement, redraw_rims
from tests.pipeline.helpers import make_volume
from tests.tiny_models import make_coarse_bright_model

WINDOW = IntensityWindow.from_centre_width(60.0, 400.0)
RIMS = Refinement(3.0, 1e-4, rim_level=0.6)
TRIMMED = Refinement(3.0, 1e-4, rim_level=0.6, rim_trim=0.3)
# 2 mm pixels: the 3 mm box is 2 pixels, the smoothing sigma r/2 0.75 of a pixel, so a
# sharp edge stays sharp enough for the whole first ring inside it to read as lesion.
# 2.5 mm slices: sigma 0.6 of a slice across them.
SPACING = (2.5, 2.0, 2.0)
# The end-to-end card tests' volume: 2 mm slices of 1.5 mm pixels.
CARD_SPACING = (2.0, 1.5, 1.5)
IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE[1] = True


def _disk(radius: float, shape: tuple[int, int, int] = (3, 64, 64)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    disk = (yy - 30.3) ** 2 + (xx - 33.6) ** 2 <= radius**2
    return np.broadcast_to(disk, shape).copy()


def _image(lesion: np.ndarray, inside: float, seed: int = 0) -> np.ndarray:
    """``lesion`` at ``inside`` HU in 40 HU tissue, CT-like noise of SD 5 HU."""
    rng = np.random.default_rng(seed)
    voxels = np.where(lesion, inside, 40.0) + rng.normal(0.0, 5.0, lesion.shape)
    return voxels.astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _one_pixel_out(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=IN_PLANE) & ~mask


@pytest.mark.parametrize("inside", [100.0, -10.0])  # brighter or darker than its organ
def test_a_finding_drawn_inside_a_lesion_gets_its_rim_back(inside: float) -> None:
    truth = _disk(11.0)
    found = _disk(10.0)  # the network's outline, a pixel inside the lesion
    widened = redraw_rims(found, _image(truth, inside), WINDOW, SPACING, RIMS)
    added = widened & ~found
    assert (widened >= found).all()
    assert not (added & ~_one_pixel_out(found)).any()
    assert (added & truth).sum() >= 0.5 * (truth & ~found).sum()
    assert (added & ~truth).sum() <= 2
    assert _dice(widened, truth) > _dice(found, truth) + 0.04


def test_a_finding_on_the_lesions_edge_barely_moves() -> None:
    truth = _disk(11.0)
    widened = redraw_rims(truth, _image(truth, 100.0), WINDOW, SPACING, RIMS)
    rim = _one_pixel_out(truth)
    assert (widened & ~truth).sum() <= 0.05 * rim.sum()


def test_a_small_finding_is_measured_by_its_core() -> None:
    """A 5 mm lesion outlined exactly, in an image blurred like a CT: the finding's own
    border pixels are half lesion, half tissue. Its level is read from its core, so the
    tissue beyond the border does not look like it; read from all of the finding, the
    level would sag towards the tissue and a rim of tissue would join."""
    truth = _disk(2.5)
    image = ndimage.gaussian_filter(_image(truth, 100.0), (0, 1.0, 1.0))
    widened = redraw_rims(truth, image, WINDOW, (2.5, 1.0, 1.0), RIMS)
    np.testing.assert_array_equal(widened, truth)


def test_rims_grow_one_pixel_and_no_further() -> None:
    """A finding drawn 4 pixels inside: the whole first ring outside it is lesion-like and
    joins, nothing beyond it does."""
    truth, found = _disk(11.0), _disk(7.0)
    widened = redraw_rims(found, _image(truth, 100.0), WINDOW, SPACING, RIMS)
    ring = _one_pixel_out(found)
    assert (widened & ring).sum() >= 0.95 * ring.sum()
    assert not (widened & ~found & ~ring).any()


def test_the_level_decides_how_lesion_like_a_rim_pixel_must_be() -> None:
    """Blur puts the edge pixels between the two intensities: a low level takes more of
    them than a high one."""
    truth = _disk(11.0)
    image = ndimage.gaussian_filter(_image(truth, 100.0), (0, 0.5, 0.5))
    found = _disk(10.0)
    low = redraw_rims(found, image, WINDOW, SPACING, Refinement(3.0, rim_level=0.2))
    high = redraw_rims(found, image, WINDOW, SPACING, Refinement(3.0, rim_level=0.9))
    assert (high & ~found).sum() < (low & ~found).sum()
    assert (high <= low).all()


def test_a_rim_takes_nothing_beyond_the_lesions_own_intensity() -> None:
    """A dark lesion outlined exactly, touching fat darker still: the fat is even further
    from the liver than the lesion is, but it does not look like the lesion, so it stays
    out (and so does the liver)."""
    truth = _disk(8.0)
    image = _image(truth, 10.0) + 20.0  # lesion 30 HU in 60 HU liver
    image[:, :, 42:] = -100.0 + np.random.default_rng(1).normal(0.0, 5.0, image[:, :, 42:].shape)
    widened = redraw_rims(truth, image, WINDOW, SPACING, RIMS)
    assert not (widened & ~truth)[:, :, 42:].any()
    assert (widened & ~truth).sum() <= 0.05 * _one_pixel_out(truth).sum()


def test_the_image_is_smoothed_across_slices_in_mm() -> None:
    """CT noise is independent from slice to slice, a lesion is not: through a lesion
    spanning 9 slices, smoothing across 2.5 mm slices decides more border pixels right
    than smoothing that, at 100 mm slices, stays within each slice."""
    truth, found = _disk(11.0, (9, 64, 64)), _disk(10.0, (9, 64, 64))
    rng = np.random.default_rng(3)
    image = (np.where(truth, 75.0, 40.0) + rng.normal(0.0, 15.0, truth.shape)).astype(np.float32)

    def wrong(slice_mm: float) -> int:
        drawn = redraw_rims(found, image, WINDOW, (slice_mm, 2.0, 2.0), TRIMMED)
        return int((drawn ^ truth).sum())

    assert wrong(2.5) < 0.9 * wrong(100.0)


def test_the_smoothing_reaches_past_a_findings_last_slices() -> None:
    """The image is smoothed as a whole, not box by box: a finding's end slices are read
    with the fat beyond them, so their edges look less like the lesion than the middle
    slice's and more of them goes."""
    truth = np.zeros((11, 48, 48), dtype=bool)
    truth[3:8] = _disk(7.0, (5, 48, 48))
    found = np.zeros_like(truth)
    found[3:8] = _disk(8.0, (5, 48, 48))
    image = _image(truth, 100.0, seed=7)
    image[[2, 8]] = -100.0  # fat just beyond the finding's first and last slices
    drawn = redraw_rims(found, image, WINDOW, SPACING, TRIMMED)
    lost = (found & ~drawn).sum(axis=(1, 2))
    assert lost[3] > lost[5] and lost[7] > lost[5]


def test_rims_stay_in_the_slices_of_the_finding() -> None:
    """A lesion on three slices that the finding has on the middle one only: the rim
    grows in plane; the other slices are left to the refinement across slices."""
    truth = _disk(11.0)
    found = _disk(10.0)
    found[[0, 2]] = False
    widened = redraw_rims(found, _image(truth, 100.0), WINDOW, SPACING, RIMS)
    assert (widened & ~found)[1].any()
    assert not widened[[0, 2]].any()


def test_a_rim_does_not_join_two_findings() -> None:
    """One lesion that the network split into two findings with a one-pixel gap: the gap
    touches both and stays open (prompt rules decide per finding); the outer rims grow."""
    truth = _disk(11.0)
    found = _disk(10.0)
    found[:, :, 33] = False
    widened = redraw_rims(found, _image(truth, 100.0), WINDOW, SPACING, RIMS)
    assert not widened[:, :, 33].any()
    assert (widened & ~found & truth).sum() > 0.5 * (truth & ~found).sum() - truth[:, :, 33].sum()


@pytest.mark.parametrize("second_slices", [slice(0, 3), slice(2, 4)])
def test_two_findings_do_not_meet_through_their_rims(second_slices: slice) -> None:
    """Two findings on one bright patch, two pixels apart in plane (on the same slices, or
    on neighbouring slices): each one's rim would take a pixel of the gap, and the two
    pixels would touch. Neither is taken, so the prompt rules still see two components;
    the outer rims grow."""
    patch = np.zeros((4, 64, 64), dtype=bool)
    patch[:, 21:35, 19:43] = True  # the findings, the gap and one pixel around them
    image = _image(patch, 100.0)
    found = np.zeros(image.shape, dtype=bool)
    found[0:2, 22:34, 20:30] = True
    found[second_slices, 22:34, 32:42] = True
    assert label_components(found)[1] == 2
    drawn = redraw_rims(found, image, WINDOW, SPACING, RIMS)
    assert label_components(drawn)[1] == 2
    assert not drawn[1:3, 22:34, 30:32].any()  # where both findings' slices meet
    assert drawn[0:2, 22:34, 19].all() and drawn[second_slices, 22:34, 42].all()


def test_each_finding_is_redrawn_as_it_would_be_alone() -> None:
    """Two findings whose boxes overlap, one on the slices next to the other: each one's
    trim and rim are what it gets on its own (one finding's levels never act on another's
    voxels)."""
    shape = (12, 64, 64)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]

    def ball(k: float, j: float, i: float, radius_mm: float) -> np.ndarray:
        return ((zz - k) * 2.5) ** 2 + ((yy - j) * 2) ** 2 + ((xx - i) * 2) ** 2 <= radius_mm**2

    image = _image(ball(4, 24, 24, 12.0), 110.0, seed=5)
    image[ball(8, 40, 40, 12.0)] = -20.0
    first = ball(4, 24, 24, 14.0)
    second = ball(8, 40, 40, 14.0)
    first &= ~ndimage.binary_dilation(second, np.ones((3, 3, 3)), iterations=2)
    both = redraw_rims(first | second, image, WINDOW, SPACING, TRIMMED)
    assert ((first | second) & ~both).any()
    for finding in (first, second):
        alone = redraw_rims(finding, image, WINDOW, SPACING, TRIMMED)
        np.testing.assert_array_equal(both & finding, alone & finding)


def test_no_contrast_no_rim() -> None:
    found = _disk(8.0)
    flat = _image(np.zeros_like(found), 40.0)
    np.testing.assert_array_equal(redraw_rims(found, flat, WINDOW, SPACING, RIMS), found)


def test_each_finding_is_measured_against_its_own_surroundings() -> None:
    """Two findings on one slice: a lesion outlined a pixel inside, and a patch of plain
    tissue. The lesion gets its rim; the patch, with no contrast of its own, gets none."""
    truth = _disk(8.0)
    image = _image(truth, 100.0)
    found = _disk(7.0)
    found[:, 50:56, 5:11] = True  # tissue, far from the lesion
    widened = redraw_rims(found, image, WINDOW, SPACING, RIMS)
    assert (widened[:, 44:62, 0:17] == found[:, 44:62, 0:17]).all()
    assert (widened & ~found & truth).sum() > 0.8 * (truth & ~found).sum()


def test_findings_at_the_edges_of_the_volume_are_widened_too() -> None:
    """Two lesions in opposite corners of the slices, on the first and the last slice of
    the series, each outlined a pixel inside: both get their rim, nothing wraps around."""
    truth = np.zeros((5, 64, 64), dtype=bool)
    truth[:2, :9, :9] = True
    truth[3:, 52:, 50:] = True
    found = truth & ~_one_pixel_out(~truth)  # one pixel in from each inner side
    widened = redraw_rims(found, _image(truth, 100.0), WINDOW, SPACING, RIMS)
    added = widened & ~found
    assert added[:2, :9, :9].sum() >= 0.8 * (truth & ~found)[:2].sum()
    assert added[3:, 52:, 50:].sum() >= 0.8 * (truth & ~found)[3:].sum()
    assert not (added & ~truth).any()


def test_rims_are_off_unless_asked() -> None:
    truth, found = _disk(11.0), _disk(10.0)
    image = _image(truth, 100.0)
    for off in (Refinement(3.0), Refinement(0.0, rim_level=0.6)):
        unchanged = redraw_rims(found, image, WINDOW, SPACING, off)
        np.testing.assert_array_equal(unchanged, found)
        assert unchanged is not found
    assert not Refinement(0.0, rim_level=0.6).redraws_rims


def test_rims_take_any_mask_type_and_refuse_other_shapes() -> None:
    truth, found = _disk(11.0), _disk(10.0)
    image = _image(truth, 100.0)
    expected = redraw_rims(found, image, WINDOW, SPACING, RIMS)
    for other in (found.astype(np.uint8), found.astype(np.float32)):
        np.testing.assert_array_equal(redraw_rims(other, image, WINDOW, SPACING, RIMS), expected)
    np.testing.assert_array_equal(
        redraw_rims(found, image, WINDOW, SPACING, Refinement(3.0, rim_level=np.float32(0.6))),
        expected,
    )
    with pytest.raises(ValueError, match="slices, rows, cols"):
        redraw_rims(found[0], image[0], WINDOW, SPACING, RIMS)
    with pytest.raises(ValueError, match="slice, row, column"):
        redraw_rims(found, image, WINDOW, SPACING[1:], RIMS)
    found = _disk(5.0)
    with pytest.raises(ValueError, match="one shape"):
        redraw_rims(found, np.zeros((3, 64, 63), np.float32), WINDOW, SPACING, RIMS)


@pytest.mark.parametrize("inside", [100.0, -10.0])
def test_a_finding_drawn_outside_a_lesion_loses_its_edge(inside: float) -> None:
    """The network's outline a pixel outside the lesion: its edge pixels look like the
    tissue around and go; the lesion's own border pixels stay; no pixel further in goes."""
    truth = _disk(11.0)
    found = _disk(12.0)
    image = _image(truth, inside)
    trimmed = redraw_rims(found, image, WINDOW, SPACING, TRIMMED)
    dropped = found & ~trimmed
    edge = found & ~ndimage.binary_erosion(found, structure=IN_PLANE)
    assert not (trimmed & ~found).any()  # nothing to widen into: the lesion is all marked
    assert not (dropped & ~edge).any()
    assert (dropped & ~truth).sum() >= 0.6 * (found & ~truth).sum()  # smoothing blurs the edge
    assert (dropped & truth).sum() <= 2
    assert _dice(trimmed, truth) > _dice(found, truth) + 0.04
    np.testing.assert_array_equal(redraw_rims(found, image, WINDOW, SPACING, RIMS), found)


def test_a_trim_never_takes_a_core_or_a_finding_without_one() -> None:
    """A finding two pixels outside its lesion: its edge goes, its core stays, tissue and
    all (one pixel at most). A finding too small to have a core of 4 voxels is not
    trimmed."""
    truth = _disk(7.0)
    found = _disk(9.0)
    trimmed = redraw_rims(found, _image(truth, 100.0), WINDOW, SPACING, TRIMMED)
    core = ndimage.binary_erosion(found, structure=IN_PLANE)
    assert trimmed[core].all() and (core & ~truth).any()
    assert (found & ~trimmed).sum() >= 0.8 * (found & ~core).sum()
    thin = np.zeros((3, 64, 64), dtype=bool)
    thin[1, 30:32, 28:44] = True  # two pixels wide, half on a lesion, half on tissue: no core
    image = _image(_disk(4.0), 100.0)
    np.testing.assert_array_equal(redraw_rims(thin, image, WINDOW, SPACING, TRIMMED) & thin, thin)


def test_a_higher_trim_drops_more_and_a_trim_keeps_the_rims_rule() -> None:
    """Blurred edges lie between the two intensities: a higher trim drops more of them.
    What a trim keeps is widened by the same rule as without a trim."""
    truth = _disk(11.0)
    image = ndimage.gaussian_filter(_image(truth, 100.0), (0, 0.7, 0.7))
    found = _disk(12.0)
    low = redraw_rims(found, image, WINDOW, SPACING, Refinement(3.0, rim_level=0.6, rim_trim=0.1))
    high = redraw_rims(found, image, WINDOW, SPACING, Refinement(3.0, rim_level=0.6, rim_trim=0.5))
    assert (high <= low).all() and (high < low).any()
    inside = _disk(10.0)
    np.testing.assert_array_equal(
        redraw_rims(inside, image, WINDOW, SPACING, TRIMMED) | inside,
        redraw_rims(inside, image, WINDOW, SPACING, RIMS) | inside,
    )


@pytest.mark.parametrize(
    ("level", "trim"), [(0.6, 0.6), (0.6, 0.7), (0.0, 0.3), (0.6, -0.1), (0.6, float("nan"))]
)
def test_a_trim_must_lie_below_the_rim_level(level: float, trim: float) -> None:
    with pytest.raises(ConfigError, match="rim trim"):
        ModelCard(name="t", refine_radius_mm=3.0, refine_rim_level=level, refine_rim_trim=trim)
    with pytest.raises(ConfigError, match="rim trim"):
        Refinement(3.0, rim_level=level, rim_trim=trim)
    for bad in ("0.3", True):
        with pytest.raises(ConfigError, match="rim trim must be a number"):
            Refinement(3.0, rim_level=0.6, rim_trim=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [1.0, -0.1, float("nan"), "0.6", True])
def test_a_bad_rim_level_is_refused(level: object) -> None:
    with pytest.raises(ConfigError, match="rim level"):
        ModelCard(name="t", refine_radius_mm=3.0, refine_rim_level=level)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rim level"):
        Refinement(3.0, rim_level=level)  # type: ignore[arg-type]


def _card_jobs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, network_level: float, rims: dict
) -> tuple[np.ndarray, np.ndarray, ModelCard, VolumeResult, VolumeResult]:
    """A blurred lesion segmented by a stride-8 stand-in network whose card refines in and
    across slices, without and then with ``rims`` in the card (the latter logged):
    (truth, voxels, card with rims, result without, result with)."""
    truth = _disk(11.0)
    voxels = ndimage.gaussian_filter(_image(truth, 120.0), (0, 0.8, 0.8))
    path = tmp_path / "coarse.onnx"
    plain = make_coarse_bright_model(path, (64, 64), stride=8, level=network_level, gain=20.0)
    edges = {**plain.to_dict(), "refine_radius_mm": 3.0, "refine_across_slices": True}
    card = ModelCard.from_dict({**edges, **rims})
    volume = make_volume(voxels, spacing=CARD_SPACING)
    options = SegmentOptions(window="60/400")
    engine = open_engine(path, card, threads=1)
    try:
        without = segment_volume_result(volume, engine, ModelCard.from_dict(edges), options)
        with caplog.at_level("INFO", logger="medseg.pipeline"):
            result = segment_volume_result(volume, engine, card, options)
    finally:
        engine.close()
    return truth, voxels, card, without, result


def test_a_card_with_rims_widens_what_the_rest_of_the_pipeline_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """End to end: a stand-in for a stride-8 network outlines a blurred lesion a little
    inside it. The card's rims are the last refinement step: the job's mask is exactly the
    same card without them, widened; a FRACTIONAL SEG marks the added voxels as certain."""
    rims = {"refine_rim_level": 0.6}
    truth, voxels, card, without, result = _card_jobs(tmp_path, caplog, 0.55, rims)
    expected = redraw_rims(without.mask, voxels, WINDOW, CARD_SPACING, card_refinement(card))
    assert (expected & ~without.mask).any()
    np.testing.assert_array_equal(result.mask, expected)
    assert _dice(result.mask, truth) > _dice(without.mask, truth)
    np.testing.assert_array_equal(fractional_masks(result) > result.level, result.mask)
    assert "rims at 0.6" in caplog.text
    assert "segmenting 3 slices as 3 whole slices" in caplog.text


def test_a_card_with_a_trim_drops_edge_voxels_and_a_fractional_seg_agrees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """End to end: a stand-in network with a low brightness level outlines a blurred
    lesion a little outside it. With the card's trim the job's mask is the untrimmed
    job's refined mask, redrawn with the trim; dropped voxels read 0 in a FRACTIONAL SEG."""
    rims = {"refine_rim_level": 0.6, "refine_rim_trim": 0.3}
    truth, voxels, card, without, result = _card_jobs(tmp_path, caplog, 0.47, rims)
    expected = redraw_rims(without.mask, voxels, WINDOW, CARD_SPACING, card_refinement(card))
    np.testing.assert_array_equal(result.mask, expected)
    assert (without.mask & ~result.mask).any()
    assert _dice(result.mask, truth) > _dice(without.mask, truth)
    np.testing.assert_array_equal(fractional_masks(result) > result.level, result.mask)
    assert "rims at 0.6 (trim 0.3)" in caplog.text


def test_rims_come_after_the_refinement_across_slices(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ball whose ends the stand-in network misses: the continuation brings them back,
    then the rims widen what the continuation left (the job's mask is exactly that)."""
    rng = np.random.default_rng(7)
    zz, yy, xx = np.mgrid[:9, :64, :64]
    ball = (zz - 4.0) ** 2 * 8.4 + (yy - 31.5) ** 2 + (xx - 32.2) ** 2 <= 12.0**2
    voxels = ndimage.gaussian_filter(
        np.where(ball, 120.0, 40.0) + rng.normal(0.0, 5.0, ball.shape), (0, 0.8, 0.8)
    ).astype(np.float32)
    path = tmp_path / "coarse.onnx"
    plain = make_coarse_bright_model(path, (64, 64), stride=8, level=0.55, gain=20.0)
    across = {**plain.to_dict(), "refine_radius_mm": 3.0, "refine_across_slices": True}
    card = ModelCard.from_dict({**across, "refine_rim_level": 0.6})
    volume = make_volume(voxels, spacing=(1.0, 1.5, 1.5))
    auto = SegmentOptions(window="60/400")
    engine = open_engine(path, card, threads=1)
    try:
        continued = segment_volume_result(volume, engine, ModelCard.from_dict(across), auto)
        with caplog.at_level("INFO", logger="medseg.pipeline"):
            result = segment_volume_result(volume, engine, card, auto)
    finally:
        engine.close()
    expected = redraw_rims(continued.mask, voxels, WINDOW, volume.spacing, card_refinement(card))
    np.testing.assert_array_equal(result.mask, expected)
    marked = (continued.probabilities > continued.level).any(axis=(1, 2))
    assert (continued.mask.any(axis=(1, 2)) & ~marked).any()  # the continuation acted ...
    assert (result.mask & ~continued.mask).any()  # ... and so did the rims, after it
    assert "whole slices" in caplog.text


def card_refinement(card: ModelCard) -> Refinement:
    return Refinement(
        card.refine_radius_mm,
        card.refine_eps,
        card.refine_across_slices,
        card.refine_rim_level,
        card.refine_rim_trim,
    )
