"""``medseg segment --prompts-from FILE``: marks as prompts, beside --box/--point; every
unusable file or mark is one line with its documented exit code and leaves no output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.cli import main
from tests.dicom.marks.writers import (
    Annotation,
    DisplayedArea,
    Graphic,
    GspsWriter,
    group,
    tid1500writer_sr,
    volume_3d,
    write_report,
)
from tests.dicom.series_factory import write_series

SHAPE = (6, 40, 48)
BOX = "12,10,23,29"  # columns 12-23, rows 10-29: its image coordinates run from .5 to .5
RECTANGLE = [(12.5, 10.5), (23.5, 10.5), (23.5, 29.5), (12.5, 29.5), (12.5, 10.5)]


def _series(folder: Path, seed: int = 0) -> list[Path]:
    values = np.zeros(SHAPE)
    values[1:5, 10:30, 12:36] = 200.0  # a bright block
    return sorted(write_series(folder, values, seed=seed).paths)


def _segment(capsys, series: Path, out: Path, model: Path, *extra: str) -> tuple[int, str, str]:
    argv = ["segment", str(series), "-o", str(out), "--model", str(model), "--no-progress"]
    code = main([*argv, "--window", "100/200", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _mask(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


def test_gsps_rectangle_segments_like_the_same_box_given_on_the_command_line(
    tmp_path: Path, prompted_bright_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _series(tmp_path / "ct")
    gsps = GspsWriter(paths, [Annotation([Graphic("POLYLINE", RECTANGLE)], image=2)])
    marks = gsps.write(tmp_path / "ct" / "marks.pr.dcm")  # the loader passes over it
    from_marks, by_hand = tmp_path / "marks.seg.dcm", tmp_path / "hand.seg.dcm"
    code, out, err = _segment(
        capsys, tmp_path / "ct", from_marks, prompted_bright_model,
        "--prompts-from", str(marks), "--box", f"{BOX}@3",
    )  # fmt: skip
    assert code == 0, err
    # each box finds the block on its slice and carries it through: the whole block
    ml = 4 * 20 * 24 * 2.5 * 0.8 * 0.7 / 1000
    assert f"{ml:.2f} ml" in out
    code, _, err = _segment(
        capsys,
        tmp_path / "ct",
        by_hand,
        prompted_bright_model,
        "--box",
        f"{BOX}@2",
        "--box",
        f"{BOX}@3",
    )
    assert code == 0, err
    np.testing.assert_array_equal(_mask(from_marks), _mask(by_hand))


def _error(capsys, argv: list[str], code: int, words: str) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("medseg segment: error:") and words in err, err
    assert "Traceback" not in err and "Test^Synthetic" not in err and "SYN0001" not in err


def test_unusable_marks_are_one_line_errors_with_exit_codes_and_no_output(
    tmp_path: Path,
    prompted_bright_model: Path,
    shared_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = _series(tmp_path / "ct")
    other = _series(tmp_path / "other", seed=5)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["segment", str(tmp_path / "ct"), "-o", str(out_dir / "seg.dcm")]
    argv += ["--model", str(prompted_bright_model), "--no-progress", "--prompts-from"]

    _error(capsys, [*argv, str(paths[0])], 2, "CT Image Storage is not an object medseg reads")
    _error(capsys, [*argv, str(tmp_path / "none.dcm")], 2, "mark file not found")

    elsewhere = GspsWriter(other, [Annotation([Graphic("POINT", [(20.5, 20.5)])], image=1)])
    _error(
        capsys,
        [*argv, str(elsewhere.write(tmp_path / "elsewhere.dcm"))],
        5,
        "a point (GSPS POINT) is drawn on an image that is not in this series",
    )

    frame = str(pydicom.dcmread(paths[0]).FrameOfReferenceUID)
    axes = [(-115, -95, 44), (-105, -95, 44), (-110, -98, 44), (-110, -92, 44)]
    axes += [(-110, -95, 42), (-110, -95, 46)]
    ellipsoid = write_report(
        tmp_path / "ellipsoid.dcm",
        paths,
        [group("a", measurements=[volume_3d("ELLIPSOID", axes, frame)])],
    )
    _error(capsys, [*argv, str(ellipsoid)], 2, "graphic type ELLIPSOID is not supported")

    no_area = GspsWriter(
        paths,
        [Annotation([Graphic("POINT", [(0.5, 0.5)], "DISPLAY")], image=3)],
        areas=[DisplayedArea((1, 1), (48, 40), images=[0])],
    )
    _error(
        capsys,
        [*argv, str(no_area.write(tmp_path / "no-area.dcm"))],
        2,
        "DISPLAY units but no displayed area is given for its image",
    )

    dcmqi = tid1500writer_sr(tmp_path / "dcmqi", shared_dir)
    _error(capsys, [*argv, str(dcmqi)], 2, "refer to a segmentation")
    assert list(out_dir.iterdir()) == []
