"""In-memory volumes and small ONNX models for the pipeline tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper
from pydicom.uid import CTImageStorage, generate_uid

from medseg.dicom.volume import SourceFrame, Volume
from medseg.modelcard import IMAGENET_MEAN, IMAGENET_STD, ModelCard
from tests.tiny_models import bright_layers, make_bright_model, save_checked


def make_volume(
    voxels: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (2.0, 1.0, 1.0),
    origin: tuple[float, float, float] = (-50.0, -40.0, 10.0),
    direction: np.ndarray | None = None,
    modality: str = "CT",
    window: tuple[float, float] | None = None,
) -> Volume:
    """A Volume with consistent geometry and no source files (for in-memory stages)."""
    voxels = np.asarray(voxels, dtype=np.float32)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    n = voxels.shape[0]
    positions = np.asarray(origin) + np.outer(np.arange(n) * spacing[0], direction[:, 2])
    return Volume(
        voxels=voxels,
        spacing=spacing,
        origin=origin,
        direction=direction,
        positions=positions,
        frames=tuple(SourceFrame(CTImageStorage, generate_uid()) for _ in range(n)),
        datasets=(),
        modality=modality,
        series_instance_uid=generate_uid(),
        study_instance_uid=generate_uid(),
        window=window,
    )


def balls(
    shape: tuple[int, int, int], centres: list[tuple[float, float, float]], radius: float
) -> np.ndarray:
    """Bool balls with centres (k, j, i) and radius in voxel units."""
    grid = np.indices(shape, dtype=np.float32)
    out = np.zeros(shape, dtype=bool)
    for centre in centres:
        dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        out |= dist2 <= radius**2
    return out


def make_nhwc_model(path: Path, size: tuple[int, int] = (32, 32), gain: float = 40.0) -> ModelCard:
    """Like tiny_models.make_bright_model but NHWC in ([N,H,W,3]) and out ([N,H,W,1])."""
    height, width = size
    nodes, inits = bright_layers(channel_axis=3, gain=gain, level=0.5)
    graph = helper.make_graph(
        nodes,
        "bright_nhwc",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", height, width, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", height, width, 1])],
        initializer=inits,
    )
    save_checked(graph, path)
    card = ModelCard.from_dict({"name": "test-nhwc", "input_size": size, "layout": "NHWC"})
    card.save(path.with_suffix(".json"))
    return card


def bright_logits(batch_nchw: np.ndarray, gain: float = 40.0, level: float = 0.5) -> np.ndarray:
    """What the bright test models compute, in numpy: (N, 1, H, W)."""
    intensity = batch_nchw[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return (gain * (intensity - level)).astype(np.float32)


@contextmanager
def bright_engine(folder: Path, size: tuple[int, int]) -> Iterator[tuple[object, ModelCard]]:
    """A one-thread ONNX Runtime engine on a fresh bright-pixel model, closed afterwards."""
    from medseg.engine import open_engine

    path = folder / "bright.onnx"
    card = make_bright_model(path, size=size)
    opened = open_engine(path, card, threads=1)
    try:
        yield opened, card
    finally:
        opened.close()
