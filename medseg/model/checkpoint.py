"""Checkpoints: the published SAM2-UNet format and medseg's self-describing one.

Published files are a bare state_dict (or ``{"model": state_dict}``) and need the config
named separately. medseg's own files also store the config (and, while training, the
optimizer, scheduler and epoch) so a model can be rebuilt from the file alone.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from medseg.durable import write_with
from medseg.errors import ConfigError, ModelError
from medseg.model.config import Sam2UnetConfig, resolve_config
from medseg.model.sam2unet import SAM2UNet

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medseg-sam2unet"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model with its weights and whatever else the file held (training state, notes)."""

    model: SAM2UNet
    config: Sam2UnetConfig
    config_name: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict, normalised to ``{"model": state_dict, ...}``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, Mapping):
        raise ModelError(f"checkpoint {path} holds a {type(data).__name__}, not a state_dict")
    if "model" in data and isinstance(data["model"], Mapping):
        return dict(data)
    if all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"model": dict(data)}
    raise ModelError(f"checkpoint {path}: neither a state_dict nor {{'model': state_dict}}")


def load_checkpoint(
    path: Path, config: str | Mapping[str, Any] | Sam2UnetConfig | None = None
) -> LoadedCheckpoint:
    """Build the model and load the weights with ``strict=True``.

    ``config`` is required for published checkpoints; for medseg's own it may be omitted
    (if given, it must match the stored one).
    """
    data = read_checkpoint_file(path)
    stored = data.get("config")
    name = data.get("config_name")
    if stored is not None:
        stored_cfg = resolve_config(stored)
        cfg = stored_cfg
        if config is not None and resolve_config(config) != stored_cfg:
            wanted = resolve_config(config)
            if (
                replace(wanted, prompt_channels=0, decoder_norm=stored_cfg.decoder_norm)
                != stored_cfg
            ):
                raise ConfigError(
                    f"checkpoint {path} was made for a different config than {config}"
                )
            cfg = wanted  # a prompt-free checkpoint as the start of its promptable twin
            name = config if isinstance(config, str) else None
    elif config is None:
        raise ConfigError(f"checkpoint {path} does not store its config: pass --config NAME")
    else:
        cfg = resolve_config(config)
        name = config if isinstance(config, str) else None
    model = SAM2UNet(cfg)
    state = data["model"]
    if cfg.promptable and not any(k.startswith("prompt_embed.") for k in state):
        # a published (prompt-free) checkpoint as the start of a promptable model: every
        # published key must fit strictly; the prompt embedding keeps its zero start
        state = {**model.prompt_embed.state_dict(prefix="prompt_embed."), **state}
        log.info("%s has no prompt embedding: it starts at zero (automatic behaviour)", path)
        if cfg.decoder_norm == "group":  # GroupNorm keeps BatchNorm's affine weights only
            buffers = ("running_mean", "running_var", "num_batches_tracked")
            state = {k: v for k, v in state.items() if not k.endswith(buffers)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ModelError(
            f"checkpoint {path} does not fit config {name or 'given'}: {detail}"
        ) from None
    extra = {k: v for k, v in data.items() if k not in ("model", "config", "config_name")}
    log.info("loaded %s (config %s)", path, name or "custom")
    return LoadedCheckpoint(model=model, config=cfg, config_name=name, extra=extra)


def save_checkpoint(
    path: Path,
    model: SAM2UNet,
    *,
    config_name: str | None = None,
    **extra: Any,
) -> None:
    """Write a self-describing checkpoint atomically and durably (``medseg.durable``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "config_name": config_name,
        "model": model.state_dict(),
        **extra,
    }
    write_with(path, lambda handle: torch.save(payload, handle))
