"""``medseg train``: fine-tune SAM2-UNet on DICOM series with DICOM-SEG / NIfTI / NRRD masks.

torch is imported inside the command only (``medseg --help`` works without it).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from medseg.cli.model import _config_arg, require_torch
from medseg.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune SAM2-UNet (needs the [train] extra)",
        description="Train SAM2-UNet on image series paired with masks (see docs/training.md).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="folder of series + masks")
    source.add_argument(
        "--synthetic",
        metavar="FAMILIES",
        help="train a promptable config on scenes generated afresh in every step, from these "
        "generator families (comma-separated: lobulated, metaball, rippled); simulated "
        "clicks, boxes and neighbouring-slice masks (docs/training.md)",
    )
    parser.add_argument(
        "--modalities", default="CT,MR", help="with --synthetic: CT, MR or CT,MR (default)"
    )
    parser.add_argument(
        "--auto-share",
        type=float,
        default=0.3,
        help="with --synthetic: share of samples without a prompt (automatic mode)",
    )
    parser.add_argument("--init", required=True, help="checkpoint to start from, or 'none'")
    parser.add_argument(
        "--config",
        help="config name or JSON file (needed with --init none and for published checkpoints)",
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="best checkpoint")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of series held out for validation Dice",
    )
    parser.add_argument(
        "--unfreeze-encoder",
        action="store_true",
        help="train the Hiera trunk too (training from scratch)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from <output stem>.last.pth"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--steps-per-epoch", type=int, help="default: training slices / batch size")
    parser.add_argument(
        "--lesion-share",
        type=float,
        default=0.5,
        help="share of sampled slices that contain lesion",
    )
    parser.add_argument(
        "--crop",
        type=int,
        help="train on square crops of this many model pixels, lesion-centred (a multiple of "
        "4 x the first window: 32 for the named configs)",
    )
    parser.add_argument(
        "--crop-epochs", type=int, help="epochs on crops before whole slices (default: all)"
    )
    parser.add_argument("--window", help="CT window for preprocessing (default: the card's)")
    parser.add_argument(
        "--slice-context",
        type=float,
        default=0.0,
        metavar="MM",
        help="2.5-D input: the three channels are the series at -MM, 0, +MM mm (default 0: "
        "one slice in every channel); the exported card keeps it",
    )
    parser.add_argument(
        "--pixel-spacing",
        type=float,
        default=0.0,
        metavar="MM",
        help="train on windows of the model input size at this in-plane spacing; slices are "
        "then served as overlapping windows at it (default 0: whole slices resized to the "
        "input); the exported card keeps it",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--max-minutes", type=float, help="stop after this wall time")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    require_torch()
    from medseg.model.train import TrainOptions, train

    if args.output.suffix not in (".pth", ".pt"):
        raise ConfigError(f"output checkpoint must end in .pth or .pt: {args.output}")
    init = None if args.init.lower() == "none" else args.init
    if init is not None and not args.resume and not Path(init).is_file():
        raise ConfigError(f"--init checkpoint not found: {init}")
    command = "medseg " + shlex.join(sys.argv[1:]) if "train" in sys.argv[1:4] else None
    if args.synthetic is not None:
        return _run_synthetic(args, init, command)
    if not args.data.is_dir():
        raise ConfigError(f"--data folder not found: {args.data}")
    options = TrainOptions(
        data=args.data,
        output=args.output,
        config=_config_arg(args.config),
        init=init,
        epochs=args.epochs,
        val_fraction=args.val_fraction,
        unfreeze_encoder=args.unfreeze_encoder,
        resume=args.resume,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        steps_per_epoch=args.steps_per_epoch,
        lesion_share=args.lesion_share,
        crop=args.crop,
        crop_epochs=args.crop_epochs,
        window=args.window,
        slice_context_mm=args.slice_context,
        pixel_spacing_mm=args.pixel_spacing,
        seed=args.seed,
        threads=args.threads,
        max_minutes=args.max_minutes,
        progress=not args.no_progress,
        command=command,
    )
    result = train(options)
    dice = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.4f}"
    print(f"best checkpoint {result.best_checkpoint} (epoch {result.best_epoch}, val Dice {dice})")
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _run_synthetic(args: argparse.Namespace, init: str | None, command: str | None) -> int:
    from medseg.model.train_synthetic import SyntheticTrainOptions, train_synthetic

    options = SyntheticTrainOptions(
        output=args.output,
        families=_names(args.synthetic),
        modalities=tuple(m.upper() for m in _names(args.modalities)),
        config=_config_arg(args.config) or "phantom_prompt",
        init=init,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch or 250,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        slice_context_mm=args.slice_context or 2.5,
        crop=args.crop,
        crop_epochs=(args.crop_epochs or args.epochs) if args.crop else 0,
        auto_share=args.auto_share,
        seed=args.seed,
        threads=args.threads,
        max_minutes=args.max_minutes,
        progress=not args.no_progress,
        command=command,
    )
    result = train_synthetic(options)
    print(
        f"best checkpoint {result.best_checkpoint} (epoch {result.best_epoch}, "
        f"val Dice {result.best_val_dice:.4f})"
    )
    return 0
