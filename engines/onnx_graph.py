"""Rewrites of a shipped ONNX graph that make it faster on a CPU without changing what it
computes, made once and cached next to the other derived models.

``float_convolutions``: Kokoro's int8 ONNX export quantizes every 1-D convolution
dynamically (``DynamicQuantizeLinear`` -> ``ConvInteger`` -> bias ``Add`` -> ``Cast`` ->
scale ``Mul``). ONNX Runtime runs ``ConvInteger`` through im2col and a generic integer
GEMM, and its vocoder convolutions (128 channels, kernels up to 11, thousands of steps a
second of audio) are most of a synthesis. The rewrite dequantizes those weights once
(``(w - zero_point) * scale``, exactly what the integer path multiplies by) and runs each as
a float convolution of height 1, which ONNX Runtime's graph optimizer lays out in blocked
channels (NCHWc) and runs on its direct convolution kernels. The activations are no longer
rounded to 8 bits on the way in, so the result is the float network the int8 one
approximates.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def float_convolutions(source: Path, target: Path, scope: str) -> int:
    """Write ``source`` to ``target`` with every dynamically quantized convolution whose
    node name contains ``scope`` run in float, as a 2-D convolution of height 1. Returns
    how many were rewritten. Raises ``ValueError`` where the graph has another shape."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    every = list(graph.node)  # held, so that id() names each node for the whole rewrite
    producer = {out: node for node in every for out in node.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in every:
        for name in node.input:
            consumers[name].append(node)
    initial = {init.name: init for init in graph.initializer}

    def constant(name: str) -> np.ndarray:
        return numpy_helper.to_array(initial[name])

    def only_consumer(name: str, op_type: str) -> Any:
        nodes = consumers[name]
        if len(nodes) != 1 or nodes[0].op_type != op_type:
            raise ValueError(f"{name} feeds {[n.op_type for n in nodes]}, not one {op_type}")
        return nodes[0]

    replaced: dict[int, list[Any]] = {}  # the last node of a chain (by id) -> what stands for it
    dropped: set[int] = set()
    added: list[Any] = []
    for conv in every:
        if conv.op_type != "ConvInteger" or scope not in conv.name:
            continue
        x_node = producer[conv.input[0]]
        if x_node.op_type != "DynamicQuantizeLinear" or conv.input[1] not in initial:
            raise ValueError(f"{conv.name} is not a dynamically quantized convolution")
        chain = [conv]
        bias = None
        after = consumers[conv.output[0]][0] if len(consumers[conv.output[0]]) == 1 else None
        if after is not None and after.op_type == "Add":  # the bias, quantized at run time
            # Reshape <- Cast <- Floor <- Div(bias, x_scale * w_scale)
            node = producer[after.input[1]]
            for op_type in ("Reshape", "Cast", "Floor", "Div"):
                if node.op_type != op_type:
                    raise ValueError(f"{conv.name}: its bias comes from {node.op_type}")
                if op_type != "Div":
                    node = producer[node.input[0]]
            bias = constant(node.input[0]).astype(np.float32)
            chain.append(after)
        cast = only_consumer(chain[-1].output[0], "Cast")
        scale = only_consumer(cast.output[0], "Mul")
        chain += [cast, scale]
        scales = producer[scale.input[1]]  # x_scale * w_scale
        if scales.op_type != "Mul":
            raise ValueError(f"{conv.name}: its output scale comes from {scales.op_type}")
        w_scale = next(constant(n) for n in scales.input if n in initial)
        zero = constant(conv.input[3]) if len(conv.input) > 3 and conv.input[3] else 0
        weight = ((constant(conv.input[1]).astype(np.float32) - np.float32(zero))
                  * np.float32(w_scale))
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if weight.ndim != 3 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"{conv.name} is not a 1-D convolution with explicit pads")
        base = conv.name.replace("/", "_").strip("_")
        names = {k: f"{base}_float_{k}" for k in ("w", "b", "axis", "x", "y")}
        added.append(numpy_helper.from_array(weight[:, :, None, :], names["w"]))
        added.append(numpy_helper.from_array(np.array([2], dtype=np.int64), names["axis"]))
        inputs = [names["x"], names["w"]]
        if bias is not None:
            added.append(numpy_helper.from_array(bias, names["b"]))
            inputs.append(names["b"])
        pads = attrs.get("pads", [0, 0])
        replaced[id(scale)] = [
            helper.make_node("Unsqueeze", [x_node.input[0], names["axis"]], [names["x"]],
                             name=f"{base}_float_unsqueeze"),
            helper.make_node("Conv", inputs, [names["y"]], name=f"{base}_float",
                             kernel_shape=[1, attrs["kernel_shape"][0]],
                             dilations=[1, attrs.get("dilations", [1])[0]],
                             strides=[1, attrs.get("strides", [1])[0]],
                             pads=[0, pads[0], 0, pads[1]], group=attrs.get("group", 1)),
            helper.make_node("Squeeze", [names["y"], names["axis"]], [scale.output[0]],
                             name=f"{base}_float_squeeze"),
        ]
        dropped.update(id(node) for node in chain)
    nodes: list[Any] = []
    for node in every:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])
        elif id(node) not in dropped:
            nodes.append(node)
    outputs = {out.name for out in graph.output}
    while True:  # drop what fed only the integer path (the quantizers, the bias maths)
        used = {name for node in nodes for name in node.input} | outputs
        kept = [node for node in nodes if any(out in used for out in node.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    used = {name for node in nodes for name in node.input}
    initializers = [init for init in [*graph.initializer, *added] if init.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(target)
    return len(replaced)
