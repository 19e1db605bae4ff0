"""Masks read from DICOM-SEG (dcmqi and highdicom written), NIfTI and NRRD in patient space."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.maskio import (
    Grid,
    MaskInputError,
    mask_on_volume,
    mask_stem,
    place_on_grid,
    read_mask,
)
from medseg.metrics.case import EvalOptions, score_case
from medseg.metrics.pairing import CasePair
from tests.metrics.synthetic import volume_from_datasets, write_ct_series, write_seg

SHAPE = (12, 20, 24)


@pytest.fixture
def ct(tmp_path: Path) -> list[pydicom.Dataset]:
    return write_ct_series(tmp_path / "ct", SHAPE)


def _two_segments() -> np.ndarray:
    """(slices, rows, cols, 2): segment 1 on slices 3-4, segment 2 on slice 7 only."""
    masks = np.zeros((*SHAPE, 2), dtype=bool)
    masks[3:5, 4:9, 5:10, 0] = True
    masks[7, 10:12, 10:14, 1] = True
    masks[4, 6, 7, 1] = True  # segments may overlap in a SEG
    return masks


def _score(pred: Path, truth: Path, **options) -> list[dict]:
    return score_case(CasePair("case", pred, truth), EvalOptions(**options))


@pytest.mark.parametrize(
    ("seg", "nrrd"),
    [
        ("liver.dcm", "liver_seg.nrrd"),
        ("23x38x3/seg/label.seg", "23x38x3/nrrd/label.nrrd"),
        ("24x38x3/seg/label.seg", "24x38x3/nrrd/label.nrrd"),
    ],
)
def test_dcmqi_seg_scores_dice_one_and_hd_zero_against_its_nrrd_twin(
    shared_dir: Path, seg: str, nrrd: str
) -> None:
    data = shared_dir / "data" / "dcmqi"
    seg_file, nrrd_file = read_mask(data / seg), read_mask(data / nrrd)
    # dcmqi stores the SEG frames head-first while the NRRD runs feet-first: same voxel
    # centres, opposite slice order, which must not count as a different grid.
    assert seg_file.grid.affine[2, 0] == pytest.approx(-nrrd_file.grid.affine[2, 0])
    assert seg_file.mask(1).sum() == nrrd_file.mask(1).sum() > 0
    for pred, truth in ((data / seg, data / nrrd), (data / nrrd, data / seg)):
        (row,) = _score(pred, truth)
        assert row["dice"] == 1.0 and row["hd"] == 0.0 and row["hd95"] == 0.0
        assert row["resampled"] is False


def test_seg_on_a_multiframe_source_reads_in_patient_space(
    shared_dir: Path, tmp_path: Path
) -> None:
    data = shared_dir / "data" / "dcmqi" / "23x38x3"
    source = pydicom.dcmread(data / "multiframe" / "mf.dcm")
    nrrd = read_mask(data / "nrrd" / "label.nrrd")
    to_index = np.linalg.inv(nrrd.grid.affine)
    frames = []
    for item in source.PerFrameFunctionalGroupsSequence:
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        frames.append(nrrd.mask(1)[round((to_index @ [*position, 1.0])[0])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom: single-part PatientName
        write_seg(tmp_path / "mf_seg.dcm", [source], np.stack(frames)[..., None], ["Liver"])
    (row,) = _score(tmp_path / "mf_seg.dcm", data / "nrrd" / "label.nrrd")
    assert row["dice"] == 1.0 and row["hd"] == 0.0 and row["segment"] == "1"


def test_highdicom_seg_with_segments_and_omitted_frames_maps_back_exactly(
    ct: list[pydicom.Dataset], tmp_path: Path
) -> None:
    masks = _two_segments()
    seg = write_seg(tmp_path / "two.dcm", ct, masks, ["Tumour", "Cyst"])
    assert int(seg.NumberOfFrames) == 4  # of 2 x 12: empty frames omitted (2 per segment)
    mask_file = read_mask(tmp_path / "two.dcm")
    assert [(s.number, s.label) for s in mask_file.segments] == [(1, "Tumour"), (2, "Cyst")]
    assert mask_file.referenced_series_uid == ct[0].SeriesInstanceUID
    assert mask_file.grid.shape[0] == 5  # only slices 3..7 are in the file
    volume = volume_from_datasets(ct)
    for index, segment in enumerate((1, "cyst")):
        on_volume = mask_on_volume(tmp_path / "two.dcm", volume, segment)
        assert on_volume.dtype == bool and on_volume.shape == SHAPE
        assert np.array_equal(on_volume, masks[..., index])
    union = mask_on_volume(tmp_path / "two.dcm", volume, "*")
    assert np.array_equal(union, masks.any(axis=3))


def test_seg_against_seg_of_the_same_series_scores_overlap(
    ct: list[pydicom.Dataset], tmp_path: Path
) -> None:
    truth = _two_segments()
    pred = truth.copy()
    pred[3:5, 4:9, 9, 0] = False  # trim one column of segment 1
    pred[10, 0, 0, 1] = True  # a stray voxel of segment 2 on a slice absent from the truth
    write_seg(tmp_path / "truth.dcm", ct, truth, ["Tumour", "Cyst"])
    write_seg(tmp_path / "pred.dcm", ct, pred, ["Tumour", "Cyst"])
    rows = {r["segment"]: r for r in _score(tmp_path / "pred.dcm", tmp_path / "truth.dcm")}
    assert rows["Tumour"]["dice"] == pytest.approx(2 * 40 / (40 + 50))
    expected = 2 * truth[..., 1].sum() / (truth[..., 1].sum() + pred[..., 1].sum())
    assert rows["Cyst"]["dice"] == pytest.approx(expected)
    assert rows["Cyst"]["lesion_fp"] == 1  # counted although the truth SEG has no slice 10


def _write_nifti(path: Path, array: np.ndarray, grid: Grid) -> None:
    sitk.WriteImage(grid.to_sitk(array.astype(np.uint8)), str(path))


def test_nifti_with_flipped_axes_maps_onto_volume_without_resampling(
    ct: list[pydicom.Dataset], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = volume_from_datasets(ct)
    grid = Grid.from_volume(volume)
    mask = _two_segments()[..., 0]
    # Store it RAS-like: rows and columns reversed, origin moved to the opposite corner.
    flipped = grid.affine.copy()
    flipped[:3, 1:] *= -1
    flipped[:3, 3] = grid.affine[:3, :3] @ [0, SHAPE[1] - 1, SHAPE[2] - 1] + grid.affine[:3, 3]
    _write_nifti(tmp_path / "flip.nii.gz", mask[:, ::-1, ::-1], Grid(SHAPE, flipped))
    with caplog.at_level(logging.WARNING):
        result = mask_on_volume(tmp_path / "flip.nii.gz", volume)
    assert np.array_equal(result, mask)
    assert "resampl" not in caplog.text


def test_coarser_nifti_is_resampled_with_a_warning(
    ct: list[pydicom.Dataset], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = volume_from_datasets(ct)
    grid = Grid.from_volume(volume)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:10, 4:16, 4:20] = True
    coarse = grid.affine.copy()
    coarse[:3, 1:3] *= 2  # 1.4 mm pixels
    coarse[:3, 3] = grid.affine[:3, :3] @ [0, 0.5, 0.5] + grid.affine[:3, 3]
    _write_nifti(tmp_path / "coarse.nrrd", mask[:, ::2, ::2], Grid((12, 10, 12), coarse))
    with caplog.at_level(logging.WARNING):
        result = mask_on_volume(tmp_path / "coarse.nrrd", volume)
    assert "resampling nearest-neighbour" in caplog.text
    assert result.sum() == mask.sum()
    assert np.count_nonzero(result != mask) <= 0.05 * mask.sum()


def test_grids_that_do_not_overlap_are_an_error(ct: list[pydicom.Dataset], tmp_path: Path) -> None:
    volume = volume_from_datasets(ct)
    far = Grid.from_volume(volume).affine.copy()
    far[2, 3] += 500.0
    _write_nifti(tmp_path / "far.nii", np.ones(SHAPE), Grid(SHAPE, far))
    with pytest.raises(MaskInputError, match="do not overlap"):
        mask_on_volume(tmp_path / "far.nii", volume)
    _write_nifti(tmp_path / "near.nii", np.ones(SHAPE), Grid.from_volume(volume))
    with pytest.raises(MaskInputError, match="do not overlap in patient space"):
        _score(tmp_path / "far.nii", tmp_path / "near.nii")


def test_label_map_segments_and_lookup_errors(tmp_path: Path) -> None:
    grid = Grid((4, 5, 6), np.diag([2.0, 1.0, 1.0, 1.0]))
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[1, 1:3, 1:3] = 2
    labels[2, 2, 2] = 5
    _write_nifti(tmp_path / "labels.nii.gz", labels, grid)
    mask_file = read_mask(tmp_path / "labels.nii.gz")
    assert [s.number for s in mask_file.segments] == [2, 5]
    assert mask_file.mask("5").sum() == 1 and mask_file.mask(2).sum() == 4
    with pytest.raises(MaskInputError, match=r"no segment 3.*2 \(2\), 5 \(5\)"):
        mask_file.mask(3)
    assert mask_stem(tmp_path / "labels.nii.gz") == "labels"


def test_files_that_are_not_masks_are_rejected(ct: list[pydicom.Dataset], tmp_path: Path) -> None:
    with pytest.raises(MaskInputError, match="not a Segmentation"):
        read_mask(tmp_path / "ct" / "IM0001.dcm")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MaskInputError, match="neither DICOM-SEG nor NIfTI/NRRD"):
        read_mask(tmp_path / "notes.txt")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x00" * 10)
    with pytest.raises(MaskInputError, match=r"cannot read broken\.nii\.gz"):
        read_mask(tmp_path / "broken.nii.gz")
    with pytest.raises(MaskInputError, match="not found"):
        read_mask(tmp_path / "missing.nrrd")
    fractional = tmp_path / "float.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 2, 2), 0.5, np.float32)), str(fractional))
    with pytest.raises(MaskInputError, match="integer segment labels"):
        read_mask(fractional)


def test_place_on_grid_reindexes_permuted_axes_exactly() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((3, 4, 5)) > 0.5
    dst = Grid((3, 4, 5), np.diag([2.5, 0.7, 0.8, 1.0]))
    permuted = np.zeros((4, 4))
    permuted[:3, 0] = dst.affine[:3, 2]  # axis 0 of src runs along dst's column axis
    permuted[:3, 1] = dst.affine[:3, 0]
    permuted[:3, 2] = dst.affine[:3, 1]
    permuted[3, 3] = 1
    src_array = np.transpose(mask, (2, 0, 1))
    placed, resampled = place_on_grid(src_array, Grid((5, 3, 4), permuted), dst)
    assert not resampled and np.array_equal(placed, mask)


def test_labelmap_seg_reads_one_mask_per_segment(ct: list[pydicom.Dataset], tmp_path: Path) -> None:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2:4, 3:6, 3:6] = 1
    labels[8, 10:12, 10:12] = 2
    path = tmp_path / "labelmap.dcm"
    write_seg(path, ct, labels, ["Tumour", "Node"], segmentation_type="LABELMAP", series_number=5)
    volume = volume_from_datasets(ct)
    for number, label in ((1, "Tumour"), (2, "node")):
        mask = mask_on_volume(tmp_path / "labelmap.dcm", volume, label)
        assert np.array_equal(mask, labels == number)


def test_score_case_resamples_a_finer_prediction_onto_the_truth_grid(
    ct: list[pydicom.Dataset], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grid = Grid.from_volume(volume_from_datasets(ct))
    truth = np.zeros(SHAPE, dtype=bool)
    truth[2:10, 4:16, 4:20] = True
    _write_nifti(tmp_path / "truth.nii.gz", truth, grid)
    # Half-size pixels with the same first voxel centre: fine index 2j lies on truth index j.
    fine = grid.affine.copy()
    fine[:3, 1:3] /= 2
    fine_shape = (SHAPE[0], 2 * SHAPE[1] - 1, 2 * SHAPE[2] - 1)
    pred = np.zeros(fine_shape, dtype=bool)
    pred[2:10, 8:31, 8:39] = True  # the same box in patient space
    _write_nifti(tmp_path / "fine.nii.gz", pred, Grid(fine_shape, fine))
    _write_nifti(tmp_path / "same.nii.gz", truth, grid)

    with caplog.at_level(logging.WARNING):
        (same,) = _score(tmp_path / "same.nii.gz", tmp_path / "truth.nii.gz")
    assert same["resampled"] is False and "resampl" not in caplog.text
    with caplog.at_level(logging.WARNING):
        (row,) = _score(tmp_path / "fine.nii.gz", tmp_path / "truth.nii.gz")
    assert row["resampled"] is True
    assert "case prediction: grid differs" in caplog.text
    assert "resampling nearest-neighbour" in caplog.text
    assert row["dice"] == 1.0 and row["hd"] == 0.0 and row["nsd"] == 1.0
    assert row["volume_pred_ml"] == pytest.approx(row["volume_truth_ml"])
    assert row["volume_truth_ml"] == pytest.approx(truth.sum() * np.prod(grid.spacing) / 1000)
