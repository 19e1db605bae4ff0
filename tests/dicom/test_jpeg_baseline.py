"""JPEG baseline (1.2.840.10008.1.2.4.50): lossy 8-bit series encoded with Pillow.

JPEG is lossy and conforming decoders may round the IDCT differently, so the loader is held
to two standards: it equals Pillow's decode of the same streams exactly (the loader prefers
Pillow for this syntax), and it stays within JPEG's loss of the values before encoding.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEGBaseline8Bit

from medseg.dicom import load_series
from medseg.errors import DicomInputError
from tests.dicom.series_factory import sphere, write_jpeg_baseline_series, write_series

SHAPE = (4, 40, 56)  # non-square
SPACING = (2.5, 0.8, 0.7)


def _phantom() -> np.ndarray:
    """Smooth ramps, a bright ball and mild noise: content JPEG must approximate, not copy."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    ball = sphere(SHAPE, SPACING, (4.0, 16.0, 19.0), 9.0)
    noise = np.random.default_rng(3).normal(0.0, 3.0, SHAPE)
    values = 40 + 2.0 * i + 1.5 * j + 5.0 * k + 90.0 * ball + noise
    return np.rint(values).clip(0, 255)


CASES = {
    "shuffled_oblique": dict(order="shuffle", row_dir=(0.8, 0.6, 0.0), col_dir=(0, 0, -1)),
    "descending": dict(order="descending"),
    "enhanced_ct_shuffled_frames": dict(multiframe=True, order="shuffle"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_jpeg_baseline_series_decodes_within_lossy_tolerance(tmp_path: Path, case: str) -> None:
    original = _phantom()
    slope, intercept = 2.0, -200.0
    written = write_jpeg_baseline_series(
        tmp_path, original, quality=90, slope=slope, intercept=intercept, seed=5, **CASES[case]
    )
    for path in written.paths:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert (ds.BitsAllocated, ds.PhotometricInterpretation) == (8, "MONOCHROME2")
        streams = list(generate_frames(ds.PixelData, number_of_frames=ds.get("NumberOfFrames", 1)))
        assert all(b"\xff\xc0" in s and b"\xff\xc2" not in s for s in streams)  # SOF0 baseline

    loaded = load_series(tmp_path)
    volume = loaded.volume
    assert loaded.skipped == ()
    np.testing.assert_array_equal(volume.voxels, written.voxels)  # Pillow's decode, exactly
    np.testing.assert_allclose(volume.positions, written.positions, atol=1e-6)
    np.testing.assert_allclose(volume.direction, written.direction, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, written.spacing, rtol=1e-6)
    assert [f.sop_instance_uid for f in volume.frames] == list(written.sop_uids)

    grey = (volume.voxels - intercept) / slope  # back to 8-bit grey levels
    error = grey - original
    assert np.any(error != 0), "JPEG at quality 90 should not be lossless on noisy content"
    psnr = 10 * np.log10(255.0**2 / np.mean(error**2))
    assert psnr > 36.0  # measured 39.3 dB with Pillow 13 / libjpeg-turbo
    assert np.abs(error).max() <= 20  # measured 15, at the ball's 180-HU edge
    assert abs(error.mean()) < 0.5  # no systematic shift (e.g. a wrong level shift or rescale)


def test_colour_ybr_full_422_jpeg_is_refused_clearly(tmp_path: Path) -> None:
    """Colour (3-sample YBR_FULL_422) JPEG is not a CT/MR grey image: a one-line refusal."""
    written = write_series(tmp_path, np.zeros((2, 16, 16)) + 1000.0)
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[4:12, 4:12, 2] = 150
    for path in written.paths:
        ds = pydicom.dcmread(path)
        buffer = io.BytesIO()
        Image.fromarray(rgb, mode="RGB").save(buffer, format="JPEG", quality=90, subsampling=1)
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(path, enforce_file_format=True)
        assert ds.pixel_array.shape == (16, 16, 3)  # the file itself is valid and decodable
    with pytest.raises(DicomInputError, match=r"only greyscale.*\(YBR_FULL_422, 3 samples\)"):
        load_series(tmp_path)
