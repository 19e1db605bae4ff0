"""Fine-tuning SAM2-UNet on DICOM series with masks, following the SAM2-UNet recipe.

Encoder frozen (adapters + RFB + decoder trained) unless ``unfreeze_encoder``; structure
loss summed over the three outputs; AdamW with cosine decay; random flips; lesion slices
oversampled. The best checkpoint (by validation Dice) is kept at ``output`` and the latest
state, optimizer and scheduler included, at ``<output stem>.last.pth`` for ``resume``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medseg.errors import ConfigError
from medseg.model.checkpoint import load_checkpoint, read_checkpoint_file, save_checkpoint
from medseg.model.config import resolve_config
from medseg.model.data import (
    SliceSet,
    find_pairs,
    load_pair,
    sampling_weights,
    split_series,
    to_model_input,
)
from medseg.model.losses import deep_supervision_loss
from medseg.model.sam2unet import SAM2UNet
from medseg.modelcard import ModelCard, check_slice_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run depends on (stored in the checkpoint for provenance)."""

    data: Path
    output: Path
    config: str | dict[str, Any] | None = None
    init: str | None = None  # checkpoint path, or None for random weights
    epochs: int = 20
    val_fraction: float = 0.2
    unfreeze_encoder: bool = False
    resume: bool = False
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    steps_per_epoch: int | None = None
    lesion_share: float = 0.5
    slice_context_mm: float = 0.0  # > 0: channels are the series at -d, 0, +d mm
    crop: int | None = None  # train the first crop_epochs epochs on square crops this size
    crop_epochs: int | None = None  # default: every epoch
    window: str | None = None
    seed: int = 0
    threads: int | None = None
    max_minutes: float | None = None
    progress: bool = True
    command: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("--epochs and --batch-size must be at least 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError("--steps-per-epoch must be at least 1")
        if not 0.0 < self.lesion_share < 1.0:
            raise ConfigError("--lesion-share must lie in (0, 1)")
        if self.crop is not None and self.crop < 32:
            raise ConfigError("--crop must be at least 32 pixels")
        if self.crop_epochs is not None and not 1 <= self.crop_epochs <= self.epochs:
            raise ConfigError("--crop-epochs must lie in [1, --epochs]")
        if self.crop_epochs is not None and self.crop is None:
            raise ConfigError("--crop-epochs needs --crop")
        check_slice_context(self.slice_context_mm, 3, "--slice-context")
        if self.init is None and self.config is None:
            raise ConfigError("training from scratch (--init none) needs --config")

    @property
    def crop_epoch_count(self) -> int:
        """How many leading epochs train on crops (0 without --crop)."""
        return (self.crop_epochs or self.epochs) if self.crop else 0


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    mean_loss: float
    val_dice: float | None
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    best_checkpoint: Path
    best_val_dice: float | None
    best_epoch: int
    history: tuple[EpochRecord, ...] = field(default_factory=tuple)


def last_path(output: Path) -> Path:
    """Where the resumable state lives beside the best checkpoint."""
    return Path(output).with_name(Path(output).stem + ".last.pth")


def dice_on_sets(model: SAM2UNet, sets: list[SliceSet], card: ModelCard, batch: int = 8) -> float:
    """Mean over series of the Dice of (logit > 0) against (mask >= 0.5) on all its slices.

    Per series (1.0 when both are empty), like the evaluation of a segmented series: a
    pooled Dice would let one large lesion hide a missed small one or a false alarm on a
    lesion-free series.
    """
    model.eval()
    scores = []
    with torch.inference_mode():
        for s in sets:
            inter = total = 0
            for start in range(0, len(s.images), batch):
                ks = np.arange(start, min(start + batch, len(s.images)))
                x = torch.from_numpy(to_model_input(s.model_images(ks, card), card))
                pred = model(x)[0][:, 0].numpy() > 0.0
                truth = s.masks[start : start + batch] >= 0.5
                inter += int(np.logical_and(pred, truth).sum())
                total += int(pred.sum()) + int(truth.sum())
            scores.append(1.0 if total == 0 else 2.0 * inter / total)
    return float(np.mean(scores)) if scores else 1.0


def _slice_index(sets: list[SliceSet]) -> list[tuple[SliceSet, int]]:
    """(series, slice) for every global slice number, built once per run.

    The series stay separate arrays: concatenating them would double peak memory (about
    8 GB for a hundred 40-slice series at 352x352).
    """
    return [(s, i) for s in sets for i in range(len(s.images))]


def _gather(
    index: list[tuple[SliceSet, int]], idx: np.ndarray, card: ModelCard
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the slices at global numbers ``idx`` (with the card's slice context)."""
    picked = [index[i] for i in idx]
    images = np.stack([s.model_images([i], card)[0] for s, i in picked])
    masks = np.stack([s.masks[i] for s, i in picked])
    return images, masks


def _flip_batch(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> None:
    """Random vertical and horizontal flips, per sample, in place (images (n, [C,] H, W))."""
    for i in range(len(images)):
        for axis in (-2, -1):
            if rng.random() < 0.5:
                images[i] = np.flip(images[i], axis=axis)
                masks[i] = np.flip(masks[i], axis=axis)


def _crop_batch(
    images: np.ndarray, masks: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Square crops, each around a random lesion pixel when its slice has lesion.

    A 192-pixel crop costs about a third of a 352-pixel slice, so the same minutes see three
    times the lesions; the last epochs run on whole slices so the network ends on the
    geometry (and position embedding) it is served with.
    """
    n, rows, cols = len(images), *images.shape[-2:]
    out_images = np.empty((*images.shape[:-2], size, size), dtype=images.dtype)
    out_masks = np.empty((n, size, size), dtype=masks.dtype)
    for i in range(n):
        ys, xs = np.nonzero(masks[i] >= 0.5)
        if len(ys):
            pick = int(rng.integers(len(ys)))
            top = _crop_start(int(ys[pick]), rows, size, rng)
            left = _crop_start(int(xs[pick]), cols, size, rng)
        else:
            top = int(rng.integers(rows - size + 1))
            left = int(rng.integers(cols - size + 1))
        out_images[i] = images[i, ..., top : top + size, left : left + size]
        out_masks[i] = masks[i, top : top + size, left : left + size]
    return out_images, out_masks


def _crop_start(inside: int, length: int, size: int, rng: np.random.Generator) -> int:
    """A random crop start in [0, length - size] whose crop covers pixel ``inside``."""
    return int(rng.integers(max(0, inside - size + 1), min(length - size, inside) + 1))


def _check_crop(crop: int | None, model: SAM2UNet, input_size: tuple[int, int]) -> None:
    """Refuse a crop the trunk cannot take before any time is spent loading or training."""
    if crop is None:
        return
    step = 4 * model.config.window_spec[0]  # patch stride x first window: the pos-embed tile
    if crop % step or crop >= min(input_size):
        raise ConfigError(
            f"--crop {crop}: must be a multiple of {step} and smaller than the "
            f"{input_size[0]}x{input_size[1]} model input"
        )


def _build_model(options: TrainOptions) -> tuple[SAM2UNet, str | None]:
    if options.init is None:
        config = options.config
        model = SAM2UNet(resolve_config(config))  # type: ignore[arg-type]
        return model, config if isinstance(config, str) else None
    loaded = load_checkpoint(Path(options.init), options.config)
    return loaded.model, loaded.config_name


def train(options: TrainOptions) -> TrainResult:
    """Run (or resume) a training job; returns where the best checkpoint is and its Dice."""
    threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        return _train(options)
    finally:
        torch.set_num_threads(threads)  # the thread count is process-wide: leave it as found


def _train(options: TrainOptions) -> TrainResult:
    started = time.monotonic()
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    # the default input contract the exported card keeps (plus the slice context)
    card = ModelCard(name="training", slice_context_mm=options.slice_context_mm)
    model, config_name = _build_model(options)
    _check_crop(options.crop, model, card.input_size)

    pairs = find_pairs(options.data)
    sets = [
        load_pair(p, card, options.window)
        for p in tqdm(pairs, desc="loading series", disable=not options.progress)
    ]
    train_sets, val_sets = split_series(sets, options.val_fraction, options.seed)
    del sets
    weights = sampling_weights(train_sets, options.lesion_share)
    slices = _slice_index(train_sets)
    n_slices = len(slices)
    n_lesion = int(sum(s.lesion_slices.sum() for s in train_sets))
    log.info(
        "%d training series (%d slices, %d with lesion), %d validation series",
        len(train_sets),
        n_slices,
        n_lesion,
        len(val_sets),
    )

    if options.init is None and not options.unfreeze_encoder:
        log.warning("random initial weights with a frozen encoder: consider --unfreeze-encoder")
    if not options.unfreeze_encoder:
        model.freeze_encoder()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    steps = options.steps_per_epoch or max(1, math.ceil(n_slices / options.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=options.epochs * steps, eta_min=options.lr * 1e-3
    )
    start_epoch, best_dice, best_epoch = 0, -math.inf, -1
    history: list[EpochRecord] = []
    if options.resume:
        state = _resume_state(options.output)
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # a resumed run may ask for more epochs: stretch the cosine over the new length
        scheduler.T_max = options.epochs * steps
        start_epoch = int(state["epoch"]) + 1
        best_dice, best_epoch = float(state["best_val_dice"]), int(state["best_epoch"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        history = [EpochRecord(**r) for r in state.get("history", [])]
        log.info("resuming at epoch %d (best Dice %.4f)", start_epoch + 1, best_dice)

    summary = {
        "data": str(options.data),
        "config_name": config_name,
        "init": options.init or "none",
        "unfreeze_encoder": options.unfreeze_encoder,
        "window": options.window or card.default_ct_window,
        "series_train": len(train_sets),
        "series_val": len(val_sets),
        "slices_train": n_slices,
        "crop": options.crop,
        "slice_context_mm": options.slice_context_mm,
        "crop_epochs": options.crop_epoch_count or None,
        "seed": options.seed,
        "command": options.command,
    }
    for epoch in range(start_epoch, options.epochs):
        tick = time.monotonic()
        model.train()
        losses = []
        bar = tqdm(
            range(steps),
            desc=f"epoch {epoch + 1}/{options.epochs}",
            disable=not options.progress,
            leave=False,
        )
        crop = options.crop if epoch < options.crop_epoch_count else None
        for _ in bar:
            idx = rng.choice(n_slices, size=options.batch_size, p=weights)
            x_np, y_np = _gather(slices, idx, card)
            _flip_batch(x_np, y_np, rng)
            if crop is not None:
                x_np, y_np = _crop_batch(x_np, y_np, crop, rng)
            x = torch.from_numpy(to_model_input(x_np, card))
            y = torch.from_numpy(y_np)[:, None]
            loss = deep_supervision_loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        val = dice_on_sets(model, val_sets, card) if val_sets else None
        record = EpochRecord(epoch + 1, float(np.mean(losses)), val, time.monotonic() - tick)
        history.append(record)
        score = val if val is not None else -record.mean_loss
        improved = score > best_dice
        if improved:
            best_dice, best_epoch = score, epoch + 1
        message = (
            f"epoch {epoch + 1}: loss {record.mean_loss:.4f}"
            + (f", val Dice {val:.4f}" if val is not None else "")
            + (" (best)" if improved else "")
        )
        if options.progress:
            tqdm.write(message)
        else:
            log.info("%s", message)
        training = {
            **summary,
            "epochs": epoch + 1,
            "best_epoch": best_epoch,
            "val_dice": best_dice if val_sets else None,
            "history": [vars(r) for r in history],
        }
        if improved:
            save_checkpoint(options.output, model, config_name=config_name, training=training)
        save_checkpoint(
            last_path(options.output),
            model,
            config_name=config_name,
            training=training,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            epoch=epoch,
            best_val_dice=best_dice,
            best_epoch=best_epoch,
            numpy_rng=rng.bit_generator.state,
            torch_rng=torch.get_rng_state(),
            history=[vars(r) for r in history],
        )
        elapsed = (time.monotonic() - started) / 60.0
        last = epoch + 1 == options.epochs
        if options.max_minutes is not None and elapsed > options.max_minutes and not last:
            log.warning("stopping after %.1f min (--max-minutes)", elapsed)
            break
    return TrainResult(options.output, best_dice if val_sets else None, best_epoch, tuple(history))


def _resume_state(output: Path) -> dict[str, Any]:
    path = last_path(output)
    if not path.is_file():
        raise ConfigError(f"--resume: no training state at {path}")
    state = read_checkpoint_file(path)
    if "optimizer" not in state:
        raise ConfigError(f"--resume: {path} holds no optimizer state")
    return state
