"""Independent readers of a measurement report: dcmtk's dsrdump, dcmqi's tid1500reader and
highdicom's SR parser; and the same numbers computed from the SEG alone."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
from skimage.measure import label, regionprops

VOLUME = "118565006"
LONG_AXIS = "103339001"
SHORT_AXIS = "103340004"
HU = "112031"
MEAN, SD, MAXIMUM = "373098007", "386136009", "56851009"

Numbers = dict[tuple[str, str | None], float]  # (quantity code, derivation code) -> value


def dsrdump(path: Path) -> subprocess.CompletedProcess[str]:
    """dcmtk's SR dump at log level info, with each container's template identification."""
    tool = shutil.which("dsrdump")
    assert tool, "dcmtk's dsrdump is installed by tests/install-deps.sh"
    argv = [tool, "-ll", "info", "+Pt", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def tid1500reader(path: Path, workdir: Path) -> dict:
    """dcmqi's reading of the report as its JSON."""
    tool = shutil.which("tid1500reader")
    assert tool, "dcmqi's tid1500reader is part of the test extras"
    out = workdir / f"{path.stem}.json"
    done = subprocess.run(
        [tool, "--inputDICOM", str(path), "--outputMetadata", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and out.is_file(), done.stdout + done.stderr
    assert "error" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr
    return json.loads(out.read_text())


def dcmqi_numbers(group: dict) -> Numbers:
    return {
        (
            item["quantity"]["CodeValue"],
            item.get("derivationModifier", {}).get("CodeValue"),
        ): float(item["value"])
        for item in group["measurementItems"]
    }


def highdicom_groups(path: Path) -> list:
    return hd.sr.srread(path).content.get_volumetric_roi_measurement_groups()


def highdicom_numbers(group) -> Numbers:
    return {
        (m.name.value, None if m.derivation is None else m.derivation.value): float(m.value)
        for m in group.get_measurements()
    }


def seg_voxel_ml(seg_path: Path) -> float:
    """One SEG voxel's volume (ml) from the SEG's own geometry (highdicom's affine)."""
    affine = hd.seg.segread(seg_path).get_volume().affine
    return abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


def longest_feret(mask: np.ndarray, spacing: tuple[float, float]) -> tuple[float, int]:
    """scikit-image's largest 2-D Feret diameter of any 8-connected region, and its slice."""
    best = (0.0, -1)
    for k, plane in enumerate(mask):
        if plane.any():
            props = regionprops(label(plane, connectivity=2), spacing=spacing)
            found = max(p.feret_diameter_max for p in props)
            best = max(best, (found, k), key=lambda pair: pair[0])
    return best


def frame_segment(seg, item) -> int:
    """The segment of one SEG frame: per frame, or shared when the SEG has one segment."""
    where = (
        item if "SegmentIdentificationSequence" in item else seg.SharedFunctionalGroupsSequence[0]
    )
    return int(where.SegmentIdentificationSequence[0].ReferencedSegmentNumber)


def seg_frames_of(seg, number: int) -> set[tuple[str, int | None]]:
    """(source SOP instance, frame) of every SEG frame of segment ``number``."""
    out = set()
    for item in seg.PerFrameFunctionalGroupsSequence:
        if frame_segment(seg, item) != number:
            continue
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        frame = source.get("ReferencedFrameNumber")
        out.add((str(source.ReferencedSOPInstanceUID), None if frame is None else int(frame)))
    return out
