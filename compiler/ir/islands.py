"""Float islands: the ops that are not spike-driven (normalizations, softmax, smooth
activations, elementwise math on real values), their type checks and numpy kernels.

Hybrid spiking transformers normalize with LayerNorm and weight attention with softmax,
and a readout may be a non-spiking head; snnc compiles these as float ops between the
spike-driven layers (docs/ops.md, "Float islands"). `ops.OPS` registers every entry of
`SPECS` as an op; `snnc.backend.onnx_float` lowers them to standard float ONNX ops.

Kernels compute in float64 and round to float32 once, so each is within one rounding of
the exact result, as PyTorch's CPU kernels are (they round in float32 along the way, and
sum in another order): the interpreter agrees with PyTorch to a few float32 spacings, not
bit for bit. Normalized and softmaxed axes are IR axes of the step value; the frontend
only makes them over feature axes, never time or batch.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from snnc.ir.shapes import ShapeError

F32 = np.float32


def _rounded(fn: Callable[[np.ndarray, dict], np.ndarray]):
    """A kernel computed in float64 on the float32 input, rounded to float32 once."""
    def evaluate(args, attrs):
        with np.errstate(all="ignore"):  # log(-1), 1/0: NaN and inf, as PyTorch gives
            return [np.asarray(fn(args[0].astype(np.float64), attrs)).astype(F32)]
    return evaluate


_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x, attrs):
    if attrs["approximate"] == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
        return 0.5 * x * (1.0 + np.tanh(inner))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _f(attrs, name: str) -> float:
    """A scalar attribute as PyTorch's float32 kernels see it."""
    return float(F32(attrs[name]))


UNARY: dict[str, tuple[dict, Callable]] = {  # op -> (attribute schema, float64 kernel)
    "gelu": ({"approximate": str}, _gelu),
    "silu": ({}, lambda x, a: x * _sigmoid(x)),
    "sigmoid": ({}, lambda x, a: _sigmoid(x)),
    "tanh": ({}, lambda x, a: np.tanh(x)),
    "erf": ({}, lambda x, a: _erf(x).astype(np.float64)),
    "exp": ({}, lambda x, a: np.exp(x)),
    "log": ({}, lambda x, a: np.log(x)),
    "sqrt": ({}, lambda x, a: np.sqrt(x)),
    "rsqrt": ({}, lambda x, a: 1.0 / np.sqrt(x)),
    "reciprocal": ({}, lambda x, a: 1.0 / x),
    "abs": ({}, lambda x, a: np.abs(x)),
    "neg": ({}, lambda x, a: -x),
    "sign": ({}, lambda x, a: np.sign(x)),
    "pow": ({"exponent": float}, lambda x, a: np.power(x, _f(a, "exponent"))),
    "hardtanh": ({"min": float, "max": float},
                 lambda x, a: np.clip(x, _f(a, "min"), _f(a, "max"))),
    "leaky_relu": ({"slope": float}, lambda x, a: np.where(x > 0, x, x * _f(a, "slope"))),
    "elu": ({"alpha": float}, lambda x, a: np.where(x > 0, x, _f(a, "alpha") * np.expm1(x))),
    "hardsigmoid": ({}, lambda x, a: np.clip(x + 3.0, 0.0, 6.0) / 6.0),
    "hardswish": ({}, lambda x, a: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0),
}


def _same(types, attrs):
    (dx, sx), = types
    if dx != "f32":
        raise ShapeError(f"float ops take f32, got {dx}")
    return [types[0]]


def _axis(shape, axis: int) -> int:
    if not 0 <= axis < len(shape):
        raise ShapeError(f"axis {axis} is out of range for {list(shape)}")
    return axis


# ----------------------------------------------------------------------------- softmax

def _softmax_infer(types, attrs):
    _axis(types[0][1], attrs["axis"])
    return _same(types, attrs)


def _softmax(x, attrs, log: bool):
    shifted = x - x.max(axis=attrs["axis"], keepdims=True)
    total = np.exp(shifted).sum(axis=attrs["axis"], keepdims=True)
    return shifted - np.log(total) if log else np.exp(shifted) / total


# ----------------------------------------------------------------------------- normalizations

def _layer_norm_infer(types, attrs):
    """x normalized over its axes axis..last; scale and bias (optional) have their shape."""
    (_, sx), params = types[0], types[1:]
    axis = _axis(sx, attrs["axis"])
    for d, s in params:
        if d != "f32" or tuple(s) != tuple(sx[axis:]):
            raise ShapeError(f"layer_norm parameter {d}{list(s)} does not fit the normalized "
                             f"axes {list(sx[axis:])} of {list(sx)}")
    return _same(types[:1], attrs)


def _normalized(x, axes: tuple[int, ...], eps: float):
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def _layer_norm_eval(args, attrs):
    x = args[0].astype(np.float64)
    y = _normalized(x, tuple(range(attrs["axis"], x.ndim)), _f(attrs, "eps"))
    for param, apply in zip(args[1:], (np.multiply, np.add)):
        y = apply(y, param.astype(np.float64))
    return [y.astype(F32)]


def _group_norm_infer(types, attrs):
    """x [N, C, ...] normalized per sample over each of `groups` groups of channels (and all
    positions); scale and bias per channel."""
    (_, sx), params = types[0], types[1:]
    groups = attrs["groups"]
    if len(sx) < 2 or groups < 1 or not isinstance(sx[1], int) or sx[1] % groups:
        raise ShapeError(f"group_norm of {list(sx)} in {groups} groups")
    for d, s in params:
        if d != "f32" or tuple(s) != (sx[1],):
            raise ShapeError(f"group_norm parameter {d}{list(s)} does not fit {list(sx)}")
    return _same(types[:1], attrs)


def _group_norm_eval(args, attrs):
    x, scale, bias = (a.astype(np.float64) for a in args)
    grouped = x.reshape(x.shape[0], attrs["groups"], -1)
    y = _normalized(grouped, (2,), _f(attrs, "eps")).reshape(x.shape)
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    return [(y * scale.reshape(per_channel) + bias.reshape(per_channel)).astype(F32)]


# ----------------------------------------------------------------------------- the table

_INFER_EVAL_INPUTS = tuple[dict, Callable, Callable, tuple[int, int]]
SPECS: dict[str, _INFER_EVAL_INPUTS] = {
    name: (schema, _same, _rounded(kernel), (1, 1)) for name, (schema, kernel) in UNARY.items()
}
SPECS.update({
    "softmax": ({"axis": int}, _softmax_infer,
                _rounded(lambda x, a: _softmax(x, a, log=False)), (1, 1)),
    "log_softmax": ({"axis": int}, _softmax_infer,
                    _rounded(lambda x, a: _softmax(x, a, log=True)), (1, 1)),
    # normalized over axes axis..last; optional scale, then bias, of those axes' shape
    "layer_norm": ({"axis": int, "eps": float}, _layer_norm_infer, _layer_norm_eval, (1, 3)),
    # [N, C, ...] per sample, in `groups` groups of channels; scale and bias per channel
    "group_norm": ({"groups": int, "eps": float}, _group_norm_infer, _group_norm_eval, (3, 3)),
})


def by_layer(nodes) -> dict[str, list[str]]:
    """The float island ops among `nodes`, per layer: `{"ln (LayerNorm) model.py:22":
    ["layer_norm"]}` (the node's provenance, in graph order; an op once per layer)."""
    found: dict[str, list[str]] = {}
    for node in nodes:
        if node.op in SPECS:
            ops = found.setdefault(str(node.source) or node.op, [])
            if node.op not in ops:
                ops.append(node.op)
    return found
