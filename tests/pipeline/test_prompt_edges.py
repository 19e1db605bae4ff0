"""Prompts on the volume's last half voxel, and prompt sizes that are not finite numbers.

"Inside" means within half a voxel of the grid, so 15.5 is inside a 16-column volume but
rounds to 16: the planner must map it to column 15 instead of indexing past the grid.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import ConfigError, PromptError
from medseg.pipeline import SegmentOptions, segment_volume
from medseg.prompts import BoxPrompt, PointPrompt, plan_prompts
from medseg.tiling import Region
from tests.pipeline.helpers import bright_engine, make_volume

SHAPE = (4, 16, 16)  # slices, rows, cols


def _volume():
    voxels = np.zeros(SHAPE, dtype=np.float32)
    voxels[2:4, 3:9, 10:16] = 300.0  # touches the last column and the last slice
    voxels[0:4, 10:15, 0:5] = 300.0  # a second block, far from the first
    return make_volume(voxels, spacing=(2.0, 0.8, 0.8))


@pytest.fixture
def engine(tmp_path: Path):
    with bright_engine(tmp_path, (32, 32)) as opened:
        yield opened


def _run(engine, prompts, **options) -> np.ndarray:
    opened, card = engine
    base = SegmentOptions(window="150/300", prompts=tuple(prompts), batch_size=3)
    mask, _ = segment_volume(_volume(), opened, card, replace(base, **options))
    return mask


def test_edge_point_plans_the_outermost_voxel() -> None:
    plan = plan_prompts([PointPrompt(15.5, 15.5, 3.5)], _volume(), point_crop_mm=8.0)
    assert plan.positive == ((3, 15, 15),)
    inside = (
        t.k < SHAPE[0] and t.region.r1 <= SHAPE[1] and t.region.c1 <= SHAPE[2] for t in plan.tiles
    )
    assert all(inside)
    low = plan_prompts([PointPrompt(-0.5, -0.5, -0.5)], _volume(), point_crop_mm=8.0)
    assert low.positive == ((0, 0, 0),)


def test_positive_point_on_the_last_half_voxel_keeps_its_block(engine) -> None:
    auto = _run(engine, [])
    expected = auto.copy()
    expected[:, :, :8] = False  # only the block at the right edge
    assert expected.sum() == 2 * 6 * 6 and auto.sum() > expected.sum()
    # a 40 mm crop covers whole 16x16 slices: the tile equals the auto run's tile
    mask = _run(engine, [PointPrompt(15.5, 5, 3.5)], point_crop_mm=40.0)
    np.testing.assert_array_equal(mask, expected)


def test_negative_point_on_the_last_half_voxel_drops_its_block(engine) -> None:
    auto = _run(engine, [])
    expected = auto.copy()
    expected[:, :, 8:] = False
    mask = _run(engine, [PointPrompt(15.5, 5, 3.5, positive=False)])
    np.testing.assert_array_equal(mask, expected)


def test_mm_point_on_the_far_edge_maps_inside(engine) -> None:
    lps = _volume().index_to_lps(np.array([15.5, 5.0, 3.5]))
    plan = plan_prompts([PointPrompt(*lps, space="mm")], _volume(), point_crop_mm=8.0)
    assert plan.positive == ((3, 5, 15),)


def test_box_ending_on_the_last_half_slice_runs_existing_slices_only(engine) -> None:
    box = BoxPrompt(8, 2, 15.5, 10, 2, 3.5)
    plan = plan_prompts([box], _volume())
    assert sorted({t.k for t in plan.tiles}) == [2, 3]
    auto = _run(engine, [])
    inside = np.zeros(SHAPE, dtype=bool)
    inside[2:4, 2:11, 8:16] = True
    mask = _run(engine, [box])
    assert mask.any()
    np.testing.assert_array_equal(mask, auto & inside)


@pytest.mark.parametrize(
    "prompt", [PointPrompt(15.51, 5, 1), PointPrompt(5, 5, 3.6), BoxPrompt(0, 0, 5, 5, 0, 3.51)]
)
def test_beyond_the_half_voxel_is_outside(prompt) -> None:
    with pytest.raises(PromptError, match="outside the volume"):
        plan_prompts([prompt], _volume())


@pytest.mark.parametrize(
    ("margin", "crop"),
    [
        (float("inf"), 64.0),
        (float("nan"), 64.0),
        (-0.1, 64.0),
        (0.1, float("inf")),
        (0.1, float("nan")),
        (0.1, float("-inf")),
        (0.1, 0.0),
    ],
)
def test_prompt_sizes_must_be_finite(margin: float, crop: float) -> None:
    prompts = [BoxPrompt(2, 2, 6, 6, 1, 1), PointPrompt(5, 5, 1)]
    with pytest.raises(PromptError, match="finite"):
        plan_prompts(prompts, _volume(), box_margin=margin, point_crop_mm=crop)
    with pytest.raises(ConfigError, match="finite"):
        SegmentOptions(box_margin=margin, point_crop_mm=crop)


@pytest.mark.parametrize("options", [{"threshold": float("nan")}, {"min_component_mm3": np.inf}])
def test_other_float_options_refuse_non_finite_values(options: dict) -> None:
    with pytest.raises(ConfigError):
        SegmentOptions(**options)


def test_huge_finite_sizes_mean_the_whole_slice_without_overflow() -> None:
    volume = _volume()
    box = plan_prompts([BoxPrompt(6, 6, 8, 8, 1, 1)], volume, box_margin=1e308)
    assert [t.region for t in box.tiles] == [Region(0, 16, 0, 16)]
    point = plan_prompts([PointPrompt(5, 5, 1)], volume, point_crop_mm=1e308)
    assert len(point.tiles) == SHAPE[0]
    assert all(t.region == Region(0, 16, 0, 16) for t in point.tiles)
