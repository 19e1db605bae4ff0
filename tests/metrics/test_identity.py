"""``medseg.metrics.identity``: what each mask format states about itself, and which of it
differs between a prediction and its truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.maskio import Grid
from medseg.metrics.identity import SegmentMeaning, mismatches, read_identity
from tests.metrics.synthetic import write_ct_series, write_seg


def _nrrd(path: Path, names: dict[int, str]) -> Path:
    import SimpleITK as sitk

    mask = np.zeros((6, 12, 12), np.uint8)
    mask[2:4, 3:8, 3:8] = 1
    affine = np.diag([2.5, 0.7, 0.7, 1.0])
    affine[:3, 3] = (-10.0, -20.0, 30.0)
    image = Grid(mask.shape, affine).to_sitk(mask)
    for n, name in names.items():
        image.SetMetaData(f"Segment{n - 1}_Name", name)
        image.SetMetaData(f"Segment{n - 1}_LabelValue", str(n))
    sitk.WriteImage(image, str(path))
    return path


def test_seg_states_patient_frame_of_reference_and_coded_segments(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", (6, 12, 12))
    write_seg(tmp_path / "seg.dcm", series, np.ones((6, 12, 12, 1), bool), ["Liver"])
    identity = read_identity(tmp_path / "seg.dcm")
    assert identity.patient_id == "METRICS01"
    assert identity.frame_of_reference_uid == series[0].FrameOfReferenceUID
    assert identity.segments == (SegmentMeaning(1, "Liver", ("SCT", "52988006")),)


def test_nrrd_states_only_the_names_slicer_wrote(tmp_path: Path) -> None:
    named = read_identity(_nrrd(tmp_path / "named.seg.nrrd", {1: "Lesion"}))
    assert (named.patient_id, named.frame_of_reference_uid) == (None, None)
    assert named.segments == (SegmentMeaning(1, "Lesion"),)
    assert read_identity(_nrrd(tmp_path / "plain.nrrd", {})).segments == ()


def test_named_nrrd_label_is_compared_with_the_seg_label(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", (6, 12, 12))
    write_seg(tmp_path / "truth.dcm", series, np.ones((6, 12, 12, 1), bool), ["Liver"])
    lesion = _nrrd(tmp_path / "lesion.seg.nrrd", {1: "Lesion"})
    liver = _nrrd(tmp_path / "liver.seg.nrrd", {1: "liver"})
    plain = _nrrd(tmp_path / "plain.nrrd", {})
    truth = tmp_path / "truth.dcm"
    assert mismatches(lesion, truth) == ["segment meaning (predicted 'Lesion', true 'Liver')"]
    assert mismatches(lesion, truth, compare_segments=False) == []
    assert mismatches(liver, truth) == [] and mismatches(plain, truth) == []
