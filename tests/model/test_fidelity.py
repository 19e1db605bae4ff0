"""The model definition is checkpoint-compatible with, and numerically equal to, SAM2-UNet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.model import NAMED_CONFIGS, Sam2UnetConfig, build_sam2unet

FIXTURES = "fixtures/sam2unet"


def _reference_keys(shared_dir) -> list[tuple[str, tuple[int, ...]]]:
    rows = (shared_dir / FIXTURES / "hiera_l_state_dict_keys.tsv").read_text().splitlines()[1:]
    out = []
    for row in rows:
        key, shape = row.split("\t")
        out.append((key, tuple(int(v) for v in shape.strip("()").split(",") if v.strip())))
    return out


def test_hiera_l_state_dict_has_exactly_the_published_keys_and_shapes(shared_dir):
    with torch.device("meta"):
        model = build_sam2unet("hiera_l")
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == _reference_keys(shared_dir)


def test_hiera_l_parameter_counts_match_the_reference(shared_dir):
    with torch.device("meta"):
        model = build_sam2unet("hiera_l")
    assert sum(p.numel() for p in model.parameters()) == 216_529_891
    model.freeze_encoder()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4_380_595


def test_micro_config_fixture_equals_the_named_micro_config(shared_dir):
    data = json.loads((shared_dir / FIXTURES / "micro_config.json").read_text())
    assert Sam2UnetConfig.from_dict(data) == NAMED_CONFIGS["micro"]


def test_micro_with_reference_weights_reproduces_all_three_outputs(shared_dir):
    weights = np.load(shared_dir / FIXTURES / "micro_state_dict.npz")
    io = np.load(shared_dir / FIXTURES / "micro_io.npz")
    model = build_sam2unet("micro").eval()
    model.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files}, strict=True)
    with torch.inference_mode():
        out, out1, out2 = model(torch.from_numpy(io["input"]))
    for name, ours in (("out", out), ("out1", out1), ("out2", out2)):
        assert ours.shape == io[name].shape
        np.testing.assert_allclose(ours.numpy(), io[name], atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("name", ["hiera_l", "hiera_b+", "hiera_s", "hiera_t", "phantom"])
def test_every_named_config_maps_352_input_to_three_352_logit_maps(name):
    with torch.device("meta"):
        model = build_sam2unet(name).eval()
        outputs = model(torch.empty(2, 3, 352, 352))
    assert [tuple(o.shape) for o in outputs] == [(2, 1, 352, 352)] * 3


def test_stage_widths_follow_embed_dim():
    with torch.device("meta"):
        model = build_sam2unet("hiera_b+")
        feats = model.encoder(torch.empty(1, 3, 352, 352))
    assert [tuple(f.shape) for f in feats] == [
        (1, 112, 88, 88),
        (1, 224, 44, 44),
        (1, 448, 22, 22),
        (1, 896, 11, 11),
    ]


def test_config_dict_with_unknown_field_is_a_config_error():
    fields = NAMED_CONFIGS["micro"].to_dict() | {"depth": 3}
    with pytest.raises(ConfigError, match="unknown field"):
        build_sam2unet(fields)


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="hiera_l"):
        build_sam2unet("hiera_xl")


def test_global_attention_block_outside_the_trunk_is_rejected():
    fields = NAMED_CONFIGS["micro"].to_dict() | {"global_att_blocks": [6]}
    with pytest.raises(ConfigError, match="global_att_blocks"):
        build_sam2unet(fields)


ORIGINAL_OUTPUTS = Path(__file__).with_name("fixtures") / "original_sam2unet_outputs.npz"


@pytest.mark.parametrize("name", ["hiera_l", "hiera_b+", "hiera_s", "hiera_t"])
def test_every_published_size_reproduces_the_original_code(name):
    """Given the same (deterministic, key-seeded) weights and input as the original
    SAM2-UNet code (tests/model/make_original_outputs.py), all three outputs agree to
    1e-5 of their range: numerical identity at full size, beyond the micro fixture."""
    from tests.model.reference_weights import reference_input, reference_state

    ref = np.load(ORIGINAL_OUTPUTS)
    stride = int(ref["stride"])
    model = build_sam2unet(name).eval()
    assert len(model.state_dict()) == int(ref[f"{name}/n_keys"])
    model.load_state_dict(reference_state(model), strict=True)
    with torch.inference_mode():
        outputs = model(torch.from_numpy(reference_input()))
    for label, ours in zip(("out", "out1", "out2"), outputs, strict=True):
        expected = ref[f"{name}/{label}"]
        got = ours[..., ::stride, ::stride].numpy()
        assert got.shape == expected.shape
        scale = max(1.0, float(np.abs(expected).max()))
        error = float(np.abs(got - expected).max()) / scale
        assert error < 1e-5, f"{name} {label}: max error {error:.2e} of range {scale:.1f}"
    del model
