"""The procedural generator: scenes, training samples with simulated prompts, series.

Every value a test asserts is computed from the scene's own geometry, so the tests hold
for any seed and catch a renderer that puts lesions, labels or contrast in the wrong place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.modelcard import ModelCard
from medseg.synthetic.samples import SampleConfig, SampleStream, draw_sample, render_slab
from medseg.synthetic.scene import random_scene, render
from medseg.synthetic.series import write_scene_series
from medseg.synthetic.shapes import FAMILIES, Lobulated, Metaball, Rippled

CARD = ModelCard(name="t", slice_context_mm=2.5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_every_family_renders_visible_lesions_deterministically(family: str, modality: str):
    scene = random_scene(11, family, modality, lesion_free=0.0)
    assert scene.lesions
    zs = np.array([_anchor_z(scene.lesions[0].shape)])
    image, labels = render(scene, zs, 128, 128, noise_seed=1)
    again, labels_again = render(scene, zs, 128, 128, noise_seed=1)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert np.isfinite(image).all() and labels.max() <= len(scene.lesions)
    if modality == "MR":
        assert image.min() >= 0.0  # magnitude images
    for number in np.unique(labels[labels > 0]):
        inside = labels[0] == number
        ring = ndimage.binary_dilation(inside, iterations=3) & ~ndimage.binary_dilation(inside)
        if inside.sum() < 20 or labels[0][ring].any():
            continue
        # the lesion differs from what surrounds it by at least its noise
        assert abs(np.median(image[0][inside]) - np.median(image[0][ring])) > scene.noise


def _anchor_z(shape) -> float:
    centre = getattr(shape, "centre", None)
    return float(centre[0] if centre is not None else np.mean(np.asarray(shape.centres)[:, 0]))


def test_the_three_families_use_three_shape_models():
    def kinds_of(family: str) -> set[type]:
        scene = random_scene(3, family, "CT", lesions=(4, 4), lesion_free=0)
        return {type(lesion.shape) for lesion in scene.lesions}

    kinds = {family: kinds_of(family) for family in FAMILIES}
    assert kinds["lobulated"] == {Lobulated}
    assert kinds["metaball"] == {Metaball}
    assert kinds["rippled"] == {Rippled}


def test_a_lesion_has_the_same_size_in_mm_on_any_grid():
    scene = random_scene(5, "lobulated", "CT", lesion_free=0.0, lesion_mm=(20, 30))
    z = np.array([_anchor_z(scene.lesions[0].shape)])
    areas = []
    for n in (128, 384):
        _, labels = render(scene, z, n, n)
        areas.append((labels == 1).sum() * (scene.fov_mm / n) ** 2)
    assert areas[0] > 50.0
    assert abs(areas[0] - areas[1]) / areas[1] < 0.1


def test_a_zoomed_render_shows_the_same_place_at_a_finer_grid():
    scene = random_scene(5, "metaball", "CT", lesion_free=0.0, fov_mm=400.0)
    z = np.array([_anchor_z(scene.lesions[0].shape)])
    _, whole = render(scene, z, 400, 400)  # 1 mm pixels, centred on (0, 0)
    _, zoom = render(scene, z, 100, 100, fov_mm=100.0, centre=(-50.0, 50.0))
    # zoom covers y -100..0, x 0..100: rows 100-199, cols 200-299 of the whole grid
    np.testing.assert_array_equal(zoom[0] > 0, whole[0, 100:200, 200:300] > 0)


def _slab(family: str = "lobulated", seed: int = 2, zoom: bool = False):
    rng = np.random.default_rng(0)
    scene = random_scene(seed, family, "CT", lesions=(3, 4), lesion_free=0.0)
    for _ in range(40):
        slab = render_slab(rng, scene, CARD, 2.0, zoom=zoom)
        if len(np.unique(slab.labels)) > 2 or (zoom and (slab.labels == slab.focus).any()):
            return slab
    pytest.fail("no slice with two lesions")


def test_simulated_clicks_point_at_one_lesion_and_target_only_it():
    slab = _slab()
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(60):
        sample = draw_sample(rng, slab, "point")
        unit, prompt, target = sample.unit, sample.prompt, sample.target
        assert unit.shape == (3, *CARD.input_size) and prompt.shape == (2, *CARD.input_size)
        numbers = np.unique(slab.labels[target > 0])
        assert len(numbers) == 1  # one lesion, all of it
        np.testing.assert_array_equal(target > 0, slab.labels == numbers[0])
        assert (prompt[0] > 0).sum() and not prompt[1].any()
        centre = np.argwhere(prompt[0] > 0).mean(axis=0).round().astype(int)
        assert target[tuple(centre)] > 0  # the click lies in the target
        seen.add(int(numbers[0]))
    assert len(seen) >= 2


def test_simulated_boxes_cover_their_lesion_and_auto_targets_every_lesion():
    slab = _slab()
    rng = np.random.default_rng(2)
    for _ in range(20):
        sample = draw_sample(rng, slab, "box")
        prompt, target = sample.prompt, sample.target
        covered = (prompt[0] > 0)[target > 0].mean()
        # a jittered box may clip a rim (a pixel of a tiny lesion), never most of it
        assert covered > 0.5
        rows, cols = np.nonzero(prompt[0])
        area = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        assert area < 4 * max(int((target > 0).sum()), 16)  # and it is a box around it
    auto = draw_sample(rng, slab, "auto")
    assert not auto.prompt.any() and auto.mode == "auto"
    np.testing.assert_array_equal(auto.target > 0, slab.labels > 0)


def test_negative_clicks_never_land_on_the_target():
    slab = _slab()
    rng = np.random.default_rng(3)
    for _ in range(30):
        sample = draw_sample(rng, slab, "point", negative_share=1.0)
        assert sample.prompt[1].any()
        centre = tuple(np.argwhere(sample.prompt[1] > 0).mean(axis=0).round().astype(int))
        assert sample.target[centre] == 0


def test_carried_clicks_come_from_the_neighbouring_slice_and_may_find_nothing():
    """A carried click is the deepest point of the lesion on a neighbouring slice; the
    target is the lesion on this slice, empty past its end (where propagation stops)."""
    rng = np.random.default_rng(4)
    scene = random_scene(2, "lobulated", "CT", lesions=(1, 1), lesion_free=0.0)
    ended = carried = 0
    for _ in range(60):
        slab = render_slab(rng, scene, CARD, 2.0, zoom=True)
        sample = draw_sample(rng, slab, "carry")
        if sample.mode != "carry":
            assert sample.mode == "auto" and not sample.prompt.any()
            assert not any((side == slab.focus).any() for side in slab.neighbours)
            continue
        carried += 1
        click = np.argwhere(sample.prompt[0] > 0).mean(axis=0)
        near = [side == slab.focus for side in slab.neighbours if (side == slab.focus).any()]
        # its deepest point, jittered by a fraction of a pixel (a disc clipped by the edge
        # of the view moves its centre a little more)
        assert any(
            ndimage.binary_dilation(m, iterations=2)[tuple(click.round().astype(int))] for m in near
        )
        np.testing.assert_array_equal(sample.target > 0, slab.labels == slab.focus)
        ended += not sample.target.any()
    assert carried >= 30 and ended >= 1  # some carried clicks land past the lesion's end


def test_the_stream_mixes_modes_and_shows_auto_samples_the_whole_view():
    config = SampleConfig(pool=8, draws_per_slab=2, auto_share=0.3)
    batch = SampleStream(config, CARD, seed=3).batch(40)
    assert set(batch.modes) >= {"auto", "point", "box"}
    for mode, prompt in zip(batch.modes, batch.prompts, strict=True):
        assert prompt.any() == (mode != "auto")


def test_the_stream_is_reproducible_and_mixes_modalities():
    config = SampleConfig(pool=4, draws_per_slab=1)
    first = SampleStream(config, CARD, seed=5).batch(6)
    second = SampleStream(config, CARD, seed=5).batch(6)
    for a, b in zip(
        (first.units, first.prompts, first.targets),
        (second.units, second.prompts, second.targets),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert first.modes == second.modes
    units = first.units
    assert units.shape == (6, 3, *CARD.input_size) and units.min() >= 0.0 and units.max() <= 1.0


def test_a_written_series_loads_back_with_its_truth(tmp_path: Path):
    from medseg.dicom import load_series
    from medseg.maskio import mask_on_volume

    truth, labels = write_scene_series(
        tmp_path / "s", 7, "rippled", "MR", max_matrix=160, lesion_free=0.0
    )
    volume = load_series(truth.series_dir).volume
    assert volume.modality == "MR" and volume.shape == labels.shape
    np.testing.assert_allclose(volume.spacing, truth.spacing, rtol=1e-4)
    seg = mask_on_volume(truth.seg_path, volume)
    np.testing.assert_array_equal(seg > 0, labels > 0)
    assert truth.lesions
    for lesion in truth.lesions:
        r, c = lesion.centre
        assert labels[lesion.key_slice, r, c] == lesion.number
        r0, c0, r1, c1 = lesion.box
        on_slice = labels[lesion.key_slice] == lesion.number
        assert on_slice[r0 : r1 + 1, c0 : c1 + 1].sum() == on_slice.sum()
    record = json.loads((tmp_path / "s" / "truth.json").read_text())
    assert record["family"] == "rippled" and len(record["lesions"]) == len(truth.lesions)
