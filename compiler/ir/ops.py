"""The IR's op vocabulary, defined once: attribute schema, type inference, numpy evaluation.

Each op is an `OpDef` in `OPS`. Lowerings to other formats (ONNX: `snnc.backend.onnx_emit`) are
separate tables keyed by the same names. Shapes may contain "N", the symbolic batch.
Evaluation works on float32 numpy arrays and rounds exactly as PyTorch's CPU kernels do
for elementwise arithmetic (one IEEE operation at a time, no fused multiply-add).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from snnc.ir import islands, neurons, time_ops
from snnc.ir.shapes import Shape, ShapeError, batch_factor, times_batch
from snnc.quant import weights

F32 = np.float32
Type = tuple[str, Shape]


@dataclass(frozen=True)
class OpDef:
    name: str
    attrs: Mapping[str, type | tuple[type, ...]]  # required attributes and their types
    infer: Callable[[Sequence[Type], Mapping], list[Type]]
    evaluate: Callable[[Sequence[np.ndarray], Mapping], list[np.ndarray]]
    n_inputs: tuple[int, int]  # (min, max)


def broadcast(a: Shape, b: Shape) -> Shape:
    out = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise ShapeError(f"cannot broadcast {a} with {b}")
    return tuple(reversed(out))


# ----------------------------------------------------------------------------- elementwise

def _binary(fn):
    def infer(types, attrs):
        (da, sa), (db, sb) = types
        if da != db:
            raise ShapeError(f"dtype mismatch {da} vs {db}")
        return [(da, broadcast(sa, sb))]

    def evaluate(args, attrs):
        return [fn(args[0], args[1])]

    return infer, evaluate


def _unary_same(types, attrs):
    return [types[0]]


# ----------------------------------------------------------------------------- conv and pools

def _window_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _conv_infer(types, attrs):
    (dx, sx), (_, sw) = types[0], types[1]
    spatial = len(sx) - 2
    if len(sw) != spatial + 2 or sx[1] != sw[1] * attrs["groups"]:
        raise ShapeError(f"conv input {sx} does not fit weight {sw}")
    if len(types) == 3 and types[2][1] != (sw[0],):
        raise ShapeError(f"conv bias {types[2][1]} does not fit weight {sw}")
    out = [
        _window_out(sx[2 + i], sw[2 + i], attrs["stride"][i], attrs["padding"][i],
                    attrs["dilation"][i])
        for i in range(spatial)
    ]
    return [(dx, (sx[0], sw[0], *out))]


def _as_2d(x: np.ndarray) -> np.ndarray:
    return x[:, :, None, :] if x.ndim == 3 else x


def _pairs(values, spatial, fill):
    """Conv1d runs as conv2d over a dummy height axis of size 1: `fill` for that axis."""
    return (fill, *values) if spatial == 1 else tuple(values)


def _conv_eval(args, attrs):
    x, w = args[0], args[1]
    spatial = x.ndim - 2
    x2, w2 = _as_2d(x), _as_2d(w)
    stride = _pairs(attrs["stride"], spatial, 1)
    pad = _pairs(attrs["padding"], spatial, 0)
    dil = _pairs(attrs["dilation"], spatial, 1)
    groups = attrs["groups"]
    x2 = np.pad(x2, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    kh, kw = w2.shape[2], w2.shape[3]
    win = np.lib.stride_tricks.sliding_window_view(
        x2, ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1), axis=(2, 3)
    )[:, :, :: stride[0], :: stride[1], :: dil[0], :: dil[1]]
    n, c, oh, ow = win.shape[:4]
    cg, og = c // groups, w2.shape[0] // groups
    outs = []
    for g in range(groups):
        cols = win[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, -1)
        wg = w2[g * og:(g + 1) * og].reshape(og, -1)
        outs.append((cols @ wg.T).reshape(n, oh, ow, og).transpose(0, 3, 1, 2))
    y = np.concatenate(outs, axis=1) if groups > 1 else outs[0]
    if len(args) == 3:
        y = y + args[2].reshape(1, -1, 1, 1)
    if spatial == 1:
        y = y[:, :, 0, :]
    return [np.ascontiguousarray(y, dtype=F32)]


def _pool_infer(types, attrs):
    dx, sx = types[0]
    spatial = len(sx) - 2
    out = [
        _window_out(sx[2 + i], attrs["kernel"][i], attrs["stride"][i], attrs["padding"][i], 1)
        for i in range(spatial)
    ]
    return [(dx, (*sx[:2], *out))]


def _max_pool_eval(args, attrs):
    x = args[0]
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return [win.max(axis=(4, 5)).astype(F32)]


def _avg_pool_eval(args, attrs):
    x = args[0]
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    if ph or pw:
        raise NotImplementedError("padded average pooling")  # frontend refuses it
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return [win.mean(axis=(4, 5), dtype=F32).astype(F32)]


# ----------------------------------------------------------------------------- dense

def _linear_infer(types, attrs):
    (dx, sx), (_, sw) = types[0], types[1]
    if len(sw) != 2 or sx[-1] != sw[1]:
        raise ShapeError(f"linear input {sx} does not fit weight {sw}")
    return [(dx, (*sx[:-1], sw[0]))]


def _linear_eval(args, attrs):
    y = args[0] @ args[1].T
    if len(args) == 3:
        y = y + args[2]
    return [y.astype(F32)]


def _matmul_infer(types, attrs):
    (da, sa), (db, sb) = types
    if len(sa) < 2 or len(sb) < 2 or sa[-1] != sb[-2]:
        raise ShapeError(f"matmul {sa} x {sb}")
    return [(da, (*broadcast(sa[:-2], sb[:-2]), sa[-2], sb[-1]))]


def _batch_norm_infer(types, attrs):
    dx, sx = types[0]
    for _, s in types[1:]:
        if s != (sx[1],):
            raise ShapeError(f"batch_norm parameter {s} does not fit input {sx}")
    return [types[0]]


def _batch_norm_eval(args, attrs):
    x, gamma, beta, mean, var = args
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = (gamma / np.sqrt(var + F32(attrs["eps"]))).astype(F32)
    y = (x - mean.reshape(shape)) * inv.reshape(shape) + beta.reshape(shape)
    return [y.astype(F32)]


# ----------------------------------------------------------------------------- shape ops

def _count(shape: Shape) -> tuple[int, int]:
    """(number of symbolic batch dimensions, element count in units of N)."""
    factors = [batch_factor(d) for d in shape]
    symbolic = [f for f in factors if f is not None]
    static = int(np.prod([d for d, f in zip(shape, factors) if f is None]))
    return len(symbolic), static * int(np.prod(symbolic))


def _reshape_infer(types, attrs):
    dx, sx = types[0]
    shape = tuple(attrs["shape"])
    (n_in, count_in), (n_out, count_out) = _count(sx), _count(shape)
    if (n_in, n_out) not in ((1, 1), (0, 0)):  # (0, 0): a static batch (--batch)
        raise ShapeError(f"reshape {sx} -> {shape} must keep exactly one batch dimension")
    if count_in != count_out:
        raise ShapeError(f"reshape {sx} -> {shape} changes the element count")
    return [(dx, shape)]


def _reshape_eval(args, attrs):
    shape = [-1 if isinstance(d, str) else d for d in attrs["shape"]]
    return [args[0].reshape(shape)]


def _transpose_infer(types, attrs):
    dx, sx = types[0]
    perm = attrs["perm"]
    if sorted(perm) != list(range(len(sx))):
        raise ShapeError(f"bad permutation {perm} for {sx}")
    return [(dx, tuple(sx[p] for p in perm))]


def _split_infer(types, attrs):
    dx, sx = types[0]
    axis, sizes = attrs["axis"] % max(len(sx), 1), attrs["sizes"]
    if sum(sizes) != sx[axis]:
        raise ShapeError(f"split sizes {sizes} do not add up to {sx[axis]}")
    return [(dx, tuple(s if i != axis else k for i, s in enumerate(sx))) for k in sizes]


def _split_eval(args, attrs):
    bounds = np.cumsum(attrs["sizes"])[:-1]
    return [np.ascontiguousarray(p) for p in np.split(args[0], bounds, axis=attrs["axis"])]


def _pad_infer(types, attrs):
    """pads: [begin_0, ..., begin_k-1, end_0, ..., end_k-1] for the last k axes (>= 0)."""
    dx, sx = types[0]
    pads, k = attrs["pads"], len(attrs["pads"]) // 2
    if len(pads) % 2 or k > len(sx) or any(p < 0 for p in pads):
        raise ShapeError(f"bad pads {pads} for {sx}")
    out = list(sx)
    for i in range(k):
        axis = len(sx) - k + i
        if not isinstance(sx[axis], int):
            if pads[i] or pads[k + i]:
                raise ShapeError("pad on the batch axis")
            continue
        out[axis] = sx[axis] + pads[i] + pads[k + i]
    return [(dx, tuple(out))]


def _pad_eval(args, attrs):
    pads, k = attrs["pads"], len(attrs["pads"]) // 2
    x = args[0]
    width = [(0, 0)] * (x.ndim - k) + [(pads[i], pads[k + i]) for i in range(k)]
    return [np.pad(x, width, constant_values=x.dtype.type(attrs["value"]))]


def _gather_infer(types, attrs):
    dx, sx = types[0]
    axis, indices = attrs["axis"] % max(len(sx), 1), attrs["indices"]
    if not isinstance(sx[axis], int) or not indices or \
            any(not 0 <= i < sx[axis] for i in indices):
        raise ShapeError(f"gather indices out of range for axis {axis} of {sx}")
    return [(dx, tuple(len(indices) if i == axis else d for i, d in enumerate(sx)))]


def _gather_eval(args, attrs):
    return [np.ascontiguousarray(np.take(args[0], attrs["indices"], axis=attrs["axis"]))]


def _reduce_infer(types, attrs):
    dx, sx = types[0]
    axes = [a % len(sx) for a in attrs["axes"]]
    if attrs["keepdims"]:
        return [(dx, tuple(1 if i in axes else d for i, d in enumerate(sx)))]
    return [(dx, tuple(d for i, d in enumerate(sx) if i not in axes))]


def _concat_infer(types, attrs):
    """Parts of any static size along `axis`; along a batch axis (N, 4N) equal parts."""
    d, s = types[0]
    axis = attrs["axis"] % max(len(s), 1)
    if any(dt != d or len(st) != len(s) or any(a != b for i, (a, b) in enumerate(zip(st, s))
                                                 if i != axis) for dt, st in types):
        raise ShapeError("concat inputs differ in type")
    if all(isinstance(st[axis], int) for _, st in types):
        return [(d, (*s[:axis], sum(st[axis] for _, st in types), *s[axis + 1:]))]
    if any(t != types[0] for t in types):
        raise ShapeError("concat inputs differ in type")  # along a batch axis: equal parts
    k = batch_factor(s[axis])
    size = len(types) * s[axis] if k is None else times_batch(len(types) * k)
    return [(d, (*s[:axis], size, *s[axis + 1:]))]


def _chunk_infer(types, attrs):
    d, s = types[0]
    axis, count = attrs["axis"] % max(len(s), 1), attrs["count"]
    k = batch_factor(s[axis])
    if k is None:
        if s[axis] % count:
            raise ShapeError(f"cannot cut {s[axis]} into {count} equal chunks")
        size = s[axis] // count
    elif k % count:
        raise ShapeError(f"cannot cut {s[axis]} into {count} equal chunks")
    else:
        size = times_batch(k // count)
    return [(d, (*s[:axis], size, *s[axis + 1:]))] * count


# ----------------------------------------------------------------------------- quantized weights

def _dequantize_infer(types, attrs):
    (dc, sc), (ds, ss) = types
    if dc != "i32" or ds != "f32" or ss != (sc[0],):
        raise ShapeError(f"dequantize needs i32 codes and one f32 scale per output channel, "
                         f"got {dc}{list(sc)} and {ds}{list(ss)}")
    return [("f32", sc)]


def dequantize_eval(args, attrs):
    """Weights from integer codes (snnc.quant.weights.dequantize)."""
    codes, scale = args
    return [weights.dequantize(codes, scale, attrs["scheme"])]


# ----------------------------------------------------------------------------- shifts

def _shift_infer(layer_infer):
    def infer(types, attrs):
        (dx, sx), (dc, sc) = types
        if dx != "f32" or dc != "i32":
            raise ShapeError(f"shift layers take f32 integers and i32 PoT codes, got {dx}, {dc}")
        return layer_infer([(dx, sx), ("f32", sc)], attrs)
    return infer


def _shift_eval(layer_eval):
    def evaluate(args, attrs):
        x, codes = args
        xi = x.astype(np.int64)
        if not np.array_equal(xi, x):
            raise ValueError("shift layer input holds non-integers")
        return layer_eval([xi, weights.shift_weights(codes, weights.pot_shift(attrs["bits"]))],
                          attrs)  # int64 sums, then float32 (range-checked)
    return evaluate


# ----------------------------------------------------------------------------- integer kernels

INTEGER_TYPES = {"u8": (np.uint8, 0, 255), "i8": (np.int8, -128, 127)}
FLOAT32_EXACT = 2 ** 24  # float32 holds every integer of magnitude <= 2^24


def _cast_infer(types, attrs):
    (dx, sx), = types
    if attrs["to"] not in ("f32", *INTEGER_TYPES):
        raise ShapeError(f"cast to {attrs['to']!r}: snnc casts to f32, u8 or i8")
    return [(attrs["to"], sx)]


def _cast_eval(args, attrs):
    """A cast changes no value: casting a non-integer or out-of-range value to u8/i8 is an
    error (snnc.ir.ranges proves it cannot happen; the interpreter checks it)."""
    x, to = args[0], attrs["to"]
    if to == "f32":
        return [x.astype(F32)]
    dtype, low, high = INTEGER_TYPES[to]
    if x.size and (not np.array_equal(np.round(x), x) or x.min() < low or x.max() > high):
        raise ValueError(f"cast to {to} of values outside its integers "
                         f"[{float(x.min())}, {float(x.max())}]")
    return [x.astype(dtype)]


def _int_weights_infer(types, attrs):
    (dc, sc), (ds, ss) = types
    if dc != "i32" or ds != "f32" or ss != (sc[0],) or len(sc) < 2:
        raise ShapeError(f"int_weights needs i32 codes [M, ...] and one f32 scale per output "
                         f"channel, got {dc}{list(sc)} and {ds}{list(ss)}")
    k = int(np.prod(sc[1:]))
    return [("i8", (k, attrs["digits"] * sc[0]))]


def _int_weights_eval(args, attrs):
    codes, scale = args
    matrix = weights.gemm_weights(codes, attrs["scheme"], attrs["bits"], scale)
    if matrix.shape[1] != attrs["digits"] * codes.shape[0]:
        raise ValueError(f"int_weights: the layer's integers need "
                         f"{matrix.shape[1] // codes.shape[0]} int8 digits, not {attrs['digits']}")
    return [matrix]


def _int_matmul_infer(types, attrs):
    (da, sa), (db, sb) = types
    if da not in INTEGER_TYPES or db not in INTEGER_TYPES:
        raise ShapeError(f"int_matmul takes u8/i8 operands, got {da} and {db}")
    return [("f32", _matmul_infer([("f32", sa), ("f32", sb)], attrs)[0][1])]


def _int_matmul_eval(args, attrs):
    """The exact integer sums, as float32: an error if one is not a float32 integer. Summed
    in float64 (BLAS): products of 8-bit integers and their sums stay far below 2^53, so
    every partial sum is exact in any order."""
    y = np.matmul(args[0].astype(np.float64), args[1].astype(np.float64))
    if y.size and np.abs(y).max() > FLOAT32_EXACT:
        raise ValueError(f"int_matmul sum {int(np.abs(y).max())} exceeds 2^24")
    return [y.astype(F32)]


def _digits_sum_infer(types, attrs):
    (dx, sx), = types
    count = attrs["count"]
    if dx != "f32" or count < 2 or not isinstance(sx[-1], int) or sx[-1] % count:
        raise ShapeError(f"digits_sum of {count} digit blocks on {dx}{list(sx)}")
    return [(dx, (*sx[:-1], sx[-1] // count))]


def _digits_sum_eval(args, attrs):
    """sum_k block_k * 128^k over the last axis's `count` blocks, in float32: an error if a
    partial sum is not an exact float32 integer."""
    parts = np.split(args[0], attrs["count"], axis=-1)
    total = parts[0]
    for k, part in enumerate(parts[1:], start=1):
        total = (total + part * F32(weights.DIGIT_BASE ** k)).astype(F32)
        if total.size and np.abs(total).max() > FLOAT32_EXACT:
            raise ValueError("digits_sum: a partial sum exceeds 2^24")
    return [np.ascontiguousarray(total)]


def _im2col_infer(types, attrs):
    (dx, sx), = types
    spatial = len(sx) - 2
    if spatial < 1 or any(len(attrs[k]) != spatial for k in ("kernel", "stride", "padding",
                                                             "dilation")):
        raise ShapeError(f"im2col on {sx}: kernel, stride, padding and dilation need one entry "
                         "per spatial axis")
    out = [_window_out(sx[1 + i], attrs["kernel"][i], attrs["stride"][i], attrs["padding"][i],
                       attrs["dilation"][i]) for i in range(spatial)]
    taps = int(np.prod(attrs["kernel"]))
    return [(dx, (sx[0], *out, taps * sx[-1]))]


def _im2col_eval(args, attrs):
    """Channel-last windows: [N, *S, C] -> [N, *S', taps * C], taps in row-major order, each
    tap's C channels together; zero padding."""
    x = args[0]
    pad = [(0, 0)] + [(p, p) for p in attrs["padding"]] + [(0, 0)]
    xp = np.pad(x, pad)
    out = _im2col_infer([(None, x.shape)], attrs)[0][1][1:-1]
    taps = []
    for offsets in np.ndindex(*attrs["kernel"]):
        index = tuple(slice(o * d, o * d + (n - 1) * s + 1, s) for o, d, s, n in
                      zip(offsets, attrs["dilation"], attrs["stride"], out))
        taps.append(xp[(slice(None),) + index + (slice(None),)])
    return [np.ascontiguousarray(np.concatenate(taps, axis=-1))]


# ----------------------------------------------------------------------------- neurons

def neuron_charge(x: np.ndarray, v: np.ndarray, attrs) -> np.ndarray:
    """Membrane potential after charging, exactly as SpikingJelly's CPU kernels round it."""
    leak, decay_input = attrs["leak"], attrs["decay_input"]
    reset = F32(0.0 if attrs["v_reset"] is None else attrs["v_reset"])
    x = x.astype(F32, copy=False)
    if leak == "none":
        return v + x
    k = F32(attrs["leak_value"])
    scale = (lambda a: a / k) if leak == "div" else (lambda a: a * k)
    if decay_input:
        return v + scale(x - (v - reset))
    return v - scale(v - reset) + x


def _neuron_infer(types, attrs):
    (dx, sx), (dv, sv) = types[:2]
    broadcast(sx, sv)
    if (attrs["threshold"] is None) != (len(types) == 3):
        raise ShapeError("a neuron has a scalar threshold attribute or a threshold input "
                         "(threshold=None), not both or neither")
    if len(types) == 3:
        dt, st = types[2]
        if dt != "f32" or broadcast(sx, st) != tuple(sx):
            raise ShapeError(f"neuron threshold {dt}{list(st)} does not broadcast to {sx}")
    return [(dx, sx), (dx, sx)]


def neuron_threshold(args, attrs) -> np.ndarray:
    """The scalar attribute, or the per-channel threshold input (fold_scales makes those)."""
    return args[2] if attrs["threshold"] is None else F32(attrs["threshold"])


def neuron_eval(args, attrs):
    x, v = args[:2]
    h = neuron_charge(x, v, attrs)
    threshold = neuron_threshold(args, attrs)
    fired = h >= threshold
    if attrs["v_reset"] is None:
        v_next = np.where(fired, h - threshold, h)
    else:
        v_next = np.where(fired, F32(attrs["v_reset"]), h)
    return [fired.astype(F32), v_next.astype(F32)]


# ----------------------------------------------------------------------------- neuron models

def _neuron_model_infer(types, attrs):
    model = neurons.MODELS.get(attrs["model"])
    if model is None:
        raise ShapeError(f"unknown neuron model {attrs['model']!r}; known: "
                         f"{', '.join(neurons.MODELS)}")
    channel = sum(p is None for p in attrs["params"]) + (attrs["threshold"] is None)
    if len(attrs["params"]) != len(model.params) or \
            len(types) != 1 + len(model.states) + channel:
        raise ShapeError(f"neuron model {model.name} takes params {list(model.params)} and "
                         f"inputs (x, {', '.join(model.states)}), then one per parameter "
                         "(or threshold) given as None")
    dx, sx = types[0]
    for dt, st in types[1:]:
        if dt != dx or broadcast(sx, st) != tuple(sx):
            raise ShapeError(f"neuron model input {dt}{list(st)} does not broadcast to {sx}")
    return [(dx, sx)] * (1 + len(model.states))


def neuron_states(node) -> int:
    """How many state inputs (after x) a neuron or neuron_model node reads."""
    if node.op == "neuron_model":
        return len(neurons.MODELS[node.attrs["model"]].states)
    return 1


# ----------------------------------------------------------------------------- comparisons and selection

COMPARE = {"ge": np.greater_equal, "gt": np.greater, "le": np.less_equal, "lt": np.less}


def _compare_infer(types, attrs):
    if attrs["op"] not in COMPARE:
        raise ShapeError(f"compare op must be one of {sorted(COMPARE)}, got {attrs['op']!r}")
    return _binary(None)[0](types, attrs)


def _where_infer(types, attrs):
    (dc, sc), (da, sa), (db, sb) = types
    if not dc == da == db == "f32":
        raise ShapeError(f"where takes f32 operands, got {dc}, {da}, {db}")
    return [(da, broadcast(broadcast(sc, sa), sb))]


def _clip_eval(args, attrs):
    lo = -np.inf if attrs["min"] is None else F32(attrs["min"])
    hi = np.inf if attrs["max"] is None else F32(attrs["max"])
    return [np.clip(args[0], lo, hi).astype(F32)]


# ----------------------------------------------------------------------------- the table

_INT_LIST = (list, tuple)
_add = _binary(lambda a, b: (a + b).astype(F32))
_sub = _binary(lambda a, b: (a - b).astype(F32))
_mul = _binary(lambda a, b: (a * b).astype(F32))
_div = _binary(lambda a, b: (a / b).astype(F32))

OPS: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("add", {}, *_add, (2, 2)),
        OpDef("sub", {}, *_sub, (2, 2)),
        OpDef("mul", {}, *_mul, (2, 2)),
        OpDef("div", {}, *_div, (2, 2)),
        OpDef("relu", {}, _unary_same, lambda a, at: [np.maximum(a[0], F32(0))], (1, 1)),
        OpDef("conv", {"stride": _INT_LIST, "padding": _INT_LIST, "dilation": _INT_LIST,
                       "groups": int}, _conv_infer, _conv_eval, (2, 3)),
        OpDef("batch_norm", {"eps": float}, _batch_norm_infer, _batch_norm_eval, (5, 5)),
        OpDef("max_pool", {"kernel": _INT_LIST, "stride": _INT_LIST, "padding": _INT_LIST},
              _pool_infer, _max_pool_eval, (1, 1)),
        OpDef("avg_pool", {"kernel": _INT_LIST, "stride": _INT_LIST, "padding": _INT_LIST},
              _pool_infer, _avg_pool_eval, (1, 1)),
        OpDef("linear", {}, _linear_infer, _linear_eval, (2, 3)),
        OpDef("matmul", {}, _matmul_infer, lambda a, at: [(a[0] @ a[1]).astype(F32)], (2, 2)),
        OpDef("reshape", {"shape": _INT_LIST}, _reshape_infer, _reshape_eval, (1, 1)),
        OpDef("transpose", {"perm": _INT_LIST}, _transpose_infer,
              lambda a, at: [np.ascontiguousarray(a[0].transpose(at["perm"]))], (1, 1)),
        OpDef("split", {"axis": int, "sizes": _INT_LIST}, _split_infer, _split_eval, (1, 1)),
        OpDef("reduce_mean", {"axes": _INT_LIST, "keepdims": bool}, _reduce_infer,
              lambda a, at: [a[0].mean(axis=tuple(at["axes"]), keepdims=at["keepdims"],
                                       dtype=F32)], (1, 1)),
        OpDef("reduce_sum", {"axes": _INT_LIST, "keepdims": bool}, _reduce_infer,
              lambda a, at: [a[0].sum(axis=tuple(at["axes"]), keepdims=at["keepdims"],
                                      dtype=F32)], (1, 1)),
        OpDef("reduce_max", {"axes": _INT_LIST, "keepdims": bool}, _reduce_infer,
              lambda a, at: [a[0].max(axis=tuple(at["axes"]), keepdims=at["keepdims"])],
              (1, 1)),
        OpDef("reduce_min", {"axes": _INT_LIST, "keepdims": bool}, _reduce_infer,
              lambda a, at: [a[0].min(axis=tuple(at["axes"]), keepdims=at["keepdims"])],
              (1, 1)),
        # Equal parts joined / cut along an axis (time-major batches: N -> TN -> N).
        OpDef("concat", {"axis": int}, _concat_infer,
              lambda a, at: [np.concatenate(a, axis=at["axis"])], (1, 1 << 20)),
        OpDef("chunk", {"axis": int, "count": int}, _chunk_infer,
              lambda a, at: [np.ascontiguousarray(p) for p in np.split(a[0], at["count"],
                                                                        axis=at["axis"])],
              (1, 1)),
        # A constant border on the last k axes (ONNX Pad); and elements picked along one axis
        # by constant indices (ONNX Gather): index_select, flip, roll, reflect/replicate/
        # circular padding, nearest upsampling.
        OpDef("pad", {"pads": _INT_LIST, "value": float}, _pad_infer, _pad_eval, (1, 1)),
        OpDef("gather", {"axis": int, "indices": _INT_LIST}, _gather_infer, _gather_eval,
              (1, 1)),
        # Weights from per-output-channel quantization codes (scheme "uniform", "pot", "ternary"
        # or "binary").
        OpDef("dequantize", {"scheme": str, "bits": int}, _dequantize_infer, dequantize_eval,
              (2, 2)),
        # A spiking neuron (IF, LIF, parametric LIF) for one timestep: (x, v) -> (spike, v').
        # leak: "none" (IF), "div" (LIF: /tau) or "mul" (PLIF: *sigmoid(w)); v_reset None is a
        # soft reset (subtract the threshold). threshold None: a third input holds it, per
        # channel (broadcast to x).
        OpDef("neuron", {"leak": str, "leak_value": float, "decay_input": bool,
                         "threshold": (float, type(None)), "v_reset": (float, type(None))},
              _neuron_infer, neuron_eval, (2, 3)),
        # Other SpikingJelly neurons for one timestep: (x, *states) -> (out, *states'), the
        # model (ILIF, EIF, QIF, Izhikevich, STBIF, ...) and its params named in
        # snnc.ir.neurons.MODELS; v_reset None is a soft reset. A param or threshold None:
        # an input after the states holds it, per channel (broadcast to x).
        OpDef("neuron_model", {"model": str, "params": _INT_LIST,
                               "threshold": (float, type(None)),
                               "v_reset": (float, type(None))},
              _neuron_model_infer, neurons.evaluate, (2, 8)),
        # Comparisons as 1.0 / 0.0 (a spike, or a mask: PyTorch's bool tensors as floats),
        # where(c, a, b) = a where c != 0, clip to [min, max] (None: open), round half to
        # even (torch.round).
        OpDef("compare", {"op": str}, _compare_infer,
              lambda a, at: [COMPARE[at["op"]](a[0], a[1]).astype(F32)], (2, 2)),
        OpDef("where", {}, _where_infer,
              lambda a, at: [np.where(a[0] != 0, a[1], a[2]).astype(F32)], (3, 3)),
        OpDef("clip", {"min": (float, type(None)), "max": (float, type(None))}, _unary_same,
              _clip_eval, (1, 1)),
        OpDef("round", {}, _unary_same, lambda a, at: [np.round(a[0]).astype(F32)], (1, 1)),
        # Power-of-two weights as shifts (pot_to_shift): y = sum(sign(c) * (x << (E + 1 - |c|)))
        # over the layer's window, c the `bits`-bit PoT codes (c = 0 adds nothing),
        # E = weights.pot_shift(bits); x holds integers. Evaluated in int64.
        OpDef("shift_conv", {"stride": _INT_LIST, "padding": _INT_LIST, "dilation": _INT_LIST,
                             "groups": int, "bits": int}, _shift_infer(_conv_infer),
              _shift_eval(_conv_eval), (2, 2)),
        # A value in another element type (f32, u8, i8); values never change (checked).
        OpDef("cast", {"to": str}, _cast_infer, _cast_eval, (1, 1)),
        # A folded quantized layer's integer weights as the int8 [K, digits * M] matrix of
        # a token-major GEMM (snnc.quant.weights.gemm_matrix): codes [M, ...], scales +-unit or 0;
        # weights wider than int8 as `digits` base-128 digits side by side.
        OpDef("int_weights", {"scheme": str, "bits": int, "digits": int}, _int_weights_infer,
              _int_weights_eval, (2, 2)),
        # u8/i8 x u8/i8 matrix product with exact integer sums, as f32 (like matmul; b may be
        # the [K, M] weights of a layer).
        OpDef("int_matmul", {}, _int_matmul_infer, _int_matmul_eval, (2, 2)),
        # The GEMM of a layer whose weights are `count` int8 digits, recombined: the last
        # axis holds the digit blocks [b_0 | ... | b_{count-1}]; sum_k b_k * 128^k.
        OpDef("digits_sum", {"count": int}, _digits_sum_infer, _digits_sum_eval, (1, 1)),
        # Channel-last convolution windows [N, *S, C] -> [N, *S', taps * C] (zero padding).
        OpDef("im2col", {"kernel": _INT_LIST, "stride": _INT_LIST, "padding": _INT_LIST,
                         "dilation": _INT_LIST}, _im2col_infer, _im2col_eval, (1, 1)),
        OpDef("shift_linear", {"bits": int}, _shift_infer(_linear_infer),
              _shift_eval(_linear_eval), (2, 2)),
    ]
}

# ----------------------------------------------------------------------------- float islands
# Ops that are not spike-driven (LayerNorm, GroupNorm, softmax, GELU, sigmoid, exp, ...):
# float computations between the spiking layers, defined in snnc.ir.islands. No pass treats
# their outputs as spikes or integers (snnc.ir.ranges gives them no bounds).
OPS.update({name: OpDef(name, *spec) for name, spec in islands.SPECS.items()})
# ops over all timesteps (time_reduce, time_mix), defined in snnc.ir.time_ops
OPS.update({name: OpDef(name, *spec) for name, spec in time_ops.SPECS.items()})
FLOAT_ISLANDS = frozenset(islands.SPECS)
