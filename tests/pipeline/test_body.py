"""Slices outside the body are not run, and never a slice that holds a lesion (CT and MR)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.body import DEFAULT_BODY, BodyCriteria, body_slices
from medseg.errors import ConfigError
from medseg.phantom import generate_phantom
from medseg.pipeline import SegmentOptions, segment, segment_volume_result
from medseg.synthetic.scene import random_scene, render
from tests.dicom.series_factory import write_series
from tests.pipeline.helpers import bright_engine, make_volume
from tests.tiny_models import make_bright_model


def body_in_air(slices: int, first: int, last: int, *, air: float, tissue: float, noise: float):
    """A cylinder of ``tissue`` on slices first..last, air (with noise) around and beyond."""
    rng = np.random.default_rng(0)
    values = air + noise * rng.standard_normal((slices, 48, 48))
    j, i = np.indices((48, 48))
    disc = (j - 24) ** 2 + (i - 24) ** 2 <= 15**2
    values[first : last + 1][:, disc] = tissue + noise * rng.standard_normal(int(disc.sum()))
    return values.astype(np.float32)


def test_ct_slices_of_air_are_outside_the_body_with_a_one_slice_margin() -> None:
    volume = make_volume(body_in_air(12, 4, 7, air=-1000.0, tissue=40.0, noise=20.0))
    expected = np.zeros(12, dtype=bool)
    expected[3:9] = True  # body 4..7 and one slice either side
    np.testing.assert_array_equal(body_slices(volume, DEFAULT_BODY), expected)
    no_margin = BodyCriteria(margin_slices=0)
    assert list(np.flatnonzero(body_slices(volume, no_margin))) == [4, 5, 6, 7]


@pytest.mark.parametrize("scale", [1.0, 37.0, 0.01])
def test_mr_uses_its_own_intensity_statistics_at_any_scale(scale: float) -> None:
    values = body_in_air(12, 2, 9, air=8.0, tissue=400.0, noise=5.0)
    volume = make_volume(np.abs(values) * scale, modality="MR")  # magnitude: never negative
    no_margin = BodyCriteria(margin_slices=0)
    assert list(np.flatnonzero(body_slices(volume, no_margin))) == list(range(2, 10))


def test_a_few_noisy_voxels_do_not_make_a_slice_body_but_a_small_section_does() -> None:
    values = body_in_air(6, 0, -1, air=-1000.0, tissue=40.0, noise=5.0)
    values[1, 10, 10] = 200.0  # a spike in air
    values[4, 20:26, 20:26] = 40.0  # 36 mm2 of tissue (spacing 1 mm): a body's tip
    volume = make_volume(values)
    assert list(np.flatnonzero(body_slices(volume, BodyCriteria(margin_slices=0)))) == [4]


def test_constant_volume_runs_everything() -> None:
    volume = make_volume(np.zeros((4, 16, 16)), modality="MR")
    assert body_slices(volume, DEFAULT_BODY).all()


@pytest.mark.parametrize("field", ["ct_threshold_hu", "other_fraction", "margin_slices"])
def test_bad_criteria_are_refused(field: str) -> None:
    with pytest.raises(ConfigError):
        BodyCriteria(**{field: {"ct_threshold_hu": -2000.0, "other_fraction": 0.9}.get(field, -1)})


@pytest.mark.parametrize("seed", range(6))
def test_no_ct_phantom_lesion_slice_is_ever_outside_the_body(seed: int) -> None:
    phantom = generate_phantom(seed, size=(96, 96), slices=24, min_lesions=2, max_lesions=4)
    hu = phantom.hu.astype(np.float32)
    hu[:3] = -1000.0  # the scan runs past the patient at both ends
    hu[-3:] = -1000.0
    volume = make_volume(hu, spacing=phantom.spacing)
    body = body_slices(volume, DEFAULT_BODY)
    lesion_slices = phantom.lesions[3:-3].any(axis=(1, 2))
    assert lesion_slices.any()
    assert body[3:-3][lesion_slices].all(), "a slice with a lesion was left out"
    assert not body[:2].any() and not body[-2:].any(), "air slices beyond the margin are left out"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_no_synthetic_lesion_slice_is_ever_outside_the_body(seed: int, modality: str) -> None:
    scene = random_scene(seed, "lobulated", modality, lesions=(2, 4), lesion_free=0.0)
    zs = np.linspace(-60.0, 60.0, 32)
    image, lesions = render(scene, zs, 64, 64)
    image = np.array(image, dtype=np.float32)
    lesion_slices = np.asarray(lesions).reshape(len(zs), -1).any(axis=1)
    assert lesion_slices.any()
    # the scan starts in air right before the first slice with a lesion: the body's edge
    cut = int(np.flatnonzero(lesion_slices)[0])
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((2, *image[:cut].shape))
    if modality == "CT":
        image[:cut] = -1000.0 + 15.0 * noise[0]
    else:  # magnitude of complex noise (Rician), 2 % of the tissue's brightness
        sigma = 0.02 * np.percentile(image, 99)
        image[:cut] = sigma * np.hypot(noise[0], noise[1])
    volume = make_volume(image, modality=modality)
    body = body_slices(volume, DEFAULT_BODY)
    assert body[lesion_slices].all(), "a slice with a lesion was left out"
    assert not body[: max(cut - 1, 0)].any(), "air slices beyond the margin are not run"


def test_automatic_segmentation_skips_air_slices_with_the_same_mask(tmp_path: Path) -> None:
    values = body_in_air(10, 3, 6, air=-1000.0, tissue=40.0, noise=10.0)
    values[4:6, 20:28, 20:28] = 300.0  # the bright "lesion"
    volume = make_volume(values)
    calls: list[int] = []
    with bright_engine(tmp_path, (48, 48)) as (engine, card):
        real_run = engine.run

        def counting(batch: np.ndarray, *rest: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            return real_run(batch, *rest)

        engine.run = counting  # type: ignore[method-assign]
        options = SegmentOptions(window="150/300", test_time_flips=())
        skipped = segment_volume_result(volume, engine, card, options)
        run_slices = sum(calls)
        everything = segment_volume_result(volume, engine, card, replace(options, body=None))
    assert skipped.not_run == (0, 1, 8, 9)
    assert run_slices == 6 and sum(calls) == 6 + 10
    np.testing.assert_array_equal(skipped.mask, everything.mask)
    assert skipped.mask[4:6].any()


def test_the_seg_still_references_every_source_slice(tmp_path: Path) -> None:
    values = body_in_air(10, 3, 6, air=-1000.0, tissue=40.0, noise=10.0)
    values[4:6, 20:28, 20:28] = 300.0
    series = write_series(tmp_path / "ct", values, spacing=(2.0, 1.0, 1.0))
    model = tmp_path / "bright.onnx"
    make_bright_model(model, size=(48, 48))
    options = SegmentOptions(model=model, window="150/300", test_time_flips=())
    result = segment([series.paths[0].parent], tmp_path / "out.seg.dcm", options)
    assert result.slices_not_run == 4
    assert "10 slices (4 outside the body)" in result.summary()
    seg = pydicom.dcmread(result.output)
    (referenced,) = seg.ReferencedSeriesSequence
    uids = {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence}
    assert uids == set(series.sop_uids)


def test_a_series_of_air_only_runs_nothing_and_finds_nothing(tmp_path: Path) -> None:
    volume = make_volume(body_in_air(5, 0, -1, air=-1000.0, tissue=40.0, noise=10.0))
    with bright_engine(tmp_path, (48, 48)) as (engine, card):
        engine.run = None  # type: ignore[method-assign]  # any call would fail
        result = segment_volume_result(volume, engine, card, SegmentOptions(window="150/300"))
    assert result.not_run == (0, 1, 2, 3, 4) and result.tiles == 0
    assert not result.mask.any()
