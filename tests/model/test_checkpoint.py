"""Checkpoints load strictly in the published formats and in medseg's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError, ModelError
from medseg.model import build_sam2unet
from medseg.model.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def reference_state(shared_dir):
    weights = np.load(shared_dir / "fixtures/sam2unet/micro_state_dict.npz")
    return {k: torch.from_numpy(weights[k]) for k in weights.files}


def _same_weights(model, state) -> bool:
    ours = model.state_dict()
    return all(torch.equal(ours[k], v) for k, v in state.items())


def test_plain_published_state_dict_loads_with_its_config(tmp_path, reference_state):
    path = tmp_path / "plain.pth"
    torch.save(reference_state, path)
    loaded = load_checkpoint(path, "micro")
    assert _same_weights(loaded.model, reference_state)
    assert loaded.config_name == "micro"


def test_state_dict_wrapped_in_model_key_loads(tmp_path, reference_state):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": reference_state, "epoch": 7}, path)
    loaded = load_checkpoint(path, "micro")
    assert _same_weights(loaded.model, reference_state)
    assert loaded.extra["epoch"] == 7


def test_medseg_checkpoint_rebuilds_the_model_without_a_config(tmp_path):
    model = build_sam2unet("phantom")
    path = tmp_path / "own.pth"
    save_checkpoint(path, model, config_name="phantom", training={"val_dice": 0.9})
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.extra["training"] == {"val_dice": 0.9}
    assert _same_weights(loaded.model, model.state_dict())


def test_published_checkpoint_without_config_asks_for_one(tmp_path, reference_state):
    path = tmp_path / "plain.pth"
    torch.save(reference_state, path)
    with pytest.raises(ConfigError, match="--config"):
        load_checkpoint(path)


def test_checkpoint_for_another_config_fails_strictly(tmp_path, reference_state):
    path = tmp_path / "plain.pth"
    torch.save(reference_state, path)
    with pytest.raises(ModelError, match="does not fit config phantom"):
        load_checkpoint(path, "phantom")


def test_medseg_checkpoint_with_conflicting_config_is_rejected(tmp_path):
    path = tmp_path / "own.pth"
    save_checkpoint(path, build_sam2unet("phantom"), config_name="phantom")
    with pytest.raises(ConfigError, match="different config"):
        load_checkpoint(path, "micro")


def test_a_file_that_is_not_a_checkpoint_is_a_model_error(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_checkpoint(path, "micro")


def test_missing_checkpoint_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "absent.pth", "micro")
