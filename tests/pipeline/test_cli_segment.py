"""``medseg segment`` through ``medseg.cli.main`` and once as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.cli import main
from tests.conftest import REPO_ROOT
from tests.dicom.series_factory import write_series

SHAPE = (6, 40, 48)


def _series(folder: Path, seed: int = 0) -> Path:
    values = np.zeros(SHAPE)
    values[1:5, 10:30, 12:36] = 200.0  # a bright block
    write_series(folder, values, seed=seed)
    return folder


def _outputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_cli_segment_writes_seg_and_preview(
    tmp_path: Path, bright_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = _series(tmp_path / "ct")
    out, png = tmp_path / "out" / "seg.dcm", tmp_path / "out" / "preview.png"
    out.parent.mkdir()
    code = main(
        [
            "segment",
            str(series),
            "-o",
            str(out),
            "--model",
            str(bright_model),
            "--preview",
            str(png),
            "--window",
            "100/200",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert pydicom.dcmread(out).Modality == "SEG"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = captured.out.splitlines()[0]
    expected_ml = 4 * 20 * 24 * 2.5 * 0.8 * 0.7 / 1000  # factory spacing (2.5, 0.8, 0.7)
    assert f"{SHAPE[0]} slices, {expected_ml:.2f} ml" in summary
    assert _outputs(out.parent) == [png, out]


def test_cli_box_prompt_and_options(
    tmp_path: Path, prompted_bright_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = _series(tmp_path / "ct")
    out = tmp_path / "seg.dcm"
    code = main(
        [
            "segment",
            str(series),
            "-o",
            str(out),
            "--model",
            str(prompted_bright_model),
            "--box",
            "12,10,23,29@2-3",
            "--window",
            "100/200",
            "--largest",
            "--fill-holes",
            "--min-volume",
            "5",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    # the block the box sits on, on the box's two slices only (a range is not propagated)
    ml = 2 * 20 * 24 * 2.5 * 0.8 * 0.7 / 1000
    assert f"{ml:.2f} ml" in capsys.readouterr().out


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int, words: str) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("medseg segment: error:") and words in err
    assert "Traceback" not in err


def test_cli_errors_are_one_line_with_exit_codes_and_leave_no_output(
    tmp_path: Path,
    bright_model: Path,
    prompted_bright_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = str(out_dir / "seg.dcm")
    model = ["--model", str(bright_model), "--no-progress"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not DICOM")
    _error(capsys, ["segment", str(empty), "-o", out, *model], 2, "DICOM")

    series = _series(tmp_path / "ct")
    _series(tmp_path / "ct" / "other", seed=3)  # a second series in the same folder
    _error(capsys, ["segment", str(tmp_path / "ct"), "-o", out, *model], 2, "--series")

    one = _series(tmp_path / "one", seed=4)
    missing = ["--model", str(tmp_path / "nope.onnx")]
    _error(capsys, ["segment", str(one), "-o", out, *missing], 4, "model file not found")
    _error(capsys, ["segment", str(one), "-o", out, *model, "--window", "wide"], 3, "window")
    _error(capsys, ["segment", str(one), "-o", out, *model, "--box", "1,2,3"], 5, "--box")
    _error(capsys, ["segment", str(one), "-o", out, *model, "--point", "5,5,1"], 5, "no prompts")
    prompted = ["--model", str(prompted_bright_model), "--no-progress"]
    _error(capsys, ["segment", str(one), "-o", out, *prompted, "--point", "5,5,6"], 5, "outside")
    _error(capsys, ["segment", str(one), "-o", out, *model, "--threshold", "1.5"], 3, "threshold")
    assert series.is_dir()
    assert _outputs(out_dir) == []


@pytest.mark.slow
def test_python_dash_m_segment_runs_as_a_real_process(tmp_path: Path, bright_model: Path) -> None:
    series = _series(tmp_path / "ct")
    out = tmp_path / "seg.dcm"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "medseg", "segment", str(series), "-o", str(out)]
    ok = subprocess.run(
        [*command, "--model", str(bright_model)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "slices" in ok.stdout and out.is_file()
    out.unlink()
    bad = subprocess.run(
        [*command, "--model", str(bright_model), "--window", "40/-1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 3
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "Traceback" not in bad.stderr and not out.exists()


def test_cli_mr_series_uses_percentile_window(
    tmp_path: Path, bright_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MR has no HU: 'auto' windows by percentiles, so a bright block in dark MR is found."""
    values = np.full(SHAPE, 100.0)
    values[1:5, 10:30, 12:36] = 900.0
    write_series(tmp_path / "mr", values, modality="MR", intercept=0.0, window=None)
    out = tmp_path / "seg.dcm"
    argv = ["segment", str(tmp_path / "mr"), "-o", str(out), "--model", str(bright_model)]
    assert main([*argv, "--no-progress"]) == 0
    expected_ml = 4 * 20 * 24 * 2.5 * 0.8 * 0.7 / 1000
    assert f"{expected_ml:.2f} ml" in capsys.readouterr().out
    # a fixed window centred far above the block sees nothing: an empty SEG
    assert main([*argv, "--window", "2000/100", "--no-progress", "--force"]) == 0
    assert " 0.00 ml" in capsys.readouterr().out


def test_cli_progress_bar_goes_to_stderr(
    tmp_path: Path, bright_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = _series(tmp_path / "ct")
    out = tmp_path / "seg.dcm"
    assert main(["segment", str(series), "-o", str(out), "--model", str(bright_model)]) == 0
    captured = capsys.readouterr()
    assert f"/{SHAPE[0]} [" in captured.err and "slice/s" in captured.err  # tqdm over slices
    assert "segment:" not in captured.out


def test_cli_mm_point_with_negative_coordinates(
    tmp_path: Path, prompted_bright_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two blocks; a positive LPS point (all coordinates negative) keeps only the first."""
    values = np.zeros(SHAPE)
    values[1:5, 10:30, 4:16] = 200.0
    values[1:5, 10:30, 30:44] = 200.0
    written = write_series(tmp_path / "ct", values, origin=(-120.0, -100.0, -40.0))
    # voxel (i=10, j=20, k=2) -> LPS with the factory's axial geometry
    x, y, z = written.positions[2] + np.array([10 * 0.7, 20 * 0.8, 0.0])
    assert x < 0 and y < 0 and z < 0
    out = tmp_path / "seg.dcm"
    argv = [
        "segment",
        str(tmp_path / "ct"),
        "-o",
        str(out),
        "--model",
        str(prompted_bright_model),
        f"--point-mm={x},{y},{z}",
        "--window=100/200",
        "--no-progress",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    first_ml = 4 * 20 * 12 * 2.5 * 0.8 * 0.7 / 1000
    assert f"{first_ml:.2f} ml" in capsys.readouterr().out
