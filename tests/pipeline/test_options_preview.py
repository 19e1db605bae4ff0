"""SegmentOptions validation and the preview montage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.errors import ConfigError
from medseg.pipeline import SegmentOptions
from medseg.preprocess import IntensityWindow
from medseg.preview import preview_slices, write_preview
from tests.pipeline.helpers import balls, make_volume


@pytest.mark.parametrize(
    "fields",
    [
        {"threshold": 0.0},
        {"threshold": 1.0},
        {"threads": 0},
        {"batch_size": 0},
        {"seg_type": "LABELMAP"},
        {"series_number": 0},
        {"min_component_mm3": -1.0},
    ],
)
def test_bad_segment_options_are_config_errors(fields: dict) -> None:
    with pytest.raises(ConfigError):
        SegmentOptions(**fields)


def test_preview_slices_thins_evenly_and_falls_back_to_the_middle() -> None:
    mask = np.zeros((40, 4, 4), dtype=bool)
    assert preview_slices(mask, 16) == [20]
    mask[5:35, 1, 1] = True  # 30 slices with mask
    picks = preview_slices(mask, 16)
    assert len(picks) == 16 and picks[0] == 5 and picks[-1] == 34
    assert all(mask[k].any() for k in picks)
    assert preview_slices(mask[:8], 16) == [5, 6, 7]


def test_preview_png_shows_the_outline_in_red(tmp_path: Path) -> None:
    truth = balls((10, 48, 64), [(5, 24, 32)], 4)
    volume = make_volume(np.where(truth, 300.0, 0.0))
    path = write_preview(volume, truth, IntensityWindow(0, 300), tmp_path / "p.png")
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
    assert red.sum() > 50  # outlines drawn
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary file left


def test_preview_into_a_missing_folder_is_an_output_error(tmp_path: Path) -> None:
    from medseg.errors import OutputError

    volume = make_volume(np.zeros((2, 16, 16)))
    with pytest.raises(OutputError, match="cannot write preview"):
        write_preview(
            volume, np.zeros((2, 16, 16), bool), IntensityWindow(0, 1), tmp_path / "x" / "p.png"
        )
