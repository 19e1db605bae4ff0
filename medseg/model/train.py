"""Fine-tuning SAM2-UNet on DICOM series with masks, following the SAM2-UNet recipe.

Encoder frozen (adapters + RFB + decoder trained) unless ``unfreeze_encoder``; structure
loss summed over the three outputs; AdamW with cosine decay; random flips; lesion slices
oversampled. The best checkpoint (by validation Dice) is kept at ``output`` and the latest
state, optimizer and scheduler included, at ``<output stem>.last.pth`` for ``resume``.

Validation scores whole series as they are served (tiled and blended at the card's pixel
spacing). Crop epochs are not validated, except the last one and one cut short by
``max_minutes``: their Dice on whole series is not what they train for, and a tiled
validation pass costs as much as tens of training steps.
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
from medseg.modelcard import ModelCard, check_pixel_spacing, check_slice_context
from medseg.postprocess import to_probabilities
from medseg.preprocess import channel0_values, resize_stack
from medseg.tiling import (
    Region,
    TileBlender,
    crop_padded,
    slice_regions,
    tile_extent,
    window_starts,
)

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
    pixel_spacing_mm: float = 0.0  # > 0: train on windows at this spacing (medseg.tiling)
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
        check_pixel_spacing(self.pixel_spacing_mm, "--pixel-spacing")
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
    """Mean over series of the Dice of the served mask against (mask >= 0.5) on all its slices.

    The slices are tiled and blended as at inference (``medseg.tiling``: one window per
    slice without a card pixel spacing) and thresholded at probability 0.5. Per series
    (1.0 when both are empty), like the evaluation of a segmented series: a pooled Dice
    would let one large lesion hide a missed small one or a false alarm on a lesion-free
    series.
    """
    model.eval()
    scores = []
    with torch.inference_mode():
        for s in sets:
            prediction = _predict_series(model, s, card, batch)
            pred, truth = prediction > np.float32(0.5), s.masks >= 0.5
            total = int(pred.sum()) + int(truth.sum())
            inter = int(np.logical_and(pred, truth).sum())
            scores.append(1.0 if total == 0 else 2.0 * inter / total)
    return float(np.mean(scores)) if scores else 1.0


def _predict_series(model: SAM2UNet, s: SliceSet, card: ModelCard, batch: int) -> np.ndarray:
    """Blended probabilities (n, H, W) of one stored series, window by window."""
    shape = s.masks.shape[1:]
    regions = slice_regions(shape, tile_extent(card, shape, s.pixel_spacing))
    blender = TileBlender(shape, regions)
    probabilities = np.zeros(s.masks.shape, dtype=np.float32)
    windows = [(k, r) for k in range(len(s.masks)) for r in regions]
    fill = _padding_value(card)
    for start in range(0, len(windows), batch):
        chunk = windows[start : start + batch]
        slices = {k: s.model_images([k], card)[0] for k in dict.fromkeys(k for k, _ in chunk)}
        planes = [crop_padded(slices[k], r, fill) for k, r in chunk]
        x = np.stack([_resized(plane, card.input_size) for plane in planes])
        logits = model(torch.from_numpy(to_model_input(x, card)))[0].numpy()
        probs = to_probabilities(logits, chunk[0][1].shape, card)
        for (k, region), prob in zip(chunk, probs, strict=True):
            blender.add(probabilities[k], region, prob)
    return blender.finish(probabilities)


def _padding_value(card: ModelCard) -> float:
    """Channel 0's value for a windowed 0 (what serving pads windows with)."""
    return float(channel0_values(0.0, card))


def _resized(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) or (C, H, W) resampled to ``size`` with the serving resize."""
    return resize_stack(planes.reshape(-1, *planes.shape[-2:]), size).reshape(
        *planes.shape[:-2], *size
    )


def _slice_index(sets: list[SliceSet]) -> list[tuple[SliceSet, int]]:
    """(series, slice) for every global slice number, built once per run.

    The series stay separate arrays: concatenating them would double peak memory (about
    8 GB for a hundred 40-slice series at 352x352).
    """
    return [(s, i) for s in sets for i in range(len(s.images))]


def _gather(
    index: list[tuple[SliceSet, int]], idx: np.ndarray, card: ModelCard
) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[int, int]]]:
    """Copies of the slices at global numbers ``idx`` (with the card's slice context), and
    the source pixels a whole model input covers on each (``medseg.tiling.tile_extent``)."""
    picked = [index[i] for i in idx]
    images = [s.model_images([i], card)[0] for s, i in picked]
    masks = [s.masks[i].copy() for s, i in picked]
    extents = [tile_extent(card, s.masks.shape[1:], s.pixel_spacing) for s, _ in picked]
    return images, masks, extents


def _flip_batch(
    images: list[np.ndarray], masks: list[np.ndarray], rng: np.random.Generator
) -> None:
    """Random vertical and horizontal flips, per sample, in place (images ([C,] H, W))."""
    for i in range(len(images)):
        for axis in (-2, -1):
            if rng.random() < 0.5:
                images[i] = np.flip(images[i], axis=axis)
                masks[i] = np.flip(masks[i], axis=axis)


def _crop_batch(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    extents: list[tuple[int, int]],
    size: tuple[int, int],
    card: ModelCard,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``size`` model pixels, each around a random lesion pixel when its slice
    has lesion, resampled from the source pixels they cover (``size / input_size`` of the
    slice's extent): the same scale as serving's windows.

    A window that covers the whole slice is the slice itself (no random draw). A 192-pixel
    crop costs about a third of a 352-pixel slice, so the same minutes see three times the
    lesions; the last epochs run on whole inputs so the network ends on the geometry (and
    position embedding) it is served with.
    """
    fill = _padding_value(card)
    out_images = np.empty((len(images), *images[0].shape[:-2], *size), dtype=np.float32)
    out_masks = np.empty((len(masks), *size), dtype=np.float32)
    for i, (image, mask, extent) in enumerate(zip(images, masks, extents, strict=True)):
        shape = mask.shape
        span = [round(n * e / m) for n, e, m in zip(size, extent, card.input_size, strict=True)]
        region = _place_window(mask, shape, span, rng)
        out_images[i] = _resized(crop_padded(image, region, fill), size)
        out_masks[i] = _resized(crop_padded(mask, region, 0.0), size)
    return out_images, out_masks


def _place_window(
    mask: np.ndarray, shape: tuple[int, int], span: list[int], rng: np.random.Generator
) -> Region:
    if span[0] >= shape[0] and span[1] >= shape[1]:
        top, left = (window_starts(n, w)[0] for n, w in zip(shape, span, strict=True))
    else:
        ys, xs = np.nonzero(mask >= 0.5)
        if len(ys):
            pick = int(rng.integers(len(ys)))
            top = _crop_start(int(ys[pick]), shape[0], span[0], rng)
            left = _crop_start(int(xs[pick]), shape[1], span[1], rng)
        else:
            top = _random_start(shape[0], span[0], rng)
            left = _random_start(shape[1], span[1], rng)
    return Region(top, top + span[0], left, left + span[1])


def _crop_start(inside: int, length: int, size: int, rng: np.random.Generator) -> int:
    """A random crop start in [0, length - size] whose crop covers pixel ``inside``
    (centred and padded as serving's windows when the crop is not smaller than the slice)."""
    if size >= length:
        return window_starts(length, size)[0]
    return int(rng.integers(max(0, inside - size + 1), min(length - size, inside) + 1))


def _random_start(length: int, size: int, rng: np.random.Generator) -> int:
    if size >= length:
        return window_starts(length, size)[0]
    return int(rng.integers(length - size + 1))


def check_crop(crop: int | None, model: SAM2UNet, input_size: tuple[int, int]) -> None:
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
    card = ModelCard(
        name="training",
        slice_context_mm=options.slice_context_mm,
        pixel_spacing_mm=options.pixel_spacing_mm,
    )
    model, config_name = _build_model(options)
    check_crop(options.crop, model, card.input_size)

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
        "pixel_spacing_mm": options.pixel_spacing_mm,
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
        size = (crop, crop) if crop is not None else card.input_size
        for _ in bar:
            idx = rng.choice(n_slices, size=options.batch_size, p=weights)
            images, masks, extents = _gather(slices, idx, card)
            _flip_batch(images, masks, rng)
            x_np, y_np = _crop_batch(images, masks, extents, size, card, rng)
            x = torch.from_numpy(to_model_input(x_np, card))
            y = torch.from_numpy(y_np)[:, None]
            loss = deep_supervision_loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        last = epoch + 1 == options.epochs
        elapsed = (time.monotonic() - started) / 60.0
        stopping = options.max_minutes is not None and elapsed > options.max_minutes and not last
        validate = bool(val_sets) and (
            crop is None or last or stopping or epoch + 1 == options.crop_epoch_count
        )
        val = dice_on_sets(model, val_sets, card) if validate else None
        record = EpochRecord(epoch + 1, float(np.mean(losses)), val, time.monotonic() - tick)
        history.append(record)
        score = val if val is not None else -record.mean_loss
        improved = (validate or not val_sets) and score > best_dice
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
        if stopping:
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
