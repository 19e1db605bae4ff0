"""Cohort statistics: summary values, the seeded bootstrap CI, non-finite handling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.metrics.cohort import summarize, summarize_values


def test_summary_of_known_values() -> None:
    s = summarize_values([1.0, 2.0, 3.0, 4.0, 10.0], seed=1)
    assert (s.n, s.n_nonfinite) == (5, 0)
    assert s.mean == pytest.approx(4.0) and s.median == pytest.approx(3.0)
    assert s.std == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1))
    assert 1.0 <= s.ci_low < s.mean < s.ci_high <= 10.0


def test_bootstrap_is_seeded_and_close_to_normal_theory_for_large_samples() -> None:
    values = np.random.default_rng(7).normal(0.8, 0.1, 400)
    first, again = summarize_values(values, seed=3), summarize_values(values, seed=3)
    other = summarize_values(values, seed=4)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert first.ci_high - first.ci_low == pytest.approx(2 * half_width, rel=0.15)
    assert first.ci_low < values.mean() < first.ci_high


def test_non_finite_values_are_counted_not_averaged() -> None:
    s = summarize_values([0.5, float("inf"), float("nan"), 1.5])
    assert (s.n, s.n_nonfinite) == (2, 2) and s.mean == pytest.approx(1.0)
    none = summarize_values([float("nan")])
    assert (none.n, none.n_nonfinite) == (0, 1) and math.isnan(none.mean)
    single = summarize_values([0.7])
    assert single.std == 0.0 and single.ci_low == single.ci_high == 0.7


def test_summarize_groups_rows_by_segment() -> None:
    rows = [
        {"segment": "Liver", "dice": 0.9},
        {"segment": "Liver", "dice": 0.8},
        {"segment": "Spleen", "dice": 0.5},
    ]
    summary = summarize(rows, ("dice",))
    assert summary["Liver"]["dice"].mean == pytest.approx(0.85)
    assert summary["Spleen"]["dice"].n == 1
