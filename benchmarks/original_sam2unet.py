"""Build the ORIGINAL SAM2-UNet (WZH0120/SAM2-UNet) from a local checkout, for side-by-side runs.

Nothing of the original is copied into medseg: its classes are imported from the checkout
given on the command line (``git clone https://github.com/WZH0120/SAM2-UNet``; it needs
``pip install hydra-core==1.3.2``). Used by ``bench_model.py --original`` (speed baseline)
and ``tests/model/make_original_outputs.py`` (the fidelity fixture).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from torch import nn

SIZES = {"hiera_l": "l", "hiera_b+": "b+", "hiera_s": "s", "hiera_t": "t"}


def build_original(checkout: Path, name: str) -> nn.Module:
    """The original network for a published size, random weights, on the CPU.

    ``hiera_l`` comes from the original ``SAM2UNet()`` constructor itself; that constructor
    is hard-wired to ``hiera_l``, so the other sizes assemble the same original classes
    (trunk from the original yaml, ``Adapter``, ``RFB_modified``, ``Up``) with their widths.
    """
    checkout = Path(checkout).resolve()
    if not (checkout / "SAM2UNet.py").is_file():
        raise SystemExit(f"{checkout} is not a SAM2-UNet checkout (no SAM2UNet.py)")
    sys.path.insert(0, str(checkout))
    import sam2.build_sam as build_sam
    import SAM2UNet as source
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    # the original defaults to device="cuda"; this machine has none
    source.build_sam2 = functools.partial(build_sam.build_sam2, device="cpu")
    size = SIZES[name]
    if size == "l":
        return source.SAM2UNet()
    cfg = OmegaConf.load(checkout / "sam2_configs" / f"sam2_hiera_{size}.yaml")
    model = source.SAM2UNet.__new__(source.SAM2UNet)
    nn.Module.__init__(model)
    model.encoder = instantiate(cfg.model.image_encoder.trunk)
    model.encoder.blocks = nn.Sequential(*[source.Adapter(b) for b in model.encoder.blocks])
    dim = int(cfg.model.image_encoder.trunk.embed_dim)
    for i in range(4):
        setattr(model, f"rfb{i + 1}", source.RFB_modified(dim * 2**i, 64))
        setattr(model, f"up{i + 1}", source.Up(128, 64))
    model.side1 = nn.Conv2d(64, 1, kernel_size=1)
    model.side2 = nn.Conv2d(64, 1, kernel_size=1)
    model.head = nn.Conv2d(64, 1, kernel_size=1)
    return model
