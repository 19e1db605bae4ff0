"""write_seg: read back with independent readers, geometry, codes, multi-frame, atomicity."""

from __future__ import annotations

import json
import os
import resource
import signal
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medseg import __version__
from medseg.dicom import load_series
from medseg.errors import ConfigError, DicomInputError, OutputError
from medseg.modelcard import Code, ModelCard, SegmentSpec
from medseg.seg import (
    build_seg,
    check_output_path,
    check_seg_source,
    save_atomically,
    write_seg,
)
from tests.dicom.series_factory import write_series
from tests.seg.conftest import SphereCase, make_sphere_case
from tests.seg.readback import (
    assert_frames_on_their_sources,
    dcmqi_mask_on_volume,
    frame_positions,
    highdicom_mask_on_volume,
)

CARD = ModelCard(name="sphere-finder", version="1.2.3")


def test_sphere_reads_back_exactly_with_highdicom(
    oblique_sphere: SphereCase, tmp_path: Path
) -> None:
    path = tmp_path / "out" / "sphere.seg.dcm"
    path.parent.mkdir()
    write_seg(oblique_sphere.volume, oblique_sphere.mask[np.newaxis], CARD, path)
    back = highdicom_mask_on_volume(path, oblique_sphere.volume)
    np.testing.assert_array_equal(back.astype(bool), oblique_sphere.mask)
    assert_frames_on_their_sources(path, oblique_sphere.volume)
    assert sorted(p.name for p in path.parent.iterdir()) == ["sphere.seg.dcm"]


def test_sphere_reads_back_exactly_with_dcmqi(oblique_sphere: SphereCase, tmp_path: Path) -> None:
    path = tmp_path / "sphere.seg.dcm"
    write_seg(oblique_sphere.volume, oblique_sphere.mask, CARD, path)
    back = dcmqi_mask_on_volume(path, oblique_sphere.volume, tmp_path / "dcmqi")
    np.testing.assert_array_equal(back.astype(bool), oblique_sphere.mask)
    meta = json.loads((tmp_path / "dcmqi" / "seg-meta.json").read_text())
    segment = meta["segmentAttributes"][0][0]
    assert segment["SegmentLabel"] == "Lesion"
    assert segment["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == "52988006"


def test_empty_frames_are_omitted(oblique_sphere: SphereCase, tmp_path: Path) -> None:
    seg = write_seg(oblique_sphere.volume, oblique_sphere.mask[None], CARD, tmp_path / "s.dcm")
    slices_with_mask = int(oblique_sphere.mask.any(axis=(1, 2)).sum())
    assert 0 < slices_with_mask < oblique_sphere.volume.shape[0]
    assert int(seg.NumberOfFrames) == slices_with_mask


def test_seg_header_patient_study_series_and_device(
    oblique_sphere: SphereCase, tmp_path: Path
) -> None:
    volume = oblique_sphere.volume
    write_seg(
        volume,
        oblique_sphere.mask[None],
        CARD,
        tmp_path / "s.dcm",
        series_number=77,
        series_description="my description",
        algorithm_version="9.9",
    )
    seg = pydicom.dcmread(tmp_path / "s.dcm")
    source = volume.datasets[0]
    assert seg.Modality == "SEG"
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.PatientID == source.PatientID and seg.PatientName == source.PatientName
    assert seg.StudyInstanceUID == source.StudyInstanceUID == volume.study_instance_uid
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != volume.series_instance_uid
    assert seg.SOPInstanceUID not in {f.sop_instance_uid for f in volume.frames}
    # the card says "research only, not for clinical use": the worklist's columns say so
    assert seg.SeriesNumber == 77
    assert seg.SeriesDescription == "my description (RESEARCH ONLY, NOT CLINICAL)"
    assert seg.ContentDescription == "RESEARCH ONLY, NOT CLINICAL: sphere-finder 9.9"
    assert seg.Manufacturer == "medseg" and seg.SoftwareVersions == __version__
    assert seg.ManufacturerModelName and seg.DeviceSerialNumber
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "sphere-finder" and algorithm.AlgorithmVersion == "9.9"
    family = algorithm.AlgorithmFamilyCodeSequence[0]
    assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")
    referenced = {
        i.ReferencedSOPInstanceUID
        for s in seg.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    assert referenced == {f.sop_instance_uid for f in volume.frames}


def test_two_segments_keep_labels_and_codes(oblique_sphere: SphereCase, tmp_path: Path) -> None:
    card = ModelCard(
        name="two",
        segments=(
            SegmentSpec(),
            SegmentSpec(
                label="Liver",
                category=Code("123037004", "SCT", "Anatomical Structure"),
                type=Code("10200004", "SCT", "Liver"),
            ),
        ),
    )
    second = np.zeros_like(oblique_sphere.mask)
    second[2:5, 3:9, 4:12] = True
    masks = np.stack([oblique_sphere.mask, second])
    write_seg(oblique_sphere.volume, masks, card, tmp_path / "two.dcm")
    seg = hd.seg.segread(tmp_path / "two.dcm")
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    categories = [s.SegmentedPropertyCategoryCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert labels == ["Lesion", "Liver"]
    assert types == ["52988006", "10200004"]
    assert categories == ["49755003", "123037004"]
    for number, expected in ((1, oblique_sphere.mask), (2, second)):
        back = highdicom_mask_on_volume(tmp_path / "two.dcm", oblique_sphere.volume, number)
        np.testing.assert_array_equal(back.astype(bool), expected)


def test_multiframe_source_dcmqi_mf(shared_dir: Path, tmp_path: Path) -> None:
    volume = load_series(shared_dir / "data" / "dcmqi" / "23x38x3" / "multiframe" / "mf.dcm").volume
    mask = np.zeros(volume.shape, dtype=bool)
    mask[0, 5:20, 3:10] = True
    mask[2, 10:31, 12:22] = True  # frame 2 (index 1) stays empty and is omitted
    path = tmp_path / "mf.seg.dcm"
    seg = write_seg(volume, mask[None], CARD, path)
    assert int(seg.NumberOfFrames) == 2
    back = highdicom_mask_on_volume(path, volume)
    np.testing.assert_array_equal(back.astype(bool), mask)
    frames = frame_positions(pydicom.dcmread(path))
    assert {uid for uid, _, _ in frames} == {volume.datasets[0].SOPInstanceUID}
    assert sorted(f for _, f, _ in frames) == [1, 3]
    assert_frames_on_their_sources(path, volume)
    dq = dcmqi_mask_on_volume(path, volume, tmp_path / "dcmqi")
    np.testing.assert_array_equal(dq.astype(bool), mask)


def test_multiframe_source_with_frames_out_of_geometric_order(tmp_path: Path) -> None:
    case = make_sphere_case(tmp_path / "ct", multiframe=True, order="shuffle", seed=4)
    numbers = [f.frame_number for f in case.volume.frames]
    assert numbers != sorted(numbers)  # the permutation is what this test is about
    path = tmp_path / "s.dcm"
    write_seg(case.volume, case.mask[None], CARD, path)
    back = highdicom_mask_on_volume(path, case.volume)
    np.testing.assert_array_equal(back.astype(bool), case.mask)
    assert_frames_on_their_sources(path, case.volume)


def test_fractional_probabilities_round_trip(oblique_sphere: SphereCase, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probabilities = np.where(
        oblique_sphere.mask, rng.uniform(0.2, 1.0, oblique_sphere.mask.shape), 0.0
    )
    path = tmp_path / "frac.dcm"
    seg = write_seg(oblique_sphere.volume, probabilities[None], CARD, path, seg_type="FRACTIONAL")
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    back = highdicom_mask_on_volume(path, oblique_sphere.volume).astype(np.float64)
    np.testing.assert_allclose(back, probabilities, atol=0.5 / 255 + 1e-6)


def test_all_empty_mask_still_gives_a_valid_seg(oblique_sphere: SphereCase, tmp_path: Path) -> None:
    empty = np.zeros((1, *oblique_sphere.volume.shape), dtype=bool)
    path = tmp_path / "empty.dcm"
    seg = write_seg(oblique_sphere.volume, empty, CARD, path)
    assert int(seg.NumberOfFrames) == oblique_sphere.volume.shape[0]
    back = highdicom_mask_on_volume(path, oblique_sphere.volume)
    assert back.shape == oblique_sphere.volume.shape and not back.any()
    assert_frames_on_their_sources(path, oblique_sphere.volume)


def test_fractional_probabilities_that_round_to_zero_give_a_valid_empty_seg(
    oblique_sphere: SphereCase, tmp_path: Path
) -> None:
    # a model that is sure there is nothing still returns probabilities of ~1e-6, not 0:
    # stored in steps of 1/255 they all become 0, and the SEG must say "nothing" per slice
    faint = np.full((1, *oblique_sphere.volume.shape), 0.5 / 255, dtype=np.float32)
    faint[0, 0, 0, 0] = 1e-6
    path = tmp_path / "faint.dcm"
    seg = write_seg(oblique_sphere.volume, faint, CARD, path, seg_type="FRACTIONAL")
    assert int(seg.NumberOfFrames) == oblique_sphere.volume.shape[0]
    back = highdicom_mask_on_volume(path, oblique_sphere.volume)
    assert back.shape == oblique_sphere.volume.shape and not back.any()
    assert_frames_on_their_sources(path, oblique_sphere.volume)


def test_bad_arguments_are_user_errors(oblique_sphere: SphereCase, tmp_path: Path) -> None:
    mask = oblique_sphere.mask[None]
    with pytest.raises(ConfigError, match="SEG type"):
        write_seg(oblique_sphere.volume, mask, CARD, tmp_path / "a.dcm", seg_type="LABELMAP")
    with pytest.raises(OutputError, match="mask shape"):
        write_seg(oblique_sphere.volume, mask[:, :-1], CARD, tmp_path / "a.dcm")
    with pytest.raises(OutputError, match=r"\[0, 1\]"):
        write_seg(
            oblique_sphere.volume, mask * 2.0, CARD, tmp_path / "a.dcm", seg_type="FRACTIONAL"
        )
    assert list(tmp_path.iterdir()) == [tmp_path / "ct"]


def test_missing_folder_is_an_output_error(oblique_sphere: SphereCase, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot write"):
        write_seg(oblique_sphere.volume, oblique_sphere.mask, CARD, tmp_path / "no" / "s.dcm")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        write_seg(oblique_sphere.volume, oblique_sphere.mask, CARD, tmp_path / "file" / "s.dcm")


def test_full_disk_leaves_old_file_and_no_partial_file(
    oblique_sphere: SphereCase, tmp_path: Path
) -> None:
    """A file-size limit makes the kernel refuse the write (EFBIG) like a full disk would."""
    out = tmp_path / "out"
    out.mkdir()
    path = out / "s.dcm"
    path.write_bytes(b"previous result")
    big = np.ones((1, *oblique_sphere.volume.shape), dtype=bool)  # every frame present
    seg = build_seg(oblique_sphere.volume, big, CARD)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, hard))
    try:  # only the file write runs under the limit
        with pytest.raises(OutputError, match="cannot write"):
            save_atomically(seg, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert sorted(p.name for p in out.iterdir()) == ["s.dcm"]
    assert path.read_bytes() == b"previous result"


def test_real_ct_with_empty_character_set_round_trips(shared_dir: Path, tmp_path: Path) -> None:
    """dcmqi's ct-3slice has SpecificCharacterSet '' which highdicom would reject."""
    volume = load_series(shared_dir / "data" / "dcmqi" / "ct-3slice").volume
    mask = volume.voxels > 200.0  # bone
    assert mask.any(axis=(1, 2)).all()
    path = tmp_path / "bone.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # highdicom would quote the PatientName in a warning
        write_seg(volume, mask[None], CARD, path)
    back = highdicom_mask_on_volume(path, volume)
    np.testing.assert_array_equal(back.astype(bool), mask)
    assert_frames_on_their_sources(path, volume)


def test_source_without_frame_of_reference_is_an_input_error(tmp_path: Path) -> None:
    """A real CT without FrameOfReferenceUID: refused by the preflight, before any inference."""
    from pydicom.data import get_testdata_file

    volume = load_series(get_testdata_file("693_J2KI.dcm")).volume
    with pytest.raises(DicomInputError, match="no FrameOfReferenceUID"):
        check_seg_source(volume, CARD)
    mask = np.ones((1, *volume.shape), dtype=bool)
    with pytest.raises(DicomInputError, match="no FrameOfReferenceUID"):
        write_seg(volume, mask, CARD, tmp_path / "x.dcm")
    assert list(tmp_path.iterdir()) == []


def test_preflight_reports_what_highdicom_would_refuse(tmp_path: Path) -> None:
    """One instance of the series claims another study: the loader accepts it, highdicom
    does not; check_seg_source says so without writing anything."""
    written = write_series(tmp_path / "ct", np.zeros((3, 8, 10)))
    ds = pydicom.dcmread(written.paths[1])
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(written.paths[1])
    volume = load_series(tmp_path / "ct").volume
    with pytest.raises(DicomInputError, match="cannot build a DICOM-SEG for this series"):
        check_seg_source(volume, CARD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


def test_preflight_accepts_a_good_source(oblique_sphere: SphereCase, tmp_path: Path) -> None:
    two = ModelCard(name="two", segments=(SegmentSpec("A"), SegmentSpec("B")))
    check_seg_source(oblique_sphere.volume, two)
    check_output_path(tmp_path / "s.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


def test_output_path_preflight(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "s.dcm")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_path(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "file" / "s.dcm")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits
            check_output_path(locked / "s.dcm")
        else:
            with pytest.raises(OutputError, match="not writable"):
                check_output_path(locked / "s.dcm")
    finally:
        locked.chmod(0o700)


def test_only_a_research_model_labels_its_results_so_and_the_label_survives_truncation(
    oblique_sphere, tmp_path
) -> None:
    """Issue 23 item 11: the Series and Content Description a PACS worklist shows carry
    the card's research-only status; a clinically cleared card's results do not."""
    long = "x" * 80
    seg = write_seg(
        oblique_sphere.volume, oblique_sphere.mask[None], CARD, tmp_path / "r.dcm",
        series_description=long,
    )  # fmt: skip
    assert len(seg.SeriesDescription) <= 64
    assert seg.SeriesDescription.endswith("(RESEARCH ONLY, NOT CLINICAL)")
    assert len(seg.ContentDescription) <= 64
    cleared = ModelCard(name="sphere-finder", version="1.2.3", intended_use="cleared for use")
    seg = write_seg(
        oblique_sphere.volume, oblique_sphere.mask[None], cleared, tmp_path / "c.dcm",
        series_description="plain",
    )  # fmt: skip
    assert seg.SeriesDescription == "plain" and "RESEARCH" not in seg.ContentDescription
