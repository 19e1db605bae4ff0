"""Stage times of ``medseg segment`` on a generated 200-slice 512x512 CT, as a table.

Stages: load (read + decode + sort the DICOM series), preprocess (window, resize to the
model input, normalise), infer (the engine), postprocess (resize back, sigmoid, threshold,
components), write (DICOM-SEG). Preprocessing runs in a helper thread overlapping
inference, so its row is the helper's own time; "wall" is what the user waits.

The model is the bundled one (``models/sam2unet_phantom.onnx``) when present, else a tiny
ONNX model with SAM2-UNet's I/O built here (then "infer" measures the runtime's overhead,
not a network) — the table says which. The CT is a ``medseg.phantom`` abdomen phantom.

Then the same series with its first and last ``--air`` slices replaced by air (a scan
running past the patient): how many slices were not run through the network (outside the
body, ``medseg.body``) and what that saved. With ``--compare DIR`` the same benchmark of
another checkout (e.g. the main branch: the baseline) runs in the same invocation, after
this one, and the last lines give the ratios.

    python3 benchmarks/bench_pipeline.py [--slices 200] [--size 512] [--model M.onnx]
        [--air 20] [--compare /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medseg.errors import MedsegError  # noqa: E402
from medseg.modelcard import ModelCard, default_model_path, load_card_for  # noqa: E402
from medseg.pipeline import SegmentOptions, load_model, segment  # noqa: E402
from medseg.preprocess import parse_fixed_window, preprocess_slices  # noqa: E402

STAGES = ("load", "preprocess", "infer", "postprocess", "write")


def pick_model(requested: Path | None, workdir: Path) -> tuple[Path, str]:
    """The model to time and a description of where it came from."""
    if requested is not None:
        return requested, f"{requested.name} (given)"
    try:
        bundled = default_model_path()
        load_card_for(bundled)
        return bundled, f"{bundled.name} (bundled)"
    except MedsegError as exc:  # absent, or no card beside it
        from tests.tiny_models import make_bright_model

        path = workdir / "tiny_bright.onnx"
        make_bright_model(path)
        return path, f"tiny bright-pixel ONNX model built here (no bundled model: {exc})"


def make_ct(workdir: Path, slices: int, size: int) -> Path:
    from medseg.phantom import write_phantom

    start = time.perf_counter()
    files = write_phantom(workdir / "phantom", seed=7, size=(size, size), slices=slices)
    print(f"generated a {slices}x{size}x{size} phantom CT in {time.perf_counter() - start:.1f} s")
    return files.series_dir


def with_air_ends(series: Path, out: Path, count: int) -> Path:
    """A copy of ``series`` whose first and last ``count`` slices (by position) are air."""
    import pydicom

    out.mkdir(parents=True)
    paths = sorted(series.glob("*.dcm"))
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in paths]
    order = [p for _, p in sorted(zip(z, paths, strict=True))]
    ends = set(order[:count] + order[len(order) - count :])
    rng = np.random.default_rng(0)
    for path in paths:
        if path not in ends:
            shutil.copy2(path, out / path.name)
            continue
        ds = pydicom.dcmread(path)
        hu = -1000.0 + 15.0 * rng.standard_normal((ds.Rows, ds.Columns))
        stored = (hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)
        ds.PixelData = np.rint(stored).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(out / path.name)
    return out


def run_baseline(checkout: Path, argv: list[str]) -> str:
    """This benchmark of another checkout, run with that checkout's medseg; its output."""
    script = checkout / "benchmarks" / "bench_pipeline.py"
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    result = subprocess.run(
        [sys.executable, str(script), *argv],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=7200,
    )
    if result.returncode != 0:
        raise SystemExit(f"baseline benchmark failed:\n{result.stderr[-2000:]}")
    return result.stdout


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def preprocess_cost(card: ModelCard, size: int) -> float:
    """Milliseconds per 512x512 slice for preprocess_slices alone (batch of 8, best of 5)."""
    rng = np.random.default_rng(0)
    batch = rng.normal(40, 200, size=(8, size, size)).astype(np.float32)
    window = parse_fixed_window("abdomen")
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        preprocess_slices(batch, window, card)
        best = min(best, time.perf_counter() - start)
    return best / len(batch) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--threads", type=int, help="inference threads (default: ORT's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="runs; the best is reported")
    parser.add_argument("--air", type=int, default=20, help="air slices at each end (0: none)")
    parser.add_argument("--compare", type=Path, help="another checkout to time after this one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        workdir = Path(tmp)
        series = make_ct(workdir, args.slices, args.size)
        model_path, model_note = pick_model(args.model, workdir)
        options = SegmentOptions(model=model_path, threads=args.threads, batch_size=args.batch_size)
        runs = []
        air_run = None
        with load_model(options) as model:
            for index in range(args.repeat):
                out = workdir / f"seg{index}.dcm"
                runs.append(segment([series], out, options, model=model))
            card = model.card
            if args.air > 0:
                air = with_air_ends(series, workdir / "air", args.air)
                air_run = segment([air], workdir / "air.dcm", options, model=model)
                everything = replace(options, body=None)
                air_all = segment([air], workdir / "air-all.dcm", everything, model=model)
        best = min(runs, key=lambda r: r.seconds)
        prep_ms = preprocess_cost(card, args.size)

    total = best.seconds
    print(f"model:  {model_note}")
    print(f"engine: {best.engine}, batch {args.batch_size}, threads {args.threads or 'default'}")
    print(f"series: {best.slices} slices of {args.size}x{args.size}, {best.volume_ml:.1f} ml found")
    print()
    print(f"{'stage':<12} {'seconds':>9} {'ms/slice':>9} {'share':>7}")
    print("-" * 40)
    for stage in STAGES:
        seconds = best.timings.get(stage, 0.0)
        print(
            f"{stage:<12} {seconds:9.3f} {seconds / best.slices * 1000:9.2f} "
            f"{seconds / total * 100:6.1f}%"
        )
    print("-" * 40)
    print(f"{'wall':<12} {total:9.3f} {total / best.slices * 1000:9.2f} {100:6.1f}%")
    not_infer = total - best.timings["infer"]
    print()
    print(f"not inference: {not_infer:.2f} s = {not_infer / total * 100:.1f}% of wall time")
    print(f"preprocess_slices alone: {prep_ms:.2f} ms per {args.size}x{args.size} slice")
    if air_run is not None:
        print()
        print(
            f"series with slices outside the body ({args.air} air slices at each end): "
            f"{air_run.slices_not_run} of {air_run.slices} slices skipped (no inference); "
            f"infer {air_run.timings['infer']:.2f} s, wall {air_run.seconds:.2f} s; "
            f"every slice run: infer {air_all.timings['infer']:.2f} s, "
            f"wall {air_all.seconds:.2f} s ({air_run.seconds / air_all.seconds:.2f}x)"
        )
    if args.compare:
        argv = ["--slices", str(args.slices), "--size", str(args.size)]
        argv += ["--batch-size", str(args.batch_size), "--repeat", str(args.repeat)]
        if args.model:
            argv += ["--model", str(args.model.resolve())]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        text = run_baseline(args.compare.resolve(), argv)
        print()
        print(f"baseline: {args.compare} (same arguments, run after this one)")
        print("  " + text.strip().replace("\n", "\n  "))
        base_wall = _number(r"^wall\s+([\d.]+)", text)
        base_share = _number(r"= ([\d.]+)% of wall time", text)
        print()
        print(
            f"wall: {total:.2f} s vs baseline {base_wall:.2f} s ({total / base_wall:.2f}x); "
            f"not inference: {not_infer / total * 100:.1f}% vs {base_share:.1f}% of wall time"
        )


if __name__ == "__main__":
    main()
