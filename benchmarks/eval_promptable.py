"""Held-out Dice of a model: automatic, one click and one box per lesion, per family.

Writes synthetic series (``medseg.synthetic.series``: CT and MR-like, random field of
view, spacing and slice thickness) of the chosen generator families, loads each back
from its DICOM files and runs medseg's pipeline on it as ``medseg segment`` does:

- automatic: mean Dice over series with lesions; false-positive ml on lesion-free ones;
- point: one positive click at the centre of each lesion's largest cross-section;
- box: the tight box around that cross-section, on that slice.

A prompted lesion is scored against its own truth (other lesions are not its business).

    python3 benchmarks/eval_promptable.py --model models/x.onnx --families rippled \\
        --modalities CT,MR --seeds 9000-9019 --data /tmp/heldout
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from medseg.dicom import load_series
from medseg.metrics.overlap import dice
from medseg.pipeline import SegmentOptions, load_model, segment_volume_result
from medseg.prompts import BoxPrompt, PointPrompt
from medseg.synthetic.series import read_scene_truth, write_scene_series


def evaluate_series(
    model, truth, labels, flips, prompts: bool = True, automatic: bool = True
) -> dict:
    volume = load_series(truth.series_dir).volume
    row = {
        "family": truth.family,
        "modality": truth.modality,
        "lesions": len(truth.lesions),
        "auto_dice": None,
        "auto_fp_ml": None,
        "point": [],
        "box": [],
    }
    if automatic:
        options = SegmentOptions(model=model.path, test_time_flips=flips)
        auto = segment_volume_result(volume, model.engine, model.card, options).mask
        row["auto_dice"] = dice(auto, labels > 0) if truth.lesions else None
        row["auto_fp_ml"] = float((auto & (labels == 0)).sum() * volume.voxel_volume_ml)
    if not model.card.promptable or not prompts:
        return row
    for lesion in truth.lesions:
        target = labels == lesion.number
        r, c = lesion.centre
        k = lesion.key_slice
        r0, c0, r1, c1 = lesion.box
        for kind, prompt in (
            ("point", PointPrompt(c, r, k)),
            ("box", BoxPrompt(c0, r0, c1, r1, k, k)),
        ):
            opts = SegmentOptions(model=model.path, test_time_flips=flips, prompts=(prompt,))
            mask = segment_volume_result(volume, model.engine, model.card, opts).mask
            row[kind].append(
                {"ml": lesion.volume_ml, "kind": lesion.kind, "dice": dice(mask, target)}
            )
    return row


def _phantom_truth(root: Path, seed: int):
    """A series of ``medseg phantom`` (written with --seed, one folder per seed), with its
    lesions numbered as the generator numbers them."""
    from medseg.phantom import generate_phantom
    from medseg.synthetic.series import SeriesTruth, lesion_truths

    folder = root / f"phantom_{seed:05d}"
    phantom = generate_phantom(seed)
    labels = phantom.lesion_ids.astype(np.uint8)
    spacing = phantom.spacing
    kinds = tuple("phantom" for _ in phantom.lesion_list)
    ml = float(np.prod(spacing)) / 1000.0
    truth = SeriesTruth(
        folder, folder / "ct", folder / "truth.seg.dcm", "phantom", "CT", labels.shape,
        spacing, lesion_truths(labels, kinds, ml),
    )  # fmt: skip
    return truth, labels


BIG_ML = np.pi / 6 * 10.0**3 / 1000.0  # a 10 mm sphere, in ml


def _span(text: str) -> range:
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: bundled)")
    parser.add_argument("--families", default="rippled")
    parser.add_argument("--modalities", default="CT,MR")
    parser.add_argument("--seeds", default="9000-9009")
    parser.add_argument("--data", type=Path, required=True, help="where series are cached")
    parser.add_argument("--flips", default=None, help="'none' to turn test-time flips off")
    parser.add_argument(
        "--refine",
        action="store_true",
        help="apply medseg 4.4.0's refinement (3 mm guided filter, across slices, rims "
        "0.55 / trim 0.4) to automatic segmentation, to see whether it earns its place",
    )
    parser.add_argument("--auto-only", action="store_true", help="no prompted runs")
    parser.add_argument(
        "--prompted-only", action="store_true", help="no automatic runs (a prompt-only model)"
    )
    parser.add_argument(
        "--no-refine", action="store_true", help="turn the card's refinement off (radius 0)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    flips = () if args.flips == "none" else None
    model = load_model(SegmentOptions(model=args.model))
    if args.no_refine:
        model = replace(model, card=replace(model.card, refine_radius_mm=0.0))
    if args.refine:
        card = replace(
            model.card,
            refine_radius_mm=3.0,
            refine_eps=1e-4,
            refine_across_slices=True,
            refine_rim_level=0.55,
            refine_rim_trim=0.4,
        )
        model = replace(model, card=card)
    rows = []
    started = time.time()
    for family in args.families.split(","):
        for modality in args.modalities.split(","):
            for seed in _span(args.seeds):
                folder = args.data / f"{family}_{modality}_{seed}"
                if family == "phantom":  # medseg phantom's own generator (CT only)
                    truth, labels = _phantom_truth(args.data, seed)
                elif (folder / "labels.npz").is_file():
                    truth, labels = read_scene_truth(folder)
                else:
                    truth, labels = write_scene_series(folder, seed, family, modality)
                row = evaluate_series(
                    model, truth, labels, flips, not args.auto_only, not args.prompted_only
                )
                row["seed"] = seed
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(
        f"{'family':10} {'mod':3} {'series':>6} {'auto':>6} {'FP ml':>6} {'point':>6} "
        f"{'box':>6} {'lesions':>7} {'pt>=10mm':>8} {'box>=10mm':>9} {'n>=10mm':>7}"
    )
    for family in args.families.split(","):
        for modality in args.modalities.split(","):
            sel = [r for r in rows if r["family"] == family and r["modality"] == modality]
            auto = [r["auto_dice"] for r in sel if r["auto_dice"] is not None]
            free = [
                r["auto_fp_ml"] for r in sel if not r["lesions"] and r["auto_fp_ml"] is not None
            ]
            point = [p["dice"] for r in sel for p in r["point"]]
            box = [p["dice"] for r in sel for p in r["box"]]
            # lesions a reader sees and marks: an equivalent-sphere diameter of 10 mm or more
            big_point = [p["dice"] for r in sel for p in r["point"] if p["ml"] >= BIG_ML]
            big_box = [p["dice"] for r in sel for p in r["box"] if p["ml"] >= BIG_ML]

            def m(v):
                return f"{np.mean(v):6.3f}" if v else "     -"

            print(
                f"{family:10} {modality:3} {len(sel):6d} {m(auto)} {m(free)} {m(point)} "
                f"{m(box)} {len(point):7d}   {m(big_point)}    {m(big_box)} {len(big_point):7d}"
            )
    print(f"({time.time() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
