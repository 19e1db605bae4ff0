"""Write tests/model/fixtures/original_sam2unet_outputs.npz from the ORIGINAL SAM2-UNet code.

Not run by the test suite (the original code is not a dependency); run by hand when the
fixture must be remade:

    git clone https://github.com/WZH0120/SAM2-UNet /tmp/SAM2-UNet
    pip install hydra-core==1.3.2          # the original's config system (torch from medseg[train])
    python3 tests/model/make_original_outputs.py /tmp/SAM2-UNet

For each published size the original network (``benchmarks/original_sam2unet.py``) gets
``reference_weights`` values and runs on ``reference_input``; every fourth pixel of
``out``, ``out1`` and ``out2`` is stored. ``test_fidelity.py`` compares medseg's model,
given the same values, against them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from benchmarks.original_sam2unet import SIZES, build_original  # noqa: E402
from tests.model.reference_weights import reference_input, reference_state  # noqa: E402

FIXTURE = Path(__file__).with_name("fixtures") / "original_sam2unet_outputs.npz"
STRIDE = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("original", type=Path, help="checkout of WZH0120/SAM2-UNet")
    parser.add_argument("-o", "--output", type=Path, default=FIXTURE)
    args = parser.parse_args()
    x = torch.from_numpy(reference_input())
    arrays: dict[str, np.ndarray] = {}
    for name in SIZES:
        model = build_original(args.original, name).eval()
        model.load_state_dict(reference_state(model), strict=True)
        with torch.inference_mode():
            outputs = model(x)
        for label, y in zip(("out", "out1", "out2"), outputs, strict=True):
            arrays[f"{name}/{label}"] = y[..., ::STRIDE, ::STRIDE].numpy()
        arrays[f"{name}/n_keys"] = np.array(len(model.state_dict()))
        print(name, {k: float(np.abs(v).max()) for k, v in arrays.items() if k.startswith(name)})
        del model
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, stride=np.array(STRIDE), **arrays)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
