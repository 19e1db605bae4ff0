"""The bundled default model: present, small, documented, and a real SAM2-UNet graph."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from medseg.model.export import sha256_of
from medseg.modelcard import DEFAULT_MODEL_NAME, default_model_path, load_card_for


def test_bundled_model_is_the_default_and_its_card_describes_it():
    path = default_model_path()
    assert path.name == DEFAULT_MODEL_NAME
    assert path.stat().st_size <= 20 * 1024 * 1024
    card = load_card_for(path)
    assert card.architecture == "SAM2-UNet"
    assert card.extra["sha256"] == sha256_of(path)
    assert "not for clinical use" in card.intended_use
    training = card.extra["training"]
    assert "medseg train" in training["command"]
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
