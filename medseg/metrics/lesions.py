"""Lesion-wise detection: 3-D connected components matched by overlap.

Rule (Metrics Reloaded's "mask IoU > 0" localisation criterion, the usual choice for small
lesions where any overlap counts as a hit): components are 3-D connected with
``connectivity`` 26 (default; face, edge and corner neighbours) or 6 (faces only). A truth
lesion is *detected* (TP) when at least one predicted component overlaps it by >= 1 voxel,
otherwise it is missed (FN). A predicted component that overlaps no truth lesion is a false
positive (FP). A predicted component touching several truth lesions detects all of them.
Lesion F1 = 2 TP / (2 TP + FP + FN); 1 when neither mask has any lesion. Per-lesion Dice
compares each truth lesion with the union of the predicted components overlapping it
(0 for a missed lesion).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg.errors import ConfigError

_STRUCTURES = {
    6: ndimage.generate_binary_structure(3, 1),
    26: ndimage.generate_binary_structure(3, 3),
}


def _pair_overlaps(
    truth_labels: np.ndarray, pred_labels: np.ndarray, n_truth: int, n_pred: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct overlapping (truth label, pred label) pairs and their shared voxel counts."""
    both = (truth_labels > 0) & (pred_labels > 0)
    codes = truth_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both]
    n_codes = (n_truth + 1) * (n_pred + 1)
    if n_codes <= 1 << 22:  # few components: counting beats sorting
        counts = np.bincount(codes, minlength=n_codes)
        codes = np.flatnonzero(counts)
        counts = counts[codes]
    else:
        codes, counts = np.unique(codes, return_counts=True)
    return codes // (n_pred + 1), codes % (n_pred + 1), counts


def lesion_metrics(
    pred: np.ndarray, truth: np.ndarray, voxel_ml: float, connectivity: int = 26
) -> dict[str, object]:
    """Lesion counts, F1 and per-lesion Dice/volume (truth lesions in label order)."""
    if connectivity not in _STRUCTURES:
        raise ConfigError(f"lesion connectivity must be 6 or 26, got {connectivity}")
    structure = _STRUCTURES[connectivity]
    truth_labels, n_truth = ndimage.label(truth, structure)
    pred_labels, n_pred = ndimage.label(pred, structure)
    pair_truth, pair_pred, shared = _pair_overlaps(truth_labels, pred_labels, n_truth, n_pred)
    truth_sizes = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)[1:]
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    # Predicted components are disjoint, so |lesion & union of its hits| is a plain sum.
    inside = np.bincount(pair_truth, weights=shared, minlength=n_truth + 1)[1:]
    hit_sizes = np.bincount(pair_truth, weights=pred_sizes[pair_pred], minlength=n_truth + 1)[1:]
    lesion_dice = np.where(inside > 0, 2.0 * inside / (truth_sizes + hit_sizes), 0.0)
    tp = int(np.count_nonzero(inside))
    fp = int(n_pred - np.unique(pair_pred).size)
    fn = int(n_truth - tp)
    denominator = 2 * tp + fp + fn
    return {
        "lesion_tp": tp,
        "lesion_fp": fp,
        "lesion_fn": fn,
        "lesion_f1": 1.0 if denominator == 0 else 2.0 * tp / denominator,
        "lesion_dice_mean": float(lesion_dice.mean()) if n_truth else float("nan"),
        "lesion_dice": [float(v) for v in lesion_dice],
        "lesion_volume_truth_ml": [float(n) * voxel_ml for n in truth_sizes],
    }
