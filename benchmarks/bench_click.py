"""One click on a 300-slice 512 x 512 CT: time to its 3-D lesion, beside automatic mode.

The volume is built in memory (body, organ, a 30 mm hypodense lesion, CT noise) so the
benchmark needs no data; the click is at the lesion's centre. Prints the model calls and
the wall time of each mode, and their ratio (the issue's target: a click in <= 3 s).

    python3 benchmarks/bench_click.py [--model M] [--slices 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from medseg.pipeline import SegmentOptions, load_model, segment_volume_result
from medseg.prompts import PointPrompt


def volume(slices: int, size: int = 512):
    from pydicom.uid import CTImageStorage, generate_uid

    from medseg.dicom.volume import SourceFrame, Volume

    rng = np.random.default_rng(0)
    spacing = (1.25, 0.78, 0.78)
    z = (np.arange(slices) - slices / 2) * spacing[0]
    mm = (np.arange(size) - size / 2) * spacing[1]
    yy, xx = np.meshgrid(mm, mm, indexing="ij")
    body = (yy / 150) ** 2 + (xx / 190) ** 2 <= 1
    organ = ((yy + 20) / 80) ** 2 + ((xx - 50) / 100) ** 2 <= 1
    voxels = np.empty((slices, size, size), np.float32)
    for k in range(slices):
        plane = np.where(body, -90.0, -1000.0)
        plane = np.where(organ, 60.0, plane)
        lesion = ((z[k]) / 15) ** 2 + ((yy + 20) / 15) ** 2 + ((xx - 50) / 15) ** 2 <= 1
        plane = np.where(lesion, 10.0, plane)
        voxels[k] = plane + rng.normal(0, 10, plane.shape)
    positions = np.stack([np.zeros(slices) - 200, np.zeros(slices) - 200, z], axis=1)
    vol = Volume(
        voxels=voxels,
        spacing=spacing,
        origin=tuple(positions[0]),
        direction=np.eye(3),
        positions=positions,
        frames=tuple(SourceFrame(CTImageStorage, generate_uid()) for _ in range(slices)),
        datasets=(),
        modality="CT",
        series_instance_uid=generate_uid(),
        study_instance_uid=generate_uid(),
    )
    centre = (slices // 2, int(np.argmin(np.abs(mm + 20))), int(np.argmin(np.abs(mm - 50))))
    return vol, centre


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    vol, (k, r, c) = volume(args.slices)
    model = load_model(SegmentOptions(model=args.model))
    rows = []
    for name, prompts in (("automatic", ()), ("one click", (PointPrompt(c, r, k),))):
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = segment_volume_result(
                vol, model.engine, model.card, SegmentOptions(prompts=prompts)
            )
            times.append(time.perf_counter() - start)
        ml = float(result.mask.sum()) * vol.voxel_volume_ml
        rows.append((name, result.tiles, float(np.median(times)), ml))
    base = rows[0][2]
    print(f"{args.slices} x 512 x 512 CT, model {model.card.name} {model.card.version}")
    print(f"{'mode':10} {'calls':>6} {'median s':>9} {'vs auto':>8} {'ml':>7}")
    for name, calls, seconds, ml in rows:
        print(f"{name:10} {calls:6d} {seconds:9.2f} {seconds / base:8.2f} {ml:7.2f}")
    model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
