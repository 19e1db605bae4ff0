"""Cohort statistics per segment and metric: mean, median, std and a bootstrap 95% CI.

Only finite values enter the statistics; NaN (undefined, e.g. sensitivity of an empty
truth) and inf (a distance to an empty mask) are counted in ``n_nonfinite`` instead, so one
missed structure cannot turn every mean into inf but is never silently hidden.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from medseg.metrics.evaluate import SCALAR_METRICS


@dataclass(frozen=True)
class MetricSummary:
    """Statistics of one metric over cases (NaN where undefined, e.g. no finite value)."""

    n: int
    n_nonfinite: int
    mean: float
    median: float
    std: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize_values(
    values: Iterable[float], *, seed: int = 0, n_boot: int = 2000, confidence: float = 0.95
) -> MetricSummary:
    """Summary of one metric; the CI is the percentile bootstrap of the mean (seeded)."""
    array = np.asarray([float(v) for v in values], dtype=np.float64)
    finite = array[np.isfinite(array)]
    n = int(finite.size)
    nonfinite = int(array.size - n)
    if n == 0:
        nan = float("nan")
        return MetricSummary(0, nonfinite, nan, nan, nan, nan, nan)
    mean = float(finite.mean())
    std = float(finite.std(ddof=1)) if n > 1 else 0.0
    if n == 1:
        low = high = mean
    else:
        rng = np.random.default_rng(seed)
        means = finite[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        tail = (1.0 - confidence) / 2.0 * 100.0
        low, high = (float(v) for v in np.percentile(means, [tail, 100.0 - tail]))
    return MetricSummary(n, nonfinite, mean, float(np.median(finite)), std, low, high)


def summarize(
    rows: Sequence[dict[str, object]],
    metrics: Sequence[str] = SCALAR_METRICS,
    *,
    seed: int = 0,
    n_boot: int = 2000,
) -> dict[str, dict[str, MetricSummary]]:
    """{segment label: {metric: summary}} over all case rows of that segment."""
    segments: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        segments.setdefault(str(row["segment"]), []).append(row)
    return {
        segment: {
            metric: summarize_values(
                (float(r[metric]) for r in group),  # type: ignore[arg-type]
                seed=seed,
                n_boot=n_boot,
            )
            for metric in metrics
        }
        for segment, group in segments.items()
    }
