"""Tiny ONNX models with SAM2-UNet's I/O contract, built inside the tests.

``image`` [N, 3, H, W] float32 in, ``logits`` [N, 1, H, W] float32 out. The model marks
pixels brighter than a level of the *windowed* intensity, so a test knows exactly which
voxels a correct pipeline must return.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from medseg.modelcard import IMAGENET_MEAN, IMAGENET_STD, ModelCard


def bright_layers(
    channel_axis: int, gain: float = 40.0, level: float = 0.5
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initialisers for ``logits = gain * (intensity - level)`` on channel 0.

    ``image`` is sliced to channel 0 along ``channel_axis`` (1 for NCHW, 3 for NHWC).
    """
    mean, std = IMAGENET_MEAN[0], IMAGENET_STD[0]
    # logit = gain * (x * std + mean - level) = (gain * std) * x + gain * (mean - level)
    scale = np.array(gain * std, dtype=np.float32)
    shift = np.array(gain * (mean - level), dtype=np.float32)
    node, inits = channel_slice("ch0", 0, channel_axis)
    nodes = [
        node,
        helper.make_node("Mul", ["ch0", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["logits"]),
    ]
    inits += [
        helper.make_tensor("scale", TensorProto.FLOAT, [], [float(scale)]),
        helper.make_tensor("shift", TensorProto.FLOAT, [], [float(shift)]),
    ]
    return nodes, inits


def channel_slice(
    out: str, channel: int, channel_axis: int = 1
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """A Slice node taking channel ``channel`` of ``image`` into ``out``, with its inputs."""
    node = helper.make_node(
        "Slice", ["image", f"{out}_starts", f"{out}_ends", f"{out}_axes"], [out]
    )
    inits = [
        helper.make_tensor(f"{out}_starts", TensorProto.INT64, [1], [channel]),
        helper.make_tensor(f"{out}_ends", TensorProto.INT64, [1], [channel + 1]),
        helper.make_tensor(f"{out}_axes", TensorProto.INT64, [1], [channel_axis]),
    ]
    return node, inits


def save_nchw_model(
    path: Path,
    name: str,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    size: tuple[int, int],
    batch: int | str = "N",
) -> None:
    """``image`` [batch, 3, H, W] -> ``logits`` [batch, 1, H, W]: checked and saved."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, *size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 1, *size])],
        initializer=inits,
    )
    save_checked(graph, path)


def save_checked(graph: onnx.GraphProto, path: Path) -> None:
    """Wrap ``graph`` in an opset-17 / IR-8 model, check it and save it at ``path``."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def make_bright_model(
    path: Path,
    level: float = 0.5,
    gain: float = 40.0,
    size: tuple[int, int] = (352, 352),
    static_batch: int | None = None,
    card_overrides: dict | None = None,
) -> ModelCard:
    """Write an ONNX model whose logit is ``gain * (intensity - level)`` and its card.

    ``intensity`` is channel 0 un-normalised back to [0, 1] with ImageNet statistics, so the
    threshold 0.5 of the card corresponds to windowed intensity ``level``.
    """
    nodes, inits = bright_layers(channel_axis=1, gain=gain, level=level)
    path = Path(path)
    save_nchw_model(path, "bright", nodes, inits, size, static_batch or "N")
    fields = {"name": "test-bright", "version": "0.0.1", "input_size": size}
    if static_batch:
        fields["batch"] = static_batch
    fields.update(card_overrides or {})
    card = ModelCard.from_dict(fields)
    card.save(path.with_suffix(".json"))
    return card


def make_coarse_bright_model(
    path: Path, size: tuple[int, int], stride: int, level: float = 0.5, gain: float = 40.0
) -> ModelCard:
    """Like ``make_bright_model``, but the logits are averaged over ``stride`` x ``stride``
    cells and upsampled bilinearly, as a network whose finest features are at that stride
    answers: right inside and far outside an object, blurred and blocky at its border."""
    nodes, inits = bright_layers(channel_axis=1, gain=gain, level=level)
    nodes[-1].output[0] = "fine"
    nodes += [
        helper.make_node(
            "AveragePool",
            ["fine"],
            ["coarse"],
            kernel_shape=[stride, stride],
            strides=[stride, stride],
        ),
        helper.make_node("Resize", ["coarse", "", "scales"], ["logits"], mode="linear"),
    ]
    inits.append(
        helper.make_tensor(
            "scales", TensorProto.FLOAT, [4], [1.0, 1.0, float(stride), float(stride)]
        )
    )
    path = Path(path)
    save_nchw_model(path, "coarse-bright", nodes, inits, size)
    card = ModelCard(name="test-coarse-bright", version="0.0.1", input_size=size)
    card.save(path.with_suffix(".json"))
    return card


def make_prompted_bright_model(path: Path, size: tuple[int, int], level: float = 0.5) -> ModelCard:
    """A promptable model with a known answer: ``image`` and ``prompt`` [N, 2, H, W] in.

    Bright pixels (windowed intensity above ``level``) are the objects. An all-zero prompt
    returns every bright pixel (automatic mode); otherwise only the bright pixels connected
    (within the bright mask) to positive prompt pixels, less those connected to negative
    ones: a geodesic reconstruction, unrolled as max-pools, as a perfect promptable
    network would answer.
    """
    mean, std = IMAGENET_MEAN[0], IMAGENET_STD[0]
    node, inits = channel_slice("ch0", 0)
    nodes = [
        node,
        helper.make_node("Mul", ["ch0", "std"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean"], ["intensity"]),
        helper.make_node("Greater", ["intensity", "level"], ["bright_b"]),
        helper.make_node("Cast", ["bright_b"], ["bright"], to=TensorProto.FLOAT),
    ]
    inits += [
        helper.make_tensor("std", TensorProto.FLOAT, [], [std]),
        helper.make_tensor("mean", TensorProto.FLOAT, [], [mean]),
        helper.make_tensor("level", TensorProto.FLOAT, [], [level]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0]),
    ]
    for channel, name in ((0, "pos"), (1, "neg")):
        nodes.append(
            helper.make_node(
                "Slice", ["prompt", f"{name}_s", f"{name}_e", f"{name}_a"], [f"{name}_map"]
            )
        )
        inits += [
            helper.make_tensor(f"{name}_s", TensorProto.INT64, [1], [channel]),
            helper.make_tensor(f"{name}_e", TensorProto.INT64, [1], [channel + 1]),
            helper.make_tensor(f"{name}_a", TensorProto.INT64, [1], [1]),
        ]
        current = f"{name}_0"
        nodes.append(helper.make_node("Mul", [f"{name}_map", "bright"], [current]))
        for step in range(1, max(size) + 1):
            pooled = f"{name}_p{step}"
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], [pooled], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
                )
            )
            current = f"{name}_{step}"
            nodes.append(helper.make_node("Mul", [pooled, "bright"], [current]))
        nodes.append(helper.make_node("Identity", [current], [f"{name}_grown"]))
    nodes += [
        helper.make_node("Sub", ["one", "neg_grown"], ["not_neg"]),
        helper.make_node("Mul", ["pos_grown", "not_neg"], ["selected"]),
        helper.make_node("ReduceMax", ["prompt"], ["any"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sub", ["one", "any"], ["auto"]),
        helper.make_node("Mul", ["auto", "bright"], ["auto_part"]),
        helper.make_node("Mul", ["any", "selected"], ["prompt_part"]),
        helper.make_node("Add", ["auto_part", "prompt_part"], ["answer"]),
        helper.make_node("Mul", ["answer", "two"], ["twice"]),
        helper.make_node("Sub", ["twice", "one"], ["signed"]),
        helper.make_node("Mul", ["signed", "ten"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "prompted_bright",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, *size]),
            helper.make_tensor_value_info("prompt", TensorProto.FLOAT, ["N", 2, *size]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1, *size])],
        initializer=inits,
    )
    path = Path(path)
    save_checked(graph, path)
    card = ModelCard(
        name="test-prompted-bright", version="0.0.1", input_size=size, prompt_input="prompt"
    )
    card.save(path.with_suffix(".json"))
    return card
