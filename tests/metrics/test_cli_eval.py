"""``medseg eval`` end to end through ``medseg.cli.main`` on real files in temp folders."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.maskio import Grid, read_mask
from medseg.metrics import evaluate
from tests.metrics.synthetic import write_ct_series, write_seg

SPACING = (2.0, 0.8, 0.8)


def _grid() -> Grid:
    affine = np.eye(4)
    affine[:3, :3] = np.diag(SPACING)
    affine[:3, 3] = (-5.0, 12.0, 30.0)
    return Grid((10, 24, 24), affine)


def _write(path: Path, mask: np.ndarray, grid: Grid | None = None) -> None:
    import SimpleITK as sitk

    sitk.WriteImage((grid or _grid()).to_sitk(mask.astype(np.uint8)), str(path))


def _cohort(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Three paired cases (NIfTI/NRRD mixed, stems match) plus one unpaired prediction."""
    pred_dir, truth_dir = tmp_path / "pred", tmp_path / "truth"
    pred_dir.mkdir()
    truth_dir.mkdir()
    rng = np.random.default_rng(5)
    cases = {}
    for name, suffix_p, suffix_t in (
        ("case01", ".nii.gz", ".nii.gz"),
        ("case02", ".nrrd", ".nii"),
        ("case03", ".nii.gz", ".nrrd"),
    ):
        truth = np.zeros((10, 24, 24), bool)
        lo = rng.integers(2, 6, 3)
        truth[lo[0] : lo[0] + 4, lo[1] : lo[1] + 10, lo[2] : lo[2] + 9] = True
        pred = np.roll(truth, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2))
        _write(pred_dir / f"{name}{suffix_p}", pred)
        _write(truth_dir / f"{name}{suffix_t}", truth)
        cases[name] = (pred, truth)
    _write(pred_dir / "extra.nii.gz", np.zeros((10, 24, 24), bool))
    return pred_dir, truth_dir, cases


def test_cohort_json_csv_plot_and_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred_dir, truth_dir, cases = _cohort(tmp_path)
    out_json, out_csv, out_png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    code = main(
        ["eval", str(pred_dir), str(truth_dir), "--json", str(out_json), "--csv", str(out_csv),
         "--plot", str(out_png), "--jobs", "2", "--tolerance-mm", "2", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out_json.read_text())
    assert [row["case"] for row in report["cases"]] == ["case01", "case02", "case03"]
    assert report["unpaired"]["pred"] == [str(pred_dir / "extra.nii.gz")]
    assert report["options"]["tolerance_mm"] == 2.0
    for row in report["cases"]:
        pred, truth = cases[row["case"]]
        expected = evaluate(pred, truth, SPACING, tolerance_mm=2.0)
        for metric in ("dice", "hd", "hd95", "assd", "nsd", "lesion_f1"):
            assert row[metric] == pytest.approx(expected[metric]), metric
    dices = [row["dice"] for row in report["cases"]]
    summary = report["summary"]["1"]["dice"]
    assert summary["mean"] == pytest.approx(np.mean(dices)) and summary["n"] == 3
    assert summary["ci_low"] <= summary["mean"] <= summary["ci_high"]
    with out_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and float(rows[1]["dice"]) == pytest.approx(dices[1])
    assert {"hd95", "assd", "nsd", "volume_pred_ml", "lesion_tp", "pred_file"} <= set(rows[0])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "case02" in printed and "3 case(s) scored, 0 failed" in printed and "95% CI" in printed


def test_seg_prediction_with_segment_map_and_series_pairing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    series = write_ct_series(tmp_path / "ct", (6, 12, 12))
    truth = np.zeros((6, 12, 12, 2), bool)
    truth[2:4, 3:7, 3:7, 0] = True
    truth[1, 8:10, 8:10, 1] = True
    pred = truth[..., 1:2].copy()
    write_seg(tmp_path / "truth" / "reference.dcm", series, truth, ["Liver", "Lesion"])
    write_seg(tmp_path / "pred" / "model-output.dcm", series, pred, ["Finding"])
    write_seg(tmp_path / "truth" / "other.dcm", write_ct_series(tmp_path / "ct2"), np.ones(
        (12, 20, 24, 1), bool), ["Liver"])  # fmt: skip
    out_csv = tmp_path / "seg.csv"
    code = main(
        ["eval", str(tmp_path / "pred"), str(tmp_path / "truth"), "--segment-map",
         "Finding:Lesion", "--csv", str(out_csv), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    (row,) = list(csv.DictReader(out_csv.open()))
    assert row["case"] == "reference" and row["segment"] == "Lesion"
    assert float(row["dice"]) == 1.0 and float(row["hd"]) == 0.0
    assert row["pred_segment"] == "1" and row["truth_segment"] == "2"


def test_seg_prediction_on_other_slices_than_the_truth_scores_zero_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """SEGs hold only their marked frames; disjoint frames of one series are a miss + a
    false alarm (Dice 0), not a case dropped from the cohort's mean."""
    series = write_ct_series(tmp_path / "ct", (8, 12, 12))
    truth = np.zeros((8, 12, 12, 1), bool)
    truth[5:7, 3:7, 3:7, 0] = True
    pred = np.zeros_like(truth)
    pred[1, 8:10, 8:10, 0] = True
    write_seg(tmp_path / "truth" / "case.dcm", series, truth, ["Lesion"])
    write_seg(tmp_path / "pred" / "case.dcm", series, pred, ["Lesion"])
    assert not read_mask(tmp_path / "pred" / "case.dcm").grid.overlaps(
        read_mask(tmp_path / "truth" / "case.dcm").grid
    )
    out_json = tmp_path / "r.json"
    code = main(["eval", str(tmp_path / "pred"), str(tmp_path / "truth"), "--json",
                 str(out_json), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads(out_json.read_text())
    assert not report["errors"]
    (row,) = report["cases"]
    assert row["dice"] == 0.0 and row["lesion_fp"] == 1 and row["lesion_fn"] == 1


def test_bad_option_fails_cleanly_without_output(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pred_dir, truth_dir, _ = _cohort(tmp_path)
    out_json = tmp_path / "r.json"
    code = main(
        ["eval", str(pred_dir), str(truth_dir), "--segment-map", "1-2", "--json", str(out_json)]
    )
    err = capsys.readouterr().err
    assert code == 3 and not out_json.exists()
    assert "PRED:TRUTH" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code = main(["eval", str(tmp_path / "missing"), str(truth_dir), "--json", str(out_json)])
    assert code == 2 and not out_json.exists()
    assert "not found" in capsys.readouterr().err


def test_a_case_without_overlap_is_an_error_not_a_score(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pred_dir, truth_dir, _ = _cohort(tmp_path)
    far = _grid().affine.copy()
    far[0, 3] += 400.0
    _write(pred_dir / "case02.nrrd", np.ones((10, 24, 24), bool), Grid((10, 24, 24), far))
    out_json = tmp_path / "r.json"
    code = main(["eval", str(pred_dir), str(truth_dir), "--json", str(out_json), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    report = json.loads(out_json.read_text())
    assert [row["case"] for row in report["cases"]] == ["case01", "case03"]
    assert report["errors"][0]["case"] == "case02"
    assert "do not overlap" in report["errors"][0]["error"]
    assert "case case02 not scored" in captured.err
    # a single pair that cannot be scored is an error with no output at all
    single = tmp_path / "single.json"
    code = main(["eval", str(pred_dir / "case02.nrrd"), str(truth_dir / "case02.nii"), "--json",
                 str(single)])  # fmt: skip
    assert code == 2 and not single.exists()


def test_nan_and_inf_are_valid_json(tmp_path: Path) -> None:
    truth = np.zeros((10, 24, 24), bool)
    truth[3:5, 3:9, 3:9] = True
    _write(tmp_path / "p.nii.gz", np.zeros_like(truth))
    _write(tmp_path / "t.nii.gz", truth)
    out_json = tmp_path / "r.json"
    assert main(["eval", str(tmp_path / "p.nii.gz"), str(tmp_path / "t.nii.gz"), "--json",
                 str(out_json), "--no-progress"]) == 0  # fmt: skip
    (row,) = json.loads(out_json.read_text())["cases"]
    assert row["hd"] == "inf" and row["precision"] is None and row["dice"] == 0.0
    assert read_mask(tmp_path / "p.nii.gz").segments[0].number == 1


def test_a_report_into_a_missing_folder_is_an_output_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pred_dir, truth_dir, _ = _cohort(tmp_path)
    out_csv = tmp_path / "nonexist" / "r.csv"
    assert main(["eval", str(pred_dir), str(truth_dir), "--csv", str(out_csv)]) == 6
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err, err
    assert not out_csv.parent.exists()


def _mismatched_case(tmp_path: Path, pred_labels: list[str], **pred_header: str) -> list[str]:
    """A truth SEG "Liver"... and a prediction SEG of the same series whose source headers
    are changed as ``pred_header`` says; returns the eval command without options."""
    series = write_ct_series(tmp_path / "ct", (6, 12, 12))
    mask = np.zeros((6, 12, 12, 1), bool)
    mask[2:4, 3:8, 3:8, 0] = True
    write_seg(tmp_path / "truth" / "case.dcm", series, mask, ["Liver"])
    sources = [copy.deepcopy(ds) for ds in series]
    for ds in sources:
        for keyword, value in pred_header.items():
            setattr(ds, keyword, value)
    write_seg(tmp_path / "pred" / "case.dcm", sources, mask, pred_labels)
    return ["eval", str(tmp_path / "pred"), str(tmp_path / "truth"), "--no-progress"]


@pytest.mark.parametrize(
    ("pred_labels", "pred_header", "words"),
    [
        (["Liver"], {"PatientID": "SOMEONE-ELSE"}, "patient ID"),
        (["Liver"], {"FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.1"}, "frame of reference"),
        (["Lesion"], {}, "segment meaning (predicted 'Lesion', true 'Liver')"),
    ],
)
def test_a_mismatched_case_is_refused_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture, pred_labels, pred_header, words
) -> None:
    argv = _mismatched_case(tmp_path, pred_labels, **pred_header)
    out_json = tmp_path / "r.json"
    assert main([*argv, "--json", str(out_json)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medseg eval: error: case case"), err
    assert words in err and "--allow-mismatch" in err, err
    assert "METRICS01" not in err and "SOMEONE-ELSE" not in err  # no patient IDs printed
    assert not out_json.exists()
    assert main([*argv, "--json", str(out_json), "--allow-mismatch"]) == 0
    captured = capsys.readouterr()
    assert "medseg eval: warning: case case:" in captured.err and words in captured.err
    assert json.loads(out_json.read_text())["cases"][0]["dice"] == 1.0


def test_a_segment_map_states_the_correspondence_so_labels_are_not_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = _mismatched_case(tmp_path, ["Lesion"])
    assert main([*argv, "--segment-map", "Lesion:Liver"]) == 0
    assert "differ" not in capsys.readouterr().err


def test_nifti_against_seg_compares_only_what_both_state(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A NIfTI carries no patient or frame of reference, and an unnamed label no meaning."""
    argv = _mismatched_case(tmp_path, ["Liver"], PatientID="SOMEONE-ELSE")
    truth = read_mask(tmp_path / "truth" / "case.dcm")
    (tmp_path / "truth" / "case.dcm").unlink()
    _write(tmp_path / "truth" / "case.nii.gz", truth.mask(1), truth.grid)
    assert main(argv) == 0, capsys.readouterr().err
    assert "differ" not in capsys.readouterr().err


def test_an_unreadable_case_still_fails_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pred_dir, truth_dir, _ = _cohort(tmp_path)
    (pred_dir / "case02.nrrd").write_bytes(b"NRRD0004\nnot really\n")
    assert main(["eval", str(pred_dir), str(truth_dir), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "2 case(s) scored, 1 failed" in captured.out and "case case02 not scored" in captured.err
