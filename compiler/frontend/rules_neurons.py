"""Lifting rules for SpikingJelly's neurons (IF, LIF, parametric LIF): one IR `neuron` node
each, with its membrane an explicit state of the graph (or, in a single-step program, a value
passed from call to call), and the constant fill a membrane starts from.
"""

from __future__ import annotations

import numpy as np
import torch

from snnc.frontend.axes import T
from snnc.frontend.lifter import (NEURON_OPS, Act, Marker, Rules, Unsupported, dims, float_arg,
                                  op_name, source_of)
from snnc.ir.graph import State, Value

RULES = Rules()
rule = RULES.rule


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
             "threshold": float_arg(a, "threshold"),
             "v_reset": None if reset is None else float_arg(a, "reset")}
    name = op_name(node)
    if name.startswith("sj_lif"):
        attrs.update(leak="div", leak_value=float_arg(a, "tau"), decay_input=bool(a["decay_input"]))
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
    fill = float_arg(a, "fill_value") if "fill_value" in a else 0.0
    got = lx.env.get(node.args[0])
    if isinstance(got, Act) or (isinstance(got, Marker) and got.kind == "first_step"):
        return Marker("init", fill)
    raise Unsupported("fills a tensor that is not an activation")
