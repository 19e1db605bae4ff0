"""ONNX export: same numbers as PyTorch, the runtime's I/O contract, a valid card, INT8."""

from __future__ import annotations

import errno
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from medseg.cli import main
from medseg.cli.model import PARITY_TOLERANCE
from medseg.model import build_sam2unet
from medseg.model.checkpoint import save_checkpoint
from medseg.model.export import ParityReport, sha256_of
from medseg.modelcard import ModelCard, load_card_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory, shared_dir):
    weights = np.load(shared_dir / "fixtures/sam2unet/micro_state_dict.npz")
    model = build_sam2unet("micro").eval()
    model.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files}, strict=True)
    path = tmp_path_factory.mktemp("ckpt") / "micro.pth"
    torch.save(model.state_dict(), path)  # the published (plain state_dict) format
    return path, model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, micro_checkpoint, shared_dir):
    path, _ = micro_checkpoint
    out = tmp_path_factory.mktemp("onnx") / "micro.onnx"
    check = shared_dir / "data/dcmqi/ct-3slice"
    argv = ["model", "export", "--checkpoint", str(path), "--config", "micro", "-o", str(out)]
    assert main([*argv, "--check-data", str(check)]) == 0
    return out


def test_onnx_matches_pytorch_within_1e4_for_several_batch_sizes(exported, micro_checkpoint):
    _, model = micro_checkpoint
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for n in (1, 3):
        batch = rng.standard_normal((n, 3, 352, 352)).astype(np.float32)
        (ours,) = session.run(["logits"], {"image": batch})
        with torch.inference_mode():
            reference = model(torch.from_numpy(batch))[0].numpy()
        assert ours.shape == (n, 1, 352, 352)
        np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


def test_exported_graph_has_the_runtime_contract(exported):
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("image", "logits")
    assert inp.shape[1:] == [3, 352, 352] and isinstance(inp.shape[0], str)
    assert out.shape[1:] == [1, 352, 352]


def test_card_validates_and_describes_the_file(exported):
    card = load_card_for(exported)
    assert card.architecture == "SAM2-UNet"
    assert card.batch is None and not card.quantized
    assert card.extra["sha256"] == sha256_of(exported)
    assert card.extra["config_name"] == "micro"
    assert card.extra["config"]["embed_dim"] == 16
    parity = card.extra["provenance"]["parity"]
    assert parity["real_slices"] == 3
    assert parity["random_max_abs_diff"] < 1e-4 and parity["real_max_abs_diff"] < 1e-4
    assert 0 < parity["logit_scale"] < math.inf
    assert "not for clinical use" in card.intended_use


def test_fp32_parity_bound_scales_with_the_logits_but_still_catches_a_wrong_graph():
    absolute, relative = PARITY_TOLERANCE["fp32"]
    # 5.8e-3 is what a trained phantom model (logits up to about 40) really differed by
    trained = ParityReport(2e-3, 5.8e-3, 32, logit_scale=40.0)
    assert trained.worst == 5.8e-3 and trained.worst <= trained.limit(absolute, relative)
    fresh = ParityReport(2e-3, 5.8e-3, 32, logit_scale=0.5)
    assert fresh.worst > fresh.limit(absolute, relative)
    wrong_graph = ParityReport(0.4, None, 0, logit_scale=40.0)
    assert wrong_graph.worst > wrong_graph.limit(absolute, relative)


def test_static_int8_export_reports_finite_accuracy_loss(
    tmp_path, micro_checkpoint, shared_dir, capsys
):
    path, _ = micro_checkpoint
    out = tmp_path / "micro_int8.onnx"
    argv = [
        "model",
        "export",
        "--checkpoint",
        str(path),
        "--config",
        "micro",
        "-o",
        str(out),
        "--static",
        "--int8",
        "--calibration",
        str(shared_dir / "data/dcmqi/ct-3slice"),
    ]
    assert main(argv) == 0
    assert "int8" in capsys.readouterr().out
    card = load_card_for(out)
    assert card.quantized and card.batch == 1
    quant = card.extra["provenance"]["quantization"]
    assert quant["method"] == "static-qdq" and quant["heldout_slices"] >= 1
    fp32, int8 = quant["rows"]
    for value in (*fp32.values(), *int8.values()):
        assert not isinstance(value, float) or math.isfinite(value)
    assert int8["file_mb"] < fp32["file_mb"] / 2  # weights really are 8-bit
    assert 0.0 < int8["mean_abs_dlogit"] < 1.0
    assert 0.5 < int8["dice_vs_fp32"] <= 1.0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 352, 352]
    ops = {node.op_type for node in __import__("onnx").load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_int8_without_calibration_fails_cleanly_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x.onnx"
    argv = [
        "model",
        "export",
        "--checkpoint",
        "none",
        "--config",
        "micro",
        "-o",
        str(out),
        "--int8",
    ]
    assert main(argv) == 3
    assert "--calibration" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_output_must_be_an_onnx_file(tmp_path, capsys):
    argv = [
        "model",
        "export",
        "--checkpoint",
        "none",
        "--config",
        "micro",
        "-o",
        str(tmp_path / "x.pth"),
    ]
    assert main(argv) == 3
    assert ".onnx" in capsys.readouterr().err


def test_medseg_checkpoint_exports_without_config_and_keeps_training_notes(tmp_path):
    ckpt = tmp_path / "own.pth"
    save_checkpoint(
        ckpt,
        build_sam2unet("phantom"),
        config_name="phantom",
        training={"val_dice": 0.5, "window": "liver"},
    )
    out = tmp_path / "own.onnx"
    assert main(["model", "export", "--checkpoint", str(ckpt), "-o", str(out), "--static"]) == 0
    card = load_card_for(out)
    assert card.extra["training"]["val_dice"] == 0.5
    assert card.default_ct_window == "liver" and card.batch == 1


def test_an_export_that_fails_its_parity_check_leaves_the_old_model_in_place(
    tmp_path, monkeypatch, capsys
):
    ckpt = tmp_path / "p.pth"
    save_checkpoint(ckpt, build_sam2unet("phantom"), config_name="phantom")
    out = tmp_path / "p.onnx"
    argv = ["model", "export", "--checkpoint", str(ckpt), "-o", str(out)]
    assert main(argv) == 0
    before = (out.read_bytes(), load_card_for(out))
    monkeypatch.setitem(PARITY_TOLERANCE, "fp32", (-1.0, 0.0))  # no difference can pass
    assert main(argv) != 0
    assert "ONNX Runtime differs from PyTorch" in capsys.readouterr().err
    assert (out.read_bytes(), load_card_for(out)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "p.onnx", "p.pth"]


def test_an_export_whose_card_cannot_be_written_leaves_the_old_model_and_card(
    tmp_path, monkeypatch, capsys
):
    ckpt = tmp_path / "p.pth"
    save_checkpoint(ckpt, build_sam2unet("phantom"), config_name="phantom")
    out = tmp_path / "p.onnx"
    argv = ["model", "export", "--checkpoint", str(ckpt), "-o", str(out)]
    assert main(argv) == 0
    before = (out.read_bytes(), load_card_for(out))

    def disk_full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ModelCard, "save", disk_full)
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    monkeypatch.undo()
    assert (out.read_bytes(), load_card_for(out)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "p.onnx", "p.pth"]


@pytest.mark.parametrize(("asked", "expected"), [([], 2.5), (["--slice-context", "0"], 0.0)])
def test_card_slice_context_is_the_checkpoints_unless_asked_otherwise(tmp_path, asked, expected):
    ckpt = tmp_path / "ctx.pth"
    training = {"slice_context_mm": 2.5}
    save_checkpoint(ckpt, build_sam2unet("phantom"), config_name="phantom", training=training)
    out = tmp_path / "ctx.onnx"
    assert main(["model", "export", "--checkpoint", str(ckpt), "-o", str(out), *asked]) == 0
    assert load_card_for(out).slice_context_mm == expected


def test_dynamic_int8_fallback_needs_no_calibration_and_stays_close(exported, tmp_path):
    from medseg.model.quantize import compare_precisions, quantize_int8

    out = tmp_path / "dyn.onnx"
    assert quantize_int8(exported, out, None, method="dynamic") == "dynamic"
    heldout = np.random.default_rng(5).standard_normal((2, 3, 352, 352)).astype(np.float32)
    fp32, int8 = compare_precisions(exported, {"int8": out}, heldout)
    assert fp32.mean_abs_dlogit == 0.0 and fp32.dice_vs_fp32 == 1.0
    assert math.isfinite(int8.mean_abs_dlogit) and 0.0 < int8.mean_abs_dlogit < 1.0
    assert int8.file_mb < fp32.file_mb


def test_card_asks_for_edge_refinement_only_when_exported_with_it(tmp_path, capsys):
    ckpt = tmp_path / "r.pth"
    save_checkpoint(ckpt, build_sam2unet("phantom"), config_name="phantom")
    out = tmp_path / "r.onnx"
    argv = ["model", "export", "--checkpoint", str(ckpt), "-o", str(out)]
    assert main(argv) == 0
    plain = load_card_for(out)
    assert (plain.refine_radius_mm, plain.refine_across_slices, plain.refine_rim_level) == (
        0.0,
        False,
        0.0,
    )
    refine = ["--refine-radius", "3", "--refine-eps", "2e-4", "--refine-across-slices"]
    assert plain.refine_rim_trim == 0.0
    rims = ["--refine-rim-level", "0.6", "--refine-rim-trim", "0.3"]
    assert main([*argv, *refine, *rims]) == 0
    card = load_card_for(out)
    assert (card.refine_radius_mm, card.refine_eps, card.refine_across_slices) == (3.0, 2e-4, True)
    assert (card.refine_rim_level, card.refine_rim_trim) == (0.6, 0.3)
    bad = tmp_path / "bad.onnx"
    argv[-1] = str(bad)
    for wrong, message in (
        (["--refine-radius", "-1"], "refinement radius"),
        (["--refine-rim-level", "1"], "rim level"),
        (["--refine-rim-level", "0.6", "--refine-rim-trim", "0.6"], "rim trim"),
    ):
        assert main([*argv, *wrong]) == 3
        assert message in capsys.readouterr().err
        assert not bad.exists() and not bad.with_suffix(".json").exists()


def test_export_into_a_missing_folder_is_refused_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "nonexist" / "x.onnx"
    argv = ["model", "export", "--checkpoint", "none", "--config", "micro", "-o", str(out)]
    assert main(argv) == 6
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err, err
    assert not out.parent.exists()


def test_info_on_a_missing_file_says_not_found(tmp_path, capsys):
    assert main(["model", "info", str(tmp_path / "nonexist.onnx")]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model file not found" in err, err
    assert "model card" not in err
