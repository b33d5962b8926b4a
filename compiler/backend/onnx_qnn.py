"""`--target qnn`: the ONNX form Qualcomm's HTP (ONNX Runtime's QNN execution provider) runs
whole, in integers (docs/qnn.md): the lowering of each IR op onto snnc.backend.qnn_form.

HTP computes float in reduced precision, but its int32 elementwise ops, int32 data movement
and QDQ GEMMs of uint8 activations and per-tensor int8 weights into int16 are exact
(measured on the emulator, docs/qnn.md). So every IR value becomes an int32 tensor Z
standing for Z * unit, the unit tracked here per channel with Z's bounds:
- spikes and integer sums: unit 1;
- a sum with a real constant (a folded bias), and a leaky neuron's input: unit / 2^G, G
  giving the largest value 27 significant bits; a leak divides by an integer tau, rounding
  down by at most one unit, where float32 rounds to nearest;
- the threshold test h >= theta compares Z with the least integer whose value, held in
  float32, reaches theta.
The graph input is quantized with --input-scale and --input-max; the outputs are the only
float arithmetic (a Cast and one Mul by the unit), in HTP's reduced float precision.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from snnc.backend.onnx_emit import IR_VERSION, module_of
from snnc.backend.qnn_form import (EXACT, SIGNIFICANT, Fx, QnnEmitter, Refused, refuse,
                                   same_unit, weights_of)
from snnc.ir.graph import Graph, Node, Value
from snnc.options import Options, check_input_codes
from snnc.quant.weights import levels, pot_shift, shift_weights


# ------------------------------------------------------------------------------ lowerings

def _dequantize(e: QnnEmitter, node: Node, module: str) -> None:
    """Weights: recorded as integers and a per-channel scale for the layer that reads them."""
    codes = e.graph.constants.get(node.inputs[0])
    scale = e.graph.constants.get(node.inputs[1])
    if codes is None or scale is None:
        refuse(node, "dequantizes values that are not constant")
    ints, shift = levels(codes, node.attrs["scheme"], node.attrs["bits"])
    e.weights[node.outputs[0]] = (ints, scale.astype(np.float64) * 2.0 ** -shift)


def _conv_attrs(node: Node) -> dict:
    a = node.attrs
    return {"kernel_shape": list(node.inputs[1].shape[2:]), "strides": list(a["stride"]),
            "pads": list(a["padding"]) * 2, "dilations": list(a["dilation"])}


def _layer(e: QnnEmitter, node: Node, module: str, w, scale, conv: dict | None) -> None:
    if conv is not None and node.attrs.get("groups", 1) != 1:
        refuse(node, "is a grouped convolution")
    # a negative per-channel scale (a folded BatchNorm's negative gamma): its sign goes into
    # the weights, so every unit is positive and Z >= t still means value >= threshold
    sign, magnitude = _sign_and_magnitude(scale)
    out = e.gemm(node, e.get(node, 0), w * sign.astype(np.int64).reshape(
        (-1,) + (1,) * (w.ndim - 1)), magnitude, module, conv)
    e.fx[node.outputs[0]] = out
    if len(node.inputs) > 2:
        bias = e.graph.constants.get(node.inputs[2])
        if bias is None:
            refuse(node, "has a bias that is not constant")
        e.fx[node.outputs[0]] = _add_const(e, node, out, bias, module)


def _conv(e, node, module):
    w, scale = weights_of(e, node, 1)
    _layer(e, node, module, w, scale, _conv_attrs(node))


def _shift_conv(e, node, module):
    codes = e.graph.constants[node.inputs[1]]
    _layer(e, node, module, shift_weights(codes, pot_shift(node.attrs["bits"])),
           np.ones(codes.shape[0]), _conv_attrs(node))


def _linear(e, node, module):
    w, scale = weights_of(e, node, 1)
    _layer(e, node, module, w, scale, None)


def _shift_linear(e, node, module):
    codes = e.graph.constants[node.inputs[1]]
    _layer(e, node, module, shift_weights(codes, pot_shift(node.attrs["bits"])),
           np.ones(codes.shape[0]), None)


def _matmul(e, node, module):
    """Two integer tensors (spikes, sums of spikes): QDQ MatMuls of uint8 inputs, the
    contraction split so that each piece's sum stays within EXACT, pieces summed in int32."""
    a, b = e.get(node, 0), e.get(node, 1)
    k = node.inputs[0].shape[-1]
    for x in (a, b):
        if np.asarray(x.unit).size != 1 or x.bound[0] < 0 or x.bound[1] > 255:
            refuse(node, "multiplies tensors that are not integers in 0..255 (e.g. spikes)")
    per = max(a.bound[1] * b.bound[1], 1)
    if per > EXACT:
        refuse(node, f"one product can reach {per}, beyond {EXACT}, the integers HTP "
                "carries exactly between its GEMMs")
    step, hi = EXACT // per, k * per
    total, single = None, None
    for start in range(0, k, step):
        stop = min(k, start + step)
        xa, xb = a.name, b.name
        if (start, stop) != (0, k):
            bounds = [e.ints([start], "starts"), e.ints([stop], "ends")]
            xa = e.op("Slice", [a.name, *bounds, e.ints([-1], "axes")], module, "left")
            xb = e.op("Slice", [b.name, *bounds, e.ints([-2], "axes")], module, "right")
        y = e.op("MatMul", [e.as_uint8(xa, module), e.as_uint8(xb, module)], module, "matmul")
        q = e.op("QuantizeLinear", [y, e.scalar(1.0), e.zero(np.int16)], module, "product_i16")
        z = e.exact_int32(q, np.int16, module)
        single = q if total is None else None
        total = z if total is None else e.op("Add", [total, z], module, "product")
    e.check(node, 0, hi, "a product's sum")
    e.fx[node.outputs[0]] = Fx(total, np.asarray(a.unit * b.unit, np.float64), np.zeros(()),
                               np.asarray(float(hi)), single)


def _add_const(e: QnnEmitter, node: Node, x: Fx, c: np.ndarray, module: str) -> Fx:
    """x + a real constant: in units / 2^G, G keeping SIGNIFICANT bits of the result."""
    unit = np.broadcast_to(x.unit, np.broadcast_shapes(np.shape(x.unit), np.shape(c))
                           ) if np.size(c) > np.size(x.unit) else x.unit
    cz = np.asarray(c, np.float64) / unit
    if np.all(cz == np.round(cz)):
        g = 0
    else:
        top = x.top + float(np.max(np.abs(cz)))
        g = max(0, SIGNIFICANT - math.ceil(math.log2(top + 1)))
    scaled = x.name if g == 0 else e.op("Mul", [x.name, e.i32(2 ** g)], module, "fixed")
    cq = np.round(cz * 2.0 ** g)
    lo, hi = x.lo * 2.0 ** g + cq, x.hi * 2.0 ** g + cq
    e.check(node, lo, hi, "a sum with its bias")
    out = e.op("Add", [scaled, e.i32(cq, f"{module}/bias_fixed")], module, "charge")
    return Fx(out, np.asarray(unit, np.float64) * 2.0 ** -g, lo, hi)


def _add(e, node, module, sign: int = 1):
    consts = [e.graph.constants.get(v) for v in node.inputs]
    if consts[1] is not None and consts[0] is None:  # in the value's units, even if integer
        e.fx[node.outputs[0]] = _add_const(e, node, e.get(node, 0), sign * consts[1], module)
        return
    if consts[0] is not None and consts[1] is None and sign == 1:
        e.fx[node.outputs[0]] = _add_const(e, node, e.get(node, 1), consts[0], module)
        return
    a, b = e.get(node, 0), e.get(node, 1)
    if not same_unit(a.unit, b.unit):
        refuse(node, "adds values kept in different units (e.g. a BatchNorm'd branch and "
               "its shortcut): exact integer addition needs one unit per channel, and "
               "rescaling by a real ratio is float arithmetic")
    unit = a.unit if np.size(a.unit) >= np.size(b.unit) else b.unit
    lo, hi = (a.lo + b.lo, a.hi + b.hi) if sign == 1 else (a.lo - b.hi, a.hi - b.lo)
    e.check(node, lo, hi, "a sum")
    out = e.op("Add" if sign == 1 else "Sub", [a.name, b.name], module, "add")
    e.fx[node.outputs[0]] = Fx(out, np.asarray(unit), lo, hi)


def _sub(e, node, module):
    _add(e, node, module, -1)


def _mul(e, node, module):
    consts = [e.graph.constants.get(v) for v in node.inputs]
    which = 1 if consts[1] is not None else 0 if consts[0] is not None else None
    if which is None:  # two integer tensors (spike masks, SEW's AND): int32 Mul is exact
        a, b = e.get(node, 0), e.get(node, 1)
        corners = [p * q for p in (a.lo, a.hi) for q in (b.lo, b.hi)]
        lo, hi = np.minimum.reduce(corners), np.maximum.reduce(corners)
        e.check(node, lo, hi, "a product")
        e.fx[node.outputs[0]] = Fx(e.op("Mul", [a.name, b.name], module, "product"),
                                   np.asarray(a.unit * b.unit, np.float64), lo, hi)
        return
    e.fx[node.outputs[0]] = _scale(e, node, e.get(node, 1 - which), consts[which], module)


def _scale(e, node, x: Fx, c, module) -> Fx:
    """x times a real constant: its magnitude goes into the unit, its sign (or zero) into
    an int32 Mul (none for a positive scale)."""
    c = np.asarray(c, np.float64)
    if np.all(c > 0):
        return Fx(x.name, x.unit * c, x.lo + 0 * c, x.hi + 0 * c, x.q16)
    sign, magnitude = _sign_and_magnitude(c)
    lo, hi = np.minimum(x.lo * sign, x.hi * sign), np.maximum(x.lo * sign, x.hi * sign)
    out = e.op("Mul", [x.name, e.i32(sign, f"{module}/sign")], module, "signed")
    return Fx(out, x.unit * magnitude, lo, hi)


def _sign_and_magnitude(c) -> tuple[np.ndarray, np.ndarray]:
    """A real factor as its sign (-1, 0 or 1: into the integers) and a positive magnitude
    (into the unit; 1 where c is 0, which the sign already zeroes)."""
    c = np.asarray(c, np.float64)
    return np.sign(c), np.where(c == 0, 1.0, np.abs(c))


def _relu(e, node, module):
    """Max(Z, 0): every unit is positive, so Z's sign is the value's."""
    x = e.get(node, 0)
    out = e.op("Max", [x.name, e.i32(0)], module, "relu")
    e.fx[node.outputs[0]] = Fx(out, x.unit, np.maximum(x.lo, 0), np.maximum(x.hi, 0))


def _div(e, node, module):
    """By a non-zero constant: times its reciprocal (a unit change and a sign)."""
    c = e.graph.constants.get(node.inputs[1])
    if c is None or np.any(np.asarray(c) == 0):
        refuse(node, "divides by a tensor, which HTP computes in reduced float precision")
    e.fx[node.outputs[0]] = _scale(e, node, e.get(node, 0), 1.0 / np.asarray(c, np.float64),
                                   module)


def _batch_norm(e, node, module):
    """A BatchNorm left unfolded (before a residual add, a non-zero v_reset): x * inv +
    (beta - mean * inv) per channel, inv = gamma / sqrt(var + eps) in float32 as PyTorch."""
    gamma, beta, mean, var = (e.graph.constants.get(v) for v in node.inputs[1:])
    if any(t is None for t in (gamma, beta, mean, var)):
        refuse(node, "is a BatchNorm whose statistics are not constant")
    shape = (-1,) + (1,) * (len(node.inputs[0].shape) - 2)
    inv = (gamma / np.sqrt(var + np.float32(node.attrs["eps"]))).astype(np.float32)
    x = _scale(e, node, e.get(node, 0), inv.reshape(shape), module)
    shift = beta.astype(np.float64) - mean.astype(np.float64) * inv.astype(np.float64)
    e.fx[node.outputs[0]] = _add_const(e, node, x, shift.reshape(shape), module)


def _neuron(e, node, module):
    """One step in the units of its input: h = charge(x, v); spike = h >= ceil(theta / u);
    v' = Where(spike, reset, h) (hard) or h - spike * theta / u (soft). A leak divides by
    an integer tau ('div' tau or 'mul' float32(1/tau)), rounding down by at most one unit.
    A neuron whose step rounds a real amount (a leak, a soft reset by theta, a non-zero
    reset or start) first gives its input SIGNIFICANT bits: an integer sum has none below
    its unit, and floor(1 / 2) would lose the spike that 1 / 2 >= 0.5 fires."""
    a = node.attrs
    tau = _tau(node)
    v0 = e.graph.constants.get(node.inputs[1])
    rounds = tau is not None or a["v_reset"] is None or a["v_reset"] != 0 or \
        (v0 is not None and np.any(np.asarray(v0) != 0))  # a real amount rounds to units
    x = _fine(e, e.get(node, 0), module) if rounds else e.get(node, 0)
    unit = np.asarray(x.unit, np.float64)
    theta = a["threshold"] if a["threshold"] is not None else e.graph.constants.get(node.inputs[2])
    if theta is None:
        refuse(node, "has a threshold that is not constant")
    theta_u = np.asarray(theta, np.float64) / unit
    reset = None if a["v_reset"] is None else np.round(a["v_reset"] / unit)
    if v0 is not None and np.all(np.asarray(v0) == 0):
        v = None
    elif v0 is not None:  # SpikingJelly starts from v_reset: a constant in these units
        z0 = np.round(np.asarray(v0, np.float64) / unit)
        e.check(node, z0, z0, "the initial membrane")
        v = Fx(e.i32(z0, f"{module}/v_init_fixed"), unit, z0, z0)
    else:
        v = e.get(node, 1)
        if not same_unit(v.unit, unit):
            refuse(node, "charges a membrane kept in other units")
    h, lo, hi = _charge(e, node, x, v, tau, reset, module)
    e.check(node, lo, hi, "the membrane")
    threshold = _threshold_units(theta, unit)
    e.check(node, threshold, threshold, "the threshold in membrane units")
    fired = e.op("GreaterOrEqual", [h, e.i32(threshold, f"{module}/threshold_fixed")], module,
                 "fired")
    spikes = e.temp(module, "spike")
    e.add("Cast", [fired], [spikes], module, to=TensorProto.INT32)
    e.fx[node.outputs[0]] = Fx(spikes, np.ones(()), np.zeros(()), np.ones(()))
    e.debug_spikes(node, spikes, module, "Cast", to=TensorProto.FLOAT)
    below = np.minimum(hi, threshold - 1)  # a membrane that did not fire is below it
    if a["v_reset"] is None:
        drop = np.round(theta_u)
        dropped = e.op("Mul", [spikes, e.i32(drop, f"{module}/threshold_units")], module,
                       "dropped")
        out = e.op("Sub", [h, dropped], module, "v")
        e.fx[node.outputs[1]] = Fx(out, unit, np.minimum(lo, np.maximum(lo, threshold) - drop),
                                   np.maximum(below, hi - drop))
        return
    out = e.op("Where", [fired, e.i32(reset, f"{module}/reset_fixed"), h], module, "v")
    e.fx[node.outputs[1]] = Fx(out, unit, np.minimum(lo, reset), np.maximum(below, reset))


def _fine(e, x: Fx, module: str) -> Fx:
    """x in units 2^g times finer, g bringing its bound to SIGNIFICANT bits (the same g at
    every step of a layer: its steps share bounds)."""
    g = SIGNIFICANT - math.ceil(math.log2(x.top + 1))
    if g <= 0:
        return x
    return Fx(e.op("Mul", [x.name, e.i32(2 ** g)], module, "fine"), x.unit * 2.0 ** -g,
              x.lo * 2.0 ** g, x.hi * 2.0 ** g)


def _threshold_units(theta, unit) -> np.ndarray:
    """The least integer z whose value z * unit, held in float32 as PyTorch holds the
    membrane, reaches float32(theta): ceil(theta / unit), lowered where float32 rounding
    lifts a smaller z onto the threshold (an integer sum times a scale landing on it, as in
    attention over spike counts)."""
    unit = np.asarray(unit, np.float64)
    theta32 = np.asarray(theta, np.float32)
    z = np.ceil(np.asarray(theta, np.float64) / unit)
    for _ in range(4):  # float32 holds 24 bits: a few integers below at most
        lower = np.float32(0) + ((z - 1) * unit).astype(np.float32) >= theta32
        if not lower.any():
            break
        z = np.where(lower, z - 1, z)
    return z


def _tau(node: Node) -> int | None:
    """The integer tau of the leak (None: no leak): 'div' by tau, or 'mul' by float32(1/tau)."""
    a = node.attrs
    if a["leak"] == "none":
        return None
    k = float(a["leak_value"])
    tau = k if a["leak"] == "div" else (round(1.0 / k) if k > 0 else 0)
    held = a["leak"] == "div" or np.float32(1.0 / tau if tau else 0) == np.float32(k)
    if tau < 1 or tau != round(tau) or not held:
        refuse(node, f"leaks by a factor that is not 1/tau with an integer tau ({a['leak']} "
                f"{k:.9g}); HTP's exact integer arithmetic has no such multiplier")
    return int(tau)


def _charge(e, node, x: Fx, v: Fx | None, tau, reset, module):
    """h from x and v (None: the zero start) in int32, with its bounds."""
    a = node.attrs
    if v is None:
        if tau is None or not a["decay_input"]:
            return x.name, x.lo, x.hi
        h = e.floor_div(node, x.name, tau, module, x.lo, x.hi)
        return h, np.minimum(x.lo, 0), np.maximum(x.hi, 0)
    if tau is None:
        return e.op("Add", [v.name, x.name], module, "h"), v.lo + x.lo, v.hi + x.hi
    r = 0.0 if reset is None else reset
    base = v.name
    if np.any(r != 0):
        base = e.op("Sub", [v.name, e.i32(r, f"{module}/reset_fixed")], module, "v_minus_reset")
    if a["decay_input"]:
        diff = e.op("Sub", [x.name, base], module, "x_minus_v")
        leak = e.floor_div(node, diff, tau, module, x.lo - (v.hi - r), x.hi - (v.lo - r))
        h = e.op("Add", [v.name, leak], module, "h")
        return h, np.minimum(v.lo, x.lo) - 1, np.maximum(v.hi, x.hi) + 1
    leak = e.floor_div(node, base, tau, module, v.lo - r, v.hi - r)
    kept = e.op("Sub", [v.name, leak], module, "kept")
    h = e.op("Add", [kept, x.name], module, "h")
    return h, np.minimum(v.lo, 0) + x.lo - 1, np.maximum(v.hi, 0) + x.hi + 1


# ---------------------------------------------------------------------- data movement

def _full(t, rank: int) -> np.ndarray:
    """A per-channel array (aligned with the value's trailing axes) at the value's rank."""
    t = np.asarray(t)
    return t.reshape((1,) * (rank - t.ndim) + t.shape)


def _trim(t) -> np.ndarray:
    """The array without leading single axes (a scalar if it holds one value)."""
    t = np.asarray(t)
    if t.size == 1:
        return t.reshape(())
    while t.ndim and t.shape[0] == 1:
        t = t[0]
    return t


def _along(t, rank: int, axes) -> bool:
    """Whether t varies along any of these axes of the value."""
    return np.size(t) > 1 and any(_full(t, rank).shape[a % rank] > 1 for a in axes)


def _bounds(x: Fx, keep: bool) -> tuple:
    """x's bounds, per channel if they still line up with the value, else the extremes."""
    if keep:
        return _trim(x.lo), _trim(x.hi)
    return np.asarray(float(np.min(x.lo))), np.asarray(float(np.max(x.hi)))


def _moved(e, node, module, op: str, attrs: dict, extra, keeps) -> None:
    """Data movement of the raw int32 tensor; keeps(t): whether an array t (one value, or one
    per channel) still lines up with the moved value (a unit must; bounds fall back to their
    extremes)."""
    x = e.get(node, 0)
    if not keeps(x.unit):
        refuse(node, "moves per-channel fixed-point values across channels")
    lo, hi = _bounds(x, keeps(x.lo) and keeps(x.hi))
    outs = [e.temp(module, "moved") for _ in node.outputs]
    e.add(op, [x.name, *extra], outs, module, **attrs)
    for value, name in zip(node.outputs, outs):
        e.fx[value] = Fx(name, _trim(x.unit), lo, hi)


def _reshape(e, node, module):
    """Per-channel arrays survive a reshape that keeps the trailing axes they vary along."""
    shape = [-1 if isinstance(d, str) else int(d) for d in node.attrs["shape"]]
    before, after = list(node.inputs[0].shape), list(node.outputs[0].shape)

    def keeps(t):
        k = _trim(t).ndim
        return k == 0 or (k <= len(after) and before[-k:] == after[-k:])
    _moved(e, node, module, "Reshape", {}, [e.ints(shape, f"{module}/shape")], keeps)


def _transpose(e, node, module):
    """The raw tensor transposed; per-channel units and bounds transposed with it."""
    x, perm = e.get(node, 0), list(node.attrs["perm"])
    out = e.op("Transpose", [x.name], module, "moved", perm=perm)
    unit, lo, hi = (_trim(np.transpose(_full(t, len(perm)), perm)) for t in (x.unit, x.lo, x.hi))
    e.fx[node.outputs[0]] = Fx(out, unit, lo, hi)


def _split(e, node, module):
    axis, rank = node.attrs["axis"], len(node.inputs[0].shape)
    _moved(e, node, module, "Split", {"axis": axis},
           [e.ints(node.attrs["sizes"], f"{module}/split")],
           lambda t: not _along(t, rank, [axis]))


def _chunk(e, node, module):
    axis, rank = node.attrs["axis"], len(node.inputs[0].shape)
    _moved(e, node, module, "Split", {"axis": axis, "num_outputs": node.attrs["count"]}, (),
           lambda t: not _along(t, rank, [axis]))


def _concat(e, node, module):
    parts = [e.get(node, i) for i in range(len(node.inputs))]
    axis, rank = node.attrs["axis"], len(node.outputs[0].shape)
    if any(not same_unit(p.unit, parts[0].unit) for p in parts) or \
            _along(parts[0].unit, rank, [axis]):
        refuse(node, "joins fixed-point values of different units")
    out = e.op("Concat", [p.name for p in parts], module, "joined", axis=axis)
    lo = float(min(np.min(p.lo) for p in parts))  # the extremes: parts' channels differ
    hi = float(max(np.max(p.hi) for p in parts))
    e.fx[node.outputs[0]] = Fx(out, _trim(parts[0].unit), np.asarray(lo), np.asarray(hi))


def _cast(e, node, module):
    x = e.get(node, 0)
    if node.attrs["to"] not in ("f32", "u8", "i32") or np.size(x.unit) != 1:
        refuse(node, f"casts to {node.attrs['to']}")
    e.fx[node.outputs[0]] = x


def _reduce_sum(e, node, module, mean=False):
    x = e.get(node, 0)
    axes, rank = list(node.attrs["axes"]), len(node.inputs[0].shape)
    if _along(x.unit, rank, axes):
        refuse(node, "reduces over channels of per-channel fixed-point values")
    n = int(np.prod([node.inputs[0].shape[ax % rank] for ax in axes]))
    lo, hi = _bounds(x, not (_along(x.lo, rank, axes) or _along(x.hi, rank, axes)))
    z, unit = x.name, x.unit
    top = n * x.top  # _bounds keeps x's extremes
    if top > 2 ** 29:  # a sum of 27-bit values over many steps: rounded down to 29 bits first
        d = 2 ** (math.ceil(math.log2(top)) - 29)
        z = e.floor_div(node, z, d, module, lo, hi)
        lo, hi, unit = np.floor(lo / d), np.floor(hi / d), unit * d
    out = e.op("ReduceSum", [z, e.ints(axes, f"{module}/axes")], module, "sum",
               keepdims=int(node.attrs["keepdims"]))
    unit = unit / n if mean else unit
    if not node.attrs["keepdims"]:  # the reduced axes (of extent 1 here) go
        drop = tuple(a % rank for a in axes)
        unit, lo, hi = (_trim(np.squeeze(_full(t, rank), axis=drop)) for t in (unit, lo, hi))
    e.check(node, lo * n, hi * n, "a sum")
    e.fx[node.outputs[0]] = Fx(out, _trim(unit), lo * n, hi * n)


def _reduce_mean(e, node, module):
    _reduce_sum(e, node, module, mean=True)


def _pooled_bounds(node: Node, x: Fx) -> tuple:
    """A pool keeps channels: per-channel bounds carry over unless they vary spatially."""
    rank, k = len(node.inputs[0].shape), len(node.attrs["kernel"])
    spatial = range(rank - k, rank)
    if _along(x.unit, rank, spatial):
        refuse(node, "pools values whose units vary across the pooled axes")
    return _bounds(x, not (_along(x.lo, rank, spatial) or _along(x.hi, rank, spatial)))


def _max_pool(e, node, module):
    """On the layer's int16 (or uint8) QDQ sum it came from, where HTP's MaxPool is exact."""
    x = e.get(node, 0)
    a = node.attrs
    if x.q16 is None:
        lo, hi = x.bound
        if lo < 0 or hi > 255:
            _max_pool_int32(e, node, x, module)
            return
        plane, dtype, q_in = e.as_uint8(x.name, module), np.uint8, None
    else:
        q_in, dtype = x.q16, np.int16
    one, zero = e.scalar(1.0), e.zero(dtype)
    source = plane if q_in is None else e.op("DequantizeLinear", [q_in, one, zero], module,
                                             "sum_dq")
    pooled = e.op("MaxPool", [source], module, "pooled", kernel_shape=list(a["kernel"]),
                  strides=list(a["stride"]), pads=list(a["padding"]) * 2)
    q = e.op("QuantizeLinear", [pooled, one, zero], module, "pooled_q")
    out = e.exact_int32(q, dtype, module)
    lo, hi = _pooled_bounds(node, x)
    e.fx[node.outputs[0]] = Fx(out, x.unit, lo, hi, q if dtype == np.int16 else None)


def _max_pool_int32(e, node, x: Fx, module):
    """Any int32 values: separable, one spatial axis at a time. Padding repeats the edge
    (PyTorch pads at most half the kernel, so a window reaching into it holds the edge
    already); each kernel offset is a strided Slice, and Max joins them."""
    a = node.attrs
    shape = node.inputs[0].shape
    rank, k = len(shape), len(a["kernel"])
    if any(isinstance(d, str) for d in shape[rank - k:]):
        refuse(node, "pools over axes of unknown size")
    z = x.name
    for i, (size, stride, pad) in enumerate(zip(a["kernel"], a["stride"], a["padding"])):
        axis, length = rank - k + i, int(shape[rank - k + i])
        if pad:
            ends = [e.op("Slice", [z, e.ints([at], "starts"), e.ints([at + 1], "ends"),
                                   e.ints([axis], "axes")], module, "edge")
                    for at in (0, length - 1)]
            z = e.op("Concat", [ends[0]] * pad + [z] + [ends[1]] * pad, module, "padded",
                     axis=axis)
        out = (length + 2 * pad - size) // stride + 1
        taps = [e.op("Slice", [z, e.ints([j], "starts"), e.ints([j + stride * (out - 1) + 1],
                                                               "ends"),
                               e.ints([axis], "axes"), e.ints([stride], "steps")], module,
                     "tap") for j in range(size)]
        z = taps[0]
        for tap in taps[1:]:
            z = e.op("Max", [z, tap], module, "pooled")
    e.fx[node.outputs[0]] = Fx(z, x.unit, *_pooled_bounds(node, x))


LOWER = {
    "dequantize": _dequantize, "conv": _conv, "shift_conv": _shift_conv, "linear": _linear,
    "shift_linear": _shift_linear, "matmul": _matmul, "add": _add, "sub": _sub, "mul": _mul,
    "neuron": _neuron, "reshape": _reshape, "transpose": _transpose, "split": _split,
    "chunk": _chunk, "concat": _concat, "cast": _cast, "reduce_sum": _reduce_sum,
    "reduce_mean": _reduce_mean, "max_pool": _max_pool, "batch_norm": _batch_norm,
    "div": _div, "relu": _relu,
}


WHY_NOT = {  # IR ops with no exact HTP form: why
    "avg_pool": "averages: a division HTP computes in reduced float precision",
    "neuron_model": "is a neuron model other than LIF/IF (docs/qnn.md)",
}


def _input(e: QnnEmitter, value: Value, name: str) -> None:
    """A float input holding q * --input-scale, q an integer in [0, --input-max]:
    q = Round(x / scale) as int32, clamped to that range so that the bounds every later
    value is checked against hold whatever the input (codes outside it saturate)."""
    check_input_codes(e.opts)
    scale, top = e.opts.input_scale, e.opts.input_max
    shape = [-1 if isinstance(d, str) else int(d) for d in value.shape]
    scaled = name
    if len(shape) > 4:  # HTP's Round takes at most rank 4 (measured): lead axes merged
        scaled = e.op("Reshape", [name, e.ints([-1] + shape[-3:], "input/rank4")], "input",
                      "rank4")
    if scale != 1.0:
        scaled = e.op("Mul", [scaled, e.scalar(1.0 / scale)], "input", "codes")
    rounded = e.op("Round", [scaled], "input", "codes_rounded")
    z = e.op("Cast", [rounded], "input", "codes_i32", to=TensorProto.INT32)
    below = e.op("Min", [z, e.i32(top)], "input", "codes_below")
    z = e.op("Max", [below, e.i32(0)], "input", "codes_clamped")
    if len(shape) > 4:
        z = e.op("Reshape", [z, e.ints(shape, "input/shape")], "input", "codes_shaped")
    e.fx[value] = Fx(z, np.asarray(scale, np.float64), np.zeros(()), np.asarray(float(top)))


def _output(e: QnnEmitter, value: Value, name: str) -> onnx.ValueInfoProto:
    """The only float arithmetic: Z as float32 times its unit."""
    x = e.fx.get(value)
    if x is None:
        raise Refused(f"--target qnn: output {name} is not computed in integers")
    drop = max(0, math.ceil(math.log2(x.top + 1)) - 15)  # within HTP's fp16 range (65504)
    z = x.name if drop == 0 else e.floor_div(None, x.name, 2 ** drop, "output", x.lo, x.hi)
    as_float = e.op("Cast", [z], "output", "float", to=TensorProto.FLOAT)
    unit = np.asarray(x.unit * 2.0 ** drop, np.float32)
    if np.all(unit == 1):
        e.add("Identity", [as_float], [name], "output")
    else:
        e.add("Mul", [as_float, e.const(unit, f"{name}_unit")], [name], "output")
    return e.value_info(value, name)


def to_qnn(graph: Graph, opts: Options) -> onnx.ModelProto:
    """The QNN form of a lowered graph built on float kernels (lower_integer leaves it so)."""
    missing = [n for n in graph.nodes if n.op not in LOWER]
    if missing:
        others = sorted({f"{n.op} ({n.source.layer if n.source else '?'})" for n in missing[1:]
                         if n.op != missing[0].op or n.source != missing[0].source})
        refuse(missing[0], WHY_NOT.get(missing[0].op, "has no exact integer form on HTP") +
                (f" (also: {', '.join(others[:5])}{', ...' if len(others) > 5 else ''})"
                 if others else ""))
    e = QnnEmitter(graph, opts)
    names = graph.input_names or [v.hint for v in graph.inputs]
    inputs = []
    for value, name in zip(graph.inputs, names):
        e.names[value] = e.unique(name)
        inputs.append(e.value_info(value, e.names[value]))
        _input(e, value, e.names[value])
    for node in graph.nodes:
        LOWER[node.op](e, node, module_of(node))
    out_names = graph.output_names or [f"output{i}" for i in range(len(graph.outputs))]
    outputs = [_output(e, v, n) for v, n in zip(graph.outputs, out_names)]
    outputs += [e.value_info(value, name) for name, value in e.debug]
    model = helper.make_model(
        helper.make_graph(e.nodes, "snnc", inputs, outputs, initializer=e._read(outputs)),
        opset_imports=[helper.make_opsetid("", opts.opset)], producer_name="snnc",
        producer_version="0.1.0")
    model.ir_version = IR_VERSION
    for key, value in sorted({**graph.metadata, "snnc.target": "qnn"}.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model
