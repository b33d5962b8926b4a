"""Lifting rules for time: a static input repeated over time, timestep and per-step-loop
indexing (x[t], for x in seq, stacking a loop's steps), and reductions (over features, or
over time with x.mean(0)).
"""

from __future__ import annotations

import numpy as np
import torch

from snnc.frontend import axes
from snnc.frontend.axes import T
from snnc.frontend.lifter import (BATCH_LEAK, NEURON_OPS, Act, Marker, Rules, Unsupported,
                                  dims, int_arg, ints_arg, op_name, part, post_of,
                                  reduced_features, reshaped)
from snnc.ir.graph import BATCH

RULES = Rules()
rule = RULES.rule


@rule("aten.repeat.default", "aten.expand.default", ir="gather", note="x.unsqueeze(0).repeat("
      "T, 1, ...), x.repeat(T, 1, ...) or .expand(T, ...): a static input fed every step; "
      "feature axes expanded or repeated")
def _repeat(lx, node, a):
    x = lx.act(node.args[0])
    expand = "size" in a
    sizes = ints_arg(a, "size" if expand else "repeats")
    shape = dims(node.args[0])
    if not sizes or not shape:
        raise Unsupported(f"repeats a tensor of shape {list(shape)} to {sizes}")
    added = len(sizes) == x.layout.rank + 1  # onto a new first axis
    unit = x.layout.roles[0] == T and shape[0] == 1  # onto x.unsqueeze(0)'s unit time
    kept = all(s in (-1, d) if expand else s == 1
               for s, d in zip(sizes[1:], shape if added else shape[1:]))
    if len(sizes) == len(shape) and not (unit and sizes[0] == lx.steps and kept):
        return _tile_features(lx, node, x, sizes, shape, expand)
    if lx.explicit or x.post or not (added and x.layout.time_axis is None or unit) or \
            sizes[0] != lx.steps or not kept:
        raise Unsupported(f"repeats to {sizes}; snnc lifts only repeating a static input over "
                          f"time: x.unsqueeze(0).repeat(T={lx.steps}, 1, ...), and expanding "
                          "or repeating feature axes")
    return lx.new_act(x.value, x.layout.insert(0, T) if added else x.layout, x.post)


def _tile_features(lx, node, x: Act, sizes: list[int], shape, expand: bool) -> Act:
    """x.expand(...) of size-1 feature axes, or x.repeat(...) of feature axes: a gather
    per axis; time and batch axes are kept."""
    for axis, (s, d) in enumerate(zip(sizes, shape)):
        if (s in (-1, d)) if expand else s == 1:
            continue
        if x.layout.roles[axis] != axes.F or (expand and d != 1) or s < 1:
            raise Unsupported(f"{'expands' if expand else 'repeats'} {list(shape)} to {sizes}: "
                              "only feature axes can grow (size-1 axes, for expand)")
        indices = [0] * s if expand else list(range(d)) * s
        value, = lx.emit("gather", [x.value], {"axis": x.layout.step_axis(axis),
                                               "indices": indices}, node)
        x = lx.new_act(value, x.layout, x.post)
    return x


@rule("aten.select.int", ir="split, reshape, time_reduce", note="x[0] of time for a neuron's "
      "initial membrane; x_seq[t] of a per-step loop stacked over time (MultiStepContainer); "
      "x_seq[-1], the last step (once); x[t] of a single-step loop; x[..., i] on a feature "
      "axis")
def _select(lx, node, a):
    x = lx.act(a.get("self"))
    axis = x.layout.axis(int_arg(a, "dim"))
    size = dims(node.args[0])[axis]
    index = int_arg(a, "index") % size
    role = x.layout.roles[axis]
    if role == axes.TB and axis == 0 and index == 0 and not lx.explicit and _starts_neuron(node):
        raise Unsupported(BATCH_LEAK)  # full_like(x[0]): a neuron's membrane, x is [T*B, ...]
    if role == T:
        if size == 1:
            return lx.new_act(x.value, x.layout.drop(axis), x.post)
        loop = _per_step_loop(node)
        if loop is not None and axis == 0 and not x.post:  # x_seq[t] of a per-step loop
            lx.loops.setdefault(loop[0], {})[index] = (node, loop[1])
            return lx.new_act(x.value, x.layout.drop(axis), x.post)
        if index == 0:
            return Marker("first_step", x)
        if index == size - 1 and not x.post:  # x_seq[-1]: the last step's value, once
            return Marker("time_reduce", (x, "last"))
        raise Unsupported(f"reads timestep {index} of a multi-step tensor outside a per-step "
                          "loop that stacks every step; a multi-step model is compiled whole: "
                          "return [T, B, ...] or reduce over time, wrap stateless layers in "
                          "layer.SeqToANNContainer, or write the loop with step_mode='s'")
    return reshaped(lx, node, part(lx, node, x, axis, index, index + 1, size),
                    x.layout.drop(axis))


def _starts_neuron(node) -> bool:
    """x[0] that only fills a neuron's initial membrane (full_like(x[0], v) -> neuron)."""
    fills = [u for u in node.users if op_name(u) in ("aten.full_like.default",
                                                     "aten.zeros_like.default")]
    return bool(fills) and all(op_name(v) in NEURON_OPS for f in fills for v in f.users)


def _per_step_loop(node) -> tuple | None:
    """(the stack, the nodes computed from x_seq[t]) when everything computed from the
    select `node` flows only into one stack over dim 0 with no neuron on the way: a
    per-step loop over stateless layers (layer.MultiStepContainer)."""
    seen, found, todo = set(), None, list(node.users)
    while todo:
        user = todo.pop()
        if user in seen:
            continue
        seen.add(user)
        if op_name(user) == "aten.stack.default" and (list(user.args[1:2]) or [0])[0] == 0:
            if found not in (None, user):
                return None
            found = user
        elif user.op == "output" or op_name(user) in NEURON_OPS:
            return None
        else:
            todo.extend(user.users)
    return (found, seen) if found is not None else None


def _loop_steps(lx, node, parts: list[Act]) -> Act | None:
    """stack([f(x_seq[0]), ..., f(x_seq[T-1])]): T-axis values, when part t is computed from
    x_seq[t] alone (no other activation) and every part by the same IR computation, so the
    one-step body's copy computes f(x_t) at step t."""
    loop = lx.loops.get(node)
    if loop is None:
        return None
    given = list(node.args[0])
    if sorted(loop) != list(range(lx.steps)) or len(given) != lx.steps or any(
            not _reads_only(lx, given[t], *loop[t]) for t in range(lx.steps)):
        raise Unsupported("stacks a per-step loop whose step t does not read exactly x_seq[t]; "
                          "use layer.SeqToANNContainer for stateless layers")
    producers = {out: n for n in lx.builder.nodes for out in n.outputs}
    if any(not _same_computation(parts[0].value, p.value, producers) for p in parts[1:]):
        raise Unsupported("stacks a per-step loop whose steps compute different things")
    return lx.new_act(parts[0].value, parts[0].layout.insert(0, T), parts[0].post)


def _reads_only(lx, part, select, derived: set) -> bool:
    """Whether the fx node `part` reads no activation but those computed from `select`."""
    todo, seen = [part], set()
    while todo:
        n = todo.pop()
        if n in seen or n is select:
            continue
        seen.add(n)
        if n is not part and n not in derived and isinstance(lx.env.get(n), Act):
            return False
        if n is part or n in derived:
            todo.extend(n.all_input_nodes)
    return part is select or part in derived


def _same_computation(a, b, producers: dict) -> bool:
    if a is b:
        return True
    pa, pb = producers.get(a), producers.get(b)
    return (pa is not None and pb is not None and pa.op == pb.op and dict(pa.attrs) == dict(pb.attrs)
            and len(pa.inputs) == len(pb.inputs) and pa.outputs.index(a) == pb.outputs.index(b)
            and all(_same_computation(x, y, producers) for x, y in zip(pa.inputs, pb.inputs)))


@rule("aten.mean.dim", "aten.sum.dim_IntList", ir="reduce_mean, reduce_sum, time_reduce",
      note="over feature axes; over time (x.mean(0)) as the output or before a head")
def _reduce(lx, node, a):
    x = lx.act(a.get("self"))
    mode = "mean" if op_name(node).startswith("aten.mean") else "sum"
    given = a.get("dim")
    if not given:
        raise Unsupported("reduces over every axis, batch included; name the feature axes")
    picked = sorted({x.layout.axis(d) for d in ints_arg(a, "dim")})
    keep = bool(a.get("keepdim"))
    t = x.layout.time_axis
    if t in picked:
        if picked != [t] or x.layout.roles[t] != T or keep:
            raise Unsupported(f"reduces axes {picked} of a tensor with axes {x.layout}; reduce "
                              "over time alone, without keepdim (x.mean(0))")
        if dims(node.args[0])[t] == 1:
            return lx.new_act(x.value, x.layout.drop(t), x.post)
        return Marker("time_reduce", (x, mode))
    return reduced_features(lx, node, x, picked, keep, mode)


@rule("aten.max.dim", "aten.min.dim", ir="time_reduce, reduce_max, reduce_min",
      note="max(x_seq, 0) / min(x_seq, 0) over time (a non-spiking readout's decoding): the "
      "values, once; over a feature axis: the values")
def _extreme(lx, node, a):
    x = lx.act(a.get("self"))
    mode = "max" if op_name(node).startswith("aten.max") else "min"
    axis = x.layout.axis(int_arg(a, "dim"))
    keep = bool(a.get("keepdim"))
    if x.layout.roles[axis] == T and not x.post and not keep:
        if dims(node.args[0])[axis] == 1:
            return (lx.new_act(x.value, x.layout.drop(axis)), Marker("indices"))
        return (Marker("time_reduce", (x, mode)), Marker("indices"))
    return reduced_features(lx, node, x, [axis], keep, mode), Marker("indices")


@rule("aten.unbind.int", ir="split, reshape", note="for x in seq: a single-step loop over "
      "a sequence, or feature axes")
def _unbind(lx, node, a):
    x = lx.act(a.get("self"))
    axis = x.layout.axis(int_arg(a, "dim"))
    if x.layout.roles[axis] == T and dims(node.args[0])[axis] == 1:  # a unit time axis
        return [lx.new_act(x.value, x.layout.drop(axis), x.post)]  # (OTTT's one-step loop)
    if x.layout.roles[axis] == T:
        raise Unsupported("iterates over the time axis of a multi-step tensor; a multi-step "
                          "model is compiled whole (use SeqToANNContainer for stateless layers)")
    size = dims(node.args[0])[axis]
    step = x.layout.step_axis(axis)
    parts = lx.emit("split", [x.value], {"axis": step, "sizes": [1] * size}, node) \
        if size > 1 else [x.value]
    layout = x.layout.drop(axis)
    shape = list(layout.step_shape(dims(node.args[0])[:axis] + dims(node.args[0])[axis + 1:],
                                   BATCH))
    return [lx.new_act(lx.emit("reshape", [p], {"shape": shape}, node)[0], layout, x.post)
            for p in parts]


def _stacked_over_time(lx, parts: list[Act], axis: int) -> Act | None:
    """torch.stack([x] * T): the same value every step, as x.unsqueeze(0).repeat(T)."""
    x = parts[0]
    if (axis == 0 and len(parts) == lx.steps > 1 and all(p is x for p in parts)
            and x.layout.time_axis is None and not x.post and x.layout.roles[0] == axes.B):
        return lx.new_act(x.value, x.layout.insert(0, T))
    return None


@rule("aten.stack.default", "aten.cat.default", ir="reshape, concat",
      note="equal parts along a feature axis (stacking a single-step loop's outputs); a "
      "per-step loop's steps over time")
def _join(lx, node, a):
    given = a.get("tensors")
    if not isinstance(given, (list, tuple)):
        raise Unsupported(f"its tensors argument {given!r} is not a list")
    parts = [lx.act(p) for p in given]
    if not parts or any(p.layout != parts[0].layout or p.value.shape != parts[0].value.shape
                        for p in parts):
        raise Unsupported("joins tensors of different shapes or axes; snnc joins equal parts")
    first = parts[0].layout
    stack = op_name(node) == "aten.stack.default"
    axis = int_arg(a, "dim") % (first.rank + stack)
    repeated = _stacked_over_time(lx, parts, axis) if stack else None
    if repeated is None and stack and axis == 0:
        repeated = _loop_steps(lx, node, parts)
    if repeated is None and stack and axis == 0 and len(parts) == 1 == lx.steps and \
            not lx.explicit and first.time_axis is None and not parts[0].post:
        # T = 1: a one-step loop's [spike] stacked is [T, B, ...] with a unit time axis
        repeated = lx.new_act(parts[0].value, first.insert(0, T))
    if repeated is not None:
        return repeated
    layout = first.insert(axis, axes.F) if stack else first
    step = layout.step_axis(axis)
    values = [p.value for p in parts]
    if stack:
        shape = list(parts[0].value.shape)
        shape.insert(step, 1)
        values = [lx.emit("reshape", [v], {"shape": shape}, node)[0] for v in values]
    value, = lx.emit("concat", values, {"axis": step}, node)
    return lx.new_act(value, layout, post_of(parts))


# -- a learned mix over time steps (the parallel spiking neurons, PSN) ------------------------

def time_rows(lx, node, x: Act):
    """x_seq.flatten(1) or x_seq.view(T, -1) of a [T, B, ...] activation: a [T, B*...]
    matrix whose rows are the steps, which only a matrix product over time may read
    (`_mm`); `h.view(x_seq.shape)` turns its result back into an activation."""
    shape = dims(node.args[0])
    if x.post or x.layout.roles[:2] != (T, axes.B) or shape[0] != lx.steps:
        return None
    return Marker("time_rows", (x, shape, node.args[0].meta["val"]))


def _time_mix_bias(array, steps: int):
    """addmm's bias as one value per step: [T, 1], [1, 1], [1] or a scalar."""
    if array.ndim == 2 and array.shape[1] == 1 and array.shape[0] in (1, steps):
        return np.broadcast_to(array[:, 0], (steps,)).astype(np.float32)
    if array.size == 1:
        return np.full(steps, array.reshape(()), np.float32)
    raise Unsupported(f"adds a bias of shape {list(array.shape)} to a mix over time; snnc "
                      f"lifts one bias per step ([T, 1] with T={steps}) or a scalar")


@rule("aten.addmm.default", "aten.mm.default", ir="time_mix, linear",
      note="w @ x_seq.flatten(1) (+ b), w [T, T]: a learned mix over time (PSN); "
      "x @ w (+ b) with a constant w: linear")
def _mm(lx, node, a):
    left, right = a.get("mat1", a.get("self")), a["mat2"]
    bias = lx.const(a["self"]) if "mat1" in a else None
    if a.get("beta", 1) != 1 or a.get("alpha", 1) != 1:
        raise Unsupported("scales its operands (beta or alpha other than 1)")
    bias = None if bias is None else np.asarray(lx.builder.constants[bias], np.float32)
    rows = lx.env.get(right) if isinstance(right, torch.fx.Node) else None
    if isinstance(rows, Marker) and rows.kind == "time_rows":
        x, shape, like = rows.payload
        w = np.asarray(lx.builder.constants[lx.const(left)], np.float32)
        if w.shape != (lx.steps, lx.steps):
            raise Unsupported(f"mixes the {lx.steps} timesteps with a {list(w.shape)} weight; "
                              f"a mix over time needs [T, T] = [{lx.steps}, {lx.steps}]")
        b = np.zeros(lx.steps, np.float32) if bias is None else _time_mix_bias(bias, lx.steps)
        value, = lx.emit("time_mix", [x.value, lx.constant(w, f"{node.name}.weight"),
                                      lx.constant(b, f"{node.name}.bias")], {}, node)
        return Marker("time_rows", (lx.new_act(value, x.layout), shape, like))
    x, w = lx.act(left), np.asarray(lx.builder.constants[lx.const(right)], np.float32)
    if bias is not None and bias.size not in (1, w.shape[1]):
        raise Unsupported(f"adds a bias of shape {list(bias.shape)} to {w.shape[1]} outputs")
    ins = [x.value, lx.constant(np.ascontiguousarray(w.T), f"{node.name}.weight")]
    if bias is not None:
        ins.append(lx.constant(np.broadcast_to(bias.reshape(-1), (w.shape[1],)).copy(),
                               f"{node.name}.bias"))
    value, = lx.emit("linear", ins, {}, node)
    return lx.new_act(value, x.layout, x.post)
