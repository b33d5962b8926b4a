"""Lifting rules for comparisons and selection on activations: how neurons written as plain
PyTorch fire (x >= threshold), clamp, round and choose (torch.where). PyTorch's bool results
are the IR's 1.0 / 0.0 floats, so a comparison read as a float (`.to(float32)`, `* 1.0`) is
the same value.
"""

from __future__ import annotations

import numpy as np
import torch

from snnc.frontend import axes
from snnc.frontend.lifter import Act, Rules, Unsupported, op_name, post_of
from snnc.frontend.rules_layers import _step_constant
from snnc.ir.ops import OPS

RULES = Rules()
rule = RULES.rule

_COMPARE = {"ge": "ge", "gt": "gt", "le": "le", "lt": "lt"}


def _operands(lx, node, *args):
    """The operands as IR values broadcast to one layout (constants as step constants), that
    layout and whether they are computed after a reduction over time."""
    got = [lx.operand(a) for a in args]
    acts = [v for v in got if isinstance(v, Act)]
    if not acts and all(v in lx.builder.constants for v in got):  # a state's constant start
        return [np.asarray(lx.builder.constants[v]) for v in got], None, False
    if not acts:
        raise Unsupported("compares or selects a quantized weight; compare the layer's output")
    layout = axes.broadcast([v.layout for v in acts])
    values = [v.value if isinstance(v, Act) else _step_constant(lx, v, layout) for v in got]
    return values, layout, post_of(acts)


@rule("aten.ge.Scalar", "aten.ge.Tensor", "aten.gt.Scalar", "aten.gt.Tensor", "aten.le.Scalar",
      "aten.le.Tensor", "aten.lt.Scalar", "aten.lt.Tensor", ir="compare",
      note="x >= y etc. as 1.0 / 0.0 (a neuron's firing written in PyTorch)")
def _compare(lx, node, a):
    values, layout, post = _operands(lx, node, a.get("self"), a.get("other"))
    return _emit(lx, node, "compare", values, {"op": _COMPARE[op_name(node).split(".")[1]]},
                 layout, post)


def _emit(lx, node, op: str, values, attrs: dict, layout, post):
    """The op on activations, or (layout None) computed now on constants."""
    if layout is None:
        return lx.constant(OPS[op].evaluate(values, attrs)[0], node.name)
    value, = lx.emit(op, values, attrs, node)
    return lx.new_act(value, layout, post)


@rule("aten.logical_and.default", "aten.__and__.Tensor", ir="mul",
      note="of comparisons (1.0 / 0.0): their product")
def _and(lx, node, a):
    values, layout, post = _operands(lx, node, a.get("self"), a.get("other"))
    return _emit(lx, node, "mul", values, {}, layout, post)


@rule("aten.where.self", ir="where", note="torch.where(condition, a, b)")
def _where(lx, node, a):
    values, layout, post = _operands(lx, node, a.get("condition"), a.get("self"),
                                     a.get("other"))
    return _emit(lx, node, "where", values, {}, layout, post)


@rule("aten.clamp.default", ir="clip", note="with numeric bounds")
def _clamp(lx, node, a):
    x = lx.act(a.get("self"))
    bounds = {}
    for name in ("min", "max"):
        bound = a.get(name)
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
            raise Unsupported(f"clamps to a {type(bound).__name__} {name}; use a number")
        bounds[name] = None if bound is None else float(bound)
    value, = lx.emit("clip", [x.value], bounds, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.round.default", ir="round", note="half to even, as torch.round")
def _round(lx, node, a):
    x = lx.act(a.get("self"))
    value, = lx.emit("round", [x.value], {}, node)
    return lx.new_act(value, x.layout, x.post)


@rule("aten.to.dtype", ir="nothing", note="a comparison or activation as float32: the same "
      "values")
def _to_float(lx, node, a):
    val = node.meta.get("val")
    if getattr(val, "dtype", None) != torch.float32:
        raise Unsupported(f"converts to {getattr(val, 'dtype', '?')}; snnc computes in float32")
    return lx.act(a.get("self"))


@rule("aten.bucketize.Tensor", ir="compare, add", note="by constant boundaries: the number "
      "of boundaries below x (right=True: at or below), as a float")
def _bucketize(lx, node, a):
    x = lx.act(a.get("self"))
    bounds = np.asarray(lx.builder.constants.get(lx.const(a.get("boundaries"))))
    if bounds.ndim != 1 or not bounds.size or np.any(np.diff(bounds) < 0):
        raise Unsupported("bucketizes by boundaries that are not one sorted list of numbers")
    op = "ge" if a.get("right") else "gt"
    count = None
    for b in bounds:
        above, = lx.emit("compare", [x.value, lx.scalar(float(b))], {"op": op}, node)
        count = above if count is None else lx.emit("add", [count, above], {}, node)[0]
    return lx.new_act(count, x.layout, x.post)
