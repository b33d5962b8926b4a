"""ONNX lowerings of the float islands (snnc.ir.islands): standard float ONNX ops.

`onnx_emit.LOWER` includes `LOWER` here. Each lowering gets the emitter, the IR node, its
input names, its output names and its module, like every lowering in onnx_emit. At opset
21 (snnc's): LayerNormalization (17), GroupNormalization (21: per-channel scale and bias),
Softmax / LogSoftmax (13), Gelu (20; the erf or tanh formula below 20), Sigmoid, Tanh,
HardSigmoid, HardSwish, LeakyRelu, Elu, Clip, Exp, Log, Sqrt, Reciprocal, Pow, Abs, Neg,
Erf. ONNX Runtime 1.31 and 1.32 run all of them on the CPU.
"""

from __future__ import annotations

import math

import numpy as np

from snnc.errors import PassError


def _plain(onnx_op: str, **fixed):
    def lower(e, node, ins, outs, module):
        e.add(onnx_op, [ins[0]], outs, module, **fixed)
    return lower


def _with_attr(onnx_op: str, onnx_name: str, ir_name: str):
    def lower(e, node, ins, outs, module):
        e.add(onnx_op, [ins[0]], outs, module, **{onnx_name: float(node.attrs[ir_name])})
    return lower


def _chain(*steps):
    """Ops applied one after another, each on the previous one's output."""
    def lower(e, node, ins, outs, module):
        value = ins[0]
        for i, op in enumerate(steps):
            target = outs[0] if i == len(steps) - 1 else e.temp(module, op.lower())
            e.add(op, [value], [target], module)
            value = target
    return lower


def _silu(e, node, ins, outs, module):
    gate = e.temp(module, "sigmoid")
    e.add("Sigmoid", [ins[0]], [gate], module)
    e.add("Mul", [ins[0], gate], outs, module)


def _pow(e, node, ins, outs, module):
    e.add("Pow", [ins[0], e.scalar(node.attrs["exponent"])], outs, module)


def _hardtanh(e, node, ins, outs, module):
    low, high = (e.scalar(node.attrs[k]) for k in ("min", "max"))
    e.add("Clip", [ins[0], low, high], outs, module)


def _gelu(e, node, ins, outs, module):
    approximate = node.attrs["approximate"]
    if e.opts.opset >= 20:
        e.add("Gelu", [ins[0]], outs, module, approximate=approximate)
        return
    x = ins[0]  # the formula of Gelu-20's function body
    t = {k: e.temp(module, k) for k in ("inner", "curve", "gate", "half", "cube", "cubic")}
    if approximate == "tanh":  # tanh(sqrt(2/pi) (x + 0.044715 x^3))
        e.add("Pow", [x, e.scalar(3.0)], [t["cube"]], module)
        e.add("Mul", [t["cube"], e.scalar(0.044715)], [t["cubic"]], module)
        e.add("Add", [x, t["cubic"]], [t["curve"]], module)
        e.add("Mul", [t["curve"], e.scalar(math.sqrt(2.0 / math.pi))], [t["inner"]], module)
        e.add("Tanh", [t["inner"]], [t["gate"]], module)
    else:  # erf(x / sqrt(2))
        e.add("Mul", [x, e.scalar(1.0 / math.sqrt(2.0))], [t["inner"]], module)
        e.add("Erf", [t["inner"]], [t["gate"]], module)
    # x * (0.5 * (1 + gate)), the same number as (x * 0.5) * (1 + gate) (halving is exact);
    # with x * 0.5 first, ONNX Runtime 1.32 shares that node between an erf and a tanh GELU
    # of one x and then fuses the erf one, leaving the tanh one reading a removed node
    one_plus = e.temp(module, "one_plus")
    e.add("Add", [t["gate"], e.scalar(1.0)], [one_plus], module)
    e.add("Mul", [one_plus, e.scalar(0.5)], [t["half"]], module)
    e.add("Mul", [x, t["half"]], outs, module)


def _softmax(onnx_op: str):
    def lower(e, node, ins, outs, module):
        e.add(onnx_op, [ins[0]], outs, module, axis=node.attrs["axis"])
    return lower


def _layer_norm(e, node, ins, outs, module):
    """LayerNormalization needs a scale: ones when the model's LayerNorm has none."""
    axis = node.attrs["axis"]
    inputs = list(ins)
    if len(inputs) == 1:
        shape = node.inputs[0].shape[axis:]
        if not all(isinstance(d, int) for d in shape):
            raise PassError(f"layer_norm at {node.source} normalizes a batch axis")
        inputs.append(e.const(np.ones(shape, np.float32), f"{module}.ones"))
    e.add("LayerNormalization", inputs, outs, module, axis=axis,
          epsilon=float(node.attrs["eps"]))


def _group_norm(e, node, ins, outs, module):
    """GroupNormalization-21 (per-channel scale and bias); below opset 21, where the op
    took them per group, the same as LayerNormalization over [N, G, C/G * ...] and an
    affine per channel."""
    groups, eps = node.attrs["groups"], float(node.attrs["eps"])
    if e.opts.opset >= 21:
        e.add("GroupNormalization", list(ins), outs, module, num_groups=groups, epsilon=eps)
        return
    x, scale, bias = ins
    rank = len(node.inputs[0].shape)
    shape, grouped, normed, back, scaled = (e.temp(module, k) for k in (
        "shape", "grouped", "normalized", "ungrouped", "scaled"))
    e.add("Shape", [x], [shape], module)
    e.add("Reshape", [x, e.ints([0, groups, -1], f"{module}/groups")], [grouped], module)
    size = math.prod(node.inputs[0].shape[2:]) * (node.inputs[0].shape[1] // groups)
    e.add("LayerNormalization", [grouped, e.const(np.ones(size, np.float32), f"{module}.ones")],
          [normed], module, axis=2, epsilon=eps)
    e.add("Reshape", [normed, shape], [back], module)
    per_channel = [-1] + [1] * (rank - 2)
    shaped = [e.temp(module, k) for k in ("scale_c", "bias_c")]
    for value, target in zip((scale, bias), shaped):
        e.add("Reshape", [value, e.ints(per_channel, f"{module}/channels")], [target], module)
    e.add("Mul", [back, shaped[0]], [scaled], module)
    e.add("Add", [scaled, shaped[1]], outs, module)


LOWER = {
    "gelu": _gelu, "silu": _silu, "pow": _pow, "hardtanh": _hardtanh,
    "sigmoid": _plain("Sigmoid"), "tanh": _plain("Tanh"), "erf": _plain("Erf"),
    "exp": _plain("Exp"), "log": _plain("Log"), "sqrt": _plain("Sqrt"),
    "rsqrt": _chain("Sqrt", "Reciprocal"), "reciprocal": _plain("Reciprocal"),
    "abs": _plain("Abs"), "neg": _plain("Neg"), "sign": _plain("Sign"),
    "leaky_relu": _with_attr("LeakyRelu", "alpha", "slope"),
    "elu": _with_attr("Elu", "alpha", "alpha"),
    "hardsigmoid": _plain("HardSigmoid", alpha=1.0 / 6.0, beta=0.5),
    "hardswish": _plain("HardSwish"),
    "softmax": _softmax("Softmax"), "log_softmax": _softmax("LogSoftmax"),
    "layer_norm": _layer_norm, "group_norm": _group_norm,
}
