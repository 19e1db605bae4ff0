"""Phantom generator: tissue HU, lesion sizes and contrast, determinism, files on disk."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medseg.cli import main
from medseg.dicom import load_series
from medseg.errors import ConfigError
from medseg.phantom import (
    BONE,
    FAT,
    KIDNEY,
    LIVER,
    LUNG,
    MUSCLE,
    SPLEEN,
    TISSUE_NAMES,
    PhantomConfig,
    generate_phantom,
    write_phantom,
)
from tests.seg.readback import dcmqi_mask_on_volume, highdicom_mask_on_volume

SMALL = dict(size=(128, 128), slices=16, pixel_spacing=2.8, slice_spacing=5.0)
# (low, high) for the median HU of each tissue, without or with contrast enhancement
HU_RANGES = {
    FAT: (-120, -80),
    MUSCLE: (35, 75),
    LIVER: (50, 135),
    SPLEEN: (40, 135),
    KIDNEY: (25, 215),
    BONE: (600, 1100),
    LUNG: (-900, -800),
}


@pytest.fixture(scope="module")
def phantoms() -> list:
    return [generate_phantom(seed, slices=24, min_lesions=2) for seed in (1, 2, 3)]


def test_tissue_hounsfield_units_are_realistic(phantoms: list) -> None:
    seen = set()
    for phantom in phantoms:
        assert phantom.hu.dtype == np.int16
        assert phantom.hu.min() >= -1024 and phantom.hu.max() <= 3071
        outside = phantom.tissues == 0
        assert abs(float(np.median(phantom.hu[outside])) + 1000) < 10
        for tissue, (low, high) in HU_RANGES.items():
            voxels = phantom.hu[(phantom.tissues == tissue) & ~phantom.lesions]
            if voxels.size < 50:
                continue
            seen.add(tissue)
            median = float(np.median(voxels))
            assert low <= median <= high, f"{TISSUE_NAMES[tissue]} median {median} HU"
    assert {FAT, MUSCLE, LIVER, SPLEEN, KIDNEY, BONE} <= seen


def test_lesions_are_5_to_40_mm_and_differ_from_their_organ(phantoms: list) -> None:
    total = 0
    for phantom in phantoms:
        voxel_mm3 = float(np.prod(phantom.spacing))
        assert 2 <= len(phantom.lesion_list) <= 4
        for number, lesion in enumerate(phantom.lesion_list, start=1):
            total += 1
            assert 5.0 <= lesion.diameter_mm <= 40.0
            mask = phantom.lesion_ids == number
            assert mask.any(), f"lesion {number} of seed {phantom.seed} is not on any slice"
            equivalent = (6 * mask.sum() * voxel_mm3 / np.pi) ** (1 / 3)
            assert 4.0 <= equivalent <= 44.0, f"equivalent diameter {equivalent:.1f} mm"
            organ = TISSUE_NAMES.index(lesion.organ)
            ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
            host = ring & (phantom.tissues == organ) & ~phantom.lesions
            assert host.sum() > 10
            contrast = float(phantom.hu[mask].mean() - phantom.hu[host].mean())
            assert np.sign(contrast) == np.sign(lesion.delta_hu)
            assert abs(contrast) > 12.0, f"lesion contrast only {contrast:.1f} HU"
            # the lesion's centre lies in the lesion (LPS == grid mm on this axis-aligned grid)
            ijk = (np.asarray(lesion.center_lps) - np.asarray(phantom.origin)) / np.array(
                phantom.spacing[::-1]
            )
            k, j, i = (round(float(v)) for v in ijk[::-1])
            assert ndimage.binary_dilation(mask, iterations=2)[k, j, i]
    assert total >= 6
    assert (phantoms[0].lesions == (phantoms[0].lesion_ids > 0)).all()


def test_same_seed_same_phantom_other_seed_differs() -> None:
    a = generate_phantom(11, **SMALL)
    b = generate_phantom(11, PhantomConfig(**SMALL))
    c = generate_phantom(12, **SMALL)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.lesion_ids, b.lesion_ids)
    assert a.lesion_list == b.lesion_list
    assert not np.array_equal(a.hu, c.hu)


def test_chunked_generation_matches_across_sizes() -> None:
    """Anatomy is defined in millimetres: the same seed at double resolution overlaps."""
    coarse = generate_phantom(4, size=(64, 64), slices=8, pixel_spacing=5.6, slice_spacing=10.0)
    fine = generate_phantom(4, size=(128, 128), slices=8, pixel_spacing=2.8, slice_spacing=10.0)
    liver_coarse = coarse.tissues == LIVER
    liver_fine = fine.tissues[:, ::2, ::2] == LIVER
    dice = 2 * (liver_coarse & liver_fine).sum() / (liver_coarse.sum() + liver_fine.sum())
    assert dice > 0.9


def test_bad_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="512x512x300"):
        PhantomConfig(size=(512, 512), slices=301)
    with pytest.raises(ConfigError, match="at least 16x16"):
        PhantomConfig(size=(8, 64))
    with pytest.raises(ConfigError, match="lesion count"):
        PhantomConfig(min_lesions=3, max_lesions=2)
    with pytest.raises(ConfigError, match="organ weights"):
        PhantomConfig(lesion_organ_weights=(0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="organ weights"):
        PhantomConfig(lesion_organ_weights=(1.0, -0.5, 0.5))


def test_lesion_organ_weights_choose_the_organ() -> None:
    """Kidney-only odds put every lesion in a kidney; the default keeps the liver first."""
    kidney_only = [
        lesion.organ
        for seed in range(6)
        for lesion in generate_phantom(
            seed, **SMALL, min_lesions=2, lesion_organ_weights=(0, 0, 1)
        ).lesion_list
    ]
    assert kidney_only and set(kidney_only) == {"kidney"}
    default = [
        lesion.organ
        for seed in range(6)
        for lesion in generate_phantom(seed, **SMALL, min_lesions=2).lesion_list
    ]
    assert default.count("liver") > len(default) / 2


def test_cli_lesion_organs_reach_the_phantom(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["phantom", str(out), "--size", "64x64", "--slices", "8", "--spacing", "5.5,6"]
    assert main([*args, "--lesions", "2", "--lesion-organs", "0,1,0"]) == 0
    assert "spleen" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main([*args, "--overwrite", "--lesion-organs", "1,2"])
    assert exited.value.code == 3  # argparse usage errors: bad option, not bad DICOM
    assert "LIVER,SPLEEN,KIDNEY" in capsys.readouterr().err


def test_cli_lesion_size_reaches_the_phantom(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["phantom", str(out), "--spacing", "2,2.5", "--lesions", "4", "--count", "2"]
    assert main([*args, "--lesion-size", "5-8"]) == 0
    sizes = [int(mm) for mm in re.findall(r"(\d+) mm", capsys.readouterr().out)]
    assert len(sizes) == 8 and all(5 <= mm <= 8 for mm in sizes)
    with pytest.raises(SystemExit) as exited:
        main([*args, "--overwrite", "--lesion-size", "big"])
    assert exited.value.code == 3  # argparse usage errors: bad option, not bad DICOM
    assert "MIN-MAX" in capsys.readouterr().err
    for wrong in ("0.5-3", "9-6"):
        assert main([*args, "--overwrite", "--lesion-size", wrong]) == 3
        assert "lesion diameters" in capsys.readouterr().err


def test_written_phantom_loads_and_seg_truth_is_aligned(tmp_path: Path) -> None:
    files = write_phantom(tmp_path / "p", 7, nifti=True, min_lesions=1, **SMALL)
    phantom = files.phantom
    loaded = load_series(tmp_path / "p")  # the SEG beside the series is not a candidate
    volume = loaded.volume
    assert [(s.path.name, s.reason) for s in loaded.skipped] == [
        ("truth.nii.gz", "not a DICOM file")
    ]
    np.testing.assert_array_equal(volume.voxels, phantom.hu.astype(np.float32))
    np.testing.assert_allclose(volume.origin, phantom.origin)
    assert volume.spacing == pytest.approx(phantom.spacing)
    first = pydicom.dcmread(next(files.series_dir.iterdir()))
    assert "PHANTOM" in str(first.PatientName) and first.PatientID.startswith("PHANTOM-")
    assert first.RescaleIntercept == -1024 and first.PixelRepresentation == 1

    truth = highdicom_mask_on_volume(files.seg_path, volume).astype(bool)
    np.testing.assert_array_equal(truth, phantom.lesions)
    independent = dcmqi_mask_on_volume(files.seg_path, volume, tmp_path / "dcmqi").astype(bool)
    np.testing.assert_array_equal(independent, phantom.lesions)
    seg = pydicom.dcmread(files.seg_path)
    assert seg.SegmentSequence[0].SegmentLabel == "Lesion"
    assert seg.StudyInstanceUID == files.study_instance_uid

    image = sitk.ReadImage(str(files.nifti_path))
    reference = volume.to_sitk(np.zeros(volume.shape, np.uint8))
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), phantom.lesion_ids)


def test_cli_writes_phantoms_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["phantom", str(out), "--count", "2", "--seed", "3", "--size", "64x80"]
    args += ["--slices", "6", "--spacing", "5.5,6", "--lesions", "1-2"]
    assert main(args) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["phantom_00003", "phantom_00004"]
    volume = load_series(out / "phantom_00004" / "ct").volume
    assert volume.shape == (6, 64, 80) and volume.spacing == pytest.approx((6.0, 5.5, 5.5))
    assert "wrote 2 phantom(s)" in capsys.readouterr().out
    assert main(args) == ConfigError.exit_code
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == folders  # no staging folders left


def test_cli_bad_size_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["phantom", str(out), "--size", "600x600", "--slices", "300"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "512x512x300" in err and "Traceback" not in err
    assert not out.exists()


def test_uids_follow_the_seed_unless_unique_uids(tmp_path: Path) -> None:
    tiny = dict(size=(32, 32), slices=3, pixel_spacing=8.0, slice_spacing=8.0, max_lesions=0)
    a = write_phantom(tmp_path / "a", 5, **tiny)
    b = write_phantom(tmp_path / "b", 5, **tiny)
    c = write_phantom(tmp_path / "c", 5, unique_uids=True, **tiny)
    assert a.series_instance_uid == b.series_instance_uid
    assert c.series_instance_uid != a.series_instance_uid
    assert c.study_instance_uid != a.study_instance_uid
    pixels = [load_series(f.series_dir).volume.voxels for f in (a, c)]
    np.testing.assert_array_equal(pixels[0], pixels[1])
    seg = pydicom.dcmread(c.seg_path)  # an empty truth is still a valid SEG
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == c.series_instance_uid


def test_cli_unwritable_output_is_an_output_error(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["phantom", str(blocker / "out"), "--size", "32x32", "--slices", "2"]) == 6
    err = capsys.readouterr().err
    assert "cannot create" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
