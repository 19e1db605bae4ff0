"""``medseg segment``: one DICOM series in, one DICOM-SEG out (plus an optional PNG preview
and measurement report SR)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.cli.outputs import check_overwrite
from medseg.engine import BACKENDS
from medseg.preprocess import CT_PRESETS

if TYPE_CHECKING:  # pragma: no cover
    from medseg.dicom.files import SkippedFile

log = logging.getLogger(__name__)

PROMPT_HELP = """prompts (need a promptable model; coordinates are 0-based voxel indices:
column, row, slice; or LPS mm). By default the slice k is a 0-based index along the slice
normal from the first slice in patient order (feet first for axial series): often the
reverse of what a viewer shows. --slices instance reads k as the InstanceNumber the viewer
shows, --slices z as the slice position in mm. Each positive point or one-slice box is one
lesion, segmented on its slice and carried through the volume until the lesion ends:
  --box x0,y0,x1,y1@k        box on slice k (inclusive corners); @k0-k1: the lesion lies
                             within that slice range (no propagation beyond it)
  --box-mm x0,y0,x1,y1@z     box in LPS mm at z (mm); @z0:z1 for a range
  --point i,j,k[:neg]        a click on a lesion, or a negative click (drops what it hits)
  --point-mm x,y,z[:neg]     the same in LPS mm
  --prompts-from FILE        a reader's marks saved by a viewer (GSPS or TID 1500 SR):
                             points, diameters, circles, ellipses, outlines (docs/marks.md)
values starting with '-' need '=': --point-mm=-12.5,30,-100  --window=-600/1500
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment a CT/MR series into a DICOM-SEG",
        description=(
            "Segment one CT or MR series (files and/or folders, searched recursively) with "
            "the model and write a DICOM Segmentation. See docs/segment.md."
        ),
        epilog=PROMPT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="DICOM files/folders")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.dcm")
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing OUT.dcm / --preview / --report file (never an input file)",
    )
    parser.add_argument("--model", type=Path, help="model file (default: the bundled model)")
    parser.add_argument(
        "--backend", default="auto", choices=("auto", *BACKENDS), help="default: by extension"
    )
    parser.add_argument(
        "--threads", type=int, help="CPU inference threads (default: the physical cores)"
    )
    parser.add_argument(
        "--providers",
        default="",
        metavar="P[,P...]",
        help="ONNX Runtime execution providers to try first, e.g. cuda or qnn",
    )
    parser.add_argument(
        "--window",
        default="auto",
        help=(
            f"CT preset ({', '.join(CT_PRESETS)}), 'dicom' (the file's own), 'C/W' such as "
            "40/400, 'pLOW-HIGH' percentiles, or 'auto' (CT: the model's preset, MR: "
            "percentiles; default)"
        ),
    )
    parser.add_argument("--box", action="append", default=[], metavar="x0,y0,x1,y1@k")
    parser.add_argument("--box-mm", action="append", default=[], metavar="x0,y0,x1,y1@z")
    parser.add_argument("--point", action="append", default=[], metavar="i,j,k[:neg]")
    parser.add_argument("--point-mm", action="append", default=[], metavar="x,y,z[:neg]")
    parser.add_argument(
        "--slices",
        choices=("index", "instance", "z"),
        default="index",
        help="how the slice part of --box/--point is read: 0-based index along the normal "
        "(default), InstanceNumber as a viewer shows it, or position z in mm",
    )
    parser.add_argument(
        "--prompts-from", action="append", default=[], type=Path, metavar="FILE", help="GSPS/SR"
    )
    parser.add_argument("--threshold", type=float, help="probability threshold (default: card)")
    parser.add_argument(
        "--flips",
        metavar="AXES",
        help="test-time flips to average with: 'none', 'horizontal', 'vertical' or "
        "'horizontal,vertical' (one more model run per flip; default: the card's)",
    )
    parser.add_argument(
        "--refine-radius",
        type=float,
        metavar="MM",
        help="edge refinement box radius in mm; 0 turns it off (default: the card's)",
    )
    parser.add_argument("--series", metavar="UID", help="the series to use if there are several")
    parser.add_argument(
        "--volume",
        metavar="TYPE|N",
        help="of a series with several images per slice (magnitude and phase, e.g. a B0 map):"
        " the image type (MAGNITUDE, PHASE, REAL, IMAGINARY or the file's own, e.g. B0) or"
        " its number; default: the magnitude image",
    )
    parser.add_argument(
        "--min-volume", type=float, default=0.0, metavar="MM3", help="drop smaller components"
    )
    parser.add_argument("--largest", action="store_true", help="keep the largest component only")
    parser.add_argument("--fill-holes", action="store_true", help="fill holes slice by slice")
    parser.add_argument("--fractional", action="store_true", help="FRACTIONAL SEG (probabilities)")
    parser.add_argument("--series-number", type=int, default=9001, help="SEG SeriesNumber")
    parser.add_argument(
        "--series-description", default="medseg segmentation", help="SEG SeriesDescription"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="slices per inference call")
    parser.add_argument("--preview", type=Path, metavar="OUT.png", help="write a PNG montage")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="OUT.sr.dcm",
        help="also write a TID 1500 Measurement Report SR of the SEG's lesions (volume, "
        "long/short axis, CT HU statistics; docs/report.md)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def build_options(args: argparse.Namespace):  # -> SegmentOptions (imported lazily)
    """Command-line arguments -> SegmentOptions; bad prompts raise PromptError here, an
    unusable --prompts-from file DicomInputError."""
    from medseg.dicom.marks import read_marks
    from medseg.modelcard import parse_flips
    from medseg.pipeline import SegmentOptions
    from medseg.prompts import parse_box, parse_point

    prompts = (
        *(parse_box(text, slices=args.slices) for text in args.box),
        *(parse_box(text, "mm") for text in args.box_mm),
        *(parse_point(text, slices=args.slices) for text in args.point),
        *(parse_point(text, "mm") for text in args.point_mm),
    )
    marks = tuple(mark for path in args.prompts_from for mark in read_marks(path))
    providers = tuple(p.strip() for p in args.providers.split(",") if p.strip())
    return SegmentOptions(
        model=args.model,
        backend=args.backend,
        threads=args.threads,
        providers=providers,
        window=args.window,
        threshold=args.threshold,
        test_time_flips=None if args.flips is None else parse_flips(args.flips),
        refine_radius_mm=args.refine_radius,
        prompts=prompts,
        marks=marks,
        series_uid=args.series,
        volume=args.volume,
        min_component_mm3=args.min_volume,
        largest_component=args.largest,
        fill_holes=args.fill_holes,
        seg_type="FRACTIONAL" if args.fractional else "BINARY",
        series_number=args.series_number,
        series_description=args.series_description,
        batch_size=args.batch_size,
        preview=args.preview,
        report=args.report,
    )


# Skipped files listed one per line on stderr up to this many (all of them with -v).
LIST_SKIPPED = 10


def _reason_kind(reason: str) -> str:
    """The reason without its detail: "cannot decode pixel data: <decoder text>" -> kind."""
    return reason.split(":", 1)[0].strip()


def skipped_report(skipped: Sequence[SkippedFile], *, list_all: bool) -> list[str]:
    """Lines telling which input files were left out and why.

    First a count per kind of reason on one line, then each file with its full reason: all
    of them when few or when ``list_all`` (``-v``), else the first ``LIST_SKIPPED`` and a
    hint how to see the rest.
    """
    if not skipped:
        return []
    kinds = Counter(_reason_kind(s.reason) for s in skipped)
    counts = "; ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    lines = [f"medseg segment: skipped {len(skipped)} file(s): {counts}"]
    shown = skipped if list_all or len(skipped) <= LIST_SKIPPED else skipped[:LIST_SKIPPED]
    lines += [f"  skipped {s.path}: {s.reason}" for s in shown]
    if len(shown) < len(skipped):
        lines.append(f"  ... and {len(skipped) - len(shown)} more (run with -v to list all)")
    return lines


def run(args: argparse.Namespace) -> int:
    from medseg.pipeline import segment

    for out in (args.output, args.preview, args.report):
        if out is not None:
            check_overwrite(out, args.inputs, force=args.force)
    options = build_options(args)
    result = segment(args.inputs, args.output, options, progress=not args.no_progress)
    verbose = getattr(args, "verbose", 0) > 0  # medseg -v
    for line in skipped_report(result.skipped, list_all=verbose):
        print(line, file=sys.stderr)
    print(result.summary())
    if result.preview is not None:
        print(f"preview: {result.preview}")
    if result.report is not None:
        print(f"report: {result.report}")
    return 0
