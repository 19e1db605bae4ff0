"""A SEG written by ``medseg segment`` scored against the phantom truth it was made from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.cli import main
from medseg.dicom import load_series
from medseg.maskio import mask_on_volume
from medseg.metrics import evaluate
from medseg.phantom import write_phantom
from medseg.pipeline import SegmentOptions, segment


@pytest.fixture
def phantom(tmp_path: Path):
    return write_phantom(
        tmp_path / "phantom",
        7,
        size=(64, 64),
        slices=12,
        pixel_spacing=5.0,
        slice_spacing=5.0,
        min_lesions=2,
        nifti=True,
    )


def test_segment_output_scores_like_the_arrays_it_holds(
    phantom, bright_model: Path, tmp_path: Path
) -> None:
    pred_seg = tmp_path / "pred.dcm"
    segment(phantom.series_dir, pred_seg, SegmentOptions(model=bright_model, window="liver"))
    out = tmp_path / "r.json"
    code = main(["eval", str(pred_seg), str(phantom.seg_path), "--json", str(out), "--no-progress"])
    assert code == 0
    (row,) = json.loads(out.read_text())["cases"]
    volume = load_series(phantom.series_dir).volume
    truth = mask_on_volume(phantom.seg_path, volume)
    assert np.array_equal(truth, phantom.phantom.lesions)  # SEG truth reads back exactly
    pred = mask_on_volume(pred_seg, volume, "Lesion")
    assert pred.any()
    expected = evaluate(pred, truth, volume.spacing)
    assert row["resampled"] is False and row["segment"] == "Lesion"
    for metric in ("dice", "hd95", "assd", "lesion_tp", "lesion_fp", "lesion_fn"):
        value = expected[metric]
        assert row[metric] == ("inf" if np.isinf(value) else pytest.approx(value)), metric


def test_instance_label_nifti_against_seg_truth_with_all_segments(phantom, tmp_path) -> None:
    out = tmp_path / "r.json"
    args = ["eval", str(phantom.nifti_path), str(phantom.seg_path), "--segment-map", "*:Lesion"]
    assert main([*args, "--json", str(out), "--no-progress"]) == 0
    (row,) = json.loads(out.read_text())["cases"]
    assert row["dice"] == 1.0 and row["hd"] == 0.0 and row["pred_segment"] == "*"
    _, n_lesions = ndimage.label(phantom.phantom.lesions, np.ones((3, 3, 3)))
    assert row["lesion_tp"] == n_lesions >= 1 and row["lesion_fp"] == row["lesion_fn"] == 0
