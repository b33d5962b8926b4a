"""The frontend's lifting rules: one small function per aten op (or family), in `RULES`.

A rule gets the `Lifter`, the fx node and its arguments by schema name, and returns what
the node is in the lift: an `Act` (IR value + axis layout), a constant `Value`, a list of
them, or a `Marker`. It raises `Unsupported` saying what to change. The supported-op list,
the unsupported-op message and the table in docs/ops.md all come from this table
(`ops_table()`; runtime_tests/test_rules.py checks the doc against it).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from snnc.frontend import axes
from snnc.frontend.axes import Layout, T
from snnc.frontend.lifter import (ELEMENTWISE, NEURON_OPS, QUANT_OP, Act, Lifter, Marker,
                                  Unsupported, axis_args, bind, dims, op_name, source_of)
from snnc.ir.graph import BATCH, State, Value
from snnc.ir.ops import OPS, ShapeError
from snnc.quant import quantize


@dataclass(frozen=True)
class Rule:
    fn: Callable
    ir: str  # the IR ops it makes, for docs/ops.md
    note: str


RULES: dict[str, Rule] = {}


def rule(*names: str, ir: str = "", note: str = ""):
    def register(fn):
        for name in names:
            RULES[name] = Rule(fn, ir, note)
        return fn
    return register


def apply(lx: Lifter, node):
    found = RULES.get(op_name(node))
    if found is None:
        raise Unsupported(_no_rule_text(op_name(node)))
    try:
        return found.fn(lx, node, bind(node))
    except ShapeError as error:  # the IR op's type check refused the operands
        raise Unsupported(f"its operands do not fit together ({error})") from None


# What to write instead, for ops users reach for that snnc has no rule for.
SUGGEST = {
    "aten.softmax.int": "spiking self-attention has no softmax (Spikformer's SSA: q k^T v "
                        "times a scale); drop it",
    "aten.gelu.default": "use a spiking neuron (or relu) as the nonlinearity",
    "aten.sigmoid.default": "use a spiking neuron as the nonlinearity",
    "aten.tanh.default": "use a spiking neuron as the nonlinearity",
    "aten.layer_norm.default": "use BatchNorm (folded into the layer before it)",
    "aten.group_norm.default": "use BatchNorm (folded into the layer before it)",
    "aten.sum.default": "sum over named feature axes: x.sum(dim=...)",
    "aten.mean.default": "average over named feature axes: x.mean(dim=...)",
    "aten.adaptive_max_pool2d.default": "use MaxPool2d with an explicit kernel",
    "aten.max_pool2d_with_indices.default": "use MaxPool2d without return_indices",
    "aten.conv_transpose2d.input": "use Conv2d (a transposed conv has no snnc lowering)",
    "aten.bmm.default": "use torch.matmul (x @ y)",
    "aten.einsum.default": "write the product with matmul / transpose",
    "aten.index.Tensor": "index with slicing on feature axes (x[..., i]) or split/chunk",
    "aten.constant_pad_nd.default": "pad inside the convolution (Conv2d(padding=...))",
    "aten.pad.default": "pad inside the convolution (Conv2d(padding=...))",
}


def _no_rule_text(name: str) -> str:
    """What to write instead: a known alternative, else the nearest supported op by name
    (conv3d -> conv2d, max_pool1d -> max_pool2d), else the list in docs/ops.md."""
    if name in SUGGEST:
        return f"has no snnc lowering; {SUGGEST[name]}"
    base = lambda op: op.split(".")[1] if op.count(".") >= 1 else op  # aten.conv3d.x: conv3d
    known = {base(n): n for n in RULES if n.startswith("aten.")}
    near = difflib.get_close_matches(base(name), list(known), 1, 0.75)
    if near:
        op = known[near[0]]
        return (f"has no snnc lowering; the closest supported op is {op}"
                + (f" ({RULES[op].note})" if RULES[op].note else ""))
    return ("has no snnc lowering (docs/ops.md lists what snnc compiles; write it with those "
            "operations)")


def no_rule(node) -> str:
    return f"{op_name(node)}: {_no_rule_text(op_name(node))}"


# -- argument readers: a malformed argument is an unsupported use, never a crash ---------

def _int(a: dict, name: str) -> int:
    value = a.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Unsupported(f"its {name} argument {value!r} is not an integer")
    return value


def _ints(a: dict, name: str, n: int | None = None) -> list[int]:
    value = a.get(name)
    values = [value] if isinstance(value, int) else value
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise Unsupported(f"its {name} argument {value!r} is not a list of integers")
    values = list(values)
    if n is not None and len(values) == 1:
        values = values * n
    if n is not None and len(values) != n:
        raise Unsupported(f"its {name} argument {value!r} does not have {n} values")
    return values


def _float(a: dict, name: str) -> float:
    value = a.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unsupported(f"its {name} argument is {type(value).__name__}, not a number")
    return float(value)


def _positive(values: list[int], name: str) -> list[int]:
    if any(v < 1 for v in values):
        raise Unsupported(f"its {name} {values} has a value below 1")
    return values


# -- the values a rule returns -----------------------------------------------------------

def _reshaped(lx: Lifter, node, x: Act, layout: Layout) -> Act:
    """x with a new layout and the torch shape of `node`: a reshape if the step value's
    shape changes."""
    shape = layout.step_shape(dims(node), BATCH)
    value = x.value
    if tuple(shape) != tuple(value.shape):
        value, = lx.emit("reshape", [value], {"shape": list(shape)}, node)
    return lx.new_act(value, layout, x.post)


def _image(x: Act, rank: tuple[int, ...], what: str) -> None:
    roles = x.layout.roles
    if x.layout.rank not in rank or roles[0] not in (axes.B, axes.TB) or any(
            r != axes.F for r in roles[1:]):
        want = " or ".join(f"{k}-D" for k in rank)
        raise Unsupported(f"{what} expects a {want} [B or T*B, C, ...] tensor, got axes "
                          f"{x.layout}; flatten time into the batch first (x.flatten(0, 1), "
                          "or SeqToANNContainer)")


# -- plumbing ----------------------------------------------------------------------------

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


# -- time --------------------------------------------------------------------------------

@rule(*NEURON_OPS, ir="neuron", note="IFNode, LIFNode, ParametricLIFNode: see Neurons")
def _neuron(lx, node, a):
    x = lx.act(a.get("x"), "neuron input")
    size = dims(node.args[0])[0]
    want = 1 if lx.explicit else lx.steps
    if x.post or x.layout.roles[0] != T or size != want:
        raise Unsupported(f"neuron input has axes {x.layout} and {size} steps; it must be "
                          f"[T={want}, B, ...] (step_mode='m'), or one step of a "
                          "step_mode='s' loop")
    attrs = _neuron_attrs(lx, node, a)
    init = lx.env.get(a.get("v"))
    module = source_of(node).layer
    fill = isinstance(init, Marker) and init.kind == "init"
    if not (fill or (lx.explicit and isinstance(init, Act))):
        raise Unsupported("starts from a membrane potential that is not a constant fill; "
                          "reset the network (functional.reset_net) before export")
    if lx.explicit:  # one call per step: the membrane is a value
        v = lx.scalar(init.payload) if fill else init.value
        spike, v_next = lx.emit("neuron", [x.value, v], attrs, node)
        return (lx.new_act(spike, x.layout), lx.new_act(v_next, x.layout.drop(0)),
                Marker("none"))
    read = Value("f32", x.value.shape, f"{module}.v")
    spike, v_next = lx.emit("neuron", [x.value, read], attrs, node)
    taken = {s.name for s in lx.builder.states}
    name = module if module not in taken else f"{module}#{len(taken)}"
    lx.builder.states.append(State(read, v_next, init.payload, name))
    return (lx.new_act(spike, x.layout), Marker("membrane"), Marker("none"))


def _neuron_attrs(lx, node, a) -> dict:
    reset = a.get("reset")
    attrs = {"leak": "none", "leak_value": 1.0, "decay_input": True,
             "threshold": _float(a, "threshold"),
             "v_reset": None if reset is None else _float(a, "reset")}
    name = op_name(node)
    if name.startswith("sj_lif"):
        attrs.update(leak="div", leak_value=_float(a, "tau"), decay_input=bool(a["decay_input"]))
    elif name.startswith("sj_plif"):
        w = lx.env.get(a.get("w"))
        if not (hasattr(w, "shape") and w.shape == () and w in lx.builder.constants):
            raise Unsupported("parametric LIF with a non-scalar or non-constant w")
        q = torch.from_numpy(np.asarray(lx.builder.constants[w])).float().sigmoid().item()
        attrs.update(leak="mul", leak_value=float(q), decay_input=bool(a["decay_input"]))
    return attrs


@rule("aten.full_like.default", "aten.zeros_like.default", note="a neuron's initial "
      "membrane, or a constant in arithmetic (a recurrent state's start)")
def _fill(lx, node, a):
    fill = _float(a, "fill_value") if "fill_value" in a else 0.0
    got = lx.env.get(node.args[0])
    if isinstance(got, Act) or (isinstance(got, Marker) and got.kind == "first_step"):
        return Marker("init", fill)
    raise Unsupported("fills a tensor that is not an activation")


@rule("aten.repeat.default", "aten.expand.default", note="x.unsqueeze(0).repeat(T, 1, ...), "
      "x.repeat(T, 1, ...) or .expand(T, ...): a static input fed every step")
def _repeat(lx, node, a):
    x = lx.act(node.args[0])
    expand = "size" in a
    sizes = _ints(a, "size" if expand else "repeats")
    shape = dims(node.args[0])
    if not sizes or not shape:
        raise Unsupported(f"repeats a tensor of shape {list(shape)} to {sizes}")
    added = len(sizes) == x.layout.rank + 1  # onto a new first axis
    unit = x.layout.roles[0] == T and shape[0] == 1  # onto x.unsqueeze(0)'s unit time
    kept = all(s in (-1, d) if expand else s == 1
               for s, d in zip(sizes[1:], shape if added else shape[1:]))
    if lx.explicit or x.post or not (added and x.layout.time_axis is None or unit) or \
            sizes[0] != lx.steps or not kept:
        raise Unsupported(f"repeats to {sizes}; snnc lifts only repeating a static input over "
                          f"time: x.unsqueeze(0).repeat(T={lx.steps}, 1, ...)")
    return lx.new_act(x.value, x.layout.insert(0, T) if added else x.layout, x.post)


@rule("aten.select.int", ir="split, reshape", note="x[0] of time for a neuron's initial "
      "membrane; x_seq[t] of a per-step loop stacked over time (MultiStepContainer); x[t] of "
      "a single-step loop; x[..., i] on a feature axis")
def _select(lx, node, a):
    x = lx.act(a.get("self"))
    axis = x.layout.axis(_int(a, "dim"))
    size = dims(node.args[0])[axis]
    index = _int(a, "index") % size
    role = x.layout.roles[axis]
    if role == T:
        if size == 1:
            return lx.new_act(x.value, x.layout.drop(axis), x.post)
        loop = _per_step_loop(node)
        if loop is not None and axis == 0 and not x.post:  # x_seq[t] of a per-step loop
            lx.loops.setdefault(loop[0], {})[index] = (node, loop[1])
            return lx.new_act(x.value, x.layout.drop(axis), x.post)
        if index == 0:
            return Marker("first_step", x)
        raise Unsupported(f"reads timestep {index} of a multi-step tensor outside a per-step "
                          "loop that stacks every step; a multi-step model is compiled whole: "
                          "return [T, B, ...] or reduce over time, wrap stateless layers in "
                          "layer.SeqToANNContainer, or write the loop with step_mode='s'")
    return _reshaped(lx, node, _part(lx, node, x, axis, index, index + 1, size),
                     x.layout.drop(axis))


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


def _part(lx, node, x: Act, axis: int, start: int, end: int, size: int) -> Act:
    """x[..., start:end] along feature axis `axis` (of `size`): a split, its middle part."""
    step = x.layout.step_axis(axis)
    if (start, end) == (0, size):
        return x
    sizes = [s for s in (start, end - start, size - end) if s]
    outs = lx.emit("split", [x.value], {"axis": step, "sizes": sizes}, node)
    return lx.new_act(outs[1 if start else 0], x.layout, x.post)


@rule("aten.slice.Tensor", ir="split", note="x[..., a:b] on a feature axis (step 1); the "
      "whole of any axis")
def _slice(lx, node, a):
    x = lx.act(a.get("self"))
    axis = x.layout.axis(_int(a, "dim"))
    start, end = (a.get(k) for k in ("start", "end"))
    if start in (None, 0) and (end is None or isinstance(end, int) and end >= 1 << 31):
        return x  # x[:, ...]: the whole axis, whatever it is
    size = dims(node.args[0])[axis]
    x.layout.step_axis(axis)  # only a feature axis can be cut
    start = 0 if start is None else _int(a, "start")
    end = size if end is None else _int(a, "end")
    start, end = (min(max(v + size if v < 0 else v, 0), size) for v in (start, end))
    if (start, end) == (0, size):
        return x
    if _int(a, "step") != 1 or end <= start:
        raise Unsupported(f"slices {start}:{end}:{a.get('step')}; only step-1, non-empty "
                          "slices of a feature axis")
    return _part(lx, node, x, axis, start, end, size)


@rule("aten.mean.dim", "aten.sum.dim_IntList", ir="reduce_mean, reduce_sum, time_reduce",
      note="over feature axes; over time (x.mean(0)) as the output or before a head")
def _reduce(lx, node, a):
    x = lx.act(a.get("self"))
    mode = "mean" if op_name(node).startswith("aten.mean") else "sum"
    given = a.get("dim")
    if not given:
        raise Unsupported("reduces over every axis, batch included; name the feature axes")
    picked = sorted({x.layout.axis(d) for d in _ints(a, "dim")})
    keep = bool(a.get("keepdim"))
    t = x.layout.time_axis
    if t in picked:
        if picked != [t] or x.layout.roles[t] != T or keep:
            raise Unsupported(f"reduces axes {picked} of a tensor with axes {x.layout}; reduce "
                              "over time alone, without keepdim (x.mean(0))")
        if dims(node.args[0])[t] == 1:
            return lx.new_act(x.value, x.layout.drop(t), x.post)
        return Marker("time_reduce", (x, mode))
    step_axes = [x.layout.step_axis(d) for d in picked]
    layout = x.layout if keep else Layout(tuple(r for i, r in enumerate(x.layout.roles)
                                                if i not in picked))
    value, = lx.emit(f"reduce_{mode}", [x.value], {"axes": step_axes, "keepdims": keep}, node)
    return lx.new_act(value, layout, x.post)


# -- layers ------------------------------------------------------------------------------

@rule("aten.conv1d.default", "aten.conv2d.default", ir="conv", note="numeric padding")
def _conv(lx, node, a):
    weight = lx.const(a.get("weight"))
    spatial = len(weight.shape) - 2
    x = lx.act(a.get("input"))
    _image(x, (spatial + 2,), "conv")
    if isinstance(a.get("padding"), str):
        raise Unsupported("string padding ('same'/'valid'); give the padding as numbers")
    ins = [x.value, weight] + ([lx.const(a["bias"])] if a.get("bias") is not None else [])
    attrs = {"stride": _positive(_ints(a, "stride", spatial), "stride"),
             "padding": _ints(a, "padding", spatial),
             "dilation": _positive(_ints(a, "dilation", spatial), "dilation"),
             "groups": _positive([_int(a, "groups")], "groups")[0]}
    value, = lx.emit("conv", ins, attrs, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.batch_norm.default", ir="batch_norm", note="eval mode; folded into the layer "
      "before it when possible")
def _batch_norm(lx, node, a):
    if a.get("training"):
        raise Unsupported("batch norm in training mode; call model.eval() before export")
    x = lx.act(a.get("input"))
    _image(x, (2, 3, 4), "batch norm")
    c = x.value.shape[1]
    ones = lambda fill, name: lx.constant(np.full(c, fill, np.float32), f"{node.name}.{name}")
    params = [lx.const(a["weight"]) if a.get("weight") is not None else ones(1, "weight"),
              lx.const(a["bias"]) if a.get("bias") is not None else ones(0, "bias"),
              lx.const(a.get("running_mean")), lx.const(a.get("running_var"))]
    value, = lx.emit("batch_norm", [x.value, *params], {"eps": _float(a, "eps")}, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.max_pool2d.default", "aten.avg_pool2d.default", ir="max_pool, avg_pool",
      note="no ceil mode; average pooling unpadded")
def _pool(lx, node, a, x: Act | None = None, name: str = ""):
    x = x or lx.act(a.get("self"))
    _image(x, (4,), "pooling")
    kernel = _positive(_ints(a, "kernel_size", 2), "kernel size")
    stride = _positive(_ints(a, "stride", 2), "stride") if a.get("stride") else kernel
    padding = _ints(a, "padding", 2)
    if a.get("ceil_mode"):
        raise Unsupported("ceil_mode=True pooling; use ceil_mode=False")
    if (name or op_name(node)).startswith("aten.max"):
        if _ints(a, "dilation", 2) != [1, 1]:
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


@rule("aten.max_pool1d.default", "aten.avg_pool1d.default", "aten.adaptive_avg_pool1d.default",
      ir="reshape, the 2-D pooling", note="as 2-D pooling over a unit height")
def _pool1d(lx, node, a):
    x = lx.act(a.get("self"))
    _image(x, (3,), "1-D pooling")
    n, c, length = x.value.shape
    tall, = lx.emit("reshape", [x.value], {"shape": [n, c, 1, length]}, node)
    wide = Act(tall, Layout((x.layout.roles[0], axes.F, axes.F, axes.F)), x.post)
    name = op_name(node)
    if "adaptive" in name:
        pooled = _adaptive_avg_pool(lx, node, {"output_size": [1] + _ints(a, "output_size", 1)},
                                    wide)
    else:
        kernel = _ints(a, "kernel_size", 1)
        pooled = _pool(lx, node, {
            "kernel_size": [1] + kernel, "padding": [0] + _ints(a, "padding", 1),
            "stride": [1] + (_ints(a, "stride", 1) if a.get("stride") else kernel),
            "dilation": [1] + (_ints(a, "dilation", 1) if "dilation" in a else [1]),
            "ceil_mode": a.get("ceil_mode")}, wide, name.replace("1d", "2d"))
    value, = lx.emit("reshape", [pooled.value], {"shape": [n, c, pooled.value.shape[3]]}, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.adaptive_avg_pool2d.default", ir="reduce_mean, avg_pool, matmul",
      note="1x1: a mean; dividing sizes: average pooling; else a constant window matrix")
def _adaptive_avg_pool(lx, node, a, x: Act | None = None):
    x = x or lx.act(a.get("self"))
    _image(x, (4,), "adaptive pooling")
    h, w = x.value.shape[2:]
    oh, ow = _positive(_ints(a, "output_size", 2), "output size")
    if oh > h or ow > w:
        raise Unsupported(f"adaptive pooling {h}x{w} up to {oh}x{ow}; pool to at most the "
                          "input's size")
    if (oh, ow) == (1, 1):
        value, = lx.emit("reduce_mean", [x.value], {"axes": [2, 3], "keepdims": True}, node)
    elif h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        value, = lx.emit("avg_pool", [x.value], {"kernel": k, "stride": k, "padding": [0, 0]},
                         node)
    else:  # overlapping or uneven windows: a constant averaging matrix
        n, c = x.value.shape[:2]
        flat, = lx.emit("reshape", [x.value], {"shape": [n, c, h * w]}, node)
        pool = lx.constant(_adaptive_matrix(h, w, oh, ow), f"{node.name}.windows")
        mixed, = lx.emit("matmul", [flat, pool], {}, node)
        value, = lx.emit("reshape", [mixed], {"shape": [n, c, oh, ow]}, node)
    return lx.new_act(value, x.layout, x.post)


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
    scheme, bits = str(a.get("scheme")), _int(a, "bits")
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


# -- elementwise and products ------------------------------------------------------------

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
    post = _post(acts)
    layout = axes.broadcast([v.layout for v in acts])
    ins = [v.value if isinstance(v, Act) else _step_constant(lx, v, layout) for v in (x, y)]
    value, = lx.emit(_BINARY[op], ins, {}, node)
    return lx.new_act(value, layout, post)


def _post(acts: list[Act]) -> bool:
    if any(v.post for v in acts) and any(not v.post and v.layout.time_axis is not None
                                         for v in acts):
        raise Unsupported("combines a value reduced over time with one that still has time")
    return any(v.post for v in acts)


def _step_constant(lx, value, layout: Layout):
    """A constant broadcast against a torch tensor of `layout`, as a constant of its step
    value: its axis against time is dropped; it may not vary over time or batch."""
    shape = value.shape
    offset = layout.rank - len(shape)
    if offset < 0:
        raise Unsupported(f"broadcasts a rank-{len(shape)} constant over a tensor with axes "
                          f"{layout}")
    keep = []
    for i, d in enumerate(shape):
        role = layout.roles[offset + i]
        if role != axes.F and d != 1:
            raise Unsupported(f"uses a constant that varies along the {role} axis")
        if role != T:
            keep.append(d)
    if len(keep) == len(shape):
        return value
    array = np.asarray(lx.builder.constants[value]).reshape(keep)
    return lx.constant(array, value.hint)


@rule("aten.relu.default", ir="relu")
def _relu(lx, node, a):
    x = lx.act(a.get("self"))
    value, = lx.emit("relu", [x.value], {}, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.matmul.default", ir="matmul", note="spike x spike products (attention), or "
      "with a constant matrix")
def _matmul(lx, node, a):
    x, y = lx.operand(a.get("self")), lx.operand(a.get("other"))
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
    return lx.new_act(value, layout, _post(acts))


# -- axes --------------------------------------------------------------------------------

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
    d0, d1 = x.layout.axis(_int(a, "dim0")), x.layout.axis(_int(a, "dim1"))
    order[d0], order[d1] = order[d1], order[d0]
    return _permuted(lx, node, x, order)


@rule("aten.permute.default", ir="transpose", note="time may move; batch stays first")
def _permute(lx, node, a):
    x = lx.act(a.get("self"))
    return _permuted(lx, node, x, _ints(a, "dims"))


@rule("aten.view.default", "aten.reshape.default", ir="reshape",
      note="time and batch stay leading as [T, B, ...] or [T*B, ...] (docs/ir.md)")
def _view(lx, node, a):
    x = lx.act(node.args[0])
    layout = axes.reshape(x.layout, dims(node.args[0]), dims(node), lx.batch,
                          _want(lx, node))
    return _reshaped(lx, node, x, layout)


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
    return _reshaped(lx, node, x, axes.flatten(x.layout, _int(a, "start_dim"),
                                               _int(a, "end_dim")))


@rule("aten.unflatten.int", ir="reshape", note="[T*B, ...] -> [T, B, ...], or features")
def _unflatten(lx, node, a):
    x = lx.act(a.get("self"))
    given = a.get("sizes")
    if not isinstance(given, (list, tuple)):
        raise Unsupported(f"its sizes argument {given!r} is not a list")
    sizes = [_dim_arg(s) for s in given]
    return _reshaped(lx, node, x, axes.unflatten(x.layout, _int(a, "dim"), sizes, lx.steps,
                                                 lx.batch))


def _dim_arg(size):
    return size if isinstance(size, int) else None  # a dynamic size: the batch


@rule("aten.unsqueeze.default", ir="reshape", note="unsqueeze(0) of [B, ...] adds a unit "
      "time axis")
def _unsqueeze(lx, node, a):
    x = lx.act(a.get("self"))
    axis = _int(a, "dim") % (x.layout.rank + 1)
    opens_time = (axis == 0 and x.layout.time_axis is None and not x.post
                  and x.layout.roles[0] == axes.B)
    return _reshaped(lx, node, x, x.layout.insert(axis, T if opens_time else axes.F))


@rule("aten.squeeze.dim", "aten.squeeze.dims", ir="reshape", note="of size-1 feature or "
      "unit time axes")
def _squeeze(lx, node, a):
    x = lx.act(a.get("self"))
    shape = dims(node.args[0])
    picked = _ints(a, "dim") if "dim" in a else []
    layout = x.layout
    for axis in sorted({x.layout.axis(d) for d in picked}, reverse=True):
        if shape[axis] != 1:
            continue
        if layout.roles[axis] in (axes.B, axes.TB):
            raise Unsupported("squeezes the batch axis (an export at batch 1?); squeeze only "
                              "feature axes")
        layout = layout.drop(axis)
    return _reshaped(lx, node, x, layout)


@rule("aten.chunk.default", "aten.split.Tensor", "aten.split_with_sizes.default", ir="split",
      note="along a feature axis")
def _split(lx, node, a):
    x = lx.act(a.get("self"))
    axis = x.layout.axis(_int(a, "dim"))
    step = x.layout.step_axis(axis)
    size = x.value.shape[step]
    name = op_name(node)
    if name == "aten.chunk.default":
        each = -(-size // _positive([_int(a, "chunks")], "chunks")[0])
    elif name == "aten.split.Tensor":
        each = _positive([_int(a, "split_size")], "split size")[0]
    if name == "aten.split_with_sizes.default":
        sizes = _ints(a, "split_sizes")
    else:
        sizes = [min(each, size - i) for i in range(0, size, each)]
    if sum(sizes) != size or min(sizes) < 1:
        raise Unsupported(f"splits {size} into {sizes}")
    outs = lx.emit("split", [x.value], {"axis": step, "sizes": sizes}, node)
    return [lx.new_act(v, x.layout, x.post) for v in outs]


@rule("aten.unbind.int", ir="split, reshape", note="for x in seq: a single-step loop over "
      "a sequence, or feature axes")
def _unbind(lx, node, a):
    x = lx.act(a.get("self"))
    axis = x.layout.axis(_int(a, "dim"))
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
    axis = _int(a, "dim") % (first.rank + stack)
    repeated = _stacked_over_time(lx, parts, axis) if stack else None
    if repeated is None and stack and axis == 0:
        repeated = _loop_steps(lx, node, parts)
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
    return lx.new_act(value, layout, _post(parts))


# -- docs/ops.md -------------------------------------------------------------------------

def ops_table() -> str:
    """The markdown table of docs/ops.md "Operations", one row per rule."""
    rows: dict[Callable, list[str]] = {}
    for name, r in RULES.items():
        rows.setdefault(r.fn, []).append(name)
    lines = ["| PyTorch op | IR op | notes |", "| --- | --- | --- |"]
    for fn, names in rows.items():
        r = RULES[names[0]]
        ops = ", ".join(f"`{n}`" for n in names)
        lines.append(f"| {ops} | {r.ir or 'nothing'} | {r.note} |")
    return "\n".join(lines)


def write_docs(path: str) -> None:
    """Put ops_table() between docs/ops.md's `<!-- rules: begin/end -->` markers."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, rest = text.split("<!-- rules: begin -->\n")
    tail = rest.split("\n<!-- rules: end -->")[1]
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}<!-- rules: begin -->\n{ops_table()}\n<!-- rules: end -->{tail}")


# python3 -m snnc.frontend.rules [docs/ops.md]: print the table, or rewrite it in the doc
if __name__ == "__main__":
    import sys

    write_docs(sys.argv[1]) if len(sys.argv) > 1 else print(ops_table())
