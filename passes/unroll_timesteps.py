"""Unroll a one-step graph into T copies of its body, threading the neuron state.

Requires: a verified graph with a time spec (`graph.time`), as the frontend makes it.
Ensures: `graph.time is None` and no state. Step t's copy reads step t-1's state writes;
step 0 reads each state's `init` as a scalar constant (no all-zero tensors are stored).
Time-invariant nodes (all inputs constants, "repeat" inputs or other time-invariant
values, e.g. weight dequantization or a conv on a static image) appear once, not T times.
"repeat" inputs feed every copy; "seq" inputs [T, N, ...] are unstacked along axis 0.
"stack" outputs are stacked to [T, N, ...]; "mean"/"sum" outputs are stacked and reduced
over axis 0. Meaning is preserved exactly (the same operations in the same order).

Before (T=2):
    state %lif.v: f32[N,4] init=0.0
    %s: f32[N,4], %v1: f32[N,4] = neuron(%x, %lif.v) ...
    next %lif.v = %v1
    return %s
After:
    %s.t0: f32[N,4], %v1.t0: f32[N,4] = neuron(%x, %lif.v.init) ...
    %s.t1: f32[N,4], %v1.t1: f32[N,4] = neuron(%x, %v1.t0) ...
    %output: f32[2,N,4] = stack(%s.t0, %s.t1) axis=0
"""

from __future__ import annotations

import numpy as np

from snnc.ir import Graph, Node, Value
from snnc.options import DEFAULT, Options


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    spec = graph.time
    if spec is None:
        return graph
    steps = spec.steps
    nodes: list[Node] = []
    constants = dict(graph.constants)
    inputs = []
    per_step_inputs: list[list[Value]] = []
    for value, mode, name in zip(graph.inputs, spec.inputs, graph.input_names or
                                 [v.hint for v in graph.inputs]):
        if mode == "repeat":
            new = Value(value.dtype, value.shape, value.hint)
            per_step_inputs.append([new] * steps)
        else:
            new = Value(value.dtype, (steps, *value.shape), value.hint)
            slices = tuple(Value(value.dtype, value.shape, f"{value.hint}.t{t}")
                           for t in range(steps))
            nodes.append(Node("unstack", (new,), slices, {"axis": 0, "count": steps},
                              f"input {name}"))
            per_step_inputs.append(list(slices))
        inputs.append(new)
    init_values: dict[float, Value] = {}
    state_now: dict[Value, Value] = {}
    for state in graph.states:
        if state.init not in init_values:
            const = Value("f32", (), f"v_init{state.init:g}")
            constants[const] = np.array(state.init, np.float32)
            init_values[state.init] = const
        state_now[state.read] = init_values[state.init]
    invariant = set(graph.constants) | {v for v, mode in zip(graph.inputs, spec.inputs)
                                        if mode == "repeat"}
    hoisted: dict[Value, Value] = {}  # time-invariant values, shared by every step
    step_outputs: list[list[Value]] = []
    for t in range(steps):
        mapping: dict[Value, Value] = dict(zip(graph.inputs, (ins[t] for ins in per_step_inputs)))
        mapping.update(state_now)
        mapping.update(hoisted)
        for node in graph.nodes:
            if all(v in invariant for v in node.inputs):
                if t == 0:  # first visit: emit it once, under its own name
                    outs = tuple(Value(v.dtype, v.shape, v.hint) for v in node.outputs)
                    nodes.append(Node(node.op, tuple(mapping.get(v, v) for v in node.inputs),
                                      outs, node.attrs, node.source))
                    hoisted.update(zip(node.outputs, outs))
                    invariant.update(node.outputs)
                mapping.update((v, hoisted[v]) for v in node.outputs)
                continue
            outs = tuple(Value(v.dtype, v.shape, f"{v.hint}.t{t}") for v in node.outputs)
            ins = tuple(mapping.get(v, v) for v in node.inputs)
            nodes.append(Node(node.op, ins, outs, node.attrs, node.source))
            mapping.update(zip(node.outputs, outs))
        state_now = {s.read: mapping[s.write] for s in graph.states}
        step_outputs.append([mapping[v] for v in graph.outputs])
    outputs = []
    for i, (value, mode) in enumerate(zip(graph.outputs, spec.outputs)):
        per_t = tuple(outs[i] for outs in step_outputs)
        stacked = Value(value.dtype, (steps, *value.shape), f"{value.hint}.stacked"
                        if mode != "stack" else value.hint)
        nodes.append(Node("stack", per_t, (stacked,), {"axis": 0}, "output (over time)"))
        if mode == "stack":
            outputs.append(stacked)
            continue
        reduced = Value(value.dtype, value.shape, value.hint)
        op = "reduce_mean" if mode == "mean" else "reduce_sum"
        nodes.append(Node(op, (stacked,), (reduced,), {"axes": [0], "keepdims": False},
                          "output (over time)"))
        outputs.append(reduced)
    return graph.replace(inputs=tuple(inputs), nodes=tuple(nodes), outputs=tuple(outputs),
                         constants=constants, states=(), time=None)
