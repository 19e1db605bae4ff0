"""Fine-tuning: pairing, the structure loss, a smoke run whose loss falls, resume."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.errors import ConfigError, DicomInputError
from medseg.model.checkpoint import load_checkpoint, read_checkpoint_file
from medseg.model.data import SliceSet, find_pairs, sampling_weights
from medseg.model.losses import structure_loss
from medseg.model.train import (
    TrainOptions,
    _crop_batch,
    _gather,
    _slice_index,
    last_path,
    train,
)
from medseg.modelcard import ModelCard
from tests.dicom.series_factory import write_series
from tests.model.toy_data import toy_volume, write_toy_pair


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    uids = [write_toy_pair(root / f"case{i}", seed=i, nifti=i == 3) for i in range(4)]
    return root, uids


def test_pairs_come_from_seg_references_and_nifti_beside_its_series(toy_data):
    root, uids = toy_data
    pairs = {p.series_uid: p for p in find_pairs(root)}
    assert set(pairs) == set(uids)
    assert pairs[uids[3]].mask_path.name == "mask.nii.gz"
    assert all(pairs[u].mask_path.name == "truth.seg.dcm" for u in uids[:3])
    assert all(len(p.image_files) == 6 for p in pairs.values())


def test_a_folder_with_images_but_no_masks_is_a_clear_input_error(tmp_path):
    values, _ = toy_volume(0)
    write_series(tmp_path / "images", values)
    with pytest.raises(DicomInputError, match="no training pairs"):
        find_pairs(tmp_path)


def test_structure_loss_is_small_for_the_right_answer_and_large_for_the_wrong_one():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:40, 20:40] = 1.0
    right = structure_loss((mask * 2 - 1) * 20, mask)
    wrong = structure_loss((1 - mask * 2) * 20, mask)
    assert right < 0.01 < 1.0 < wrong


def test_structure_loss_weighs_boundary_errors_more_than_interior_ones():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1.0
    logits = (mask * 2 - 1) * 10
    edge, inner = logits.clone(), logits.clone()
    edge[..., 16, 20:30] = -10.0  # ten wrong pixels on the boundary
    inner[..., 32, 20:30] = -10.0  # ten wrong pixels in the middle
    assert structure_loss(edge, mask) > structure_loss(inner, mask)


def _scratch_options(root, output, **changes) -> TrainOptions:
    """A few seeded single-thread steps of `phantom` from random weights on the toy set."""
    fields = {
        "config": "phantom",
        "init": None,
        "unfreeze_encoder": True,
        "epochs": 2,
        "steps_per_epoch": 6,
        "batch_size": 2,
        "val_fraction": 0.25,
        "progress": False,
        "seed": 1,
        "threads": 1,
    }
    return TrainOptions(data=root, output=output, **{**fields, **changes})


@pytest.mark.slow
def test_training_smoke_run_lowers_the_loss_and_resumes(toy_data, tmp_path):
    root, _ = toy_data
    options = _scratch_options(root, tmp_path / "best.pth")
    result = train(options)
    first, second = result.history
    assert second.mean_loss < first.mean_loss
    assert result.best_val_dice is not None and 0.0 <= result.best_val_dice <= 1.0
    loaded = load_checkpoint(result.best_checkpoint)  # no config needed: it is stored
    assert loaded.config_name == "phantom"
    assert loaded.extra["training"]["series_val"] == 1

    resumed = train(TrainOptions(**{**vars(options), "epochs": 3, "resume": True}))
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    state = read_checkpoint_file(last_path(options.output))
    assert state["epoch"] == 2
    assert state["scheduler"]["T_max"] == 3 * options.steps_per_epoch  # stretched cosine


def test_lesion_slices_are_cropped_around_their_lesion_and_empty_ones_anywhere():
    rng = np.random.default_rng(0)
    images = rng.random((40, 96, 96), dtype=np.float32)
    masks = np.zeros_like(images)
    for i in range(20):  # one small lesion per slice, some at the very edge
        y, x = rng.integers(0, 94, size=2)
        masks[i, y : y + 3, x : x + 3] = 1.0
    card = ModelCard(name="t", input_size=(96, 96))  # stored slices are the model input
    extents = [(96, 96)] * 40
    crops, crop_masks = _crop_batch(list(images), list(masks), extents, (32, 32), card, rng)
    assert crops.shape == crop_masks.shape == (40, 32, 32)
    assert all(crop_masks[i].max() == 1.0 for i in range(20))
    assert not crop_masks[20:].any()
    for i in range(40):  # each crop is a window of its own slice, image and mask alike
        y, x = np.argwhere(images[i] == crops[i, 0, 0])[0]
        assert np.array_equal(images[i, y : y + 32, x : x + 32], crops[i])
        assert np.array_equal(masks[i, y : y + 32, x : x + 32], crop_masks[i])
    starts = {tuple(np.argwhere(images[i] == crops[i, 0, 0])[0]) for i in range(20, 40)}
    assert len(starts) > 10  # empty slices are not always cropped at the same place


@pytest.mark.parametrize(
    ("crop", "crop_epochs", "message"),
    [
        (16, None, "at least 32"),
        (96, 3, "crop-epochs"),
        (96, 0, "crop-epochs"),
        (None, 1, "--crop-epochs needs --crop"),
    ],
)
def test_crop_options_are_checked_when_given(tmp_path, crop, crop_epochs, message):
    with pytest.raises(ConfigError, match=message):
        TrainOptions(
            data=tmp_path, output=tmp_path / "o.pth", config="phantom", epochs=2,
            crop=crop, crop_epochs=crop_epochs,
        )  # fmt: skip


@pytest.mark.parametrize("crop", [100, 352, 480])
def test_a_crop_the_trunk_cannot_take_is_refused_before_loading_data(tmp_path, crop, capsys):
    args = ["train", "--data", str(tmp_path), "--init", "none", "--config", "phantom"]
    code = main([*args, "-o", str(tmp_path / "o.pth"), "--crop", str(crop)])
    assert code == 3
    assert "multiple of 32 and smaller than the 352x352" in capsys.readouterr().err


@pytest.mark.slow
def test_training_on_crops_then_whole_slices_records_it_and_lowers_the_loss(toy_data, tmp_path):
    root, _ = toy_data
    # 12 steps per epoch: over 6, the change in mean loss between two crop epochs is within
    # the batch-to-batch noise and its sign depends on which series the split holds out
    options = _scratch_options(
        root, tmp_path / "crop.pth", epochs=3, crop=96, crop_epochs=2, steps_per_epoch=12
    )
    result = train(options)
    first, second, whole = result.history  # losses on crops and on slices do not compare
    assert second.mean_loss < first.mean_loss
    assert whole.val_dice is not None
    training = load_checkpoint(last_path(options.output)).extra["training"]
    assert (training["crop"], training["crop_epochs"]) == (96, 2)


@pytest.mark.slow
def test_a_slice_context_run_is_recorded_and_reaches_the_exported_card(toy_data, tmp_path):
    """2.5-D training: the distance goes into the checkpoint and from there into the card."""
    root, _ = toy_data
    options = _scratch_options(root, tmp_path / "ctx.pth", epochs=1, slice_context_mm=2.5)
    result = train(options)
    assert result.history[0].val_dice is not None
    assert load_checkpoint(options.output).extra["training"]["slice_context_mm"] == 2.5
    onnx_path = tmp_path / "ctx.onnx"
    assert main(["model", "export", "--checkpoint", str(options.output), "-o", str(onnx_path)]) == 0
    assert ModelCard.load(onnx_path.with_suffix(".json")).slice_context_mm == 2.5


@pytest.mark.slow
def test_a_pixel_spacing_run_trains_and_validates_on_windows_and_its_card_keeps_it(
    toy_data, tmp_path
):
    """Windows at 0.1 mm: 44x50 source pixels of the 64x64 toy slices (0.8 x 0.7 mm), four
    per slice; crops of 96 model pixels cover 12x14 of them. Export calibrates on windows."""
    root, _ = toy_data
    options = _scratch_options(
        root, tmp_path / "px.pth", epochs=2, crop=96, crop_epochs=1, pixel_spacing_mm=0.1
    )
    result = train(options)
    assert [r.val_dice is not None for r in result.history] == [True, True]  # last crop epoch
    assert load_checkpoint(options.output).extra["training"]["pixel_spacing_mm"] == 0.1
    onnx_path = tmp_path / "px.onnx"
    data = str(next(root.iterdir()) / "images")
    args = ["--checkpoint", str(options.output), "-o", str(onnx_path), "--check-data", data]
    assert main(["model", "export", *args]) == 0
    card = ModelCard.load(onnx_path.with_suffix(".json"))
    assert card.pixel_spacing_mm == 0.1
    assert card.extra["provenance"]["parity"]["real_slices"] == 6 * 4  # slices x windows


def test_a_negative_slice_context_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="slice-context"):
        TrainOptions(
            data=tmp_path, output=tmp_path / "o.pth", config="phantom", slice_context_mm=-1
        )


@pytest.mark.slow
def test_frozen_encoder_trains_adapters_but_not_hiera_weights(toy_data, tmp_path):
    root, _ = toy_data
    init = tmp_path / "init.pth"
    from medseg.model import build_sam2unet
    from medseg.model.checkpoint import save_checkpoint

    save_checkpoint(init, build_sam2unet("phantom"), config_name="phantom")
    before = load_checkpoint(init).model.state_dict()
    options = TrainOptions(
        data=root,
        output=tmp_path / "ft.pth",
        init=str(init),
        epochs=1,
        steps_per_epoch=1,
        batch_size=2,
        val_fraction=0.0,
        progress=False,
    )
    after = load_checkpoint(train(options).best_checkpoint).model.state_dict()
    qkv = "encoder.blocks.0.block.attn.qkv.weight"
    adapter = "encoder.blocks.0.prompt_learn.0.weight"
    assert torch.equal(before[qkv], after[qkv])
    assert not torch.equal(before[adapter], after[adapter])
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_train_cli_reports_a_missing_init_checkpoint_without_traceback(tmp_path, capsys):
    code = main(
        [
            "train",
            "--data",
            str(tmp_path),
            "--init",
            str(tmp_path / "no.pth"),
            "-o",
            str(tmp_path / "o.pth"),
        ]
    )
    assert code == 3
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err


def test_cli_command_modules_do_not_import_torch():
    code = (
        "import sys, medseg.cli.model, medseg.cli.train; from medseg.cli import build_parser; "
        "build_parser(); sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_deep_supervision_sums_the_structure_loss_of_all_three_outputs():
    from medseg.model.losses import deep_supervision_loss

    gen = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 1, 48, 48, generator=gen) > 0.7).float()
    outs = tuple(torch.randn(2, 1, 48, 48, generator=gen) for _ in range(3))
    expected = sum(structure_loss(o, mask) for o in outs)
    assert torch.allclose(deep_supervision_loss(outs, mask), expected, atol=1e-6)


def test_separable_boundary_weight_equals_the_31x31_average_pool_definition():
    import torch.nn.functional as F

    from medseg.model.losses import boundary_weight

    mask = (torch.rand(2, 1, 80, 72, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    direct = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    assert torch.allclose(boundary_weight(mask), direct, atol=1e-5)


def _slice_set(masks):
    masks = np.asarray(masks, dtype=np.float32)
    return SliceSet("1.2.3", np.zeros_like(masks), masks)


def test_sampling_gives_lesion_slices_their_share_and_copes_with_no_lesion():
    """Lesion slices (mask >= 0.5) share ``lesion_share`` of the draws, empty ones the rest."""
    masks = np.zeros((8, 6, 6), dtype=np.float32)
    masks[0:4, 1:4, 1:4] = 1.0  # lesion on slices 0-3
    masks[6, 4, 4] = 0.4  # a soft edge below 0.5: not lesion
    empty = np.zeros((3, 6, 6), dtype=np.float32)
    weights = sampling_weights([_slice_set(masks), _slice_set(empty)], lesion_share=0.6)
    assert weights.sum() == pytest.approx(1.0)
    assert np.allclose(weights[0:4], 0.6 / 4)
    assert np.allclose(weights[4:], 0.4 / 7)
    uniform = sampling_weights([_slice_set(np.zeros((4, 8, 8)))])
    assert np.allclose(uniform, 0.25)


def test_batches_gather_the_right_slices_across_series():
    sets = [
        SliceSet(str(k), np.full((n, 2, 2), k, np.float32), np.full((n, 2, 2), -k, np.float32))
        for k, n in ((1, 3), (2, 1), (3, 4))
    ]
    card = ModelCard(name="t")
    images, masks, extents = _gather(_slice_index(sets), np.array([0, 3, 4, 7, 2]), card)
    assert [int(i[0, 0]) for i in images] == [1, 2, 3, 3, 1]
    assert [int(m[0, 0]) for m in masks] == [-1, -2, -3, -3, -1]
    assert extents == [(2, 2)] * 5  # without a card pixel spacing: the whole stored slice
    images[0][:] = 99  # copies: the data set is untouched
    masks[0][:] = 99
    assert sets[0].images.max() == 1 and sets[0].masks.max() == -1
