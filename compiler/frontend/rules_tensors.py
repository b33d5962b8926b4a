"""Lifting rules for plumbing and data movement: getitem, identity and dropout, sizes of a
dynamic batch, slices, and the ops that move axes (transpose, permute, view/reshape,
flatten, unflatten, unsqueeze, squeeze, split/chunk).
"""

from __future__ import annotations

import torch

from snnc.frontend import axes, rules_time
from snnc.frontend.axes import T
from snnc.frontend.lifter import (ELEMENTWISE, NEURON_OPS, Act, Marker, Rules, Unsupported,
                                  axis_args, dims, int_arg, ints_arg, op_name, part, positive,
                                  reshaped)

RULES = Rules()
rule = RULES.rule


@rule("getitem", note="of a neuron's outputs, or of split/chunk parts")
def _getitem(lx, node, a):
    container, index = node.args
    got = lx.value_of(container) if isinstance(container, torch.fx.Node) else None
    if not isinstance(got, (tuple, list)) or not isinstance(index, int) or \
            not -len(got) <= index < len(got):
        raise Unsupported(f"takes item {index!r} of something that is not a list of tensors "
                          "that long")
    return got[index]


@rule("aten.clone.default", "aten.detach.default", "aten.contiguous.default")
def _identity(lx, node, a):
    return lx.value_of(node.args[0]) if isinstance(node.args[0], torch.fx.Node) else \
        lx.operand(node.args[0])


@rule("aten.dropout.default", note="eval mode: nothing")
def _dropout(lx, node, a):
    if a.get("train"):
        raise Unsupported("dropout in training mode; call model.eval() before export")
    return lx.operand(node.args[0])


@rule("aten.sym_size.int", "operator.mul", note="sizes of a dynamic batch and arithmetic on "
      "them (view arguments; views read their output shape)")
def _shape_value(lx, node, a):
    for arg in node.all_input_nodes:
        got = lx.env.get(arg)
        if op_name(node) != "aten.sym_size.int" and not (
                isinstance(got, Marker) and got.kind == "shape"):
            raise Unsupported("Python arithmetic on a tensor; use torch operations")
    return Marker("shape")


@rule("aten.slice.Tensor", ir="split, gather", note="x[..., a:b:k] on a feature axis; the "
      "whole of any axis")
def _slice(lx, node, a):
    x = lx.act(a.get("self"))
    axis = x.layout.axis(int_arg(a, "dim"))
    start, end, step = (a.get(k) for k in ("start", "end", "step"))
    whole_end = end is None or isinstance(end, int) and end >= 1 << 31
    if start in (None, 0) and whole_end and step in (None, 1):
        return x  # x[:, ...]: the whole axis, whatever it is
    size = dims(node.args[0])[axis]
    x.layout.step_axis(axis)  # only a feature axis can be cut
    start = 0 if start is None else int_arg(a, "start")
    end = size if whole_end else int_arg(a, "end")
    step = 1 if step is None else int_arg(a, "step")
    start, end = (min(max(v + size if v < 0 else v, 0), size) for v in (start, end))
    if step < 1 or end <= start:
        raise Unsupported(f"slices {start}:{end}:{step}; only non-empty slices of a feature "
                          "axis")
    if step != 1:
        value, = lx.emit("gather", [x.value], {"axis": x.layout.step_axis(axis),
                                               "indices": list(range(start, end, step))}, node)
        return lx.new_act(value, x.layout, x.post)
    if (start, end) == (0, size):
        return x
    return part(lx, node, x, axis, start, end, size)


def _permuted(lx, node, x: Act, order) -> Act:
    layout, perm = axes.permute(x.layout, order)
    value = x.value
    if perm != sorted(perm):
        value, = lx.emit("transpose", [value], {"perm": perm}, node)
    return lx.new_act(value, layout, x.post)


@rule("aten.transpose.int", ir="transpose", note="time may move; batch stays first")
def _transpose(lx, node, a):
    x = lx.act(a.get("self"))
    order = list(range(x.layout.rank))
    d0, d1 = x.layout.axis(int_arg(a, "dim0")), x.layout.axis(int_arg(a, "dim1"))
    order[d0], order[d1] = order[d1], order[d0]
    return _permuted(lx, node, x, order)


@rule("aten.permute.default", ir="transpose", note="time may move; batch stays first")
def _permute(lx, node, a):
    x = lx.act(a.get("self"))
    return _permuted(lx, node, x, ints_arg(a, "dims"))


@rule("aten.view.default", "aten.reshape.default", ir="reshape",
      note="time and batch stay leading as [T, B, ...] or [T*B, ...] (docs/ir.md)")
def _view(lx, node, a):
    rows = _time_rows_back(lx, node)
    if rows is not None:
        return rows
    x = lx.act(node.args[0])
    if len(dims(node)) == 2 and _mixed_over_time(node):
        rows = rules_time.time_rows(lx, node, x)
        if rows is not None:
            return rows
    try:
        layout = axes.reshape(x.layout, dims(node.args[0]), dims(node), lx.batch,
                              _want(lx, node))
    except (Unsupported, axes.AxisError):
        rows = rules_time.time_rows(lx, node, x) if len(dims(node)) == 2 else None
        if rows is not None:  # x_seq.view(T, -1): a matrix over time (a PSN's)
            return rows
        if not x.post:
            raise
        layout = axes.reshape_whole(x.layout, dims(node.args[0]), dims(node))
    return reshaped(lx, node, x, layout)


def _mixed_over_time(node, depth: int = 6) -> bool:
    """The view is the right operand of a matrix product (mm, addmm), through elementwise
    ops: x_seq.view(T, -1) of a mix over time, not [T*B, F] (which a batch-1 export also
    allows)."""
    for user in node.users:
        name = op_name(user)
        if name in ("aten.mm.default", "aten.addmm.default") and user.args[-1] is node:
            return True
        if name in ELEMENTWISE and name != "aten.linear.default" and depth > 0 and \
                _mixed_over_time(user, depth - 1):
            return True
    return False


def _time_rows_back(lx, node):
    """h.view(x_seq.shape) of a matrix product over time (rules_time._mm): the activation."""
    got = lx.env.get(node.args[0])
    if not (isinstance(got, Marker) and got.kind == "time_rows"):
        return None
    x, shape, _ = got.payload
    if list(dims(node)) != list(shape):
        raise Unsupported(f"reshapes a [T, B*...] matrix to {list(dims(node))}; snnc lifts "
                          f"only viewing it back as {list(shape)}")
    return x


def _want(lx, node, depth: int = 6) -> str | None:
    """How the ops reading a view's result need its time and batch: "split" ([T, B, ...]:
    a neuron, flatten(0, 1), a returned sequence) or "merged" ([T*B, ...]: convolution,
    batch norm, pooling, unflatten(0)); an elementwise op wants its other operand's form,
    and is looked through. Decides between the readings a batch-1 export leaves open
    (axes.reshape)."""
    for user in node.users:
        name = op_name(user)
        if name in ("aten.mean.dim", "aten.sum.dim_IntList", "aten.select.int",
                    "aten.unbind.int") and 0 in axis_args(user):
            return "split"  # over time (x.mean(0), x[t])
        for other in user.all_input_nodes if name in ELEMENTWISE else ():
            got = lx.env.get(other)
            if other is not node and isinstance(got, Act) and got.layout.time_axis == 0:
                return "split" if got.layout.roles[0] == T else "merged"
        if name in NEURON_OPS or user.op == "output" or (
                name == "aten.flatten.using_ints" and user.args[1:3] == (0, 1)):
            return "split"
        if name.startswith(("aten.conv", "aten.batch_norm", "aten.max_pool", "aten.avg_pool",
                            "aten.adaptive_avg_pool")) or (
                name == "aten.unflatten.int" and axis_args(user)[:1] == [0]):
            return "merged"
        if name in ELEMENTWISE and depth > 0:
            found = _want(lx, user, depth - 1)
            if found:
                return found
    return None


@rule("aten.flatten.using_ints", ir="reshape", note="flatten(0, 1) merges time and batch")
def _flatten(lx, node, a):
    x = lx.act(a.get("self"))
    try:
        layout = axes.flatten(x.layout, int_arg(a, "start_dim"), int_arg(a, "end_dim"))
    except (Unsupported, axes.AxisError):
        rows = rules_time.time_rows(lx, node, x) if int_arg(a, "start_dim") == 1 and \
            int_arg(a, "end_dim") in (-1, x.layout.rank - 1) else None
        if rows is None:  # x_seq.flatten(1): a matrix over time (a PSN's)
            raise
        return rows
    return reshaped(lx, node, x, layout)


@rule("aten.unflatten.int", ir="reshape", note="[T*B, ...] -> [T, B, ...], or features")
def _unflatten(lx, node, a):
    x = lx.act(a.get("self"))
    given = a.get("sizes")
    if not isinstance(given, (list, tuple)):
        raise Unsupported(f"its sizes argument {given!r} is not a list")
    sizes = [_dim_arg(s) for s in given]
    return reshaped(lx, node, x, axes.unflatten(x.layout, int_arg(a, "dim"), sizes, lx.steps,
                                                lx.batch))


def _dim_arg(size):
    return size if isinstance(size, int) else None  # a dynamic size: the batch


@rule("aten.unsqueeze.default", ir="reshape", note="unsqueeze(0) of [B, ...] adds a unit "
      "time axis")
def _unsqueeze(lx, node, a):
    x = lx.act(a.get("self"))
    axis = int_arg(a, "dim") % (x.layout.rank + 1)
    opens_time = (axis == 0 and x.layout.time_axis is None and not x.post
                  and x.layout.roles[0] == axes.B)
    return reshaped(lx, node, x, x.layout.insert(axis, T if opens_time else axes.F))


@rule("aten.squeeze.dim", "aten.squeeze.dims", ir="reshape", note="of size-1 feature or "
      "unit time axes")
def _squeeze(lx, node, a):
    x = lx.act(a.get("self"))
    shape = dims(node.args[0])
    picked = ints_arg(a, "dim") if "dim" in a else []
    layout = x.layout
    for axis in sorted({x.layout.axis(d) for d in picked}, reverse=True):
        if shape[axis] != 1:
            continue
        if layout.roles[axis] in (axes.B, axes.TB):
            raise Unsupported("squeezes the batch axis (an export at batch 1?); squeeze only "
                              "feature axes")
        layout = layout.drop(axis)
    return reshaped(lx, node, x, layout)


@rule("aten.chunk.default", "aten.split.Tensor", "aten.split_with_sizes.default", ir="split",
      note="along a feature axis")
def _split(lx, node, a):
    x = lx.act(a.get("self"))
    axis = x.layout.axis(int_arg(a, "dim"))
    step = x.layout.step_axis(axis)
    size = x.value.shape[step]
    name = op_name(node)
    if name == "aten.chunk.default":
        each = -(-size // positive([int_arg(a, "chunks")], "chunks")[0])
    elif name == "aten.split.Tensor":
        each = positive([int_arg(a, "split_size")], "split size")[0]
    if name == "aten.split_with_sizes.default":
        sizes = ints_arg(a, "split_sizes")
    else:
        sizes = [min(each, size - i) for i in range(0, size, each)]
    if sum(sizes) != size or min(sizes) < 1:
        raise Unsupported(f"splits {size} into {sizes}")
    outs = lx.emit("split", [x.value], {"axis": step, "sizes": sizes}, node)
    return [lx.new_act(v, x.layout, x.post) for v in outs]
