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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segments = sorted({str(r["segment"]) for r in rows})
    columns = 4
    lines = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 3.0 * lines))
    rng = np.random.default_rng(seed)
    for ax, metric in zip(np.ravel(axes), metrics, strict=False):
        groups, dropped = [], 0
        for segment in segments:
            values = np.array(
                [float(r[metric]) for r in rows if str(r["segment"]) == segment],  # type: ignore[arg-type]
                dtype=float,
            )
            dropped += int(np.count_nonzero(~np.isfinite(values)))
            groups.append(values[np.isfinite(values)])
        positions = np.arange(1, len(segments) + 1)
        ax.boxplot(groups, positions=positions, widths=0.5, showfliers=False)
        for position, values in zip(positions, groups, strict=True):
            jitter = rng.uniform(-0.15, 0.15, values.size)
            ax.scatter(position + jitter, values, s=12, alpha=0.7, zorder=3)
        long_labels = max(len(s) for s in segments) > 8
        ax.set_xticks(positions, segments, rotation=20 if long_labels else 0, fontsize=8)
        unit = f" ({_UNITS[metric]})" if metric in _UNITS else ""
        ax.set_title(metric + unit + (f"  [{dropped} non-finite]" if dropped else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in np.ravel(axes)[len(metrics) :]:
        ax.set_visible(False)
    figure.suptitle(f"{len({r['case'] for r in rows})} cases, one dot per case", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    try:  # always PNG, whatever the suffix of ``path``
        write_with(path, lambda handle: figure.savefig(handle, dpi=100, format="png"))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(figure)
