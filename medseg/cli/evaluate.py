"""``medseg eval``: score predicted masks against ground truth, case by case and per cohort."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.cli.outputs import check_output_folder
from medseg.errors import ConfigError
from medseg.maskio import MaskInputError

if TYPE_CHECKING:  # pragma: no cover
    from medseg.metrics.case import EvalOptions
    from medseg.metrics.pairing import CasePair

log = logging.getLogger(__name__)

MAX_CASE_LINES = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="Dice, surface distances and lesion detection against ground truth",
        description=(
            "Score predictions against ground truth (DICOM-SEG, NIfTI or NRRD files, or "
            "folders of them). Cases pair by referenced series or file stem; masks are "
            "compared in patient space on the truth's grid. See docs/evaluation.md."
        ),
    )
    parser.add_argument("pred", type=Path, help="prediction mask file or folder")
    parser.add_argument("truth", type=Path, help="ground-truth mask file or folder")
    parser.add_argument(
        "--segment-map",
        metavar="PRED:TRUTH[,...]",
        help="which predicted segment (number or label) matches which truth segment",
    )
    parser.add_argument(
        "--tolerance-mm", type=float, default=1.0, help="surface Dice tolerance (default 1)"
    )
    parser.add_argument(
        "--connectivity",
        type=int,
        choices=(6, 26),
        default=26,
        help="lesion connectivity (default 26)",
    )
    parser.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="score cases whose prediction and truth state different patient IDs, frames of "
        "reference or segment meanings (default: refuse; with it: a warning per case)",
    )
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the full report")
    parser.add_argument("--csv", type=Path, metavar="OUT.csv", help="one row per case/segment")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="box/strip plot per metric")
    parser.add_argument("--jobs", type=int, default=1, help="cases scored in parallel")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.metrics.case import EvalOptions
    from medseg.metrics.cohort import summarize
    from medseg.metrics.pairing import find_masks, pair_cases, parse_segment_map
    from medseg.metrics.report import (
        build_report,
        format_cases,
        format_summary,
        to_csv,
        to_json,
        write_text_atomic,
    )
    from medseg.metrics.run import run_cases

    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    for out in (args.json, args.csv, args.plot):
        if out is not None:
            check_output_folder(out)  # exit 6, as for segment's SEG and model export's .onnx
    options = EvalOptions(args.tolerance_mm, args.connectivity, parse_segment_map(args.segment_map))
    pairing = pair_cases(find_masks(args.pred), find_masks(args.truth))
    for path in pairing.unpaired_pred:
        log.warning("no truth for prediction %s", path)
    for path in pairing.unpaired_truth:
        log.warning("no prediction for truth %s", path)
    if not pairing.pairs:
        raise MaskInputError(
            f"no case pairs: {len(pairing.unpaired_pred)} prediction(s) and "
            f"{len(pairing.unpaired_truth)} truth file(s) share no referenced series or stem"
        )
    check_identities(pairing.pairs, options, allow=args.allow_mismatch)
    progress = not args.no_progress and sys.stderr.isatty()
    result = run_cases(pairing.pairs, options, jobs=args.jobs, progress=progress)
    if not result.rows:
        first = result.errors[0]
        raise MaskInputError(
            first.error if len(result.errors) == 1 else f"no case could be scored; {first.error}"
        )
    summary = summarize(result.rows, seed=args.seed, n_boot=args.bootstrap)
    if args.json:
        report = build_report(
            result.rows,
            summary,
            options={**asdict(options), "seed": args.seed, "bootstrap": args.bootstrap},
            errors=[asdict(e) for e in result.errors],
            unpaired={
                "pred": [str(p) for p in pairing.unpaired_pred],
                "truth": [str(p) for p in pairing.unpaired_truth],
            },
        )
        write_text_atomic(args.json, to_json(report))
    if args.csv:
        write_text_atomic(args.csv, to_csv(result.rows))
    if args.plot:
        from medseg.metrics.plot import plot_metrics

        plot_metrics(result.rows, args.plot, seed=args.seed)
    cases = {row["case"] for row in result.rows}
    if len(result.rows) <= MAX_CASE_LINES:
        print(format_cases(result.rows))
        print()
    print(f"{len(cases)} case(s) scored, {len(result.errors)} failed")
    print(format_summary(summary))
    for error in result.errors:
        print(f"medseg eval: case {error.case} not scored: {error.error}", file=sys.stderr)
    return MaskInputError.exit_code if result.errors else 0


def check_identities(pairs: tuple[CasePair, ...], options: EvalOptions, *, allow: bool) -> None:
    """Refuse (``ConfigError``, one line) cases whose two files say they are about different
    patients, frames of reference or structures; with ``allow``, warn on stderr once per
    case (not a log line: it must be seen whatever the log level).

    An explicit ``--segment-map`` states which segments correspond, so their labels are
    not compared then.
    """
    from medseg.metrics.identity import mismatches

    found = []
    for pair in pairs:
        try:
            differ = mismatches(pair.pred, pair.truth, compare_segments=not options.segment_map)
        except MaskInputError:
            continue  # an unreadable file fails its own case when it is scored
        if differ:
            found.append((pair.case, "; ".join(differ)))
    if allow:
        for case, what in found:
            print(
                f"medseg eval: warning: case {case}: prediction and truth differ in {what}; "
                "scored anyway (--allow-mismatch)",
                file=sys.stderr,
            )
    elif found:
        case, what = found[0]
        more = f" (and {len(found) - 1} more case(s))" if len(found) > 1 else ""
        raise ConfigError(
            f"case {case}: prediction and truth differ in {what}{more}; check the pairing, "
            "map segments with --segment-map, or pass --allow-mismatch to score anyway"
        )
