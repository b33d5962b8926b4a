"""Cast spikes to uint8 where the neurons make them, before they are joined over time.

After unroll_timesteps a layer's input is `concat(s_0, ..., s_{T-1})` of its neuron's
per-step spikes, and lower_integer casts that to uint8 for an integer GEMM. Casting each
step's spikes instead lets the ONNX backend make them as uint8 directly (GreaterOrEqual ->
Cast to uint8, with the float spikes the reset needs cast from those bytes: cheaper than
float spikes cast to uint8 afterwards, docs/onnx.md), and joins bytes instead of floats.

Requires: a verified graph without a time spec (after unroll_timesteps).
Ensures: `cast(concat(s_0..s_k)) to=u8` with every s_i a neuron's spikes becomes
`concat(cast(s_0), ..., cast(s_k))`: the same values (a cast of 0/1 changes none); the
float concat stays only if something else reads it.

Before:
    %s: f32[4N,8] = concat(%s.t0, %s.t1, %s.t2, %s.t3) axis=0
    %s_u8: u8[4N,8] = cast(%s) to='u8'
After:
    %s.t0_u8: u8[N,8] = cast(%s.t0) to='u8'
    ...
    %s_u8: u8[4N,8] = concat(%s.t0_u8, %s.t1_u8, %s.t2_u8, %s.t3_u8) axis=0
"""

from __future__ import annotations

from snnc.ir import Graph, Node, Value
from snnc.options import DEFAULT, Options


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    if graph.time is not None:
        return graph
    producers = graph.producers()
    spikes = {n.outputs[0] for n in graph.nodes if n.op == "neuron"}
    nodes, changed = [], False
    for node in graph.nodes:
        joined = producers.get(node.inputs[0]) if node.op == "cast" else None
        if joined is None or joined.op != "concat" or node.attrs["to"] == "f32" or \
                not all(v in spikes for v in joined.inputs):
            nodes.append(node)
            continue
        parts = []
        for s in joined.inputs:
            part = Value(node.attrs["to"], s.shape, f"{s.hint}_{node.attrs['to']}")
            nodes.append(Node("cast", (s,), (part,), dict(node.attrs), node.source))
            parts.append(part)
        nodes.append(Node("concat", tuple(parts), node.outputs, dict(joined.attrs),
                          joined.source))
        changed = True
    return graph.with_nodes(nodes, graph.constants) if changed else graph
