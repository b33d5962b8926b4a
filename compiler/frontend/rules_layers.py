"""Lifting rules for layers and arithmetic: conv, BatchNorm, pooling, linear, quantized
weights (snnc::fake_quant), elementwise add/sub/mul/div, relu, and matmul.
"""

from __future__ import annotations

import numpy as np
import torch

from snnc.frontend import axes
from snnc.frontend.axes import Layout, T
from snnc.frontend.lifter import (QUANT_OP, Act, Marker, Rules, Unsupported, float_arg,
                                  image_input, int_arg, ints_arg, op_name, positive, post_of,
                                  reduced_features, source_of)
from snnc.ir.ops import OPS
from snnc.quant import quantize

RULES = Rules()
rule = RULES.rule


@rule("aten.conv1d.default", "aten.conv2d.default", ir="conv", note="numeric padding")
def _conv(lx, node, a):
    weight = lx.const(a.get("weight"))
    spatial = len(weight.shape) - 2
    x = lx.act(a.get("input"))
    image_input(x, (spatial + 2,), "conv")
    if isinstance(a.get("padding"), str):
        raise Unsupported("string padding ('same'/'valid'); give the padding as numbers")
    ins = [x.value, weight] + ([lx.const(a["bias"])] if a.get("bias") is not None else [])
    attrs = {"stride": positive(ints_arg(a, "stride", spatial), "stride"),
             "padding": ints_arg(a, "padding", spatial),
             "dilation": positive(ints_arg(a, "dilation", spatial), "dilation"),
             "groups": positive([int_arg(a, "groups")], "groups")[0]}
    value, = lx.emit("conv", ins, attrs, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.batch_norm.default", ir="batch_norm", note="eval mode; folded into the layer "
      "before it when possible")
def _batch_norm(lx, node, a):
    if a.get("training"):
        raise Unsupported("batch norm in training mode; call model.eval() before export")
    x = lx.act(a.get("input"))
    image_input(x, (2, 3, 4), "batch norm")
    c = x.value.shape[1]
    ones = lambda fill, name: lx.constant(np.full(c, fill, np.float32), f"{node.name}.{name}")
    params = [lx.const(a["weight"]) if a.get("weight") is not None else ones(1, "weight"),
              lx.const(a["bias"]) if a.get("bias") is not None else ones(0, "bias"),
              lx.const(a.get("running_mean")), lx.const(a.get("running_var"))]
    value, = lx.emit("batch_norm", [x.value, *params], {"eps": float_arg(a, "eps")}, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.max_pool2d.default", "aten.avg_pool2d.default", ir="max_pool, avg_pool",
      note="ceil mode where it adds no window; average pooling unpadded")
def _pool(lx, node, a, x: Act | None = None, name: str = ""):
    x = x or lx.act(a.get("self"))
    image_input(x, (4,), "pooling")
    kernel = positive(ints_arg(a, "kernel_size", 2), "kernel size")
    stride = positive(ints_arg(a, "stride", 2), "stride") if a.get("stride") else kernel
    padding = ints_arg(a, "padding", 2)
    if a.get("ceil_mode"):
        _no_ceil_window(x.value.shape[2:], kernel, stride, padding,
                        ints_arg(a, "dilation", 2) if "dilation" in a else [1, 1])
    if (name or op_name(node)).startswith("aten.max"):
        if ints_arg(a, "dilation", 2) != [1, 1]:
            raise Unsupported("dilated max pooling")
        op = "max_pool"
    else:
        if any(padding) or a.get("divisor_override") is not None:
            raise Unsupported("padded average pooling or divisor_override; pad with a "
                              "layer before it or use padding=0")
        op = "avg_pool"
    value, = lx.emit(op, [x.value], {"kernel": kernel, "stride": stride, "padding": padding},
                     node)
    return lx.new_act(value, x.layout, x.post)


def _no_ceil_window(sizes, kernel, stride, padding, dilation) -> None:
    """ceil_mode=True pools as ceil_mode=False where rounding up adds no window (every size
    an even fit, as for even sizes in the usual 2x2 stride-2 pool); else refused."""
    for size, k, s, p, d in zip(sizes, kernel, stride, padding, dilation):
        span = size + 2 * p - d * (k - 1) - 1
        ceil = -(-span // s) + 1
        if (ceil - 1) * s >= size + p:  # PyTorch: the last window must start inside
            ceil -= 1
        if ceil != span // s + 1:
            raise Unsupported(f"ceil_mode=True pooling adds a partial window here (size "
                              f"{size}, kernel {k}, stride {s}); use ceil_mode=False, or "
                              "pad the input to fit the windows")


@rule("aten.adaptive_avg_pool3d.default", "aten.adaptive_max_pool1d.default",
      "aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool3d.default",
      ir="reduce_mean, reduce_max", note="to size 1 (a global pool over the axes after the "
      "channels, time among them when the model moved it there: lifted on the whole run)")
def _global_pool(lx, node, a):
    x = lx.act(a.get("self"))
    name = op_name(node)
    size = ints_arg(a, "output_size", x.layout.rank - 2)
    if x.layout.rank < 3 or any(d != 1 for d in size):
        raise Unsupported(f"adaptive pooling to {size}; snnc pools adaptively to 1 here (a "
                          "global pool), or to any size with adaptive_avg_pool2d")
    if x.layout.roles[1] != axes.F:
        raise Unsupported(f"pools a tensor with axes {x.layout}; give it [B, C, ...]")
    spatial = [x.layout.step_axis(d) for d in range(2, x.layout.rank)]
    op = "reduce_max" if "max" in name else "reduce_mean"
    value, = lx.emit(op, [x.value], {"axes": spatial, "keepdims": True}, node)
    pooled = lx.new_act(value, x.layout, x.post)
    return [pooled, Marker("indices")] if "max" in name else pooled  # (values, indices)


@rule("aten.amax.default", ir="reduce_max", note="over feature axes")
def _max(lx, node, a):
    x = lx.act(a.get("self"))
    picked = sorted({x.layout.axis(d) for d in ints_arg(a, "dim")})
    if not picked:
        raise Unsupported("takes the max over every axis, batch included; name the axes")
    return reduced_features(lx, node, x, picked, bool(a.get("keepdim")), "max")


@rule("aten.conv3d.default", ir="reshape, conv", note="pointwise (kernel 1, stride 1, no "
      "padding): a 1x1 conv over the flattened volume")
def _conv3d(lx, node, a):
    weight = lx.const(a.get("weight"))
    x = lx.act(a.get("input"))
    image_input(x, (5,), "conv3d")
    if tuple(weight.shape[2:]) != (1, 1, 1) or isinstance(a.get("padding"), str) or \
            ints_arg(a, "stride", 3) != [1, 1, 1] or any(ints_arg(a, "padding", 3)):
        raise Unsupported("a conv3d that is not pointwise (kernel 1x1x1, stride 1, no "
                          "padding); snnc lowers conv3d only as that")
    n, c, d, h, w = x.value.shape
    flat, = lx.emit("reshape", [x.value], {"shape": [n, c, d * h, w]}, node)
    shape = [*weight.shape[:2], 1, 1]
    kernel = lx.constant(np.asarray(lx.builder.constants[weight]).reshape(shape),
                         f"{node.name}.weight") if weight in lx.builder.constants else \
        lx.emit("reshape", [weight], {"shape": shape}, node, f"{node.name}.weight")[0]
    bias = [lx.const(a["bias"])] if a.get("bias") is not None else []
    groups = positive([int_arg(a, "groups")], "groups")[0]
    out, = lx.emit("conv", [flat, kernel, *bias], {"stride": [1, 1], "padding": [0, 0],
                                                   "dilation": [1, 1], "groups": groups}, node)
    value, = lx.emit("reshape", [out], {"shape": [n, weight.shape[0], d, h, w]}, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.max_pool1d.default", "aten.avg_pool1d.default", "aten.adaptive_avg_pool1d.default",
      ir="reshape, the 2-D pooling", note="as 2-D pooling over a unit height")
def _pool1d(lx, node, a):
    x = lx.act(a.get("self"))
    image_input(x, (3,), "1-D pooling")
    n, c, length = x.value.shape
    tall, = lx.emit("reshape", [x.value], {"shape": [n, c, 1, length]}, node)
    wide = Act(tall, Layout((x.layout.roles[0], axes.F, axes.F, axes.F)), x.post)
    name = op_name(node)
    if "adaptive" in name:
        pooled = _adaptive_avg_pool(lx, node, {"output_size": [1] + ints_arg(a, "output_size", 1)},
                                    wide)
    else:
        kernel = ints_arg(a, "kernel_size", 1)
        pooled = _pool(lx, node, {
            "kernel_size": [1] + kernel, "padding": [0] + ints_arg(a, "padding", 1),
            "stride": [1] + (ints_arg(a, "stride", 1) if a.get("stride") else kernel),
            "dilation": [1] + (ints_arg(a, "dilation", 1) if "dilation" in a else [1]),
            "ceil_mode": a.get("ceil_mode")}, wide, name.replace("1d", "2d"))
    value, = lx.emit("reshape", [pooled.value], {"shape": [n, c, pooled.value.shape[3]]}, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.adaptive_avg_pool2d.default", ir="reduce_mean, avg_pool, matmul",
      note="1x1: a mean; dividing sizes: average pooling; else a constant window matrix")
def _adaptive_avg_pool(lx, node, a, x: Act | None = None):
    x = x or lx.act(a.get("self"))
    image_input(x, (4,), "adaptive pooling")
    h, w = x.value.shape[2:]
    oh, ow = positive(ints_arg(a, "output_size", 2), "output size")
    if oh > h or ow > w:
        raise Unsupported(f"adaptive pooling {h}x{w} up to {oh}x{ow}; pool to at most the "
                          "input's size")
    if (oh, ow) == (1, 1):
        value, = lx.emit("reduce_mean", [x.value], {"axes": [2, 3], "keepdims": True}, node)
    elif h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        value, = lx.emit("avg_pool", [x.value], {"kernel": k, "stride": k, "padding": [0, 0]},
                         node)
    elif h * w * oh * ow > MAX_POOL_MATRIX:
        raise Unsupported(f"adaptive pooling {h}x{w} to {oh}x{ow} in uneven windows needs an "
                          f"averaging matrix of {h * w * oh * ow:,} values (at most "
                          f"{MAX_POOL_MATRIX:,}); pool to a size that divides the input, or "
                          "pool in stages (an AvgPool2d first)")
    else:  # overlapping or uneven windows: a constant averaging matrix
        n, c = x.value.shape[:2]
        flat, = lx.emit("reshape", [x.value], {"shape": [n, c, h * w]}, node)
        pool = lx.constant(_adaptive_matrix(h, w, oh, ow), f"{node.name}.windows")
        mixed, = lx.emit("matmul", [flat, pool], {}, node)
        value, = lx.emit("reshape", [mixed], {"shape": [n, c, oh, ow]}, node)
    return lx.new_act(value, x.layout, x.post)


MAX_POOL_MATRIX = 1 << 24  # 64 MB of float32: a 100x100 map pooled unevenly to 20x20 is 4 M


def _adaptive_matrix(h: int, w: int, oh: int, ow: int) -> np.ndarray:
    """[h*w, oh*ow]: column (i, j) averages PyTorch's adaptive window of output cell (i, j),
    rows floor(i*h/oh) .. ceil((i+1)*h/oh) - 1 (columns likewise)."""
    matrix = np.zeros((h, w, oh, ow), np.float32)
    for i in range(oh):
        rows = slice(i * h // oh, -(-(i + 1) * h // oh))
        for j in range(ow):
            cols = slice(j * w // ow, -(-(j + 1) * w // ow))
            window = matrix[rows, cols, i, j]
            matrix[rows, cols, i, j] = 1.0 / window.size
    return matrix.reshape(h * w, oh * ow)


@rule("aten.linear.default", ir="linear", note="on any rank (tokens too)")
def _linear(lx, node, a):
    x = lx.act(a.get("input"))
    if x.layout.roles[-1] != axes.F:
        raise Unsupported(f"linear over the last axis of a tensor with axes {x.layout}, which is "
                          "not a feature axis")
    ins = [x.value, lx.const(a.get("weight"))]
    if a.get("bias") is not None:
        ins.append(lx.const(a["bias"]))
    value, = lx.emit("linear", ins, {}, node)
    return lx.new_act(value, x.layout, x.post)


@rule(QUANT_OP, ir="dequantize", note="a quantized weight (docs/quantization.md): codes and "
      "scales read from the op")
def _fake_quant(lx, node, a):
    weight, scale = lx.const(a.get("weight")), lx.const(a.get("scale"))
    consts = lx.builder.constants
    scheme, bits = str(a.get("scheme")), int_arg(a, "bits")
    key = (weight, scale, scheme, bits)  # a layer a single-step loop calls T times: once
    if key in lx.weights:
        return lx.weights[key]
    codes = quantize.codes(torch.from_numpy(np.asarray(consts[weight])),
                           torch.from_numpy(np.asarray(consts[scale])), scheme, bits).numpy()
    module = source_of(node).layer.split(".parametrizations.")[0]  # the layer, not its quantizer
    code_value = lx.constant(codes, f"{module}.weight_codes", "i32")
    scale_value = lx.constant(consts[scale], f"{module}.weight_scale")
    lx.weights[key], = lx.emit("dequantize", [code_value, scale_value],
                               {"scheme": scheme, "bits": bits}, node, f"{module}.weight")
    return lx.weights[key]


_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "rsub": "sub"}


@rule("aten.add.Tensor", "aten.sub.Tensor", "aten.mul.Tensor", "aten.div.Tensor",
      "aten.rsub.Scalar", ir="add, sub, mul, div",
      note="with tensors or scalars (SEW ADD, AND = a*b, IAND = (1-a)*b); alpha 1")
def _binary(lx, node, a):
    op = op_name(node).split(".")[1]
    if a.get("alpha", 1) != 1:
        raise Unsupported("add/sub with alpha != 1; scale the operand instead")
    x, y = lx.operand(a.get("self")), lx.operand(a.get("other"))
    if op == "rsub":
        x, y = y, x
    acts = [v for v in (x, y) if isinstance(v, Act)]
    if not acts:  # constants only (a recurrent state's zero start): folded
        if not all(v in lx.builder.constants for v in (x, y)):
            raise Unsupported("arithmetic on a quantized weight; quantize the result instead")
        arrays = [np.asarray(lx.builder.constants[v]) for v in (x, y)]
        return lx.constant(OPS[_BINARY[op]].evaluate(arrays, {})[0], node.name)
    post = post_of(acts)
    layout = axes.broadcast([v.layout for v in acts])
    ins = [v.value if isinstance(v, Act) else _step_constant(lx, v, layout) for v in (x, y)]
    value, = lx.emit(_BINARY[op], ins, {}, node)
    return lx.new_act(value, layout, post)


def _step_constant(lx, value, layout: Layout):
    """A constant broadcast against a torch tensor of `layout`, as a constant of its step
    value: its axis against time is dropped; it may not vary over time or batch."""
    shape = value.shape
    offset = layout.rank - len(shape)
    if offset < 0:
        raise Unsupported(f"broadcasts a rank-{len(shape)} constant over a tensor with axes "
                          f"{layout}")
    keep, array = [], np.asarray(lx.builder.constants[value])
    for i, d in enumerate(shape):
        role = layout.roles[offset + i]
        if role != axes.F and d != 1:
            # a constant expanded to the example's batch (folded): the same along that axis
            first = np.take(array, [0], axis=i)
            if not np.array_equal(array, np.broadcast_to(first, array.shape)):
                raise Unsupported(f"uses a constant that varies along the {role} axis")
            array, d = first, 1
        if role != T:
            keep.append(d)
    if len(keep) == len(shape) and array.shape == tuple(shape):
        return value
    return lx.constant(array.reshape(keep), value.hint)


@rule("aten.relu.default", ir="relu")
def _relu(lx, node, a):
    x = lx.act(a.get("self"))
    value, = lx.emit("relu", [x.value], {}, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.matmul.default", "aten.bmm.default", ir="matmul", note="spike x spike products "
      "(attention), or with a constant matrix")
def _matmul(lx, node, a):
    x, y = lx.operand(a.get("self")), lx.operand(a.get("other", a.get("mat2")))
    acts = [v for v in (x, y) if isinstance(v, Act)]
    if not acts:
        raise Unsupported("a product of constants")
    layout = axes.broadcast([v.layout for v in acts])
    for v in acts:
        if v.layout.rank < 2 or v.layout.roles[-2:] != (axes.F, axes.F):
            raise Unsupported(f"a product over the time or batch axis (axes {v.layout})")
    for v in (x, y):
        if not isinstance(v, Act) and len(v.shape) > 2:
            raise Unsupported("a product with a batched constant; use a 2-D matrix")
    value, = lx.emit("matmul", [v.value if isinstance(v, Act) else v for v in (x, y)], {}, node)
    return lx.new_act(value, layout, post_of(acts))
