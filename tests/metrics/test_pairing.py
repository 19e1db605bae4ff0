"""Pairing cases by referenced series or stem, and segments by label, number or map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.maskio import MaskInputError, read_mask
from medseg.metrics.pairing import (
    MaskRef,
    find_masks,
    pair_cases,
    pair_segments,
    parse_segment_map,
)
from tests.metrics.synthetic import write_ct_series, write_seg


def test_pairs_by_stem_and_reports_leftovers() -> None:
    preds = [MaskRef(Path("p/a.nii.gz"), "a"), MaskRef(Path("p/b.nrrd"), "b")]
    truths = [MaskRef(Path("t/b.dcm"), "b"), MaskRef(Path("t/c.nii"), "c")]
    pairing = pair_cases(preds, truths)
    assert [(p.case, p.pred.name, p.truth.name) for p in pairing.pairs] == [
        ("b", "b.nrrd", "b.dcm")
    ]
    assert pairing.unpaired_pred == (Path("p/a.nii.gz"),)
    assert pairing.unpaired_truth == (Path("t/c.nii"),)


def test_referenced_series_wins_over_stems() -> None:
    preds = [MaskRef(Path("p/x.dcm"), "x", "1.2.3"), MaskRef(Path("p/y.dcm"), "y", "1.2.4")]
    truths = [MaskRef(Path("t/y.dcm"), "y", "1.2.3"), MaskRef(Path("t/z.dcm"), "z", "1.2.4")]
    pairs = {p.truth.name: p.pred.name for p in pair_cases(preds, truths).pairs}
    assert pairs == {"y.dcm": "x.dcm", "z.dcm": "y.dcm"}
    with pytest.raises(MaskInputError, match="several predictions reference one series"):
        pair_cases([*preds, MaskRef(Path("p/w.dcm"), "w", "1.2.3")], truths)


def test_find_masks_in_a_folder_skips_other_files(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", (3, 6, 6))
    mask = np.zeros((3, 6, 6, 1), bool)
    mask[1, 2, 2, 0] = True
    write_seg(tmp_path / "masks" / "seg.dcm", series, mask, ["Lesion"])
    (tmp_path / "masks" / "readme.txt").write_text("not a mask")
    (tmp_path / "masks" / "ct.dcm").write_bytes((tmp_path / "ct" / "IM0001.dcm").read_bytes())
    (found,) = find_masks(tmp_path / "masks")
    assert found.stem == "seg" and found.series_uid == series[0].SeriesInstanceUID
    with pytest.raises(MaskInputError, match="no DICOM-SEG, NIfTI or NRRD"):
        find_masks(tmp_path / "ct")
    with pytest.raises(MaskInputError, match="not found"):
        find_masks(tmp_path / "nowhere")


def test_segment_pairing_by_label_number_and_map(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", (3, 6, 6))
    masks = np.zeros((3, 6, 6, 2), bool)
    masks[1, 1:3, 1:3] = True
    write_seg(tmp_path / "truth.dcm", series, masks, ["Liver", "Spleen"])
    write_seg(tmp_path / "pred.dcm", series, masks, ["Spleen", "Other"])
    truth, pred = read_mask(tmp_path / "truth.dcm"), read_mask(tmp_path / "pred.dcm")
    # Liver: no label match -> number 1; Spleen: label match -> pred segment 1
    assert pair_segments(pred, truth) == [(1, 1), (1, 2)]
    assert pair_segments(pred, truth, parse_segment_map("Other:Liver")) == [(2, 1)]
    with pytest.raises(MaskInputError, match="no segment 'Kidney'"):
        pair_segments(pred, truth, parse_segment_map("1:Kidney"))


@pytest.mark.parametrize("text", ["1", "1:", ":2", "1:2,3"])
def test_malformed_segment_map_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="PRED:TRUTH"):
        parse_segment_map(text)


def _strip_series_reference(path: Path) -> None:
    """Leave only the per-frame DerivationImageSequence naming the source images."""
    import pydicom

    seg = pydicom.dcmread(path)
    for keyword in ("ReferencedSeriesSequence", "SourceImageSequence"):
        if keyword in seg:
            delattr(seg, keyword)
    seg.save_as(path)


def test_segs_without_referenced_series_pair_by_derivation_source_images(tmp_path: Path) -> None:
    series_a = write_ct_series(tmp_path / "ct_a", (3, 6, 6))
    series_b = write_ct_series(tmp_path / "ct_b", (3, 6, 6))
    mask = np.zeros((3, 6, 6, 1), bool)
    mask[:, 2:4, 2:4, 0] = True
    write_seg(tmp_path / "pred" / "alpha.dcm", series_a, mask, ["Lesion"])
    write_seg(tmp_path / "pred" / "beta.dcm", series_b, mask, ["Lesion"])
    write_seg(tmp_path / "truth" / "case_b.dcm", series_b, mask, ["Lesion"])
    write_seg(tmp_path / "truth" / "case_a.dcm", series_a, mask, ["Lesion"])
    for path in (tmp_path / "pred").iterdir():
        _strip_series_reference(path)
    for path in (tmp_path / "truth").iterdir():
        _strip_series_reference(path)

    preds, truths = find_masks(tmp_path / "pred"), find_masks(tmp_path / "truth")
    assert all(ref.series_uid is None for ref in (*preds, *truths))
    alpha = next(ref for ref in preds if ref.stem == "alpha")
    assert alpha.instance_uids == {str(ds.SOPInstanceUID) for ds in series_a}
    pairing = pair_cases(preds, truths)
    pairs = {p.truth.name: p.pred.name for p in pairing.pairs}
    assert pairs == {"case_a.dcm": "alpha.dcm", "case_b.dcm": "beta.dcm"}
    assert pairing.unpaired_pred == () and pairing.unpaired_truth == ()
    twin = MaskRef(Path("p/gamma.dcm"), "gamma", None, alpha.instance_uids)
    with pytest.raises(MaskInputError, match="several predictions reference one source image"):
        pair_cases([*preds, twin], truths)
