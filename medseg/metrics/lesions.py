"""Lesion-wise detection: 3-D connected components matched one-to-one by IoU.

Rule (Metrics Reloaded, instance matching without confidence scores): components are 3-D
connected with ``connectivity`` 26 (default; face, edge and corner neighbours) or 6 (faces
only). Truth lesions and predicted components are paired one-to-one by the assignment that
maximises the summed IoU (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``),
and a pair counts only when its IoU > 0 (they share >= 1 voxel). Matched truth lesions are
TP, unmatched truth lesions FN, unmatched predicted components FP; so a predicted blob
bridging two lesions detects one of them (the one with the larger IoU), the other is FN.
Lesion F1 = 2 TP / (2 TP + FP + FN); 1 when neither mask has any lesion. Per-lesion Dice
and (when ``spacing`` is given) per-lesion NSD compare each truth lesion with its matched
component (0 for a missed lesion).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from medseg.errors import ConfigError
from medseg.metrics.surface import SurfaceDistances

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


def match_lesions(
    pair_truth: np.ndarray, pair_pred: np.ndarray, iou: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one (truth, pred) label pairs maximising summed IoU over the overlapping pairs.

    The overlap graph is split into its connected groups first, so the assignment only ever
    runs on lesions that compete for the same components (usually a single pair).
    """
    if pair_truth.size == 0:
        return pair_truth, pair_pred
    truths, t_index = np.unique(pair_truth, return_inverse=True)
    preds, p_index = np.unique(pair_pred, return_inverse=True)
    n_t = truths.size
    graph = sparse.coo_matrix(
        (np.ones(iou.size), (t_index, n_t + p_index)), shape=(n_t + preds.size,) * 2
    )
    _, group = connected_components(graph, directed=False)
    pair_group = group[t_index]
    matched_t: list[int] = []
    matched_p: list[int] = []
    order = np.argsort(pair_group, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_group[order])) + 1
    for members in np.split(order, bounds):
        if members.size == 1:
            matched_t.append(int(pair_truth[members[0]]))
            matched_p.append(int(pair_pred[members[0]]))
            continue
        rows, row_of = np.unique(pair_truth[members], return_inverse=True)
        cols, col_of = np.unique(pair_pred[members], return_inverse=True)
        cost = np.zeros((rows.size, cols.size))
        cost[row_of, col_of] = iou[members]
        r, c = linear_sum_assignment(cost, maximize=True)
        keep = cost[r, c] > 0
        matched_t.extend(int(v) for v in rows[r[keep]])
        matched_p.extend(int(v) for v in cols[c[keep]])
    return np.asarray(matched_t, dtype=np.int64), np.asarray(matched_p, dtype=np.int64)


def _pair_nsd(
    truth_labels: np.ndarray,
    pred_labels: np.ndarray,
    t: int,
    p: int,
    boxes_t: list,
    boxes_p: list,
    spacing: tuple[float, float, float],
    tolerance_mm: float,
) -> float:
    """NSD of one truth lesion and its matched component, on their joint bounding box."""
    box = tuple(
        slice(min(a.start, b.start), max(a.stop, b.stop))
        for a, b in zip(boxes_t[t - 1], boxes_p[p - 1], strict=True)
    )
    distances = SurfaceDistances.of(pred_labels[box] == p, truth_labels[box] == t, spacing)
    return distances.surface_dice(tolerance_mm)


def lesion_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    voxel_ml: float,
    connectivity: int = 26,
    *,
    spacing: tuple[float, float, float] | None = None,
    tolerance_mm: float = 1.0,
) -> dict[str, object]:
    """Lesion counts, F1 and per-lesion Dice/NSD/volume (truth lesions in label order)."""
    if connectivity not in _STRUCTURES:
        raise ConfigError(f"lesion connectivity must be 6 or 26, got {connectivity}")
    structure = _STRUCTURES[connectivity]
    truth_labels, n_truth = ndimage.label(truth, structure)
    pred_labels, n_pred = ndimage.label(pred, structure)
    pair_truth, pair_pred, shared = _pair_overlaps(truth_labels, pred_labels, n_truth, n_pred)
    truth_sizes = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    iou = shared / (truth_sizes[pair_truth] + pred_sizes[pair_pred] - shared)
    matched_t, matched_p = match_lesions(pair_truth, pair_pred, iou)
    pairs = zip(pair_truth.tolist(), pair_pred.tolist(), strict=True)
    shared_of = dict(zip(pairs, shared.tolist(), strict=True))
    lesion_dice = np.zeros(n_truth)
    lesion_nsd = np.zeros(n_truth)
    if spacing is not None and matched_t.size:
        boxes_t = ndimage.find_objects(truth_labels)
        boxes_p = ndimage.find_objects(pred_labels)
    for t, p in zip(matched_t.tolist(), matched_p.tolist(), strict=True):
        lesion_dice[t - 1] = 2.0 * shared_of[(t, p)] / (truth_sizes[t] + pred_sizes[p])
        if spacing is not None:
            lesion_nsd[t - 1] = _pair_nsd(
                truth_labels, pred_labels, t, p, boxes_t, boxes_p, spacing, tolerance_mm
            )
    tp = int(matched_t.size)
    fp = int(n_pred - tp)
    fn = int(n_truth - tp)
    denominator = 2 * tp + fp + fn
    result: dict[str, object] = {
        "lesion_tp": tp,
        "lesion_fp": fp,
        "lesion_fn": fn,
        "lesion_f1": 1.0 if denominator == 0 else 2.0 * tp / denominator,
        "lesion_dice_mean": float(lesion_dice.mean()) if n_truth else float("nan"),
        "lesion_dice": [float(v) for v in lesion_dice],
        "lesion_volume_truth_ml": [float(n) * voxel_ml for n in truth_sizes[1:]],
    }
    if spacing is not None:
        result["lesion_nsd_mean"] = float(lesion_nsd.mean()) if n_truth else float("nan")
        result["lesion_nsd"] = [float(v) for v in lesion_nsd]
    return result
