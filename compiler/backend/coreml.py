"""`--target coreml`: the static-batch model with the ops CoreML refuses written as ops it
takes (docs/mobile.md). ONNX Runtime's CoreML execution provider has no DequantizeLinear
(and its MLProgram no Pad), so a QDQ model splits into many partitions. Here, after the
ONNX emitter:
- DequantizeLinear of a constant (quantized weights) becomes the float32 constant it
  computes: (q - zero_point) * scale, in float32 as ONNX Runtime computes it;
- DequantizeLinear of uint8 spikes with scale 1 and zero point 0 becomes a Cast;
- a constant-mode Pad becomes a Concat with constant blocks, one axis at a time;
- a BatchNormalization with constant statistics (MLProgram has none) becomes the Mul and
  Add ONNX Runtime's kernel computes: x * s + b, s = (1 / sqrt(var + eps)) * scale and
  b = bias - mean * s, each rounded to float32 in that order.
Every rewrite computes the same numbers (the GEMMs then sum integer-valued floats, exactly
below 2^24, as the integer kernels do): outputs are bit-identical on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from snnc.errors import PassError


def coreml_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with DequantizeLinear and Pad rewritten as above (a new ModelProto)."""
    model = shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    infos = {v.name: v.type.tensor_type for v in [*g.value_info, *g.input, *g.output]}
    nodes, added = [], []
    for node in g.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            added.append(numpy_helper.from_array(_dequantized(node, consts), node.output[0]))
        elif node.op_type == "DequantizeLinear" and _is_cast(node, consts):
            nodes.append(helper.make_node("Cast", [node.input[0]], [node.output[0]],
                                          name=node.name, to=onnx.TensorProto.FLOAT))
        elif node.op_type == "Pad" and _constant_pads(node, consts):
            nodes += _concats(node, consts, infos[node.input[0]], added)
        elif node.op_type == "BatchNormalization" and _constant_statistics(node, consts):
            nodes += _scale_shift(node, consts, len(infos[node.input[0]].shape.dim), added)
        else:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    kept = [t for t in [*g.initializer, *added] if t.name in used]
    del g.node[:], g.initializer[:], g.value_info[:]
    g.node.extend(nodes)
    g.initializer.extend(kept)
    return model


def _dequantized(node: onnx.NodeProto, consts: dict) -> np.ndarray:
    q = consts[node.input[0]].astype(np.float32)
    scale = consts[node.input[1]].astype(np.float32)
    zero = consts[node.input[2]].astype(np.float32) if len(node.input) > 2 and \
        node.input[2] else np.zeros_like(scale)
    if scale.ndim == 1:  # per axis
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def _is_cast(node: onnx.NodeProto, consts: dict) -> bool:
    """A DequantizeLinear with scale 1 and zero point 0: the integers as floats."""
    scale = consts.get(node.input[1])
    zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
    return scale is not None and zero is not None and scale.size == 1 and \
        float(scale) == 1.0 and int(zero) == 0


def _constant_statistics(node: onnx.NodeProto, consts: dict) -> bool:
    training = next((a.i for a in node.attribute if a.name == "training_mode"), 0)
    return not training and len(node.output) == 1 and \
        all(name in consts for name in node.input[1:5])


def _scale_shift(node: onnx.NodeProto, consts: dict, rank: int, added: list) -> list:
    """BatchNormalization (inference) as Mul and Add, in the float32 arithmetic of ONNX
    Runtime's CPU kernel (batch_norm.h): the same numbers, bit for bit (runtime_tests)."""
    f32 = np.float32
    scale, bias, mean, var = (consts[n].astype(f32) for n in node.input[1:5])
    eps = f32(next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5))
    s = (f32(1) / np.sqrt(var + eps)).astype(f32) * scale
    b = bias - (mean * s).astype(f32)
    shape = [-1] + [1] * (rank - 2)
    names = [f"{node.name}/scale", f"{node.name}/shift"]
    for array, name in zip((s, b), names):
        added.append(numpy_helper.from_array(array.astype(f32).reshape(shape), name))
    scaled = f"{node.output[0]}/scaled"
    return [helper.make_node("Mul", [node.input[0], names[0]], [scaled], name=f"{node.name}/mul"),
            helper.make_node("Add", [scaled, names[1]], [node.output[0]],
                             name=f"{node.name}/add")]


def _constant_pads(node: onnx.NodeProto, consts: dict) -> bool:
    mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
    value = node.input[2] if len(node.input) > 2 else ""
    axes = node.input[3] if len(node.input) > 3 else ""
    return mode == b"constant" and node.input[1] in consts and not axes and \
        (not value or value in consts)


def _concats(node: onnx.NodeProto, consts: dict, info, added: list) -> list:
    """Pad as one Concat per padded axis, of constant blocks (needs static shapes)."""
    shape = [d.dim_value if d.HasField("dim_value") else None for d in info.shape.dim]
    if None in shape:
        raise PassError(f"--target coreml: {node.name} pads a tensor of unknown shape "
                        f"{shape}; compile with --batch N")
    dtype = helper.tensor_dtype_to_np_dtype(info.elem_type)
    value = consts[node.input[2]].item() if len(node.input) > 2 and node.input[2] else 0
    pads = consts[node.input[1]].tolist()
    rank, current, out = len(shape), node.input[0], []
    for axis in range(rank):
        before, after = pads[axis], pads[axis + rank]
        if before < 0 or after < 0:
            raise PassError(f"--target coreml: {node.name} crops (negative pads)")
        blocks = []
        for width, side in ((before, "before"), (after, "after")):
            if width:
                block = list(shape)
                block[axis] = width
                name = f"{node.name}/{side}{axis}"
                added.append(numpy_helper.from_array(np.full(block, value, dtype), name))
                blocks.append(name)
            else:
                blocks.append(None)
        if blocks == [None, None]:
            continue
        joined = f"{node.output[0]}/axis{axis}"
        parts = [p for p in (blocks[0], current, blocks[1]) if p]
        out.append(helper.make_node("Concat", parts, [joined], name=f"{node.name}/concat{axis}",
                                    axis=axis))
        shape[axis] += before + after
        current = joined
    if not out:
        return [helper.make_node("Identity", [current], [node.output[0]], name=node.name)]
    out[-1].output[0] = node.output[0]
    return out
