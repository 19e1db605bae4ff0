"""Time and peak memory of Dice alone and the full metric set on a 512x512x300 mask pair.

Each (library, task) runs in its own subprocess so that peak memory is its own: the inputs
are loaded from .npy and the library imported first, then the method runs; we report its
wall time and its peak resident memory above that baseline (VmHWM after resetting it with
/proc/self/clear_refs, minus VmRSS before the call).

Compared, where importable: medseg, SimpleITK's filters (LabelOverlapMeasures +
HausdorffDistance: HD and average HD only; no HD95/NSD), DeepMind's ``surface-distance``
(PyPI ``surface-distance``) and ``seg-metrics``. The two third-party packages are not medseg
dependencies: install them into a separate folder and pass it with ``--extra-path``, e.g.::

    pip install --no-deps --target /tmp/benchdeps surface-distance seg-metrics pandas \\
        medutils pytz tzdata
    python3 benchmarks/bench_metrics.py --extra-path /tmp/benchdeps

``medutils`` (needed by seg-metrics) imports ``pingouin`` at module level without using it for
the functions seg-metrics calls; pingouin pulls in scikit-learn and statsmodels, so this
script registers an empty ``pingouin`` module in the seg-metrics subprocess instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPACING = (1.0, 0.78, 0.78)  # (z, y, x) mm
TOLERANCE = 1.0
TASKS = (
    ("medseg", "dice"),
    ("medseg", "full"),
    ("medseg-edt", "full"),
    ("simpleitk", "dice"),
    ("simpleitk", "full"),
    ("surface-distance", "dice"),
    ("surface-distance", "full"),
    ("seg-metrics", "dice"),
    ("seg-metrics", "full"),
)


def make_pair(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping liver-sized blobs with wavy boundaries (deterministic)."""
    axes = [
        (np.arange(n, dtype=np.float32) - n / 2) * s for n, s in zip(shape, SPACING, strict=True)
    ]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    scale = min(shape[1] * SPACING[1], shape[0] * SPACING[0]) / 512 * 2.0

    def blob(shift: float, phase: float) -> np.ndarray:
        zz, yy, xx = z / (70 * scale), (y - shift) / (95 * scale), (x + shift) / (80 * scale)
        radius = np.sqrt(zz * zz + yy * yy + xx * xx)
        wave = 0.08 * np.sin(3 * np.arctan2(yy, xx) + phase) * np.cos(2 * np.arctan2(zz, xx))
        return radius <= 1.0 + wave

    return blob(4.0, 0.5), blob(0.0, 0.0)


def _status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MB, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _prepare(library: str, task: str, pred: np.ndarray, truth: np.ndarray):
    """Import the library (not timed) and return the call to time."""
    if library in ("medseg", "medseg-edt"):
        from medseg.metrics import dice, evaluate

        if task == "dice":
            return lambda: {"dice": dice(pred, truth)}
        method = "edt" if library == "medseg-edt" else "kdtree"

        def medseg_full() -> dict:
            r = evaluate(pred, truth, SPACING, tolerance_mm=TOLERANCE, distance_method=method)
            return {k: r[k] for k in ("dice", "hd", "hd95", "assd", "nsd", "lesion_f1")}

        return medseg_full
    if library == "simpleitk":
        import SimpleITK as sitk

        def image(mask: np.ndarray) -> sitk.Image:
            img = sitk.GetImageFromArray(mask.astype(np.uint8))
            img.SetSpacing(SPACING[::-1])
            return img

        def simpleitk() -> dict:
            p, t = image(pred), image(truth)
            overlap = sitk.LabelOverlapMeasuresImageFilter()
            overlap.Execute(p, t)
            out = {"dice": overlap.GetDiceCoefficient()}
            if task == "full":
                hausdorff = sitk.HausdorffDistanceImageFilter()
                hausdorff.Execute(p, t)
                out["hd"] = hausdorff.GetHausdorffDistance()
                out["avg_hd"] = hausdorff.GetAverageHausdorffDistance()
            return out

        return simpleitk
    if library == "surface-distance":
        import surface_distance as sd

        if task == "dice":
            return lambda: {"dice": float(sd.compute_dice_coefficient(truth, pred))}

        def deepmind() -> dict:
            distances = sd.compute_surface_distances(truth, pred, SPACING)
            return {
                "dice": float(sd.compute_dice_coefficient(truth, pred)),
                "hd": float(sd.compute_robust_hausdorff(distances, 100)),
                "hd95": float(sd.compute_robust_hausdorff(distances, 95)),
                "assd": float(np.mean(sd.compute_average_surface_distance(distances))),
                "nsd": float(sd.compute_surface_dice_at_tolerance(distances, TOLERANCE)),
            }

        return deepmind
    if library == "seg-metrics":
        import types

        sys.modules.setdefault("pingouin", types.ModuleType("pingouin"))
        import seg_metrics.seg_metrics as sg

        names = ["dice"] if task == "dice" else ["dice", "jaccard", "hd", "hd95", "msd"]

        def seg_metrics() -> dict:
            result = sg.write_metrics(
                labels=[1],
                gdth_img=truth.astype(np.uint8),
                pred_img=pred.astype(np.uint8),
                spacing=SPACING,
                metrics=names,
                verbose=False,
            )
            row = result[0] if isinstance(result, list) else result
            return {k: float(v[0]) for k, v in row.items() if k in names}

        return seg_metrics
    raise ValueError(library)


def child(library: str, task: str, data: Path) -> None:
    pred, truth = np.load(data / "pred.npy"), np.load(data / "truth.npy")
    call = _prepare(library, task, pred, truth)
    # Reset the peak-RSS mark to the current RSS (Linux clear_refs "5"); ru_maxrss would
    # not do: it survives exec, so it would report the parent's peak.
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_mb("VmRSS")
    start = time.perf_counter()
    values = call()
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_mb": peak - baseline, "values": values}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="300,512,512", help="z,y,x (default 300,512,512)")
    parser.add_argument("--extra-path", help="folder with surface_distance / seg_metrics")
    parser.add_argument("--only", help="comma-separated libraries to run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per method")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]))
        return
    shape = tuple(int(v) for v in args.shape.split(","))
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    paths = (root, args.extra_path, env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    wanted = set(args.only.split(",")) if args.only else None
    with tempfile.TemporaryDirectory() as tmp:
        pred, truth = make_pair(shape)
        np.save(Path(tmp) / "pred.npy", pred)
        np.save(Path(tmp) / "truth.npy", truth)
        print(f"pair {shape} (z,y,x), spacing {SPACING} mm, {int(truth.sum())} truth voxels")
        del pred, truth
        header = f"{'library':<17} {'task':<5} {'seconds':>8} {'peak MB':>8}  values"
        print(header)
        print("-" * len(header))
        for library, task in TASKS:
            if wanted and library not in wanted:
                continue
            try:
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", library, task, tmp],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=args.timeout,
                )
            except subprocess.TimeoutExpired:
                print(
                    f"{library:<17} {task:<5} {'>' + str(int(args.timeout)):>8} {'-':>8}  timed out"
                )
                continue
            if proc.returncode != 0:
                reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"
                print(f"{library:<17} {task:<5} {'-':>8} {'-':>8}  unavailable: {reason}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            values = ", ".join(f"{k}={v:.4g}" for k, v in r["values"].items())
            print(f"{library:<17} {task:<5} {r['seconds']:8.2f} {r['peak_mb']:8.0f}  {values}")


if __name__ == "__main__":
    main()
