"""A box plot per metric with one jittered point per case, for people who would rather look."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.durable import write_with
from medseg.errors import OutputError

PLOT_METRICS = ("dice", "iou", "nsd", "hd", "hd95", "assd", "rvd", "lesion_f1")
_UNITS = {"hd": "mm", "hd95": "mm", "assd": "mm"}
# scores bounded to [0, 1] keep that axis: an auto-zoomed 0.9842-0.9850 axis makes noise
# look like spread
BOUNDED = frozenset({"dice", "iou", "nsd", "lesion_f1"})
MAX_LABELLED_CASES = 12  # up to this many cases, each dot carries its case's name


def plot_metrics(
    rows: Sequence[dict[str, object]],
    path: Path,
    metrics: Sequence[str] = PLOT_METRICS,
    *,
    seed: int = 0,
) -> None:
    """Save a PNG: one panel per metric, one box per segment, one dot per case.

    Non-finite values (e.g. HD against an empty mask) cannot be drawn; each panel's title
    says how many were left out.
    """
    import matplotlib.pyplot as plt

    figure = draw_metrics(rows, metrics, seed=seed)
    path = Path(path)
    try:  # always PNG, whatever the suffix of ``path``
        write_with(path, lambda handle: figure.savefig(handle, dpi=100, format="png"))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(figure)


def draw_metrics(
    rows: Sequence[dict[str, object]], metrics: Sequence[str] = PLOT_METRICS, *, seed: int = 0
):  # -> matplotlib Figure
    """The figure ``plot_metrics`` saves (bounded scores on a 0-1 axis, few cases named)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segments = sorted({str(r["segment"]) for r in rows})
    columns = 4
    lines = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 3.0 * lines))
    rng = np.random.default_rng(seed)
    for ax, metric in zip(np.ravel(axes), metrics, strict=False):
        groups, names, dropped = [], [], 0
        for segment in segments:
            chosen = [r for r in rows if str(r["segment"]) == segment]
            values = np.array([float(r[metric]) for r in chosen], dtype=float)  # type: ignore[arg-type]
            dropped += int(np.count_nonzero(~np.isfinite(values)))
            groups.append(values[np.isfinite(values)])
            names.append(
                [str(r["case"]) for r, v in zip(chosen, values, strict=True) if np.isfinite(v)]
            )
        positions = np.arange(1, len(segments) + 1)
        ax.boxplot(groups, positions=positions, widths=0.5, showfliers=False)
        label = len({r["case"] for r in rows}) <= MAX_LABELLED_CASES
        for position, values, cases in zip(positions, groups, names, strict=True):
            jitter = rng.uniform(-0.15, 0.15, values.size)
            ax.scatter(position + jitter, values, s=12, alpha=0.7, zorder=3)
            for x, y, case in zip(position + jitter, values, cases, strict=True) if label else ():
                ax.annotate(case, (x, y), fontsize=6, xytext=(3, 0), textcoords="offset points")
        if metric in BOUNDED:
            ax.set_ylim(0.0, 1.02)
        long_labels = max(len(s) for s in segments) > 8
        ax.set_xticks(positions, segments, rotation=20 if long_labels else 0, fontsize=8)
        unit = f" ({_UNITS[metric]})" if metric in _UNITS else ""
        ax.set_title(metric + unit + (f"  [{dropped} non-finite]" if dropped else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in np.ravel(axes)[len(metrics) :]:
        ax.set_visible(False)
    figure.suptitle(f"{len({r['case'] for r in rows})} cases, one dot per case", fontsize=10)
    figure.tight_layout()
    return figure
