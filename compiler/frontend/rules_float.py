"""Lifting rules for float islands: the ops of a model that are not spike-driven.

Hybrid spiking transformers normalize with LayerNorm and weight attention with softmax,
conv SNNs use GELU, SiLU or sigmoid, and many models end in a non-spiking readout. These
lift to the float ops of snnc.ir.islands: elementwise activations and math on any axes,
normalizations and softmax over feature axes only. A normalization over the time axis
would need every step at once (snnc computes one step at a time) and one over the batch
axis would mix samples, so those are refused, saying which axis it was.
"""

from __future__ import annotations

import numpy as np
import torch

from snnc.frontend import axes
from snnc.frontend.axes import Layout
from snnc.frontend.lifter import (FLOAT_ELEMENTWISE, Act, Rules, Unsupported, dims, float_arg,
                                  image_input, int_arg, ints_arg, op_name)
from snnc.ir.ops import OPS

RULES = Rules()
rule = RULES.rule
FLOAT = "float (not spike-driven)"


def _approximate(a: dict) -> dict:
    how = a.get("approximate", "none")
    if how not in ("none", "tanh"):
        raise Unsupported(f"GELU approximate={how!r}; use 'none' or 'tanh'")
    return {"approximate": how}


def _elu(a: dict) -> dict:
    if float_arg(a, "scale") != 1.0 or float_arg(a, "input_scale") != 1.0:
        raise Unsupported("ELU with scale or input_scale (SELU, CELU); use nn.ELU(alpha)")
    return {"alpha": float_arg(a, "alpha")}


# aten op -> (IR op, its attributes from the op's arguments)
_ACTIVATIONS = {
    "aten.gelu.default": ("gelu", _approximate),
    "aten.silu.default": ("silu", None),
    "aten.sigmoid.default": ("sigmoid", None),
    "aten.tanh.default": ("tanh", None),
    "aten.hardtanh.default": ("hardtanh", lambda a: {"min": float_arg(a, "min_val"),
                                                     "max": float_arg(a, "max_val")}),
    "aten.relu6.default": ("hardtanh", lambda a: {"min": 0.0, "max": 6.0}),
    "aten.leaky_relu.default": ("leaky_relu", lambda a: {"slope": float_arg(a,
                                                                            "negative_slope")}),
    "aten.elu.default": ("elu", _elu),
    "aten.hardswish.default": ("hardswish", None),
    "aten.hardsigmoid.default": ("hardsigmoid", None),
}
_MATH = {
    "aten.exp.default": ("exp", None),
    "aten.log.default": ("log", None),
    "aten.sqrt.default": ("sqrt", None),
    "aten.rsqrt.default": ("rsqrt", None),
    "aten.reciprocal.default": ("reciprocal", None),
    "aten.pow.Tensor_Scalar": ("pow", lambda a: {"exponent": float_arg(a, "exponent")}),
    "aten.square.default": ("pow", lambda a: {"exponent": 2.0}),
    "aten.abs.default": ("abs", None),
    "aten.neg.default": ("neg", None),
    "aten.erf.default": ("erf", None),
    "aten.sign.default": ("sign", None),
}
_UNARY = {**_ACTIVATIONS, **_MATH}
assert set(_UNARY) == set(FLOAT_ELEMENTWISE), "lifter.FLOAT_ELEMENTWISE lists these ops"


def _unary(lx, node, a):
    op, read = _UNARY[op_name(node)]
    attrs = read(a) if read else {}
    x = lx.operand(a.get("self"))
    if not isinstance(x, Act):  # of a parameter (a learned temperature's exp): folded
        if x not in lx.builder.constants:
            raise Unsupported(f"{op} of a quantized weight; quantize the result instead")
        array = np.asarray(lx.builder.constants[x])
        return lx.constant(OPS[op].evaluate([array], attrs)[0], node.name)
    value, = lx.emit(op, [x.value], attrs, node)
    return lx.new_act(value, x.layout, x.post)


@rule(*_ACTIVATIONS, ir="gelu, silu, sigmoid, tanh, hardtanh, leaky_relu, elu, hardswish, "
      "hardsigmoid", note=f"{FLOAT}; elementwise on any axes (relu6: hardtanh 0..6)")
def _activation(lx, node, a):
    return _unary(lx, node, a)


@rule(*_MATH, ir="exp, log, sqrt, rsqrt, reciprocal, pow, abs, neg, erf, sign",
      note=f"{FLOAT}; elementwise on activations, folded on parameters; pow by a number")
def _math(lx, node, a):
    return _unary(lx, node, a)


def _feature_axes(what: str, layout: Layout, picked: list[int], fix: str) -> None:
    """Refuse a normalization over the time or batch axis, saying why."""
    for axis in picked:
        role = layout.roles[axis]
        if role in (axes.T, axes.TB):
            raise Unsupported(
                f"{what} over axis {axis}, the time axis of a tensor with axes {layout}: snnc "
                "runs the network one timestep at a time, so no step sees the others; "
                f"{fix}, or reduce over time first (x.mean(0))")
        if role == axes.B:
            raise Unsupported(
                f"{what} over axis {axis}, the batch axis of a tensor with axes {layout}, would "
                f"mix the samples of a batch; {fix}")


@rule("aten.softmax.int", "aten.log_softmax.int", ir="softmax, log_softmax",
      note=f"{FLOAT}; over one feature axis (attention scores), never time or batch")
def _softmax(lx, node, a):
    x = lx.act(a.get("self"))
    op = op_name(node).split(".")[1]
    if a.get("dtype") not in (None, torch.float32):
        raise Unsupported(f"{op} with dtype={a.get('dtype')}; snnc computes it in float32")
    axis = x.layout.axis(int_arg(a, "dim"))
    _feature_axes(op, x.layout, [axis], "take it over a feature axis (dim=-1)")
    value, = lx.emit(op, [x.value], {"axis": x.layout.step_axis(axis)}, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.layer_norm.default", ir="layer_norm", note=f"{FLOAT}; over the last k feature "
      "axes, with or without affine parameters")
def _layer_norm(lx, node, a):
    x = lx.act(a.get("input"))
    shape = ints_arg(a, "normalized_shape")
    k = len(shape)
    if not 1 <= k <= x.layout.rank or list(dims(node.args[0])[-k:]) != shape:
        raise Unsupported(f"normalized_shape {shape} is not the last axes of the input")
    _feature_axes("layer norm", x.layout, list(range(x.layout.rank - k, x.layout.rank)),
                  "normalize the feature axes only (LayerNorm(channels) on [T, B, N, C])")
    params = [lx.const(a[p]) if a.get(p) is not None else None for p in ("weight", "bias")]
    if params[0] is None and params[1] is not None:  # a bias alone: scale by ones
        params[0] = lx.constant(np.ones(shape, np.float32), f"{node.name}.weight")
    attrs = {"axis": x.layout.step_axis(x.layout.rank - k), "eps": float_arg(a, "eps")}
    value, = lx.emit("layer_norm", [x.value] + [p for p in params if p is not None], attrs,
                     node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.group_norm.default", ir="group_norm", note=f"{FLOAT}; on [B or T*B, C, ...] "
      "(time flattened into the batch, as for BatchNorm)")
def _group_norm(lx, node, a):
    x = lx.act(a.get("input"))
    image_input(x, (2, 3, 4, 5), "group norm")
    channels, groups = x.value.shape[1], int_arg(a, "num_groups")
    if groups < 1 or channels % groups:
        raise Unsupported(f"{groups} groups of {channels} channels; use a divisor of "
                          "the channels")
    fill = lambda v, name: lx.constant(np.full(channels, v, np.float32), f"{node.name}.{name}")
    params = [lx.const(a[p]) if a.get(p) is not None else fill(v, p)
              for p, v in (("weight", 1.0), ("bias", 0.0))]
    value, = lx.emit("group_norm", [x.value, *params],
                     {"groups": groups, "eps": float_arg(a, "eps")}, node)
    return lx.new_act(value, x.layout, x.post)
