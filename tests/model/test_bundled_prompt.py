"""The bundled promptable model, as a reader uses it: a click at a lesion's centre or a box
drawn tight around it, on series no medseg generator wrote (plain pydicom, CT and MR-like),
through ``medseg segment`` with no ``--model`` (prompts pick the bundled promptable model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.model.export import sha256_of
from medseg.modelcard import DEFAULT_PROMPT_MODEL_NAME, default_model_path, load_card_for
from tests.model.plain_series import write_plain_series
from tests.model.test_bundled import _segment_plain

pytestmark = pytest.mark.slow

PLAIN = {
    "CT": dict(modality="CT", matrix=320, fov_mm=240.0, slices=30, thickness=2.0),
    "MR": dict(modality="MR", matrix=256, fov_mm=300.0, slices=20, thickness=4.0),
}


def test_the_bundled_prompt_model_is_promptable_small_and_documented():
    path = default_model_path(prompted=True)
    assert path.name == DEFAULT_PROMPT_MODEL_NAME
    assert path.stat().st_size <= 20 * 1024 * 1024
    card = load_card_for(path)
    assert card.promptable and card.extra["sha256"] == sha256_of(path)
    assert "not for clinical use" in card.intended_use
    training = card.extra["training"]
    assert " train --synthetic " in training["command"]
    assert training["families"] == ["lobulated", "metaball"]  # rippled is held out


# Measured with sam2unet_prompt 1.0.0 (models/README.md): CT click 0.965, box 0.956; MR-like
# click 0.579, box 0.378 (the target is 0.85 for both: MR is not there yet, and
# these floors only keep what works from silently getting worse).
MIN_DICE = {
    ("CT", "point"): 0.9,
    ("CT", "box"): 0.9,
    ("MR", "point"): 0.45,
    ("MR", "box"): 0.3,
}


def _dice(mask: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * float((mask & truth).sum()) / float(mask.sum() + truth.sum())


@pytest.mark.parametrize("modality", ["CT", "MR"])
@pytest.mark.parametrize("prompt", ["point", "box"])
def test_a_click_or_a_tight_box_finds_the_lesion_in_3d(tmp_path: Path, modality, prompt):
    series = write_plain_series(tmp_path / "s", **PLAIN[modality])
    k, r, c = series.centre
    r0, c0, r1, c1 = series.box
    arg = (
        ["--point", f"{c},{r},{k}"] if prompt == "point" else ["--box", f"{c0},{r0},{c1},{r1}@{k}"]
    )
    mask = _segment_plain(series.folder, tmp_path / "out.seg.dcm", *arg)
    assert _dice(mask, series.lesion) >= MIN_DICE[modality, prompt]
    if modality == "CT":  # carried through the volume, and stopped where the lesion ends
        found = np.flatnonzero(mask.any(axis=(1, 2)))
        true = np.flatnonzero(series.lesion.any(axis=(1, 2)))
        assert abs(int(found[0]) - int(true[0])) <= 1 and abs(int(found[-1]) - int(true[-1])) <= 1
