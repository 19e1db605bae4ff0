"""``medseg model export|info``: SAM2-UNet checkpoints to ONNX files with their cards.

torch is imported only inside the command functions, so ``medseg --help`` and the
runtime commands work on installations without the [train] extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from medseg import __version__
from medseg.cli.outputs import check_output_folder
from medseg.errors import ConfigError, ModelError, OutputError
from medseg.modelcard import ModelCard, card_path_for, load_card_for, parse_flips

log = logging.getLogger(__name__)

TORCH_MISSING = "PyTorch is not installed: install the train extra: pip install 'medseg[train]'"
# (absolute, relative to the largest |logit|): an export bug moves logits by their own
# size, round-off by a few parts in ten thousand of it
PARITY_TOLERANCE = {"fp32": (1e-3, 1e-3), "fp16": (0.5, 1e-2)}


def require_torch() -> None:
    """A one-line ModelError instead of an ImportError traceback when torch is absent."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ModelError(TORCH_MISSING) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="export SAM2-UNet to ONNX, show a model card")
    sub = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    export = sub.add_parser("export", help="checkpoint -> ONNX (+ model card, INT8, FP16)")
    export.add_argument("--checkpoint", required=True, help="a .pth checkpoint, or 'none'")
    export.add_argument(
        "--config",
        help="config name (hiera_l, hiera_b+, hiera_s, hiera_t, "
        "micro, phantom, phantom_prompt) or a JSON file; optional for medseg checkpoints",
    )
    export.add_argument("-o", "--output", required=True, type=Path, help="the .onnx to write")
    export.add_argument("--static", action="store_true", help="fix the batch to 1 (NPU)")
    precision = export.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="float16 weights and compute")
    precision.add_argument("--int8", action="store_true", help="INT8 (needs --calibration)")
    export.add_argument("--calibration", type=Path, help="DICOM folder of real slices")
    export.add_argument("--int8-method", choices=("static", "dynamic"), default="static")
    export.add_argument(
        "--max-slices",
        type=int,
        default=32,
        help="real slices used for calibration + held-out checks",
    )
    export.add_argument(
        "--check-data", type=Path, help="DICOM folder for the real-input parity check"
    )
    export.add_argument("--name", help="model name for the card (default: file stem)")
    export.add_argument("--model-version", default="0.1.0", help="version for the card")
    export.add_argument(
        "--window", help="default CT window in the card (default: training's, else abdomen)"
    )
    export.add_argument("--threshold", type=float, default=0.5)
    export.add_argument(
        "--slice-context",
        type=float,
        metavar="MM",
        help="2.5-D input for the card (default: what the checkpoint was trained with)",
    )
    export.add_argument(
        "--pixel-spacing",
        type=float,
        metavar="MM",
        help="the card's working pixel spacing (default: what the checkpoint was trained at)",
    )
    export.add_argument(
        "--flips",
        default="none",
        metavar="AXES",
        help="test-time flips the card asks for: 'none' (default), 'horizontal', 'vertical' "
        "or 'horizontal,vertical'",
    )
    export.add_argument(
        "--refine-radius",
        type=float,
        default=0.0,
        metavar="MM",
        help="edge refinement the card asks for: guided-filter box radius in mm (0: off, "
        "the default; docs/segment.md)",
    )
    export.add_argument(
        "--refine-eps",
        type=float,
        default=1e-4,
        metavar="EPS",
        help="edge refinement regularisation in squared window units (1e-4)",
    )
    export.add_argument(
        "--refine-across-slices",
        action="store_true",
        help="with --refine-radius: also continue findings onto neighbouring slices where "
        "the image continues them (docs/segment.md)",
    )
    export.add_argument(
        "--refine-rim-level",
        type=float,
        default=0.0,
        metavar="F",
        help="with --refine-radius: widen findings by the bordering pixels at least F of the "
        "way from their surroundings' intensity to their core's (0: off, the default; "
        "docs/segment.md)",
    )
    export.add_argument(
        "--refine-rim-trim",
        type=float,
        default=0.0,
        metavar="T",
        help="with --refine-rim-level F: also drop the edge pixels of findings that lie less "
        "than T of the way from their surroundings' intensity to their core's (0 < T < F; "
        "0: off, the default; docs/segment.md)",
    )
    export.add_argument(
        "--note",
        action="append",
        default=[],
        metavar="KEY=TEXT",
        help="free-text fact for the card's extra.notes (repeatable), e.g. trained_on=...",
    )
    export.set_defaults(func=run_export)

    info = sub.add_parser("info", help="print a model's card (and a checkpoint's config)")
    info.add_argument("path", type=Path, help="an .onnx (reads its card) or a checkpoint")
    info.set_defaults(func=run_info)


def _config_arg(value: str | None) -> Any:
    """A config name, or a JSON file holding a dict of the fields."""
    if value is None:
        return None
    path = Path(value)
    if value.endswith(".json") and path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
    return value


def _trained_with(asked: float | None, training: dict[str, Any], key: str) -> float:
    """The option when given, else what the checkpoint was trained with (0: none)."""
    if asked is not None:
        return float(asked)
    return float(training.get(key) or 0.0)


def run_export(args: argparse.Namespace) -> int:
    require_torch()
    from medseg.model.checkpoint import load_checkpoint
    from medseg.model.export import build_card, check_parity, export_onnx, write_card
    from medseg.model.sam2unet import build_sam2unet

    output: Path = args.output
    if output.suffix != ".onnx":
        raise ConfigError(f"output must end in .onnx: {output}")
    check_output_folder(output)  # like segment and eval: a missing folder is a typo to report
    if args.int8 and args.int8_method == "static" and args.calibration is None:
        raise ConfigError("--int8 needs --calibration DICOM_DIR (or --int8-method dynamic)")
    if args.max_slices < 2:
        raise ConfigError("--max-slices must be at least 2")
    config = _config_arg(args.config)

    training: dict[str, Any] = {}
    if args.checkpoint == "none":
        if config is None:
            raise ConfigError("--checkpoint none needs --config")
        model = build_sam2unet(config)
        config_name = config if isinstance(config, str) else None
        source = {"checkpoint": None, "weights": "random (untrained)"}
    else:
        from medseg.model.export import sha256_of

        loaded = load_checkpoint(Path(args.checkpoint), config)
        model, config_name = loaded.model, loaded.config_name
        training = dict(loaded.extra.get("training") or {})
        source = {
            "checkpoint": Path(args.checkpoint).name,
            "checkpoint_sha256": sha256_of(Path(args.checkpoint)),
        }
    model.eval()

    base = ModelCard(
        name=args.name or output.stem,
        version=args.model_version,
        threshold=args.threshold,
        test_time_flips=parse_flips(args.flips),
        refine_radius_mm=args.refine_radius,
        refine_eps=args.refine_eps,
        refine_across_slices=args.refine_across_slices,
        refine_rim_level=args.refine_rim_level,
        refine_rim_trim=args.refine_rim_trim,
        slice_context_mm=_trained_with(args.slice_context, training, "slice_context_mm"),
        pixel_spacing_mm=_trained_with(args.pixel_spacing, training, "pixel_spacing_mm"),
        default_ct_window=args.window or training.get("window") or "abdomen",
    )
    real = None
    data_dir = args.calibration or args.check_data
    if data_dir is not None:
        from medseg.model.slices import dicom_slices

        real = dicom_slices(data_dir, base, max_slices=args.max_slices)

    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    provenance: dict[str, Any] = {
        **source,
        "exported_by": f"medseg {__version__}",
        "command": "medseg " + shlex.join(sys.argv[1:]) if "export" in sys.argv[1:5] else None,
    }
    notes = _notes(args.note)
    if training or notes:
        base = replace(base, extra={"training": training, "notes": notes})
    quant_report = None
    # model and card are written beside the output and moved over it only once both are
    # complete, so a failed export leaves the model that was there (and its card) as it was
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        staged = Path(tmp) / "model.onnx"
        fp32_path = Path(tmp) / "fp32.onnx" if args.int8 else staged
        export_onnx(model, fp32_path, static=args.static, fp16=args.fp16)
        parity = check_parity(model, fp32_path, real=real, static=args.static)
        _print_parity(parity, precision if not args.int8 else "fp32")
        limit = parity.limit(*PARITY_TOLERANCE["fp16" if args.fp16 else "fp32"])
        if parity.worst > limit:
            raise ModelError(
                f"ONNX Runtime differs from PyTorch by {parity.worst:.3g} (> {limit:.3g} "
                f"allowed for logits up to {parity.logit_scale:.3g})"
            )
        provenance["parity"] = parity.to_dict()
        if args.int8:
            quant_report = _quantize(args, fp32_path, staged, real)
            provenance["quantization"] = quant_report.to_dict()
        card = build_card(
            base,
            staged,
            config_name=config_name,
            model=model,
            static=args.static,
            precision=precision,
            provenance=provenance,
        )
        card_path = card_path_for(output)
        try:
            staged_card = write_card(card, staged)
            os.replace(staged, output)
            os.replace(staged_card, card_path)
        except OSError as exc:
            raise OutputError(f"cannot write {output}: {exc.strerror}") from exc
    print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB) and {card_path}")
    return 0


def _notes(items: list[str]) -> dict[str, str]:
    notes = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--note must look like KEY=TEXT, not {item!r}")
        notes[key.strip()] = text.strip()
    return notes


def _quantize(args: argparse.Namespace, fp32_path: Path, output: Path, real: Any) -> Any:
    from medseg.model.quantize import (
        QuantizationReport,
        compare_precisions,
        quantize_int8,
        split_calibration,
    )

    if real is None:
        raise ConfigError("INT8 needs real slices to report its accuracy: pass --calibration")
    calibration, heldout = split_calibration(real)
    method = quantize_int8(fp32_path, output, calibration, method=args.int8_method)
    rows = compare_precisions(fp32_path, {"int8": output}, heldout, threshold=args.threshold)
    report = QuantizationReport(method, len(calibration), len(heldout), rows)
    print(f"INT8 ({method}, {len(calibration)} calibration / {len(heldout)} held-out slices)")
    print(report.table())
    return report


def _print_parity(parity: Any, precision: str) -> None:
    real = (
        f"{parity.real_max_abs_diff:.3g} on {parity.real_slices} real slices"
        if parity.real_max_abs_diff is not None
        else "no real slices given"
    )
    print(
        f"ONNX Runtime vs PyTorch ({precision}): max |diff| {parity.random_max_abs_diff:.3g} "
        f"on random input, {real} (logits up to {parity.logit_scale:.3g})"
    )


def run_info(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if path.suffix in (".onnx", ".bin", ".dlc") or path.with_suffix(".json").is_file():
        card = load_card_for(path)
        print(json.dumps(card.to_dict(), indent=2))
        return 0
    require_torch()
    from medseg.model.checkpoint import read_checkpoint_file

    data = read_checkpoint_file(path)
    params = sum(int(t.numel()) for t in data["model"].values())
    summary = {
        "config_name": data.get("config_name"),
        "config": data.get("config"),
        "tensors": len(data["model"]),
        "values": params,
        "epoch": data.get("epoch"),
        "training": data.get("training"),
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0
