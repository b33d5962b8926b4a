"""Lifting rules for padding, indexing by constant indices, and the writes a model makes in
place (made functional by prepare.py): pad, index_select / flip / index, copy, fill,
slice_scatter / select_scatter, and einsum.

A constant fill of an activation's shape (`zeros_like(x)`, `x.fill_(0)`) is a Marker("init")
(rules_neurons.py): views of it stay that marker, and writing an activation into part of it
is a pad of that activation with the fill. Every axis padded, indexed or written must be a
feature axis (never time or batch); indices must be constants (folded from parameters,
buffers and constants, fold.py).
"""

from __future__ import annotations

import numpy as np
import torch

from snnc.frontend import axes
from snnc.frontend.lifter import (Act, Marker, Rules, Unsupported, dims, float_arg, int_arg,
                                  ints_arg, op_name, post_of)
from snnc.frontend.rules_layers import _step_constant
from snnc.frontend.rules_tensors import _permuted
from snnc.ir.graph import BATCH

RULES = Rules()
rule = RULES.rule

# Views and copies of a constant fill are that fill (its shape is the node's).
SHAPE_OPS = ("aten.slice.Tensor", "aten.select.int", "aten.view.default",
             "aten.reshape.default", "aten.permute.default", "aten.transpose.int",
             "aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims",
             "aten.flatten.using_ints", "aten.unflatten.int", "aten.expand.default",
             "aten.clone.default", "aten.contiguous.default", "aten.alias.default",
             "aten.detach.default", "aten._unsafe_view.default")


def fill_of(lx, node):
    """The Marker("init") a shape op of a constant fill is, else None."""
    first = node.args[0] if node.args else None
    got = lx.env.get(first) if isinstance(first, torch.fx.Node) else None
    if op_name(node) in SHAPE_OPS and isinstance(got, Marker) and got.kind == "init":
        return got
    return None


def _gather(lx, node, x: Act, axis: int, indices) -> Act:
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    size = dims(node.args[0])[axis] if isinstance(node.args[0], torch.fx.Node) else None
    step = x.layout.step_axis(axis)
    if indices == list(range(x.value.shape[step])):
        return x
    if isinstance(size, int):
        indices = [i % size if -size <= i < size else i for i in indices]
    value, = lx.emit("gather", [x.value], {"axis": step, "indices": indices}, node)
    return lx.new_act(value, x.layout, x.post)


def _indices(lx, arg, what: str) -> np.ndarray:
    got = lx.env.get(arg) if isinstance(arg, torch.fx.Node) else None
    if isinstance(got, np.ndarray) and got.dtype.kind in "iu":
        return got
    if got is not None and got in lx.builder.constants:
        raise Unsupported(f"its {what} are floats, not integers")
    raise Unsupported(f"its {what} depend on the input; only constant indices (computed from "
                      "parameters, buffers and constants) can be compiled")


@rule("aten.index_select.default", ir="gather", note="constant indices on a feature axis")
def _index_select(lx, node, a):
    x = lx.act(a.get("self"))
    axis = x.layout.axis(int_arg(a, "dim"))
    index = _indices(lx, a.get("index"), "indices")
    if index.ndim > 1:
        raise Unsupported("indexes with a multi-dimensional index tensor")
    return _gather(lx, node, x, axis, index)


@rule("aten.flip.default", ir="gather", note="of feature axes")
def _flip(lx, node, a):
    x = lx.act(a.get("self"))
    for d in ints_arg(a, "dims"):
        axis = x.layout.axis(d)
        size = dims(node.args[0])[axis]
        x = _gather(lx, node, x, axis, list(range(size - 1, -1, -1)))
    return x


def _lookup(lx, node, table: np.ndarray, ids: Act) -> Act:
    """table[ids] of a constant 1-D table by an activation of whole numbers 0..len-1 (a
    bucketize's): a chain of where(ids >= r, table[r], ...), each entry exact."""
    value = lx.scalar(float(table[0]))
    for r in range(1, len(table)):
        at_least, = lx.emit("compare", [ids.value, lx.scalar(r - 0.5)], {"op": "ge"}, node)
        value, = lx.emit("where", [at_least, lx.scalar(float(table[r])), value], {}, node)
    if value in lx.builder.constants:  # a one-entry table: the same value everywhere
        raise Unsupported("looks up a table of one entry; use the number")
    return lx.new_act(value, ids.layout, ids.post)


@rule("aten.index.Tensor", ir="gather, compare, where", note="x[..., idx] with constant "
      "integer indices on feature axes: one index tensor, or broadcast ones that pick each "
      "axis independently (nearest upsampling, reflection padding); table[ids] of a constant "
      "1-D table by an activation (a bucketize's)")
def _index(lx, node, a):
    picks = list(a.get("indices") or [])
    table = lx.operand(a.get("self"))
    if not isinstance(table, Act) and len(picks) == 1 and isinstance(
            lx.env.get(picks[0]), Act) and table in lx.builder.constants:
        array = np.asarray(lx.builder.constants[table])
        if array.ndim != 1:
            raise Unsupported("looks up a table that is not one list of numbers")
        return _lookup(lx, node, array.astype(np.float32), lx.env[picks[0]])
    x = lx.act(a.get("self"))
    used = [i for i, p in enumerate(picks) if p is not None]
    if not used:
        return x
    arrays = [_indices(lx, picks[i], "indices") for i in used]
    if used != list(range(used[0], used[-1] + 1)):
        raise Unsupported("indexes axes that are not next to each other")
    shape = np.broadcast_shapes(*(t.shape for t in arrays))
    if len(arrays) == 1 and arrays[0].ndim == 1:
        return _gather(lx, node, x, x.layout.axis(used[0]), arrays[0])
    # Broadcast index tensors, one per axis, each varying along its own position only:
    # x[..., i[:, None], j] picks rows i, then columns j (an outer product of picks).
    if len(shape) != len(arrays):
        raise Unsupported("indexes with index tensors that do not pick each axis on its own")
    for k, t in enumerate(arrays):
        t = np.broadcast_to(t, shape)
        if not np.array_equal(t, np.broadcast_to(_along(t, k), shape)):
            raise Unsupported("indexes with index tensors that do not pick each axis on its own")
    for k, t in enumerate(arrays):
        x = _gather(lx, node, x, x.layout.axis(used[k]), _along(np.broadcast_to(t, shape), k))
    return x


def _along(t: np.ndarray, k: int) -> np.ndarray:
    """The values of t along its axis k (t constant along every other axis)."""
    index = [0] * t.ndim
    index[k] = slice(None)
    return t[tuple(index)].reshape([-1 if i == k else 1 for i in range(t.ndim)])


def _pads(x: Act, pad: list[int]) -> tuple[list[int], int]:
    """torch's pad list (last axis first, (left, right) pairs) as the IR's [begins, ends]
    over the last k axes of the step value. Only feature axes may be padded; a time axis
    padded by 0 is not in the step value, a batch axis padded by 0 is."""
    if len(pad) % 2:
        raise Unsupported(f"pads {pad}: an odd number of values")
    begins, ends = [], []
    for i in range(len(pad) // 2):
        axis = x.layout.rank - 1 - i
        left, right = pad[2 * i], pad[2 * i + 1]
        if left or right or x.layout.roles[axis] == axes.F:
            x.layout.step_axis(axis)  # only feature axes are padded
        if x.layout.roles[axis] != axes.T:
            begins.insert(0, left)
            ends.insert(0, right)
    return begins + ends, len(begins)


@rule("aten.constant_pad_nd.default", "aten.pad.default", ir="pad, gather",
      note="of feature axes: constant (zero) padding, reflect, replicate, circular")
def _pad(lx, node, a):
    x = lx.act(a.get("self") if "self" in a else a.get("input"))
    mode = str(a.get("mode", "constant"))
    pad = ints_arg(a, "pad")
    if any(p < 0 for p in pad):
        raise Unsupported(f"pads {pad}: negative padding crops; slice the tensor instead")
    pads, k = _pads(x, pad)
    if mode == "constant":
        value = a.get("value")
        value = 0.0 if value is None else float_arg(a, "value")
        if not any(pads):
            return x
        out, = lx.emit("pad", [x.value], {"pads": pads, "value": value}, node)
        return lx.new_act(out, x.layout, x.post)
    if mode not in ("reflect", "replicate", "circular"):
        raise Unsupported(f"pads in mode {mode!r}")
    shape = dims(node.args[0])
    for i in reversed(range(len(pad) // 2)):
        axis, left, right = x.layout.rank - 1 - i, pad[2 * i], pad[2 * i + 1]
        if not (left or right):
            continue
        size = shape[axis]
        positions = range(-left, size + right)
        if mode == "reflect":
            if max(left, right) >= size:
                raise Unsupported(f"reflect-pads {max(left, right)} on an axis of {size}")
            index = [abs(p) if p < size else 2 * (size - 1) - p for p in positions]
        elif mode == "replicate":
            index = [min(max(p, 0), size - 1) for p in positions]
        else:
            index = [p % size for p in positions]
        value, = lx.emit("gather", [x.value], {"axis": x.layout.step_axis(axis),
                                               "indices": index}, node)
        x = lx.new_act(value, x.layout, x.post)
    return x


@rule("aten.copy.default", ir="mul, add", note="x[...] = y made functional: y of x's shape, "
      "a constant fill, or constants per feature (a border's values)")
def _copy(lx, node, a):
    src = a.get("src")
    got = lx.env.get(src) if isinstance(src, torch.fx.Node) else src
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        return Marker("init", float(got))
    if isinstance(got, Marker) and got.kind == "init":
        return got
    if got is not None and got in lx.builder.constants:  # x[..., a:b] = 0.0: a fill
        array = np.asarray(lx.builder.constants[got])
        if array.size and np.all(array == array.reshape(-1)[0]):
            return Marker("init", float(array.reshape(-1)[0]))
        dest = lx.env.get(a.get("self"))
        if not isinstance(dest, Act):
            raise Unsupported("copies a constant tensor into something not an activation")
        # a constant per channel (a border's values): dest * 0 + constant, broadcast
        zero, = lx.emit("mul", [dest.value, lx.scalar(0.0)], {}, node)
        value, = lx.emit("add", [zero, _step_constant(lx, got, dest.layout)], {}, node)
        return lx.new_act(value, dest.layout, dest.post)
    y = lx.act(src, "source")
    if tuple(dims(src)) != tuple(dims(node)):
        raise Unsupported(f"copies a {list(dims(src))} tensor into a {list(dims(node))} one; "
                          "expand it to that shape first")
    return y


@rule("aten.fill.Scalar", "aten.zero.default", note="x.fill_(c), x.zero_(): a constant fill")
def _fill(lx, node, a):
    got = lx.env.get(node.args[0])
    if not isinstance(got, (Act, Marker)):
        raise Unsupported("fills a tensor that is not an activation")
    return Marker("init", float_arg(a, "value") if "value" in a else 0.0)


def _filled(lx, node, x: Act, fill: float) -> Act:
    """A constant of x's shape: x * 0 + fill (exact for finite x)."""
    zero, = lx.emit("mul", [x.value, lx.scalar(0.0)], {}, node)
    value, = lx.emit("add", [zero, lx.scalar(fill)], {}, node)
    return lx.new_act(value, x.layout, x.post)


def _unit_axis(lx, node, y: Act, axis: int) -> Act:
    """y with a size-1 feature axis inserted at torch axis `axis`."""
    layout = y.layout.insert(axis)
    shape = list(dims(node.args[1]))
    shape.insert(axis, 1)
    value, = lx.emit("reshape", [y.value], {"shape": list(layout.step_shape(shape, BATCH))},
                     node)
    return lx.new_act(value, layout, y.post)


@rule("aten.slice_scatter.default", "aten.select_scatter.default", ir="pad, split, concat",
      note="x[..., a:b] = y and x[..., i] = y on a feature axis (step 1)")
def _scatter(lx, node, a):
    base = lx.env.get(a.get("self"))
    if not isinstance(base, (Act, Marker)) or (isinstance(base, Marker) and base.kind != "init"):
        raise Unsupported("writes into a tensor that is not an activation or a constant fill")
    src = lx.env.get(a.get("src")) if isinstance(a.get("src"), torch.fx.Node) else None
    fill = src.payload if isinstance(src, Marker) and src.kind == "init" else None
    if fill is not None and isinstance(base, Marker):
        return Marker("init", fill) if fill == base.payload else _refuse_fills()
    layout = base.layout if isinstance(base, Act) else None
    y = None if fill is not None else lx.act(a.get("src"), "written value")
    axis, start, end = _written_range(a, node, (y or base).layout, op_name(node))
    size = dims(node)[axis]
    if y is not None and op_name(node) == "aten.select_scatter.default":
        y = _unit_axis(lx, node, y, axis)
    if y is not None and layout is not None and layout != y.layout:
        raise Unsupported(f"writes a value with axes {y.layout} into one with axes {layout}")
    step = (layout or y.layout).step_axis(axis)
    if (start, end) == (0, size):
        return y if y is not None else _filled(lx, node, base, fill)
    if isinstance(base, Marker):  # into a constant fill: a pad with that fill
        k = len(y.value.shape) - step
        pads = [start] + [0] * (k - 1) + [size - end] + [0] * (k - 1)
        value, = lx.emit("pad", [y.value], {"pads": pads, "value": float(base.payload)}, node)
        return lx.new_act(value, y.layout, y.post)
    sizes = [s for s in (start, end - start, size - end) if s]
    parts = list(lx.emit("split", [base.value], {"axis": step, "sizes": sizes}, node))
    middle = 1 if start else 0
    if y is None:  # x[..., a:b] = c
        y = _filled(lx, node, Act(parts[middle], base.layout, base.post), fill)
    parts[middle] = y.value
    value, = lx.emit("concat", parts, {"axis": step}, node)
    return lx.new_act(value, base.layout, base.post or y.post)


def _refuse_fills():
    raise Unsupported("writes one constant fill into another; compute the tensor in one piece")


def _written_range(a, node, layout, name: str) -> tuple[int, int, int]:
    """(axis, start, end) of x[..., start:end] or x[..., i] that a scatter writes."""
    shape = dims(node)
    if name == "aten.select_scatter.default":
        axis = int_arg(a, "dim") % len(shape)
        start = int_arg(a, "index") % shape[axis]
        return axis, start, start + 1
    axis = int_arg(a, "dim") % len(shape)
    size = shape[axis]
    start, end = a.get("start"), a.get("end")
    start = 0 if start is None else int_arg(a, "start")
    end = size if end is None or (isinstance(end, int) and end >= 1 << 31) else \
        int_arg(a, "end")
    start, end = (min(max(v + size if v < 0 else v, 0), size) for v in (start, end))
    if a.get("step", 1) != 1 or end <= start:
        raise Unsupported("writes a strided or empty slice")
    return axis, start, end


@rule("aten.einsum.default", ir="transpose, matmul", note="one operand permuted, or two in "
      "a batched matrix product (one letter summed, one kept from each side; shared letters "
      "in the output are batch axes)")
def _einsum(lx, node, a):
    equation = str(a.get("equation", "")).replace(" ", "")
    operands = list(a.get("tensors") or [])
    if "->" not in equation or "." in equation:
        raise Unsupported(f"einsum {equation!r}: write the output explicitly ('...->...'), "
                          "without '...'")
    lhs, out = equation.split("->")
    ins = lhs.split(",")
    if len(ins) != len(operands) or any(len(set(s)) != len(s) for s in ins + [out]):
        raise Unsupported(f"einsum {equation!r}: repeated letters (traces, diagonals)")
    acts = [lx.act(t) for t in operands]
    if len(ins) == 1 and sorted(ins[0]) == sorted(out):
        return _permuted(lx, node, acts[0], [ins[0].index(c) for c in out])
    if len(ins) != 2:
        raise Unsupported(f"einsum {equation!r}: only one or two operands")
    left, right = ins
    batch = [c for c in out if c in left and c in right]
    free_l = [c for c in left if c not in right]
    free_r = [c for c in right if c not in left]
    summed = [c for c in left if c in right and c not in out]
    if len(free_l) != 1 or len(free_r) != 1 or len(summed) != 1 or \
            sorted(batch + free_l + free_r) != sorted(out):
        raise Unsupported(f"einsum {equation!r}: not a batched matrix product with one summed "
                          "letter and one kept letter on each side")
    x = _permuted(lx, node, acts[0], [left.index(c) for c in batch + free_l + summed])
    y = _permuted(lx, node, acts[1], [right.index(c) for c in batch + summed + free_r])
    for v in (x, y):
        if v.layout.roles[-2:] != (axes.F, axes.F):
            raise Unsupported(f"einsum {equation!r}: a product over the time or batch axis")
    value, = lx.emit("matmul", [x.value, y.value], {}, node)
    product = lx.new_act(value, axes.broadcast([x.layout, y.layout]), post_of([x, y]))
    have = batch + free_l + free_r
    return _permuted(lx, node, product, [have.index(c) for c in out])
