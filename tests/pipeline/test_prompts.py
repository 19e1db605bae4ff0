"""Box and point prompts: parsing, planning and component selection with known answers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medseg import pipeline
from medseg.errors import PromptError
from medseg.modelcard import ModelCard
from medseg.pipeline import SegmentOptions, segment_volume
from medseg.prompts import BoxPrompt, PointPrompt, parse_box, parse_point, plan_prompts
from medseg.tiling import Region
from tests.pipeline.helpers import balls, bright_engine, make_volume

SHAPE = (12, 64, 80)  # slices, rows, cols
CENTRES = [(6, 20, 20), (6, 40, 58)]  # two bright balls (k, j, i)
RADIUS = 5.5


def test_parse_box_forms() -> None:
    assert parse_box("1,2,30,40@5") == BoxPrompt(1, 2, 30, 40, 5, 5)
    assert parse_box("1,2,30,40@3-7") == BoxPrompt(1, 2, 30, 40, 3, 7)
    assert parse_box("1,2,30,40@3:7") == BoxPrompt(1, 2, 30, 40, 3, 7)
    assert parse_box("1,2,30,40") == BoxPrompt(1, 2, 30, 40)
    mm = parse_box("-10.5,-20,15,5@-100:-80", "mm")
    assert (mm.x0, mm.z0, mm.z1, mm.space) == (-10.5, -100, -80, "mm")
    assert parse_box("0,0,1,1@-12.5--10", "mm").z0 == -12.5


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,x@4", "1,2,3,4@", "1,2,3,4@a-b", "1,2,3,4,5@1"])
def test_parse_box_rejects_malformed_text(text: str) -> None:
    with pytest.raises(PromptError):
        parse_box(text)


def test_mm_box_needs_a_slice_position() -> None:
    with pytest.raises(PromptError, match="needs its slice position"):
        parse_box("1,2,3,4", "mm")


def test_parse_point_forms() -> None:
    assert parse_point("10,20,3") == PointPrompt(10, 20, 3, True)
    assert parse_point("10,20,3:neg") == PointPrompt(10, 20, 3, False)
    assert parse_point("10,20,3:pos").positive
    assert parse_point("-1.5,2,-30:neg", "mm") == PointPrompt(-1.5, 2, -30, False, "mm")
    for bad in ("1,2", "1,2,3:maybe", "a,b,c"):
        with pytest.raises(PromptError):
            parse_point(bad)


def _volume() -> tuple:
    truth = balls(SHAPE, CENTRES, RADIUS)
    voxels = np.where(truth, 300.0, 0.0).astype(np.float32)
    return make_volume(voxels, spacing=(2.0, 0.8, 0.8)), truth


@pytest.mark.parametrize(
    "prompt",
    [
        BoxPrompt(0, 0, 80, 10, 0, 0),  # column 80 of 0-79
        BoxPrompt(0, 0, 10, 10, 11, 12),  # slice 12 of 0-11
        PointPrompt(5, 5, -1),
        PointPrompt(5, 64, 3),
        PointPrompt(0.0, 0.0, 500.0, space="mm"),
    ],
)
def test_prompt_outside_the_volume_is_a_prompt_error(prompt: object) -> None:
    volume, _ = _volume()
    with pytest.raises(PromptError, match="outside the volume"):
        plan_prompts([prompt], volume)


def test_mm_point_maps_through_the_volume_geometry() -> None:
    volume, _ = _volume()
    lps = volume.index_to_lps(np.array([58.0, 40.0, 6.0]))
    plan = plan_prompts([PointPrompt(*lps, space="mm")], volume, point_crop_mm=8.0)
    assert plan.positive == ((6, 40, 58),)
    assert {t.k for t in plan.tiles} == {4, 5, 6, 7, 8}  # 2 mm slices within 4 mm


def test_no_prompt_leaves_the_slices_to_the_pipelines_windows() -> None:
    volume, _ = _volume()
    plan = plan_prompts([], volume)
    assert plan.keep is None and plan.tiles == ()
    tiles, _ = pipeline._sliding_tiles(volume, ModelCard(name="whole"))
    assert [t.k for t in tiles] == list(range(SHAPE[0]))
    assert all(t.region == Region(0, SHAPE[1], 0, SHAPE[2]) for t in tiles)


@pytest.fixture
def engine(tmp_path: Path):
    with bright_engine(tmp_path, (64, 64)) as opened:
        yield opened


def _run(engine, prompts, **options) -> np.ndarray:
    opened, card = engine
    volume, _ = _volume()
    base = SegmentOptions(window="150/300", prompts=tuple(prompts), batch_size=8)
    mask, _ = segment_volume(volume, opened, card, replace(base, **options))
    return mask


def test_without_prompts_both_balls_are_found(engine) -> None:
    _, truth = _volume()
    mask = _run(engine, [])
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.95


def test_box_clears_everything_outside_the_box(engine) -> None:
    _, truth = _volume()
    # a box around the first ball on slices 4-8, cutting through it at row 18
    mask = _run(engine, [BoxPrompt(10, 18, 30, 30, 4, 8)])
    inside = np.zeros(SHAPE, dtype=bool)
    inside[4:9, 18:31, 10:31] = True
    assert not (mask & ~inside).any()
    np.testing.assert_array_equal(mask, truth & inside)


def test_mm_box_selects_the_same_voxels_as_the_index_box(engine) -> None:
    volume, _ = _volume()
    corner0 = volume.index_to_lps(np.array([10.0, 18.0, 4.0]))
    corner1 = volume.index_to_lps(np.array([30.0, 30.0, 8.0]))
    box_mm = BoxPrompt(corner0[0], corner0[1], corner1[0], corner1[1], corner0[2], corner1[2], "mm")
    np.testing.assert_array_equal(
        _run(engine, [box_mm]), _run(engine, [BoxPrompt(10, 18, 30, 30, 4, 8)])
    )


def test_positive_point_keeps_only_its_ball(engine) -> None:
    first = balls(SHAPE, [CENTRES[0]], RADIUS)
    k, j, i = CENTRES[0]
    mask = _run(engine, [PointPrompt(i, j, k)], point_crop_mm=40.0)
    np.testing.assert_array_equal(mask, first)


def test_negative_point_drops_its_ball(engine) -> None:
    auto = _run(engine, [])
    expected = auto.copy()
    expected[:, :, :40] = False  # ball 1 spans columns 14-26, ball 2 columns 52-64
    k, j, i = CENTRES[0]
    mask = _run(engine, [PointPrompt(i + 2, j, k, positive=False)])
    assert auto[:, :, :40].sum() > 500  # there was something to drop
    np.testing.assert_array_equal(mask, expected)


def test_positive_point_in_background_keeps_nothing(engine) -> None:
    mask = _run(engine, [PointPrompt(70, 5, 6)], point_crop_mm=10.0)
    assert not mask.any()


def test_box_and_points_combine(engine) -> None:
    """A box on ball 1 plus a negative point on it: nothing of ball 1 survives; a positive
    point on ball 2 adds ball 2."""
    second = balls(SHAPE, [CENTRES[1]], RADIUS)
    (k0, j0, i0), (k1, j1, i1) = CENTRES
    prompts = [
        BoxPrompt(5, 5, 35, 35, 0, 11),
        PointPrompt(i0, j0, k0, positive=False),
        PointPrompt(i1, j1, k1),
    ]
    np.testing.assert_array_equal(_run(engine, prompts, point_crop_mm=40.0), second)


def test_box_at_the_image_corner_clips_its_margin(engine) -> None:
    volume, truth = _volume()
    corner = truth.copy()
    corner[:] = False
    corner[:, :30, :30] = truth[:, :30, :30]  # ball 1 sits in the corner block
    mask = _run(engine, [BoxPrompt(0, 0, 29, 29)])  # no @: every slice
    np.testing.assert_array_equal(mask, corner)
    plan = plan_prompts([BoxPrompt(0, 0, 29, 29)], volume)
    # margin max(4, round(0.15 * 30)) = 4 voxels, clipped at 0 on the corner side
    assert all(t.region == Region(0, 34, 0, 34) for t in plan.tiles)


def test_concurrent_jobs_sharing_one_engine_match_serial_runs(engine) -> None:
    from concurrent.futures import ThreadPoolExecutor

    prompt_sets = [[], [BoxPrompt(10, 18, 30, 30, 4, 8)], [PointPrompt(58, 40, 6)]] * 2
    serial = [_run(engine, prompts, point_crop_mm=40.0) for prompts in prompt_sets]
    with ThreadPoolExecutor(max_workers=3) as pool:
        parallel = list(pool.map(lambda p: _run(engine, p, point_crop_mm=40.0), prompt_sets))
    for one, other in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(one, other)
