"""Every CT/MR image pydicom ships as test data: a valid SEG, or one clear MedsegError.

These files are a small zoo of real-world oddities (big endian, implicit VR, odd padding,
compressed syntaxes, missing attributes, truncated data): the loader and the SEG writer
must never meet them with anything but a result or a one-line ``MedsegError``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

from medseg.dicom import load_series, scan_series
from medseg.errors import MedsegError
from medseg.modelcard import ModelCard
from medseg.seg import write_seg
from tests.seg.readback import (
    assert_frames_on_their_sources,
    dcmqi_mask_on_volume,
    highdicom_mask_on_volume,
)

CARD = ModelCard(name="testdata-sweep", version="0.1")
IMAGE_MODALITIES = {"CT", "MR"}
IMAGE_SOP_CLASSES = {
    pydicom.uid.CTImageStorage,
    pydicom.uid.MRImageStorage,
    pydicom.uid.EnhancedCTImageStorage,
    pydicom.uid.EnhancedMRImageStorage,
    pydicom.uid.LegacyConvertedEnhancedCTImageStorage,
    pydicom.uid.LegacyConvertedEnhancedMRImageStorage,
}
# Files that cannot carry a SEG, with the reason the error must give (checked, not skipped).
EXPECTED_FAILURES = {
    "693_J2KI.dcm": "no FrameOfReferenceUID",
    "MR_truncated.dcm": "could be decoded",
}
NO_PIXEL_MODULE = "CT without image pixel data"  # dicomdirtests/TINY_ALPHA: headers only


def _is_ct_or_mr(path: Path) -> bool:
    try:
        with warnings.catch_warnings():  # pydicom's remarks on odd files, at collection
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        modality = str(ds.get("Modality", "")).upper()
        sop_class = str(ds.get("SOPClassUID", ""))
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return False
    return modality in IMAGE_MODALITIES or sop_class in IMAGE_SOP_CLASSES


def _testdata_images() -> list[Path]:
    root = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    paths = [Path(p) for p in get_testdata_files("**/*") if Path(p).is_file()]
    return sorted((p for p in paths if _is_ct_or_mr(p)), key=lambda p: p.relative_to(root))


IMAGES = _testdata_images()
ROOT = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent


def _expected_failure(path: Path) -> str | None:
    if path.name in EXPECTED_FAILURES:
        return EXPECTED_FAILURES[path.name]
    if "TINY_ALPHA" in path.parts:
        return NO_PIXEL_MODULE
    return None


def test_the_sweep_covers_real_images() -> None:
    assert len(IMAGES) >= 20
    assert {"CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm"} <= {p.name for p in IMAGES}


@pytest.mark.parametrize("path", IMAGES, ids=[str(p.relative_to(ROOT)) for p in IMAGES])
def test_testdata_image_writes_a_seg_or_fails_clearly(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg.dcm"
    expected = _expected_failure(path)
    try:
        volume = load_series(path).volume
        rows, cols = volume.shape[1:]
        mask = np.zeros(volume.shape, dtype=bool)
        mask[:, rows // 4 : rows // 2 + 1, cols // 3 : cols // 2 + 1] = True
        write_seg(volume, mask, CARD, out)
    except MedsegError as exc:
        message = str(exc)
        assert message and "\n" not in message
        assert expected is not None, f"{path.name} should write a SEG, got: {message}"
        assert expected in message
        assert not out.exists()
        return
    assert expected is None, f"{path.name} was expected to fail with {expected!r}"
    back = highdicom_mask_on_volume(out, volume)
    np.testing.assert_array_equal(back.astype(bool), mask)
    assert_frames_on_their_sources(out, volume)
    seg = pydicom.dcmread(out)
    assert seg.StudyInstanceUID == volume.study_instance_uid
    assert seg.FrameOfReferenceUID == volume.datasets[0].FrameOfReferenceUID


DICOMDIR_ROOT = ROOT / "dicomdirtests"
SERIES = scan_series(DICOMDIR_ROOT)


def test_dicomdir_sweep_covers_several_series() -> None:
    assert sum(s.modality in IMAGE_MODALITIES for s in SERIES) >= 10


@pytest.mark.parametrize("uid", [s.uid for s in SERIES], ids=[s.uid[-12:] for s in SERIES])
def test_testdata_series_writes_a_seg_or_fails_clearly(uid: str, tmp_path: Path) -> None:
    """Whole series from pydicom's DICOMDIR test set (localizers, mixed stacks, CR, ...)."""
    out = tmp_path / "seg.dcm"
    try:
        volume = load_series(DICOMDIR_ROOT, series_uid=uid).volume
        mask = np.zeros(volume.shape, dtype=bool)
        mask[:, 2:9, 3:11] = True
        write_seg(volume, mask, CARD, out)
    except MedsegError as exc:
        assert str(exc) and "\n" not in str(exc)
        assert not out.exists()
        return
    np.testing.assert_array_equal(highdicom_mask_on_volume(out, volume).astype(bool), mask)
    assert_frames_on_their_sources(out, volume)


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_bigendian.dcm", "J2K_pixelrep_mismatch.dcm"]
)
def test_testdata_seg_reads_back_with_dcmqi(name: str, tmp_path: Path) -> None:
    """The strict reader too, on a few: big endian source, oblique 512x512 J2K source."""
    volume = load_series(pydicom.data.get_testdata_file(name)).volume
    mask = volume.voxels > np.percentile(volume.voxels, 80)
    path = tmp_path / "seg.dcm"
    write_seg(volume, mask, CARD, path)
    back = dcmqi_mask_on_volume(path, volume, tmp_path / "dcmqi")
    np.testing.assert_array_equal(back.astype(bool), mask)
