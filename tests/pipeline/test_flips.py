"""Test-time flips: the logits of mirrored views are flipped back and averaged.

The model here ignores the image and answers a left-to-right logit ramp, so it is anything
but mirror-symmetric: its right half is "lesion". Averaged with its horizontal mirror the
ramp cancels to logit 0 everywhere; a vertical mirror leaves it as it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from medseg.engine import open_engine
from medseg.errors import ConfigError
from medseg.modelcard import ModelCard
from medseg.pipeline import SegmentOptions, segment_volume
from tests.pipeline.helpers import make_volume
from tests.tiny_models import channel_slice, save_nchw_model

SIZE = (16, 16)


def _make_ramp_model(path: Path, flips: tuple[str, ...] = ()) -> ModelCard:
    ramp = np.linspace(-4.0, 4.0, SIZE[1], dtype=np.float32).reshape(1, 1, 1, SIZE[1])
    node, inits = channel_slice("ch0", 0)
    nodes = [
        node,
        helper.make_node("Mul", ["ch0", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "ramp"], ["logits"]),
    ]
    inits += [
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("ramp", TensorProto.FLOAT, ramp.shape, ramp.ravel().tolist()),
    ]
    save_nchw_model(path, "ramp", nodes, inits, SIZE)
    card = ModelCard(name="ramp", input_size=SIZE, test_time_flips=flips)
    card.save(path.with_suffix(".json"))
    return card


def _segment(tmp_path: Path, card_flips: tuple[str, ...], option: tuple[str, ...] | None):
    path = tmp_path / "ramp.onnx"
    card = _make_ramp_model(path, card_flips)
    volume = make_volume(np.zeros((3, *SIZE), dtype=np.float32))
    engine = open_engine(path, card, threads=1)
    try:
        return segment_volume(volume, engine, card, SegmentOptions(test_time_flips=option))
    finally:
        engine.close()


def test_without_flips_the_ramp_marks_the_right_half(tmp_path: Path) -> None:
    mask, probabilities = _segment(tmp_path, (), None)
    assert mask[:, :, SIZE[1] // 2 :].all() and not mask[:, :, : SIZE[1] // 2].any()
    assert probabilities[0, 0, -1] == pytest.approx(1 / (1 + np.exp(-4.0)), abs=1e-5)


def test_a_horizontal_flip_averages_the_ramp_with_its_mirror(tmp_path: Path) -> None:
    mask, probabilities = _segment(tmp_path, ("horizontal",), None)  # the card asks for it
    np.testing.assert_allclose(probabilities, 0.5, atol=1e-5)
    assert not mask.any()


def test_a_vertical_flip_leaves_a_left_right_ramp_alone(tmp_path: Path) -> None:
    mask, _ = _segment(tmp_path, (), ("vertical",))
    assert mask[:, :, SIZE[1] // 2 :].all() and not mask[:, :, : SIZE[1] // 2].any()


def test_the_job_option_overrides_the_card(tmp_path: Path) -> None:
    mask, _ = _segment(tmp_path, ("horizontal",), ())  # the card flips, the job says none
    assert mask[:, :, SIZE[1] // 2 :].all()


@pytest.mark.parametrize("flips", [("diagonal",), ("horizontal", "horizontal")])
def test_unknown_or_repeated_flips_are_refused(flips: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="test-time flips"):
        SegmentOptions(test_time_flips=flips)
    with pytest.raises(ConfigError, match="test_time_flips"):
        ModelCard(name="x", test_time_flips=flips)


def test_the_card_keeps_its_flips_through_json(tmp_path: Path) -> None:
    card = ModelCard(name="x", test_time_flips=("horizontal", "vertical"))
    card.save(tmp_path / "x.json")
    assert ModelCard.load(tmp_path / "x.json").test_time_flips == ("horizontal", "vertical")
