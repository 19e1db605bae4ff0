"""`medseg segment` on sources with odd headers: one-line refusals, friendly type 2 values."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.cli import main
from tests.dicom.series_factory import write_series


def _bright_series(folder: Path, **values: str) -> Path:
    volume = np.zeros((4, 32, 40))
    volume[1:3, 8:20, 10:30] = 200.0
    written = write_series(folder, volume)
    for path in written.paths:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        if "SOPClassUID" in values:
            ds.file_meta.MediaStorageSOPClassUID = values["SOPClassUID"]
        ds.save_as(path)
    return folder


def _segment(folder: Path, out: Path, model: Path) -> int:
    return main(["segment", str(folder), "-o", str(out), "--model", str(model), "--no-progress"])


def test_unknown_sop_class_is_one_line_not_a_traceback(
    tmp_path: Path, bright_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _bright_series(tmp_path / "ct", SOPClassUID="1.2.3")
    out = tmp_path / "seg.dcm"
    code = _segment(folder, out, bright_model)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "SOPClassUID 1.2.3" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "models"]


def test_patient_sex_u_is_segmented_with_a_named_warning(
    tmp_path: Path, bright_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PatientSex "U" (common in real archives, not a DICOM value): the SEG is written with
    PatientSex empty and the one warning names the attribute."""
    folder = _bright_series(tmp_path / "ct", PatientSex="U")
    out = tmp_path / "seg.dcm"
    caplog.set_level(logging.WARNING)
    code = _segment(folder, out, bright_model)
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "PatientSex" in warnings[0], warnings
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.PatientSex == ""
    assert seg.PatientID == pydicom.dcmread(next(folder.iterdir())).PatientID
