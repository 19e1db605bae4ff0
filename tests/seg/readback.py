"""Independent readers for written SEGs, mapping frames into the source volume's grid."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk

from medseg.dicom import Volume


def highdicom_mask_on_volume(seg_path: Path, volume: Volume, segment: int = 1) -> np.ndarray:
    """Read with highdicom, place every SEG voxel via its patient (LPS) position."""
    seg = hd.seg.segread(seg_path)
    seg_volume = seg.get_volume(segment_numbers=[segment], combine_segments=False)
    array = seg_volume.array[..., 0]
    out = np.zeros(volume.shape, dtype=array.dtype)
    index = np.indices(array.shape).reshape(3, -1).T  # (n, 3) array indices
    lps = index @ seg_volume.affine[:3, :3].T + seg_volume.affine[:3, 3]
    ijk = volume.lps_to_index(lps)  # (col, row, slice), continuous
    rounded = np.rint(ijk).astype(int)
    assert np.abs(ijk - rounded).max() < 1e-3, "SEG voxels do not fall on the source grid"
    values = array.reshape(-1)
    inside = np.all((rounded >= 0) & (rounded < np.array(volume.shape[::-1])), axis=1)
    assert not values[~inside].any(), "SEG voxels outside the source volume"
    kk, jj, ii = rounded[inside, 2], rounded[inside, 1], rounded[inside, 0]
    out[kk, jj, ii] = values[inside]
    return out


def dcmqi_mask_on_volume(seg_path: Path, volume: Volume, workdir: Path) -> np.ndarray:
    """Convert with dcmqi's segimage2itkimage, resample onto the volume grid (nearest)."""
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "segimage2itkimage",
            "--inputDICOM",
            str(seg_path),
            "--outputDirectory",
            str(workdir),
            "-t",
            "nrrd",
            "-p",
            "seg",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    files = sorted(workdir.glob("seg-*.nrrd"))
    assert files, f"dcmqi wrote nothing: {list(workdir.iterdir())}"
    image = sitk.ReadImage(str(files[0]))
    reference = volume.to_sitk(np.zeros(volume.shape, dtype=np.uint8))
    resampled = sitk.Resample(
        image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    return sitk.GetArrayFromImage(resampled)
