"""The eval plot: bounded scores keep their 0-1 axis; a few cases are named on the plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from medseg.metrics.plot import draw_metrics, plot_metrics


def _rows(count: int) -> list[dict[str, object]]:
    return [
        {"case": f"case{i:02d}", "segment": "Lesion", "dice": 0.9842 + 0.0001 * i, "hd95": 1.0 + i}
        for i in range(count)
    ]


def test_dice_keeps_its_zero_to_one_axis_and_few_cases_are_named() -> None:
    figure = draw_metrics(_rows(5), ("dice", "hd95"))
    dice, hd95 = figure.axes[:2]
    assert dice.get_ylim() == (0.0, 1.02)  # not zoomed onto 0.9842-0.9846
    assert hd95.get_ylim()[1] < 10  # distances keep their own scale
    assert sorted(t.get_text() for t in dice.texts) == [f"case{i:02d}" for i in range(5)]
    plt.close(figure)


def test_many_cases_are_not_named_and_the_png_is_written(tmp_path: Path) -> None:
    figure = draw_metrics(_rows(30), ("dice",))
    assert not figure.axes[0].texts
    plt.close(figure)
    plot_metrics(_rows(30), tmp_path / "p.png", ("dice",))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
