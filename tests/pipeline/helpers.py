"""In-memory volumes and small ONNX models for the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from pydicom.uid import CTImageStorage, generate_uid

from medseg.dicom.volume import SourceFrame, Volume
from medseg.modelcard import IMAGENET_MEAN, IMAGENET_STD, ModelCard


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
    scale = gain * IMAGENET_STD[0]
    shift = gain * (IMAGENET_MEAN[0] - 0.5)
    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["ch0"]),
        helper.make_node("Mul", ["ch0", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["logits"]),
    ]
    inits = [
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [1]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [3]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
        helper.make_tensor("shift", TensorProto.FLOAT, [], [shift]),
    ]
    graph = helper.make_graph(
        nodes,
        "bright_nhwc",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", height, width, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", height, width, 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    card = ModelCard.from_dict({"name": "test-nhwc", "input_size": size, "layout": "NHWC"})
    card.save(path.with_suffix(".json"))
    return card


def bright_logits(batch_nchw: np.ndarray, gain: float = 40.0, level: float = 0.5) -> np.ndarray:
    """What the bright test models compute, in numpy: (N, 1, H, W)."""
    intensity = batch_nchw[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return (gain * (intensity - level)).astype(np.float32)
