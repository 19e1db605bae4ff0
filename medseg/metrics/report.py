"""Results out: JSON, CSV (one row per case and segment) and a terminal table.

Files are written to a temporary name and renamed, so a failed run leaves no partial file.
In JSON, NaN (undefined) becomes null and infinity the string "inf"; CSV keeps Python's
``nan``/``inf`` spellings, which ``float()`` and pandas read back.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from medseg.durable import write_text
from medseg.errors import OutputError
from medseg.metrics.cohort import MetricSummary
from medseg.metrics.evaluate import SCALAR_METRICS

ID_COLUMNS = ("case", "segment", "truth_segment", "pred_segment", "resampled")
FILE_COLUMNS = ("pred_file", "truth_file")
TABLE_METRICS = ("dice", "iou", "hd", "hd95", "assd", "nsd", "rvd", "lesion_f1")


def _json_value(value: object) -> object:
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _json_value(value.item())
    return value


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` via a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    try:
        write_text(path, text)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def to_json(report: dict[str, object]) -> str:
    return json.dumps(_json_value(report), indent=2, allow_nan=False) + "\n"


def to_csv(rows: Sequence[dict[str, object]]) -> str:
    """One line per case and segment: identifiers, every scalar metric, the two files."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = (*ID_COLUMNS, *SCALAR_METRICS, "tolerance_mm", *FILE_COLUMNS)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buffer.getvalue()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return "inf" if math.isinf(value) else f"{value:.3f}"
    return str(value)


def _table(header: Sequence[str], lines: Sequence[Sequence[str]], text_columns: int = 2) -> str:
    """Plain-text table: the first ``text_columns`` left-aligned, numbers right-aligned."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def join(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < text_columns else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([join(header), join(["-" * w for w in widths]), *map(join, lines)])


def format_cases(rows: Sequence[dict[str, object]]) -> str:
    """Per-case table of the main metrics (distances in mm)."""
    header = ("case", "segment", *TABLE_METRICS)
    lines = [
        (str(r["case"]), str(r["segment"]), *(_fmt(r[m]) for m in TABLE_METRICS)) for r in rows
    ]
    return _table(header, lines)


def format_summary(summary: dict[str, dict[str, MetricSummary]]) -> str:
    """Cohort table: one line per segment and metric with mean, median, std and 95% CI."""
    header = ("segment", "metric", "n", "mean", "median", "std", "95% CI", "non-finite")
    lines = []
    for segment, metrics in summary.items():
        for metric in (*TABLE_METRICS, "sensitivity", "precision"):
            s = metrics[metric]
            ci = f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]"
            lines.append(
                (
                    segment,
                    metric,
                    str(s.n),
                    _fmt(s.mean),
                    _fmt(s.median),
                    _fmt(s.std),
                    ci,
                    str(s.n_nonfinite),
                )
            )
    return _table(header, lines)


DEFINITIONS = {
    "surface": "mask voxels with a 6-connected (face) neighbour outside the mask or the array",
    "distances": "between surface voxel centres in mm (exact EDT, anisotropic spacing)",
    "hd": "max of the two directed maximum surface distances",
    "hd95": "max of the two directed 95th percentiles (linear interpolation)",
    "assd": "mean of the pooled directed surface distances of both surfaces",
    "nsd": "share of both surfaces within tolerance_mm of the other surface",
    "rvd": "(V_pred - V_truth) / V_truth",
    "lesions": "3-D connected components matched one-to-one (Hungarian, max summed IoU) "
    "among pairs with IoU > 0; unmatched truth = FN, unmatched pred = FP; "
    "F1 = 2TP / (2TP + FP + FN); per-lesion Dice and NSD vs the matched component",
    "empty": "both empty: dice=iou=nsd=lesion_f1=1, distances 0; one empty: dice=nsd=0, "
    "distances inf; 0/0 ratios are NaN (null in JSON)",
    "statistics": "over finite values only; 95% CI = percentile bootstrap of the mean",
}


def build_report(
    rows: Sequence[dict[str, object]],
    summary: dict[str, dict[str, MetricSummary]],
    *,
    options: dict[str, object],
    errors: Sequence[dict[str, str]] = (),
    unpaired: dict[str, list[str]] | None = None,
) -> dict[str, object]:
    """The JSON document: options, definitions, per-case rows, cohort summary, errors."""
    from medseg import __version__

    return {
        "medseg_version": __version__,
        "options": options,
        "definitions": DEFINITIONS,
        "cases": list(rows),
        "summary": {
            segment: {metric: s.to_dict() for metric, s in metrics.items()}
            for segment, metrics in summary.items()
        },
        "errors": list(errors),
        "unpaired": unpaired or {"pred": [], "truth": []},
    }
