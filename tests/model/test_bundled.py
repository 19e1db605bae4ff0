"""The bundled default model: present, small, documented, and a real SAM2-UNet graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from medseg.cli import main
from medseg.model.export import sha256_of
from medseg.modelcard import DEFAULT_MODEL_NAME, default_model_path, load_card_for
from tests.model.plain_series import seg_mask, write_plain_series


def test_bundled_model_is_the_default_and_its_card_describes_it():
    path = default_model_path()
    assert path.name == DEFAULT_MODEL_NAME
    assert path.stat().st_size <= 20 * 1024 * 1024
    card = load_card_for(path)
    assert card.architecture == "SAM2-UNet"
    assert card.extra["sha256"] == sha256_of(path)
    assert "not for clinical use" in card.intended_use
    training = card.extra["training"]
    assert training["command"].startswith("medseg ") and " train --data " in training["command"]
    assert 0.0 < training["val_dice"] <= 1.0
    assert "medseg phantom" in card.extra["notes"]["trained_on"]


def test_bundled_model_runs_with_the_card_contract():
    path = default_model_path()
    card = load_card_for(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.zeros((1, card.channels, *card.input_size), dtype=np.float32)
    (logits,) = session.run([card.output_name], {card.input_name: batch})
    assert logits.shape == (1, 1, *card.input_size)
    assert np.isfinite(logits).all()


HELD_OUT_SEEDS = range(9000, 9010)  # never used for training (the card lists 1000-1047)


# The target on these ten seeds; 4.4.0 measures 0.865 here (0.855 on seeds
# 9000-9049, 0.847 on 9050-9099, models/README.md; 4.3.0 with the rims untrimmed: 0.862,
# 4.2.0 without the rims: 0.860, 4.1.0 without the refinement across slices: 0.854, 4.0.0
# without any refinement: 0.832), so this also guards the card's refinement. The margin
# is enough for other CPUs: adding noise of SD 0.5 to every logit (onnxruntime differs
# from itself across instruction sets by ~1e-5) moved 4.3.0's mean by at most 0.001.
MIN_MEAN_DICE = 0.85


def test_bundled_model_end_to_end_dice_on_fresh_phantoms(tmp_path):
    """As a user runs it: ``medseg phantom`` -> ``medseg segment`` (bundled model, no
    --model) -> ``medseg eval`` against the phantom truth, on seeds never trained on."""
    import json

    data, preds, truths = tmp_path / "data", tmp_path / "pred", tmp_path / "truth"
    first = str(HELD_OUT_SEEDS[0])
    assert main(["phantom", str(data), "--count", str(len(HELD_OUT_SEEDS)), "--seed", first]) == 0
    truths.mkdir()
    preds.mkdir()
    for folder in sorted(data.iterdir()):
        (folder / "truth.seg.dcm").rename(truths / f"{folder.name}.seg.dcm")
        out = preds / f"{folder.name}.seg.dcm"
        assert main(["segment", str(folder / "ct"), "-o", str(out), "--no-progress"]) == 0
    report = tmp_path / "eval.json"
    assert main(["eval", str(preds), str(truths), "--no-progress", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert len(result["cases"]) == len(HELD_OUT_SEEDS) and not result["errors"]
    assert result["summary"]["Lesion"]["dice"]["mean"] >= MIN_MEAN_DICE


# Series written with plain pydicom (tests/model/plain_series.py), by no medseg generator:
# an ellipsoid lesion (26 x 22 x 18 mm) in an organ, at 0.75 mm / 2 mm pixels / slices
# (CT), and the same anatomy without a lesion. 4.4.0 measures Dice 0.9998 and 0.00 ml
# (models/README.md). Its MR-like twin (tests/model/plain_series.py, modality "MR") gets
# Dice 0: the model has never seen MR, which is recorded there, not asserted here.
PLAIN_CT = dict(modality="CT", matrix=320, fov_mm=240.0, slices=30, thickness=2.0)


def _segment_plain(folder: Path, out: Path, *extra: str) -> np.ndarray:
    assert main(["segment", str(folder), "-o", str(out), "--no-progress", *extra]) == 0
    return seg_mask(out, folder)


def test_bundled_model_finds_a_lesion_no_medseg_generator_wrote(tmp_path: Path) -> None:
    series = write_plain_series(tmp_path / "ct", **PLAIN_CT)
    mask = _segment_plain(series.folder, tmp_path / "ct.seg.dcm")
    dice = 2.0 * float((mask & series.lesion).sum()) / float(mask.sum() + series.lesion.sum())
    assert dice >= 0.9, dice


def test_bundled_model_finds_at_most_a_millilitre_in_a_lesion_free_series(tmp_path: Path) -> None:
    series = write_plain_series(tmp_path / "free", lesion=False, seed=3, **PLAIN_CT)
    mask = _segment_plain(series.folder, tmp_path / "free.seg.dcm")
    assert float(mask.sum()) * (240.0 / 320) ** 2 * 2.0 / 1000 <= 1.0


def test_bundled_model_refuses_prompts_in_one_line(tmp_path: Path, capsys) -> None:
    """The bundled automatic model has no prompt input: a prompt given to it is refused,
    not guessed around (without --model a prompt picks the bundled promptable model,
    tests/model/test_bundled_prompt.py)."""
    series = write_plain_series(tmp_path / "ct", **PLAIN_CT)
    k, r, c = series.centre
    out = tmp_path / "pt.seg.dcm"
    argv = ["segment", str(series.folder), "-o", str(out), "--point", f"{c},{r},{k}"]
    argv += ["--model", str(default_model_path())]
    assert main(argv) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "takes no prompts" in err
    assert not out.exists()
