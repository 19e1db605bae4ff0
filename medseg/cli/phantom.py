"""``medseg phantom``: write synthetic CT series with DICOM-SEG lesion truth."""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from medseg.errors import ConfigError, OutputError

log = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 256x256, not {text!r}") from exc
    return rows, cols


def _spacing(text: str) -> tuple[float, float | None]:
    parts = text.split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"spacing must be IN_PLANE[,SLICE] mm, not {text!r}"
        ) from exc
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"spacing must be IN_PLANE[,SLICE] mm, not {text!r}")
    return values[0], values[1] if len(values) == 2 else None


def _span(text: str, cast: type, usage: str) -> tuple:
    """'N' or 'MIN-MAX' -> (min, max), each through ``cast``."""
    try:
        low, _, high = text.partition("-")
        return cast(low), cast(high or low)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{usage}, not {text!r}") from exc


def _range(text: str) -> tuple[int, int]:
    return _span(text, int, "lesions must be N or MIN-MAX")


def _sizes(text: str) -> tuple[float, float]:
    return _span(text, float, "lesion size must be MM or MIN-MAX mm")


def _organ_weights(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"lesion organs must be LIVER,SPLEEN,KIDNEY weights, not {text!r}"
        ) from exc
    if len(values) != 3:
        raise argparse.ArgumentTypeError(
            f"lesion organs must be three weights LIVER,SPLEEN,KIDNEY, not {text!r}"
        )
    return values  # type: ignore[return-value]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="write synthetic CT phantoms with DICOM-SEG lesion truth",
        description=(
            "Generate synthetic abdomen/chest CT series (not patients) with 0-4 liver, spleen "
            "or kidney lesions and write each as OUT_DIR/phantom_SEED/ct/*.dcm plus "
            "truth.seg.dcm. Deterministic from the seed. See docs/phantom.md."
        ),
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write into")
    parser.add_argument("--count", type=int, default=1, help="number of phantoms (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument(
        "--size", type=_size, default=(256, 256), metavar="ROWSxCOLS", help="default 256x256"
    )
    parser.add_argument("--slices", type=int, default=40, help="slices (default 40)")
    parser.add_argument(
        "--spacing",
        type=_spacing,
        default=(1.4, 2.5),
        metavar="IN_PLANE[,SLICE]",
        help="pixel and slice spacing in mm (default 1.4,2.5)",
    )
    parser.add_argument(
        "--lesions", type=_range, default=(0, 4), metavar="MIN-MAX", help="default 0-4"
    )
    parser.add_argument(
        "--lesion-size",
        type=_sizes,
        default=(5.0, 40.0),
        metavar="MIN-MAX",
        help="lesion diameters in mm, drawn log-uniformly (default 5-40)",
    )
    parser.add_argument(
        "--lesion-organs",
        type=_organ_weights,
        default=(0.8, 0.1, 0.1),
        metavar="LIVER,SPLEEN,KIDNEY",
        help="relative odds of each lesion organ (default 0.8,0.1,0.1)",
    )
    parser.add_argument("--nifti", action="store_true", help="also write truth.nii.gz")
    parser.add_argument(
        "--unique-uids",
        action="store_true",
        help="fresh study/series/instance UIDs (default: derived from seed and size)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace phantom folders that already exist"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.phantom import PhantomConfig, write_phantom

    if args.count < 1:
        raise ConfigError("--count must be at least 1")
    if args.seed < 0:
        raise ConfigError("--seed must not be negative")
    in_plane, slice_spacing = args.spacing
    config = PhantomConfig(
        size=args.size,
        slices=args.slices,
        pixel_spacing=in_plane,
        slice_spacing=2.5 if slice_spacing is None else slice_spacing,
        min_lesions=args.lesions[0],
        max_lesions=args.lesions[1],
        lesion_diameter_mm=args.lesion_size,
        lesion_organ_weights=args.lesion_organs,
    )
    out_dir: Path = args.out_dir
    targets = [out_dir / f"phantom_{seed:05d}" for seed in range(args.seed, args.seed + args.count)]
    existing = [t for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise ConfigError(f"{existing[0]} already exists (use --overwrite to replace it)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir}: {exc.strerror or exc}") from exc
    started = time.perf_counter()
    total_lesions = 0
    for seed, target in zip(range(args.seed, args.seed + args.count), targets, strict=True):
        staging = out_dir / f".{target.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            files = write_phantom(
                staging, seed, config, nifti=args.nifti, unique_uids=args.unique_uids
            )
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        lesions = files.phantom.lesion_list
        total_lesions += len(lesions)
        sizes = ", ".join(f"{lesion.diameter_mm:.0f} mm {lesion.organ}" for lesion in lesions)
        print(f"{target}: {len(lesions)} lesion(s){': ' + sizes if sizes else ''}")
    elapsed = time.perf_counter() - started
    print(
        f"wrote {args.count} phantom(s), {total_lesions} lesion(s), "
        f"{config.size[0]}x{config.size[1]}x{config.slices} in {elapsed:.1f} s"
    )
    return 0
