"""A series the SEG writer would refuse is refused before inference, not after it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medseg.cli import main
from medseg.errors import DicomInputError, ModelError, OutputError
from medseg.pipeline import LoadedModel, SegmentOptions, load_model, segment
from tests.dicom.series_factory import write_series
from tests.tiny_models import make_bright_model


class CountingEngine:
    """A real engine that counts the batches it is asked to run."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.inner.run(batch)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def counted(bright_model: Path):
    opened = load_model(SegmentOptions(model=bright_model))
    engine = CountingEngine(opened.engine)
    with LoadedModel(engine, opened.card, opened.path) as model:
        yield model, engine


def _series(folder: Path) -> Path:
    values = np.zeros((4, 32, 40))
    values[1:3, 8:20, 10:30] = 200.0
    write_series(folder, values)
    return folder


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_no_frame_of_reference_fails_before_inference(tmp_path: Path, counted) -> None:
    model, engine = counted
    source = Path(get_testdata_file("693_J2KI.dcm"))
    assert "FrameOfReferenceUID" not in pydicom.dcmread(source, stop_before_pixels=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(DicomInputError, match="FrameOfReferenceUID"):
        segment([source], out_dir / "seg.dcm", SegmentOptions(), model=model)
    assert engine.calls == 0
    assert _files(out_dir) == []


@pytest.mark.parametrize(
    ("damage", "expected"),
    [("no-study-uid", "no StudyInstanceUID"), ("two-studies", "cannot build a DICOM-SEG")],
)
def test_unwritable_source_fails_before_inference(
    tmp_path: Path, counted, damage: str, expected: str
) -> None:
    """A series that loads but cannot carry a SEG is refused before inference: a missing
    type 1 UID (medseg's own check) or, reached only through highdicom's own verdict on the
    source headers, instances of one series that claim different studies. (An invalid type 2
    value such as PatientSex "U" is no reason: the SEG gets it empty.)"""
    model, engine = counted
    folder = _series(tmp_path / "ct")
    for index, path in enumerate(_files(folder)):
        ds = pydicom.dcmread(path)
        if damage == "no-study-uid":
            del ds.StudyInstanceUID
        elif index == 1:
            ds.StudyInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(DicomInputError, match=expected):
        segment([folder], out_dir / "seg.dcm", SegmentOptions(), model=model)
    assert engine.calls == 0
    assert _files(out_dir) == []


def test_unwritable_outputs_fail_before_inference(tmp_path: Path, counted) -> None:
    model, engine = counted
    folder = _series(tmp_path / "ct")
    with pytest.raises(OutputError, match="does not exist"):
        segment([folder], tmp_path / "nope" / "seg.dcm", SegmentOptions(), model=model)
    with pytest.raises(OutputError, match="is a folder"):
        segment([folder], folder, SegmentOptions(), model=model)
    preview = SegmentOptions(preview=tmp_path / "nope" / "p.png")
    with pytest.raises(OutputError, match="does not exist"):
        segment([folder], tmp_path / "seg.dcm", preview, model=model)
    assert engine.calls == 0
    assert not (tmp_path / "seg.dcm").exists()
    # the same series and model do segment once the outputs are writable
    result = segment([folder], tmp_path / "seg.dcm", SegmentOptions(), model=model)
    assert engine.calls > 0 and result.volume_ml > 0
    assert pydicom.dcmread(result.output).Modality == "SEG"


def test_fractional_preflight_accepts_a_good_series(tmp_path: Path, counted) -> None:
    model, engine = counted
    folder = _series(tmp_path / "ct")
    options = SegmentOptions(seg_type="FRACTIONAL")
    result = segment([folder], tmp_path / "seg.dcm", options, model=model)
    assert engine.calls > 0
    assert pydicom.dcmread(result.output).SegmentationType == "FRACTIONAL"


def test_cli_reports_missing_frame_of_reference_in_one_line(
    tmp_path: Path, bright_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "seg.dcm"
    argv = ["segment", get_testdata_file("693_J2KI.dcm"), "-o", str(out)]
    code = main([*argv, "--model", str(bright_model), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "FrameOfReferenceUID" in err, err
    assert not out.exists()


def test_multi_segment_card_is_refused_when_the_model_opens(tmp_path: Path) -> None:
    """The pipeline runs one-output models; a two-segment card would fail only at writing."""
    two = [{"label": "Liver"}, {"label": "Lesion"}]
    path = tmp_path / "two.onnx"
    make_bright_model(path, size=(32, 32), card_overrides={"segments": two})
    with pytest.raises(ModelError, match="2 segments"):
        load_model(SegmentOptions(model=path))


def test_unwritable_series_is_refused_before_the_model_is_opened(
    tmp_path: Path, bright_model: Path
) -> None:
    """A model file ONNX Runtime cannot open (valid card beside it) is never reached."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    broken.with_suffix(".json").write_bytes(bright_model.with_suffix(".json").read_bytes())
    source = get_testdata_file("693_J2KI.dcm")
    with pytest.raises(DicomInputError, match="FrameOfReferenceUID"):
        segment([source], tmp_path / "seg.dcm", SegmentOptions(model=broken))
    with pytest.raises(ModelError):  # the same model on a good series: opening it fails
        segment([_series(tmp_path / "ct")], tmp_path / "seg.dcm", SegmentOptions(model=broken))
    assert not (tmp_path / "seg.dcm").exists()
