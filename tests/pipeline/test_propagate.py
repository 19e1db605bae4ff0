"""Prompts through a promptable network: one click or box on a slice -> a 3-D lesion.

The network here is a known-answer ONNX model (tests/tiny_models.py): bright pixels are
objects, and a prompt selects the bright pixels connected to it, as a perfect promptable
network would. So each test knows exactly which voxels propagation must return, how many
slices it may run, and where it must stop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.engine import open_engine
from medseg.errors import PromptError
from medseg.pipeline import SegmentOptions, segment_volume_result
from medseg.prompt_maps import CLICK_RADIUS, PromptMaps, box_crop_mm, deepest_point, draw
from medseg.prompts import BoxPrompt, PointPrompt
from medseg.propagate import crop_around, lesion_seeds
from medseg.tiling import Region
from tests.pipeline.helpers import balls, bright_engine, make_volume
from tests.tiny_models import make_prompted_bright_model

SHAPE = (40, 64, 80)  # slices, rows, cols
CENTRES = [(20, 20, 20), (12, 42, 58)]  # two bright balls (k, j, i)
RADIUS = 5.5


def _volume(extra: np.ndarray | None = None):
    truth = balls(SHAPE, CENTRES, RADIUS)
    voxels = np.where(truth, 300.0, 0.0).astype(np.float32)
    if extra is not None:
        voxels[extra] = 300.0
    # 1.5 mm pixels: a click's 96 mm crop is 64 x 64 voxels, the model's input, so the
    # known-answer model's answer comes back exactly (no resampling)
    return make_volume(voxels, spacing=(2.0, 1.5, 1.5))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompted")
    card = make_prompted_bright_model(folder / "prompted.onnx", (64, 64))
    opened = open_engine(folder / "prompted.onnx", card, threads=1)
    yield opened, card
    opened.close()


def _run(engine, prompts, volume=None):
    opened, card = engine
    options = SegmentOptions(window="150/300", prompts=tuple(prompts), batch_size=4)
    return segment_volume_result(volume or _volume(), opened, card, options)


def _ball(index: int) -> np.ndarray:
    return balls(SHAPE, [CENTRES[index]], RADIUS)


def _close(mask: np.ndarray, truth: np.ndarray) -> None:
    """A box's crop is resampled to the model's input and back: Dice above 0.9 and
    nothing more than a voxel away from the truth."""
    from scipy import ndimage

    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.9, dice
    assert not (mask & ~ndimage.binary_dilation(truth)).any()


def test_a_click_returns_its_lesion_in_3d_running_only_the_slices_it_reaches(engine) -> None:
    k, j, i = CENTRES[0]
    result = _run(engine, [PointPrompt(i, j, k)])
    np.testing.assert_array_equal(result.mask, _ball(0))
    spanned = int(_ball(0).any(axis=(1, 2)).sum())  # 5 slices at 2 mm
    # the clicked slice, then one call per slice of the lesion, plus one empty end each way
    assert result.tiles == spanned + 2
    assert result.tiles < SHAPE[0] // 2
    assert set(np.unique(result.lesions)) == {0, 1}


def test_a_one_slice_box_is_propagated_too(engine) -> None:
    k, j, i = CENTRES[1]
    box = BoxPrompt(i - 7, j - 7, i + 7, j + 7, k, k)
    _close(_run(engine, [box]).mask, _ball(1))


def test_mm_prompts_select_the_same_lesion(engine) -> None:
    volume = _volume()
    k, j, i = CENTRES[1]
    lps = volume.index_to_lps(np.array([float(i), float(j), float(k)]))
    mask = _run(engine, [PointPrompt(*lps, space="mm")], volume).mask
    np.testing.assert_array_equal(mask, _ball(1))


def test_a_box_over_a_slice_range_is_not_carried_beyond_it(engine) -> None:
    k, j, i = CENTRES[0]
    result = _run(engine, [BoxPrompt(i - 7, j - 7, i + 7, j + 7, k - 1, k + 1)])
    expected = _ball(0)
    expected[: k - 1] = expected[k + 2 :] = False
    _close(result.mask, expected)
    assert not result.mask[: k - 1].any() and not result.mask[k + 2 :].any()
    assert result.tiles == 3


def test_several_prompts_are_several_lesions(engine) -> None:
    (k0, j0, i0), (k1, j1, i1) = CENTRES
    result = _run(engine, [PointPrompt(i0, j0, k0), PointPrompt(i1, j1, k1)])
    np.testing.assert_array_equal(result.lesions == 1, _ball(0))
    np.testing.assert_array_equal(result.lesions == 2, _ball(1))


def test_a_negative_click_removes_what_it_hits_on_its_slice(engine) -> None:
    """Drawn into its slice's prompt, a negative click on a lesion's own slice leaves
    nothing of it; on a neighbouring slice it ends the lesion there."""
    (k0, j0, i0), (k1, j1, i1) = CENTRES
    both = [PointPrompt(i0, j0, k0), PointPrompt(i1, j1, k1)]
    same_slice = [*both, PointPrompt(i1 + 1, j1, k1, False)]
    np.testing.assert_array_equal(_run(engine, same_slice).mask, _ball(0))
    next_slice = _run(engine, [*both, PointPrompt(i1, j1, k1 + 1, False)]).mask
    expected = _ball(0) | _ball(1)
    expected[k1 + 1 :] &= ~_ball(1)[k1 + 1 :]
    np.testing.assert_array_equal(next_slice, expected)


def test_a_click_on_background_finds_nothing(engine, caplog) -> None:
    result = _run(engine, [PointPrompt(75, 3, 30)])
    assert not result.mask.any()
    assert "hit background" in caplog.text


def test_negative_clicks_alone_are_refused(engine) -> None:
    with pytest.raises(PromptError, match="negative points alone"):
        _run(engine, [PointPrompt(20, 20, 20, False)])


def test_propagation_stops_where_the_answer_balloons(engine) -> None:
    """A small lesion whose neighbouring slices run into a large bright plate: the plate
    is more than max_growth times the lesion, so propagation stops before it."""
    plate = np.zeros(SHAPE, dtype=bool)
    plate[26:30, 5:60, 5:40] = True  # touches ball 0 (slices 18-22) from slice 26 on
    column = np.zeros(SHAPE, dtype=bool)
    column[22:26, 18:23, 18:23] = True  # a thin bridge from the ball to the plate
    volume = _volume(plate | column)
    k, j, i = CENTRES[0]
    mask = _run(engine, [PointPrompt(i, j, k)], volume).mask
    assert not (mask & plate).any()
    assert (mask & _ball(0)).sum() == _ball(0).sum()


@pytest.mark.parametrize(
    "prompt",
    [BoxPrompt(0, 0, 80, 10, 0, 0), BoxPrompt(0, 0, 10, 10, 39, 40), PointPrompt(5, 64, 3)],
)
def test_prompt_outside_the_volume_is_a_prompt_error(engine, prompt) -> None:
    with pytest.raises(PromptError, match="outside the volume"):
        _run(engine, [prompt])


def test_the_last_half_voxel_is_inside() -> None:
    seeds, _ = lesion_seeds([PointPrompt(79.5, 63.5, 39.5)], _volume())
    assert seeds[0].slices == (39,) and seeds[0].point == (63, 79)


def test_a_model_without_prompt_input_refuses_prompts(tmp_path: Path) -> None:
    with bright_engine(tmp_path, (64, 64)) as (opened, card):
        options = SegmentOptions(window="150/300", prompts=(PointPrompt(20, 20, 20),))
        with pytest.raises(PromptError, match="takes no prompts"):
            segment_volume_result(_volume(), opened, card, options)


def test_the_cli_refuses_prompts_for_a_prompt_free_model_in_one_line(
    tmp_path: Path, bright_model: Path, capsys
) -> None:
    from medseg.cli import main
    from tests.dicom.series_factory import write_series

    series = write_series(tmp_path / "ct", np.zeros((4, 16, 16)))
    out = tmp_path / "out.seg.dcm"
    argv = ["segment", str(series), "-o", str(out), "--model", str(bright_model)]
    assert main([*argv, "--point", "5,5,1", "--no-progress"]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "takes no prompts" in err, err
    assert not out.exists()


def test_crop_around_is_square_in_mm_and_stays_on_the_slice() -> None:
    assert crop_around((32, 40), 20.0, (64, 80), (1.0, 0.5)) == Region(22, 42, 20, 60)
    assert crop_around((1, 78), 20.0, (64, 80), (1.0, 1.0)) == Region(0, 20, 60, 80)
    assert crop_around((30, 30), 500.0, (64, 80), (1.0, 1.0)) == Region(0, 64, 0, 80)


def test_box_crop_grows_with_the_box_within_limits() -> None:
    assert box_crop_mm(5.0) == 48.0
    assert box_crop_mm(30.0) == 90.0
    assert box_crop_mm(1000.0) == 400.0


def test_prompt_maps_draw_discs_and_boxes() -> None:
    maps = draw(
        PromptMaps(positive=((5, 5),), negative=((10, 25),), boxes=((2, 20, 6, 28),)),
        (32, 32),
    )
    disc = np.argwhere(maps[0, :12, :12] > 0)
    assert np.all(np.hypot(disc[:, 0] - 5, disc[:, 1] - 5) <= CLICK_RADIUS)
    assert len(disc) == 29  # a radius-3 disc of pixel centres
    assert maps[0, 2:7, 20:29].all() and not maps[0, 7, 20] and not maps[0, 2, 29]
    assert maps[0].sum() == 29 + 5 * 9  # the disc and the box's interior, nothing else
    assert maps[1, 10, 25] == 1 and maps[1].sum() == 29
    assert not draw(PromptMaps(), (8, 8)).any()


def test_the_carried_click_is_the_deepest_point_of_the_mask() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:8, 5:30] = True  # a thin bar
    mask[15:36, 10:31] = True  # and a square: its centre is the deepest point
    assert deepest_point(mask) == (25.0, 20.0)
    edge = np.zeros((10, 10), dtype=bool)
    edge[:, :4] = True  # touching the border: the border counts as an edge
    assert deepest_point(edge)[1] in (1.0, 2.0)


def test_each_prompted_lesion_is_its_own_semiautomatic_segment(
    tmp_path: Path, prompted_bright_model: Path, capsys
) -> None:
    """Read back with highdicom: one segment per prompted lesion, SEMIAUTOMATIC, tracked by
    its own label, each holding only its own block."""
    import highdicom as hd

    from medseg.cli import main
    from tests.dicom.series_factory import write_series

    values = np.zeros((6, 16, 16))
    values[1:4, 2:7, 2:7] = 200.0
    values[2:5, 9:14, 9:14] = 200.0
    write_series(tmp_path / "ct", values)
    out = tmp_path / "out.seg.dcm"
    argv = ["segment", str(tmp_path / "ct"), "-o", str(out), "--model", str(prompted_bright_model)]
    prompts = ["--point", "4,4,2", "--point", "11,11,3", "--window", "100/200", "--no-progress"]
    assert main([*argv, *prompts]) == 0, capsys.readouterr().err
    seg = hd.seg.segread(out)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Lesion 1", "Lesion 2"]
    assert {d.SegmentAlgorithmType for d in seg.SegmentSequence} == {"SEMIAUTOMATIC"}
    assert [d.TrackingID for d in seg.SegmentSequence] == ["Lesion 1", "Lesion 2"]
    for number, expected in ((1, 3 * 25), (2, 3 * 25)):
        frames = [
            f
            for f, item in zip(seg.pixel_array, seg.PerFrameFunctionalGroupsSequence, strict=True)
            if item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == number
        ]
        assert sum(int(np.asarray(f).sum()) for f in frames) == expected
