"""Training a promptable SAM2-UNet on scenes generated afresh in every step.

No folder of fixed series: every batch comes from ``medseg.synthetic.SampleStream``
(random scenes of the chosen generator families, CT and MR-like, random field of view and
slice thickness, simulated prompts). Validation scores a fixed set of samples drawn from
the same families with seeds training never uses, per prompt mode, so the checkpoint
kept is chosen on data of the training families only; held-out families are for
reporting (models/README.md), never for choosing.
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
from medseg.metrics.overlap import dice
from medseg.model.checkpoint import load_checkpoint, save_checkpoint
from medseg.model.config import resolve_config
from medseg.model.losses import deep_supervision_loss
from medseg.model.sam2unet import SAM2UNet
from medseg.model.train import check_crop, last_path
from medseg.modelcard import ModelCard
from medseg.synthetic.samples import MODES, Batch, SampleConfig, SampleStream
from medseg.synthetic.shapes import FAMILIES

log = logging.getLogger(__name__)
VALIDATION_SEED_OFFSET = 500_000  # validation scenes: a seed range training never draws
# of prompted samples: readers' clicks, boxes, and the rest clicks carried from a
# neighbouring slice (propagation)
POINT_SHARE, BOX_SHARE = 0.45, 0.25


@dataclass(frozen=True)
class SyntheticTrainOptions:
    output: Path
    families: tuple[str, ...] = ("lobulated", "metaball")
    modalities: tuple[str, ...] = ("CT", "MR")
    config: str | dict[str, Any] | None = "phantom_prompt"
    init: str | None = None
    epochs: int = 20
    steps_per_epoch: int = 250
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    slice_context_mm: float = 2.5
    validation_samples: int = 96
    crop: int | None = None  # train the first crop_epochs on windows this size
    crop_epochs: int = 0
    auto_share: float = 0.3
    seed: int = 0
    threads: int | None = None
    max_minutes: float | None = None
    progress: bool = True
    command: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not self.families:
            raise ConfigError(f"--synthetic: families must be among {', '.join(FAMILIES)}")
        if set(self.modalities) - {"CT", "MR"} or not self.modalities:
            raise ConfigError("--modalities: CT and/or MR")
        if self.epochs < 1 or self.batch_size < 1 or self.steps_per_epoch < 1:
            raise ConfigError("--epochs, --batch-size and --steps-per-epoch must be at least 1")
        if not 0.0 <= self.auto_share < 1.0:
            raise ConfigError(f"--auto-share must lie in [0, 1), got {self.auto_share}")
        if self.crop is not None and not 1 <= self.crop_epochs <= self.epochs:
            raise ConfigError("--crop-epochs must lie in [1, --epochs]")


@dataclass(frozen=True)
class SyntheticTrainResult:
    best_checkpoint: Path
    best_val_dice: float
    best_epoch: int
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)


def normalise(unit: np.ndarray, card: ModelCard) -> np.ndarray:
    """(N, C, H, W) windowed [0, 1] channels -> the card's per-channel normalisation."""
    mean = np.asarray(card.mean, np.float32)[None, :, None, None]
    std = np.asarray(card.std, np.float32)[None, :, None, None]
    return (unit - mean) / std


def _sample_config(options: SyntheticTrainOptions, **overrides: Any) -> SampleConfig:
    return SampleConfig(
        families=options.families,
        modalities=options.modalities,
        auto_share=options.auto_share,
        point_share=POINT_SHARE,
        box_share=BOX_SHARE,
        **overrides,
    )


def _validation_set(options: SyntheticTrainOptions, card: ModelCard) -> Batch:
    config = _sample_config(options, seed_offset=VALIDATION_SEED_OFFSET, pool=1, draws_per_slab=1)
    stream = SampleStream(config, card, seed=options.seed + 12345)
    return stream.batch(options.validation_samples)


def validate(model: SAM2UNet, data: Batch, card: ModelCard) -> dict[str, float]:
    """Mean per-sample Dice, overall and per prompt mode (``dice_point``, ...)."""
    model.eval()
    scores = []
    with torch.inference_mode():
        for start in range(0, len(data.units), 8):
            x = torch.from_numpy(normalise(data.units[start : start + 8], card))
            p = torch.from_numpy(data.prompts[start : start + 8])
            logits = model(x, p)[0][:, 0].numpy()
            for i, logit in enumerate(logits):
                scores.append(dice(logit > 0, data.targets[start + i] >= 0.5))
    s, modes = np.asarray(scores), np.asarray(data.modes)
    out = {"dice": float(s.mean())}
    for mode in MODES:
        chosen = modes == mode
        out[f"dice_{mode}"] = float(s[chosen].mean()) if chosen.any() else math.nan
    return out


def train_synthetic(options: SyntheticTrainOptions) -> SyntheticTrainResult:
    threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        return _train(options)
    finally:
        torch.set_num_threads(threads)


def _train(options: SyntheticTrainOptions) -> SyntheticTrainResult:
    started = time.monotonic()
    torch.manual_seed(options.seed)
    card = ModelCard(name="training", slice_context_mm=options.slice_context_mm)
    if options.init is None:
        model = SAM2UNet(resolve_config(options.config))  # type: ignore[arg-type]
        config_name = options.config if isinstance(options.config, str) else None
    else:
        loaded = load_checkpoint(Path(options.init), options.config)
        model, config_name = loaded.model, loaded.config_name
    if not model.config.promptable:
        raise ConfigError("synthetic training simulates prompts: use a promptable config")
    check_crop(options.crop, model, card.input_size)  # before any scene is rendered
    stream = SampleStream(
        _sample_config(options, draws_per_slab=6 if options.crop else 4), card, seed=options.seed
    )
    val_data = _validation_set(options, card)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    total = options.epochs * options.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=options.lr, total_steps=total, pct_start=0.05
    )
    summary = {
        "data": "synthetic (generated on the fly)",
        "families": list(options.families),
        "modalities": list(options.modalities),
        "config_name": config_name,
        "init": options.init or "none",
        "slice_context_mm": options.slice_context_mm,
        "batch_size": options.batch_size,
        "steps_per_epoch": options.steps_per_epoch,
        "validation_samples": options.validation_samples,
        "crop": options.crop,
        "crop_epochs": options.crop_epochs or None,
        "auto_share": options.auto_share,
        "seed": options.seed,
        "command": options.command,
    }
    best, best_epoch, history = -math.inf, -1, []
    for epoch in range(options.epochs):
        tick = time.monotonic()
        model.train()
        losses = []
        bar = tqdm(
            range(options.steps_per_epoch),
            desc=f"epoch {epoch + 1}",
            disable=not options.progress,
            leave=False,
        )
        for _ in bar:
            crop = options.crop if epoch < options.crop_epochs else None
            batch = stream.batch(options.batch_size, crop)
            x = torch.from_numpy(normalise(batch.units, card))
            y = torch.from_numpy(batch.targets)[:, None]
            loss = deep_supervision_loss(model(x, torch.from_numpy(batch.prompts)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        scores = validate(model, val_data, card)
        cropped = epoch < options.crop_epochs
        record = {
            "epoch": epoch + 1,
            "mean_loss": float(np.mean(losses)),
            **scores,
            "seconds": time.monotonic() - tick,
        }
        history.append(record)
        # crop epochs do not train for the served geometry: the kept epoch is a whole-input
        # one (unless the run has none)
        improved = scores["dice"] > best and (not cropped or options.crop_epochs >= options.epochs)
        if improved:
            best, best_epoch = scores["dice"], epoch + 1
        log.warning(
            "epoch %d: loss %.4f, val Dice %.4f (%s)%s",
            epoch + 1,
            record["mean_loss"],
            scores["dice"],
            ", ".join(f"{mode} {scores['dice_' + mode]:.3f}" for mode in MODES),
            " (best)" if improved else "",
        )
        training = {
            **summary,
            "epochs": epoch + 1,
            "best_epoch": best_epoch,
            "val_dice": best,
            "history": history,
        }
        if improved:
            save_checkpoint(options.output, model, config_name=config_name, training=training)
        save_checkpoint(
            last_path(options.output), model, config_name=config_name, training=training
        )
        elapsed = (time.monotonic() - started) / 60
        if options.max_minutes is not None and elapsed > options.max_minutes:
            log.warning("stopping after %.1f min (--max-minutes)", elapsed)
            break
    return SyntheticTrainResult(options.output, best, best_epoch, tuple(history))
