"""Independent readers for written SEGs, mapping frames into the source volume's grid."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
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
    # 0.01 voxel: real headers state IOP to 4 decimals (not quite unit vectors), which moves
    # the far corner of a 512 grid by ~0.006 voxel; a misplaced frame is off by >= 1 voxel.
    assert np.abs(ijk - rounded).max() < 1e-2, "SEG voxels do not fall on the source grid"
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


def frame_positions(seg: pydicom.Dataset) -> list[tuple[str, int | None, np.ndarray]]:
    """(referenced SOP instance, referenced frame, ImagePositionPatient) per SEG frame."""
    out = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        frame = source.get("ReferencedFrameNumber")
        position = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        out.append(
            (source.ReferencedSOPInstanceUID, None if frame is None else int(frame), position)
        )
    return out


def assert_frames_on_their_sources(seg_path: Path, case_volume: Volume) -> None:
    """Every SEG frame references a source slice and lies exactly where that slice lies."""
    seg = pydicom.dcmread(seg_path)
    lookup = {(f.sop_instance_uid, f.frame_number): k for k, f in enumerate(case_volume.frames)}
    for uid, frame, position in frame_positions(seg):
        k = lookup[(uid, frame)]
        np.testing.assert_allclose(position, case_volume.positions[k], atol=1e-4)
