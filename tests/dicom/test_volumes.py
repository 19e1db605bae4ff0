"""A Philips B0-map style Enhanced MR: magnitude and phase frames at the same positions
(issue 23 item 17). It was refused outright ("duplicate slice position"); now the magnitude
image is the default, ``--volume`` picks another, and a series that does not say which
image is the magnitude is refused in one line naming the choices."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EnhancedMRImageStorage

from medseg.cli import main
from medseg.dicom import load_series
from medseg.errors import ConfigError, DicomInputError
from tests.dicom.series_factory import write_series

SHAPE = (4, 16, 16)


def _magnitude() -> np.ndarray:
    values = np.full(SHAPE, 100.0)
    values[1:3, 4:10, 4:12] = 900.0
    return values


def _phase() -> np.ndarray:
    return np.linspace(0.0, 4000.0, int(np.prod(SHAPE))).reshape(SHAPE)


def write_b0_map(
    folder: Path,
    kinds: tuple[tuple[str, str], ...] = (("M_FFE", "MAGNITUDE"), ("B0", "PHASE")),
) -> tuple[Path, list[np.ndarray]]:
    """One Enhanced MR instance holding one image per kind at every slice position, frames
    interleaved slice by slice as Philips writes them (M, P, M, P, ...). Each kind is
    (FrameType value 3, ComplexImageComponent) in a per-frame MR Image Frame Type item.

    Returns the file and the real values each kind must load to, in slice order.
    """
    images = [_magnitude(), _phase()][: len(kinds)]
    written = write_series(folder / "tmp", images[0], modality="MR", multiframe=True)
    ds = pydicom.dcmread(written.paths[0])
    base_items = list(ds.PerFrameFunctionalGroupsSequence)
    stored = [np.rint(image - (-1024.0)).astype(np.uint16) for image in images]
    per_frame, frames = [], []
    for k, item in enumerate(base_items):  # written in ascending slice order
        for (flavour, component), values in zip(kinds, stored, strict=True):
            frame = copy.deepcopy(item)
            frame_type = Dataset()
            frame_type.FrameType = ["ORIGINAL", "PRIMARY", flavour, "NONE"]
            frame_type.ComplexImageComponent = component
            frame_type.PixelPresentation = "MONOCHROME"
            frame_type.VolumetricProperties = "VOLUME"
            frame_type.VolumeBasedCalculationTechnique = "NONE"
            frame_type.AcquisitionContrast = "UNKNOWN"
            frame.MRImageFrameTypeSequence = DicomSequence([frame_type])
            per_frame.append(frame)
            frames.append(values[k])
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "MIXED", "NONE"]
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.NumberOfFrames = len(frames)
    ds.PixelRepresentation = 0
    ds.PixelData = np.stack(frames).astype(np.uint16).tobytes()
    path = folder / "b0map.dcm"
    ds.save_as(path, enforce_file_format=True)
    for leftover in written.paths:
        leftover.unlink()
    reals = [s.astype(np.float32) - 1024.0 for s in stored]
    return path, reals


def test_the_magnitude_image_is_the_default(tmp_path: Path) -> None:
    path, (magnitude, _) = write_b0_map(tmp_path)
    volume = load_series(path).volume
    np.testing.assert_array_equal(volume.voxels, magnitude)
    assert [f.frame_number for f in volume.frames] == [1, 3, 5, 7]  # the SEG references these


@pytest.mark.parametrize("choice", ["PHASE", "phase", "P", "B0", "2", "B0/PHASE"])
def test_volume_picks_the_phase_image_by_type_or_number(tmp_path: Path, choice: str) -> None:
    path, (_, phase) = write_b0_map(tmp_path)
    volume = load_series(path, volume=choice).volume
    np.testing.assert_array_equal(volume.voxels, phase)
    assert [f.frame_number for f in volume.frames] == [2, 4, 6, 8]


def test_a_series_that_does_not_say_which_is_the_magnitude_is_refused(tmp_path: Path) -> None:
    path, _ = write_b0_map(tmp_path, kinds=(("R_FFE", "REAL"), ("I_FFE", "IMAGINARY")))
    with pytest.raises(DicomInputError) as refused:
        load_series(path)
    message = str(refused.value)
    assert "\n" not in message and "--volume" in message
    assert "1 R_FFE/REAL (4 frames)" in message and "2 I_FFE/IMAGINARY (4 frames)" in message
    assert load_series(path, volume="imaginary").volume.shape == SHAPE


@pytest.mark.parametrize("choice", ["3", "0", "T2STAR", "FFE"])
def test_a_volume_the_series_does_not_have_is_refused_naming_the_choices(
    tmp_path: Path, choice: str
) -> None:
    path, _ = write_b0_map(tmp_path)
    with pytest.raises(ConfigError, match=r"1 M_FFE/MAGNITUDE \(4 frames\), 2 B0/PHASE"):
        load_series(path, volume=choice)


def test_segment_command_line(tmp_path: Path, bright_model: Path, capsys) -> None:
    """``medseg segment --volume``; without it an ambiguous series is one line, exit 2."""
    path, _ = write_b0_map(tmp_path / "b0")
    out = tmp_path / "phase.seg.dcm"
    options = ["--model", str(bright_model), "--no-progress", "--window=0/4000"]
    assert main(["segment", str(path), "-o", str(out), *options, "--volume", "PHASE"]) == 0
    seg = pydicom.dcmread(out)
    frames = {
        int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert frames <= {2, 4, 6, 8}
    capsys.readouterr()
    ambiguous, _ = write_b0_map(tmp_path / "ri", kinds=(("R", "REAL"), ("I", "IMAGINARY")))
    assert main(["segment", str(ambiguous), "-o", str(tmp_path / "x.dcm"), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "choose one with --volume" in err, err
    assert not (tmp_path / "x.dcm").exists()
