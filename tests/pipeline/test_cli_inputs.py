"""``medseg segment`` on bad or mixed input: exit code, one-line reason, no output file;
which series ``--series`` picks; and which skipped files the user is told about."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.cli import main
from medseg.cli.segment import skipped_report
from medseg.dicom.files import SkippedFile
from tests.dicom.series_factory import edit_file, write_series

SHAPE = (4, 16, 16)
VOXEL_ML = 2.5 * 0.8 * 0.7 / 1000  # series_factory's default spacing


def _values(block: tuple[slice, slice, slice] = np.s_[1:3, 4:10, 4:14]) -> np.ndarray:
    values = np.zeros(SHAPE)
    values[block] = 200.0
    return values


def _argv(inputs: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["segment", str(inputs), "-o", str(out), "--model", str(model), "--no-progress", *extra]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _fails(capsys, argv: list[str], out_dir: Path, code: int, words: str) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("medseg segment: error:") and words in err, err
    assert "Traceback" not in err
    assert _files(out_dir) == []


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_only_a_segmentation_object_is_no_image_series(
    tmp_path: Path, out_dir: Path, bright_model: Path, shared_dir: Path, capsys
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared_dir / "data" / "dcmqi" / "liver.dcm", folder / "liver-seg.dcm")
    argv = _argv(folder, out_dir / "seg.dcm", bright_model)
    _fails(capsys, argv, out_dir, 2, "no CT or MR image series found (found only: SEG)")


def test_mixed_orientations(tmp_path: Path, out_dir: Path, bright_model: Path, capsys) -> None:
    written = write_series(tmp_path / "ct", _values())
    edit_file(written.paths[1], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    argv = _argv(tmp_path / "ct", out_dir / "seg.dcm", bright_model)
    _fails(capsys, argv, out_dir, 2, "mixed orientations")


def test_duplicate_positions(tmp_path: Path, out_dir: Path, bright_model: Path, capsys) -> None:
    written = write_series(tmp_path / "ct", _values())
    first = pydicom.dcmread(written.paths[0])
    edit_file(written.paths[2], ImagePositionPatient=list(first.ImagePositionPatient))
    argv = _argv(tmp_path / "ct", out_dir / "seg.dcm", bright_model)
    _fails(capsys, argv, out_dir, 2, "duplicate slice position")


def test_missing_pixel_data(tmp_path: Path, out_dir: Path, bright_model: Path, capsys) -> None:
    written = write_series(tmp_path / "ct", _values())
    edit_file(written.paths[1], PixelData=None)
    argv = _argv(tmp_path / "ct", out_dir / "seg.dcm", bright_model)
    _fails(capsys, argv, out_dir, 2, "no pixel data")


def test_series_option_picks_the_named_series(
    tmp_path: Path, out_dir: Path, bright_model: Path, capsys
) -> None:
    """Two series in one folder with blocks of different size: each --series UID gives its
    own volume in ml and a SEG that references that series' instances only."""
    small = write_series(tmp_path / "in" / "a", _values(np.s_[1:2, 4:8, 4:9]), seed=1)
    large = write_series(tmp_path / "in" / "b", _values(np.s_[0:4, 2:12, 3:15]), seed=2)
    _fails(capsys, _argv(tmp_path / "in", out_dir / "x.dcm", bright_model), out_dir, 2, "--series")
    for written, voxels in ((small, 1 * 4 * 5), (large, 4 * 10 * 12)):
        out = out_dir / f"{written.series_uid}.dcm"
        argv = _argv(tmp_path / "in", out, bright_model, "--series", written.series_uid)
        assert main([*argv, "--window", "100/200"]) == 0
        assert f"{SHAPE[0]} slices, {voxels * VOXEL_ML:.2f} ml" in capsys.readouterr().out
        seg = pydicom.dcmread(out)
        (referenced,) = seg.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == written.series_uid
        sources = {
            item.ReferencedSOPInstanceUID
            for frame in seg.PerFrameFunctionalGroupsSequence
            for item in frame.DerivationImageSequence[0].SourceImageSequence
        }
        assert sources and sources <= set(written.sop_uids)


def _series_with_junk(root: Path) -> dict[str, str]:
    """A CT series plus two non-DICOM files, a scout sharing its series UID and one last
    slice whose pixel data is cut short; returns file name -> expected reason start."""
    written = write_series(root / "ct", np.concatenate([_values(), np.zeros((1, 16, 16))]))
    (root / "ct" / "README.txt").write_text("notes\n")
    (root / "ct" / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    scout = write_series(
        root / "scout",
        np.zeros((1, 8, 8)),
        series_uid=written.series_uid,
        study_uid=written.study_uid,
        row_dir=(0.0, 1.0, 0.0),
        col_dir=(0.0, 0.0, -1.0),
    )
    scout_path = scout.paths[0].rename(root / "scout" / "SCOUT1")
    edit_file(scout_path, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    ds = pydicom.dcmread(written.paths[-1])  # the last slice along the normal
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(written.paths[-1])
    return {
        "README.txt": "not a DICOM file",
        "thumb.png": "not a DICOM file",
        "SCOUT1": "localizer (scout) image",
        written.paths[-1].name: "cannot decode pixel data: ",
    }


def _report(err: str) -> list[str]:
    return [line for line in err.splitlines() if "skipped" in line or line.startswith("  ...")]


def test_every_skipped_file_is_reported_with_its_reason(
    tmp_path: Path, bright_model: Path, capsys
) -> None:
    expected = _series_with_junk(tmp_path / "in")
    out = tmp_path / "seg.dcm"
    assert main(_argv(tmp_path / "in", out, bright_model)) == 0
    captured = capsys.readouterr()
    assert out.is_file() and "4 slices" in captured.out  # the cut slice was left out
    head, *listed = _report(captured.err)
    assert head == (
        "medseg segment: skipped 4 file(s): 2 not a DICOM file; "
        "1 localizer (scout) image, not part of the volume; 1 cannot decode pixel data"
    )
    assert len(listed) == 4
    for name, reason in expected.items():
        (line,) = [line for line in listed if Path(line.split(": ", 1)[0].split()[-1]).name == name]
        assert line.split(": ", 1)[1].startswith(reason), line


def test_many_skipped_files_list_the_first_few_unless_verbose(
    tmp_path: Path, bright_model: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    _series_with_junk(tmp_path / "in")
    monkeypatch.setattr("medseg.cli.segment.LIST_SKIPPED", 2)
    argv = _argv(tmp_path / "in", tmp_path / "seg.dcm", bright_model)
    assert main(argv) == 0
    report = _report(capsys.readouterr().err)
    assert len(report) == 1 + 2 + 1
    assert report[-1] == "  ... and 2 more (run with -v to list all)"
    assert main(["-v", *argv, "--force"]) == 0  # the same output again
    report = _report(capsys.readouterr().err)
    assert len([line for line in report if line.startswith("  skipped ")]) == 4
    assert not any(line.startswith("  ...") for line in report)


def test_skipped_report_counts_reasons_without_their_details() -> None:
    skipped = [
        SkippedFile(Path("a"), "unreadable DICOM header: bad tag"),
        SkippedFile(Path("b"), "unreadable DICOM header: truncated"),
        SkippedFile(Path("c"), "not a DICOM file"),
    ]
    lines = skipped_report(skipped, list_all=False)
    assert (
        lines[0]
        == "medseg segment: skipped 3 file(s): 2 unreadable DICOM header; 1 not a DICOM file"
    )
    assert lines[1:] == [
        "  skipped a: unreadable DICOM header: bad tag",
        "  skipped b: unreadable DICOM header: truncated",
        "  skipped c: not a DICOM file",
    ]
    assert skipped_report([], list_all=True) == []


@pytest.mark.parametrize(
    "option",
    [
        ["--threshold", "nan"],
        ["--threshold", "inf"],
        ["--min-volume", "nan"],
        ["--min-volume", "inf"],
        ["--min-volume=-1"],
        ["--threads", "0"],
        ["--threads=-2"],
        ["--batch-size", "0"],
        ["--series-number", "0"],
        ["--flips", "diagonal"],
        ["--flips", "horizontal,horizontal"],
        ["--refine-radius", "nan"],
        ["--refine-radius=-1"],
    ],
)
def test_numeric_options_refuse_nan_inf_and_negative_values(
    tmp_path: Path, out_dir: Path, bright_model: Path, capsys, option: list[str]
) -> None:
    """Refused before anything is loaded; prompts present so each size would be used."""
    prompts = ["--box", "2,2,10,10@1", "--point", "5,5,1"]
    argv = _argv(tmp_path / "not-needed", out_dir / "seg.dcm", bright_model, *prompts, *option)
    _fails(capsys, argv, out_dir, 3, option[0].split("=")[0].lstrip("-").split("-")[0])


def test_prompt_on_the_last_half_voxel_works_from_the_command_line(
    tmp_path: Path, prompted_bright_model: Path, capsys
) -> None:
    write_series(tmp_path / "ct", _values(np.s_[1:3, 4:10, 6:16]))
    for prompt in (["--point", "15.5,5,1"], ["--box", "2,2,15.5,15.5@0-3.5"]):
        out = tmp_path / "seg.dcm"
        argv = _argv(tmp_path / "ct", out, prompted_bright_model, "--window", "100/200", *prompt)
        assert main(argv) == 0, capsys.readouterr().err
        assert f"{2 * 6 * 10 * VOXEL_ML:.2f} ml" in capsys.readouterr().out
        out.unlink()


def test_overflowing_prompt_and_window_numbers_are_refused(
    tmp_path: Path, out_dir: Path, bright_model: Path, capsys
) -> None:
    """400 digits parse as inf: a one-line prompt or window error, not a crash."""
    write_series(tmp_path / "ct", _values())
    huge = "1" + "0" * 400
    out = out_dir / "seg.dcm"
    _fails(
        capsys,
        _argv(tmp_path / "ct", out, bright_model, "--point", f"{huge},5,1"),
        out_dir,
        5,
        "point has a non-finite coordinate: inf,5,1",
    )
    _fails(
        capsys,
        _argv(tmp_path / "ct", out, bright_model, "--box", f"1,1,{huge},5@1"),
        out_dir,
        5,
        "non-finite",
    )
    _fails(
        capsys,
        _argv(tmp_path / "ct", out, bright_model, f"--window={huge}/40"),
        out_dir,
        3,
        "window",
    )
    _fails(
        capsys,
        _argv(tmp_path / "ct", out, bright_model, f"--window=p0-{huge}"),
        out_dir,
        3,
        "percentiles",
    )


def _one_line_error(capsys, argv: list[str], code: int, words: str) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("medseg segment: error:") and words in err, err


@pytest.mark.parametrize("force", [(), ("--force",)])
def test_output_over_an_input_file_is_refused_even_with_force(
    tmp_path: Path, bright_model: Path, capsys, force: tuple[str, ...]
) -> None:
    written = write_series(tmp_path / "ct", _values())
    target = written.paths[0]
    before = target.read_bytes()
    for inputs in (tmp_path / "ct", target):  # named itself, or inside an input folder
        argv = _argv(inputs, target, bright_model, *force)
        _one_line_error(capsys, argv, 6, "will not write over the input file")
        assert target.read_bytes() == before
    preview = _argv(tmp_path / "ct", tmp_path / "seg.dcm", bright_model, "--preview", str(target))
    _one_line_error(capsys, [*preview, *force], 6, "input file")
    assert target.read_bytes() == before and not (tmp_path / "seg.dcm").exists()


def test_existing_output_is_overwritten_only_with_force(
    tmp_path: Path, out_dir: Path, bright_model: Path, capsys
) -> None:
    write_series(tmp_path / "ct", _values())
    out = out_dir / "seg.dcm"
    out.write_bytes(b"an earlier result")
    _one_line_error(capsys, _argv(tmp_path / "ct", out, bright_model), 6, "pass --force")
    assert out.read_bytes() == b"an earlier result"
    assert main(_argv(tmp_path / "ct", out, bright_model, "--force")) == 0
    assert pydicom.dcmread(out).Modality == "SEG"
