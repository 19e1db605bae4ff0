"""Score one case: read both mask files, put them on one grid, evaluate each segment pair."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from medseg.errors import ConfigError
from medseg.maskio import ALL_SEGMENTS, Grid, MaskFile, MaskInputError, place_on_grid, read_mask
from medseg.metrics.evaluate import evaluate
from medseg.metrics.pairing import CasePair, pair_segments

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    """How to score: surface tolerance, lesion connectivity and an optional segment map."""

    tolerance_mm: float = 1.0
    connectivity: int = 26
    segment_map: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.tolerance_mm >= 0:
            raise ConfigError(f"--tolerance-mm must be >= 0, got {self.tolerance_mm}")
        if self.connectivity not in (6, 26):
            raise ConfigError(f"--connectivity must be 6 or 26, got {self.connectivity}")


def score_case(pair: CasePair, options: EvalOptions) -> list[dict[str, object]]:
    """One result row per segment pair; ``MaskInputError`` when the case cannot be scored.

    Masks are compared on the truth's lattice, extended to cover the prediction's field of
    view so that predicted voxels outside the truth's frames still count as false positives.
    """
    pred = read_mask(pair.pred)
    truth = read_mask(pair.truth)
    if not pred.grid.overlaps(truth.grid) and not _same_series(pred, truth):
        raise MaskInputError(
            f"case {pair.case}: prediction and truth do not overlap in patient space"
        )
    grid: Grid = truth.grid.enclosing(pred.grid)
    rows = []
    for pred_number, truth_number in pair_segments(pred, truth, options.segment_map):
        label = "all" if truth_number == ALL_SEGMENTS else truth.find_segment(truth_number).label
        truth_mask, _ = place_on_grid(truth.mask(truth_number), truth.grid, grid)
        if pred_number is None:
            pred_mask, resampled = np.zeros(grid.shape, dtype=bool), False
        else:
            pred_mask, resampled = place_on_grid(
                pred.mask(pred_number), pred.grid, grid, what=f"case {pair.case} prediction"
            )
        metrics = evaluate(
            pred_mask,
            truth_mask,
            grid.spacing,
            tolerance_mm=options.tolerance_mm,
            connectivity=options.connectivity,
        )
        rows.append(
            {
                "case": pair.case,
                "segment": label,
                "truth_segment": truth_number,
                "pred_segment": pred_number,
                "resampled": resampled,
                **metrics,
                "pred_file": str(pair.pred),
                "truth_file": str(pair.truth),
            }
        )
    return rows


def _same_series(pred: MaskFile, truth: MaskFile) -> bool:
    """Both label the same image series (DICOM-SEG references), so they share its space.

    A SEG stores only the frames it marks: a prediction whose only finding lies on other
    slices than the truth's lesions has frames that do not overlap the truth's, and it is
    a Dice of 0 to report, not a case to drop from the cohort.
    """
    return pred.referenced_series_uid is not None and (
        pred.referenced_series_uid == truth.referenced_series_uid
    )
