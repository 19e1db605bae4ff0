"""The promptable SAM2-UNet: the prompt enters the network; the published one is unchanged."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from medseg.cli import main
from medseg.engine import open_engine
from medseg.model import build_sam2unet
from medseg.model.checkpoint import load_checkpoint, save_checkpoint
from medseg.model.config import NAMED_CONFIGS
from medseg.model.train_synthetic import SyntheticTrainOptions, train_synthetic
from medseg.modelcard import load_card_for

pytestmark = pytest.mark.slow


def _twins():
    """The bundled prompt-free network and its promptable twin (BatchNorm decoder, as the
    prompt-free one: ``phantom_prompt`` itself uses GroupNorm)."""
    plain = build_sam2unet("phantom").eval()
    twin = replace(NAMED_CONFIGS["phantom_prompt"], decoder_norm="batch")
    prompted = build_sam2unet(twin).eval()
    missing = prompted.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("prompt_embed.") for k in missing)
    return plain, prompted


def test_the_prompt_free_network_has_exactly_the_published_keys():
    plain, prompted = _twins()
    extra = set(prompted.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("prompt_embed.") for k in extra)
    published = NAMED_CONFIGS["hiera_l"].to_dict()
    assert "prompt_channels" not in published and "decoder_norm" not in published


def test_a_group_norm_decoder_keeps_the_weights_and_drops_the_running_statistics():
    plain = build_sam2unet("phantom")
    grouped = build_sam2unet("phantom_prompt")
    assert isinstance(grouped.up1.conv.double_conv[1], torch.nn.GroupNorm)
    assert NAMED_CONFIGS["phantom_prompt"].to_dict()["decoder_norm"] == "group"
    buffers = {k for k in plain.state_dict() if k.endswith(("running_mean", "running_var"))}
    assert buffers and not buffers & set(grouped.state_dict())
    weights = (
        set(plain.state_dict())
        - buffers
        - {k for k in plain.state_dict() if k.endswith("num_batches_tracked")}
    )
    assert weights <= set(grouped.state_dict())


def test_a_fresh_prompt_embedding_leaves_the_network_as_it_was_until_trained():
    plain, prompted = _twins()
    x = torch.randn(2, 3, 352, 352)
    maps = torch.zeros(2, 2, 352, 352)
    maps[:, 0, 100:140, 100:140] = 1
    with torch.inference_mode():
        np.testing.assert_allclose(prompted(x, maps)[0], plain(x)[0], atol=1e-5)
        np.testing.assert_allclose(prompted(x)[0], plain(x)[0], atol=1e-5)
    torch.nn.init.normal_(prompted.prompt_embed.layers[-1].weight)
    with torch.inference_mode():
        assert not torch.allclose(prompted(x, maps)[0], prompted(x)[0], atol=1e-3)
    with pytest.raises(ValueError, match="no prompt input"):
        plain(x, maps)


def test_a_prompt_free_checkpoint_starts_its_promptable_twin(tmp_path: Path):
    plain, _ = _twins()
    path = tmp_path / "plain.pth"
    save_checkpoint(path, plain, config_name="phantom")
    loaded = load_checkpoint(path, "phantom_prompt")
    assert loaded.config.prompt_channels == 2 and loaded.config.decoder_norm == "group"
    torch.testing.assert_close(
        loaded.model.rfb1.conv_res.conv.weight, plain.rfb1.conv_res.conv.weight
    )
    with pytest.raises(Exception, match="different config"):
        load_checkpoint(path, "micro")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompted")
    torch.manual_seed(0)  # the same random network on every run
    model = build_sam2unet("phantom_prompt").eval()
    torch.nn.init.normal_(model.prompt_embed.layers[-1].weight, std=1.0)
    ckpt = folder / "prompted.pth"
    save_checkpoint(ckpt, model, config_name="phantom_prompt")
    out = folder / "prompted.onnx"
    assert main(["model", "export", "--checkpoint", str(ckpt), "-o", str(out)]) == 0
    return out, model


def test_the_exported_graph_takes_image_and_prompt_and_its_card_says_so(exported):
    path, model = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs) == ["image", "prompt"]
    assert inputs["prompt"][1:] == [2, 352, 352] and isinstance(inputs["prompt"][0], str)
    card = load_card_for(path)
    assert card.prompt_input == "prompt" and card.promptable
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 352, 352)).astype(np.float32)
    maps = np.zeros((2, 2, 352, 352), np.float32)
    maps[0, 0, 150:200, 150:200] = 1
    maps[1, 1, 40:46, 40:46] = 1
    engine = open_engine(path, card, threads=1)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x), torch.from_numpy(maps))[0].numpy()
        automatic = model(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(engine.run(x, maps), expected, atol=1e-3)
    np.testing.assert_allclose(engine.run(x), automatic, atol=1e-3)
    # the prompt changed the answer (well beyond the 1e-3 engine tolerance above)
    assert np.abs(expected - automatic).max() > 5e-3
    engine.close()


def test_a_static_export_fixes_both_inputs_at_one(exported, tmp_path):
    _, model = exported
    ckpt = tmp_path / "p.pth"
    save_checkpoint(ckpt, model, config_name="phantom_prompt")
    out = tmp_path / "static.onnx"
    assert main(["model", "export", "--checkpoint", str(ckpt), "-o", str(out), "--static"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.shape[0] for i in session.get_inputs()] == [1, 1]
    assert load_card_for(out).batch == 1


def test_synthetic_training_runs_and_records_what_it_drew_from(tmp_path: Path):
    options = SyntheticTrainOptions(
        output=tmp_path / "p.pth",
        families=("lobulated",),
        modalities=("CT", "MR"),
        epochs=2,
        steps_per_epoch=2,
        batch_size=2,
        validation_samples=4,
        threads=1,
        progress=False,
    )
    result = train_synthetic(options)
    assert result.best_checkpoint.is_file() and len(result.history) == 2
    assert 0.0 <= result.best_val_dice <= 1.0
    loaded = load_checkpoint(result.best_checkpoint)
    training = loaded.extra["training"]
    assert training["families"] == ["lobulated"] and training["modalities"] == ["CT", "MR"]
    assert loaded.config.promptable


def test_synthetic_training_needs_a_promptable_config_and_known_families(tmp_path, capsys):
    out = str(tmp_path / "x.pth")
    base = ["train", "--init", "none", "-o", out, "--epochs", "1", "--steps-per-epoch", "1"]
    assert main([*base, "--synthetic", "lobulated", "--config", "phantom"]) == 3
    assert "promptable config" in capsys.readouterr().err
    assert main([*base, "--synthetic", "cubes"]) == 3
    assert "families must be among" in capsys.readouterr().err
    for bad, words in (
        (["--auto-share", "2"], "--auto-share"),
        (["--crop", "100"], "--crop 100"),
        (["--crop", "96", "--crop-epochs", "5"], "--crop-epochs"),
    ):
        assert main([*base, "--synthetic", "lobulated", *bad]) == 3
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert not Path(out).exists()
