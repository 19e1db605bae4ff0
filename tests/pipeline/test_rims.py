"""Widening findings by their rims (medseg.refine.widen_rims) and a card's use of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.engine import open_engine
from medseg.errors import ConfigError
from medseg.modelcard import ModelCard
from medseg.pipeline import SegmentOptions, fractional_masks, segment_volume_result
from medseg.preprocess import IntensityWindow
from medseg.prompts import parse_box, plan_prompts
from medseg.refine import Refinement, widen_rims
from tests.pipeline.helpers import make_volume
from tests.tiny_models import make_coarse_bright_model

WINDOW = IntensityWindow.from_centre_width(60.0, 400.0)
RIMS = Refinement(3.0, 1e-4, rim_level=0.6)
# 2 mm pixels: the 3 mm box is 2 pixels, the smoothing sigma r/2 0.75 of a pixel, so a
# sharp edge stays sharp enough for the whole first ring inside it to read as lesion.
SPACING = (2.0, 2.0)
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
    widened = widen_rims(found, _image(truth, inside), WINDOW, SPACING, RIMS)
    added = widened & ~found
    assert (widened >= found).all()
    assert not (added & ~_one_pixel_out(found)).any()
    assert (added & truth).sum() >= 0.5 * (truth & ~found).sum()
    assert (added & ~truth).sum() <= 2
    assert _dice(widened, truth) > _dice(found, truth) + 0.04


def test_a_finding_on_the_lesions_edge_barely_moves() -> None:
    truth = _disk(11.0)
    widened = widen_rims(truth, _image(truth, 100.0), WINDOW, SPACING, RIMS)
    rim = _one_pixel_out(truth)
    assert (widened & ~truth).sum() <= 0.05 * rim.sum()


def test_a_small_finding_is_measured_by_its_core() -> None:
    """A 5 mm lesion outlined exactly, in an image blurred like a CT: the finding's own
    border pixels are half lesion, half tissue. Its level is read from its core, so the
    tissue beyond the border does not look like it; read from all of the finding, the
    level would sag towards the tissue and a rim of tissue would join."""
    truth = _disk(2.5)
    image = ndimage.gaussian_filter(_image(truth, 100.0), (0, 1.0, 1.0))
    widened = widen_rims(truth, image, WINDOW, (1.0, 1.0), RIMS)
    np.testing.assert_array_equal(widened, truth)


def test_rims_grow_one_pixel_and_no_further() -> None:
    """A finding drawn 4 pixels inside: the whole first ring outside it is lesion-like and
    joins, nothing beyond it does."""
    truth, found = _disk(11.0), _disk(7.0)
    widened = widen_rims(found, _image(truth, 100.0), WINDOW, SPACING, RIMS)
    ring = _one_pixel_out(found)
    assert (widened & ring).sum() >= 0.95 * ring.sum()
    assert not (widened & ~found & ~ring).any()


def test_the_level_decides_how_lesion_like_a_rim_pixel_must_be() -> None:
    """Blur puts the edge pixels between the two intensities: a low level takes more of
    them than a high one."""
    truth = _disk(11.0)
    image = ndimage.gaussian_filter(_image(truth, 100.0), (0, 0.5, 0.5))
    found = _disk(10.0)
    low = widen_rims(found, image, WINDOW, SPACING, Refinement(3.0, rim_level=0.2))
    high = widen_rims(found, image, WINDOW, SPACING, Refinement(3.0, rim_level=0.9))
    assert (high & ~found).sum() < (low & ~found).sum()
    assert (high <= low).all()


def test_a_rim_takes_nothing_beyond_the_lesions_own_intensity() -> None:
    """A dark lesion outlined exactly, touching fat darker still: the fat is even further
    from the liver than the lesion is, but it does not look like the lesion, so it stays
    out (and so does the liver)."""
    truth = _disk(8.0)
    image = _image(truth, 10.0) + 20.0  # lesion 30 HU in 60 HU liver
    image[:, :, 42:] = -100.0 + np.random.default_rng(1).normal(0.0, 5.0, image[:, :, 42:].shape)
    widened = widen_rims(truth, image, WINDOW, SPACING, RIMS)
    assert not (widened & ~truth)[:, :, 42:].any()
    assert (widened & ~truth).sum() <= 0.05 * _one_pixel_out(truth).sum()


def test_rims_stay_in_the_slices_of_the_finding() -> None:
    """A lesion on three slices that the finding has on the middle one only: the rim
    grows in plane; the other slices are left to the refinement across slices."""
    truth = _disk(11.0)
    found = _disk(10.0)
    found[[0, 2]] = False
    widened = widen_rims(found, _image(truth, 100.0), WINDOW, SPACING, RIMS)
    assert (widened & ~found)[1].any()
    assert not widened[[0, 2]].any()


def test_a_rim_does_not_join_two_findings() -> None:
    """One lesion that the network split into two findings with a one-pixel gap: the gap
    touches both and stays open (prompt rules decide per finding); the outer rims grow."""
    truth = _disk(11.0)
    found = _disk(10.0)
    found[:, :, 33] = False
    widened = widen_rims(found, _image(truth, 100.0), WINDOW, SPACING, RIMS)
    assert not widened[:, :, 33].any()
    assert (widened & ~found & truth).sum() > 0.5 * (truth & ~found).sum() - truth[:, :, 33].sum()


def test_no_contrast_no_rim() -> None:
    found = _disk(8.0)
    flat = _image(np.zeros_like(found), 40.0)
    np.testing.assert_array_equal(widen_rims(found, flat, WINDOW, SPACING, RIMS), found)


def test_each_finding_is_measured_against_its_own_surroundings() -> None:
    """Two findings on one slice: a lesion outlined a pixel inside, and a patch of plain
    tissue. The lesion gets its rim; the patch, with no contrast of its own, gets none."""
    truth = _disk(8.0)
    image = _image(truth, 100.0)
    found = _disk(7.0)
    found[:, 50:56, 5:11] = True  # tissue, far from the lesion
    widened = widen_rims(found, image, WINDOW, SPACING, RIMS)
    assert (widened[:, 44:62, 0:17] == found[:, 44:62, 0:17]).all()
    assert (widened & ~found & truth).sum() > 0.8 * (truth & ~found).sum()


def test_findings_at_the_edges_of_the_volume_are_widened_too() -> None:
    """Two lesions in opposite corners of the slices, on the first and the last slice of
    the series, each outlined a pixel inside: both get their rim, nothing wraps around."""
    truth = np.zeros((5, 64, 64), dtype=bool)
    truth[:2, :9, :9] = True
    truth[3:, 52:, 50:] = True
    found = truth & ~_one_pixel_out(~truth)  # one pixel in from each inner side
    widened = widen_rims(found, _image(truth, 100.0), WINDOW, SPACING, RIMS)
    added = widened & ~found
    assert added[:2, :9, :9].sum() >= 0.8 * (truth & ~found)[:2].sum()
    assert added[3:, 52:, 50:].sum() >= 0.8 * (truth & ~found)[3:].sum()
    assert not (added & ~truth).any()


def test_rims_stay_inside_allowed_voxels_and_are_off_unless_asked() -> None:
    truth, found = _disk(11.0), _disk(10.0)
    image = _image(truth, 100.0)
    allowed = np.zeros_like(truth)
    allowed[:, :, :34] = True
    widened = widen_rims(found, image, WINDOW, SPACING, RIMS, allowed=allowed)
    assert (widened & ~found)[:, :, :34].any()
    assert not (widened & ~found)[:, :, 34:].any()
    for off in (Refinement(3.0), Refinement(0.0, rim_level=0.6)):
        unchanged = widen_rims(found, image, WINDOW, SPACING, off)
        np.testing.assert_array_equal(unchanged, found)
        assert unchanged is not found
    assert not Refinement(0.0, rim_level=0.6).widens_rims


def test_rims_take_any_mask_type_and_refuse_other_shapes() -> None:
    truth, found = _disk(11.0), _disk(10.0)
    image = _image(truth, 100.0)
    expected = widen_rims(found, image, WINDOW, SPACING, RIMS)
    for other in (found.astype(np.uint8), found.astype(np.float32)):
        np.testing.assert_array_equal(widen_rims(other, image, WINDOW, SPACING, RIMS), expected)
    np.testing.assert_array_equal(
        widen_rims(found, image, WINDOW, SPACING, Refinement(3.0, rim_level=np.float32(0.6))),
        expected,
    )
    with pytest.raises(ValueError, match="slices, rows, cols"):
        widen_rims(found[0], image[0], WINDOW, SPACING, RIMS)
    found = _disk(5.0)
    with pytest.raises(ValueError, match="one shape"):
        widen_rims(found, np.zeros((3, 64, 63), np.float32), WINDOW, SPACING, RIMS)
    with pytest.raises(ValueError, match="allowed"):
        widen_rims(found, _image(found, 100.0), WINDOW, SPACING, RIMS, allowed=found[:2])


@pytest.mark.parametrize("level", [1.0, -0.1, float("nan"), "0.6", True])
def test_a_bad_rim_level_is_refused(level: object) -> None:
    with pytest.raises(ConfigError, match="rim level"):
        ModelCard(name="t", refine_radius_mm=3.0, refine_rim_level=level)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rim level"):
        Refinement(3.0, rim_level=level)  # type: ignore[arg-type]


def test_a_card_with_rims_widens_what_the_rest_of_the_pipeline_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """End to end: a stand-in for a stride-8 network outlines a blurred lesion a little
    inside it. The card's rims are the last refinement step: the job's mask is exactly the
    same card without them, widened; a FRACTIONAL SEG marks the added voxels as certain."""
    truth = _disk(11.0)
    voxels = ndimage.gaussian_filter(_image(truth, 120.0), (0, 0.8, 0.8))
    path = tmp_path / "coarse.onnx"
    plain = make_coarse_bright_model(path, (64, 64), stride=8, level=0.55, gain=20.0)
    edges = {**plain.to_dict(), "refine_radius_mm": 3.0, "refine_across_slices": True}
    card = ModelCard.from_dict({**edges, "refine_rim_level": 0.6})
    spacing = (1.5, 1.5)
    volume = make_volume(voxels, spacing=(2.0, *spacing))
    options = SegmentOptions(window="60/400")
    engine = open_engine(path, card, threads=1)
    try:
        without = segment_volume_result(volume, engine, ModelCard.from_dict(edges), options)
        with caplog.at_level("INFO", logger="medseg.pipeline"):
            result = segment_volume_result(volume, engine, card, options)
    finally:
        engine.close()
    expected = widen_rims(without.mask, voxels, WINDOW, spacing, card_refinement(card))
    assert (expected & ~without.mask).any()
    np.testing.assert_array_equal(result.mask, expected)
    assert _dice(result.mask, truth) > _dice(without.mask, truth)
    np.testing.assert_array_equal(fractional_masks(result) > result.level, result.mask)
    assert "rims at 0.6" in caplog.text
    assert "segmenting 3 slices as 3 whole slices" in caplog.text


def test_rims_come_after_the_refinement_across_slices_and_stay_in_a_box_prompt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ball whose ends the stand-in network misses: the continuation brings them back,
    then the rims widen what the continuation left (the job's mask is exactly that). With
    a box prompt over half of the ball, nothing is added outside the box."""
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
    box = SegmentOptions(window="60/400", prompts=(parse_box("10,10,32,54@0-8"),))
    engine = open_engine(path, card, threads=1)
    try:
        continued = segment_volume_result(volume, engine, ModelCard.from_dict(across), auto)
        result = segment_volume_result(volume, engine, card, auto)
        with caplog.at_level("INFO", logger="medseg.pipeline"):
            boxed = segment_volume_result(volume, engine, card, box)
    finally:
        engine.close()
    expected = widen_rims(continued.mask, voxels, WINDOW, (1.5, 1.5), card_refinement(card))
    np.testing.assert_array_equal(result.mask, expected)
    marked = (continued.probabilities > continued.level).any(axis=(1, 2))
    assert (continued.mask.any(axis=(1, 2)) & ~marked).any()  # the continuation acted ...
    assert (result.mask & ~continued.mask).any()  # ... and so did the rims, after it
    keep = plan_prompts(box.prompts, volume, box_margin=box.box_margin).keep
    assert (result.mask & ~keep).any()  # the box cuts the finding ...
    assert boxed.mask.any() and not (boxed.mask & ~keep).any()  # ... and nothing crosses it
    assert "prompt crops" in caplog.text


def card_refinement(card: ModelCard) -> Refinement:
    return Refinement(
        card.refine_radius_mm, card.refine_eps, card.refine_across_slices, card.refine_rim_level
    )
