"""SAM2-UNet cost on this machine: parameters, GFLOPs, file size, ms/slice per runtime.

Prints one table row per model: full-size ``hiera_l`` (random weights: speed does not depend
on the values) and the bundled phantom model (``micro`` if it is absent). Columns: PyTorch
eager, ONNX Runtime FP32 and ONNX Runtime INT8 (static QDQ, calibrated on real slices),
with INT8's accuracy loss against FP32 on held-out slices.

    python3 benchmarks/bench_model.py                     # both models, 3 timed runs each
    python3 benchmarks/bench_model.py --models phantom --iters 10
    python3 benchmarks/bench_model.py --models hiera_l --iters 1 --warmup 0   # ~minutes
    python3 benchmarks/bench_model.py --models hiera_l --original /tmp/SAM2-UNet  # side by side

``--original CHECKOUT`` (a clone of WZH0120/SAM2-UNet, plus ``pip install hydra-core``) also
times the original code with the same weights, eager and exported to ONNX by the same
exporter, and prints medseg/original ratios: the baseline run side by side.

Reference for hiera_l on the 2-core dev CPU (original implementation): 2.6 s/slice eager,
2.0 s/slice ONNX Runtime FP32, 256 GFLOPs/slice (~1.35 s/slice FP32 floor at 190 GFLOP/s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.original_sam2unet import SIZES  # noqa: E402
from medseg.model import build_sam2unet  # noqa: E402
from medseg.model.export import export_onnx, ort_session  # noqa: E402
from medseg.model.quantize import compare_precisions, quantize_int8, split_calibration  # noqa: E402
from medseg.modelcard import default_model_path, load_card_for  # noqa: E402

PEAK_GFLOPS = 190.0  # this CPU's FP32 SGEMM peak on 2 threads (../shared/notes/performance.md)


def gflops(config: object) -> tuple[float, float]:
    """(all, without attention matmuls) GFLOPs per 352x352 slice, counted on the meta device."""
    with torch.device("meta"):
        model = build_sam2unet(config).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.empty(1, 3, 352, 352))
    counts = counter.get_flop_counts()["Global"]
    total = sum(counts.values()) / 1e9
    attention = sum(v for k, v in counts.items() if "bmm" in str(k)) / 1e9
    return total, total - attention


def time_ms(run, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def real_slices(folder: Path, count: int) -> np.ndarray:
    """Real slices under the bundled card's input contract (2.5-D when it says so)."""
    from medseg.model.slices import dicom_slices

    return dicom_slices(folder, load_card_for(default_model_path()), max_slices=count)


def bench(name: str, args: argparse.Namespace, slices: np.ndarray, tmp: Path) -> dict:
    bundled = REPO / "models" / "sam2unet_phantom.onnx"
    if name == "bundled":
        if bundled.is_file():
            card = load_card_for(bundled)
            config, fp32_path = card.extra["config"], bundled
        else:
            print("bundled model absent: benchmarking 'micro' instead", file=sys.stderr)
            name, config, fp32_path = "micro", "micro", None
    else:
        config, fp32_path = name, None
    model = build_sam2unet(config).eval()
    params = sum(p.numel() for p in model.parameters())
    total, no_attn = gflops(config)
    if fp32_path is None:
        fp32_path = export_onnx(model, tmp / f"{name}.onnx", static=True)
    x = torch.from_numpy(slices[:1])
    row = {
        "model": name,
        "params_M": params / 1e6,
        "gflops": total,
        "gflops_no_attn": no_attn,
        "file_mb": fp32_path.stat().st_size / 1e6,
    }
    with torch.inference_mode():
        row["torch_ms"] = time_ms(lambda: model(x), args.iters, args.warmup)
    session = ort_session(fp32_path, args.threads)
    feed = {"image": slices[:1]}
    row["ort_ms"] = time_ms(lambda: session.run(["logits"], feed), args.iters, args.warmup)
    if args.original and name in SIZES:
        row.update(side_by_side(model, name, args, x, tmp))
    if args.skip_int8:
        return row
    calibration, heldout = split_calibration(slices, 0.5)
    int8_path = tmp / f"{name}.int8.onnx"
    row["int8_method"] = quantize_int8(fp32_path, int8_path, calibration)
    int8 = ort_session(int8_path, args.threads)
    row["int8_ms"] = time_ms(lambda: int8.run(["logits"], feed), args.iters, args.warmup)
    _, quant = compare_precisions(fp32_path, {"int8": int8_path}, heldout, threads=args.threads)
    row.update(
        heldout=len(heldout),
        int8_mb=int8_path.stat().st_size / 1e6,
        dlogit=quant.mean_abs_dlogit,
        dice=quant.dice_vs_fp32,
    )
    return row


def side_by_side(model, name: str, args: argparse.Namespace, x, tmp: Path) -> dict:
    """The original code with medseg's weights: eager and ORT times, and the output gap."""
    from benchmarks.original_sam2unet import build_original

    original = build_original(args.original, name).eval()
    original.load_state_dict(model.state_dict(), strict=True)
    with torch.inference_mode():
        gap = float((original(x)[0] - model(x)[0]).abs().max())
        orig_torch = time_ms(lambda: original(x), args.iters, args.warmup)
    path = export_onnx(original, tmp / f"{name}.original.onnx", static=True)
    session = ort_session(path, args.threads)
    feed = {"image": x.numpy()}
    orig_ort = time_ms(lambda: session.run(["logits"], feed), args.iters, args.warmup)
    return {"orig_torch_ms": orig_torch, "orig_ort_ms": orig_ort, "orig_gap": gap}


def print_side_by_side(rows: list[dict]) -> None:
    rows = [r for r in rows if "orig_torch_ms" in r]
    if not rows:
        return
    print("\nSide by side with the original code (WZH0120/SAM2-UNet), same weights and input:\n")
    head = (
        f"{'model':<9} {'orig torch ms':>13} {'medseg':>8} {'ratio':>6} "
        f"{'orig ORT ms':>12} {'medseg':>8} {'ratio':>6} {'max|dout|':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['model']:<9} {r['orig_torch_ms']:>13.1f} {r['torch_ms']:>8.1f} "
            f"{r['torch_ms'] / r['orig_torch_ms']:>6.2f} {r['orig_ort_ms']:>12.1f} "
            f"{r['ort_ms']:>8.1f} {r['ort_ms'] / r['orig_ort_ms']:>6.2f} {r['orig_gap']:>10.2e}"
        )
    print("ratio = medseg / original (below 1: medseg faster).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["hiera_l", "bundled"], help="config names and/or 'bundled'"
    )
    parser.add_argument("--iters", type=int, default=3, help="timed runs per runtime")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--calibration",
        type=Path,
        default=REPO.parent / "shared" / "data" / "dcmqi" / "ct-3slice",
        help="DICOM folder of real slices (INT8 calibration + held-out)",
    )
    parser.add_argument("--slices", type=int, default=8, help="real slices to load")
    parser.add_argument("--skip-int8", action="store_true")
    parser.add_argument(
        "--original", type=Path, help="checkout of WZH0120/SAM2-UNet to run side by side"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    slices = real_slices(args.calibration, args.slices)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(bench(name, args, slices, Path(tmp)))
            print(f"done {name}", file=sys.stderr)
    print(
        f"\nSAM2-UNet per 352x352 slice, batch 1, torch threads {torch.get_num_threads()}, "
        f"median of {args.iters} run(s); INT8 loss on {rows[-1].get('heldout', 0)} held-out "
        f"slice(s) of {args.calibration.name}\n"
    )
    head = (
        f"{'model':<9} {'params':>8} {'GFLOPs':>7} {'(no attn)':>9} {'FP32 MB':>8} "
        f"{'torch ms':>9} {'ORT FP32 ms':>12} {'floor %':>8} {'ORT INT8 ms':>12} "
        f"{'INT8 MB':>8} {'mean|dlogit|':>12} {'Dice':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        floor = r["gflops"] / PEAK_GFLOPS * 1000.0 / r["ort_ms"] * 100.0
        int8 = (
            (f"{r['int8_ms']:>12.1f} {r['int8_mb']:>8.2f} {r['dlogit']:>12.4f} {r['dice']:>6.3f}")
            if "int8_ms" in r
            else f"{'-':>12} {'-':>8} {'-':>12} {'-':>6}"
        )
        print(
            f"{r['model']:<9} {r['params_M']:>7.2f}M {r['gflops']:>7.1f} "
            f"{r['gflops_no_attn']:>9.1f} {r['file_mb']:>8.2f} {r['torch_ms']:>9.1f} "
            f"{r['ort_ms']:>12.1f} {floor:>7.0f}% {int8}"
        )
    print("\nfloor % = (GFLOPs / 190 GFLOP/s FP32 peak) / ORT FP32 time: share of the CPU's peak.")
    print_side_by_side(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
