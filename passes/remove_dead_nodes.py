"""Remove nodes whose outputs nobody reads, and constants nobody reads.

Requires: a verified graph.
Ensures: every node has at least one output read by a node, a graph output or a state
write; every constant is read. Meaning is unchanged (nodes have no side effects).

Before:
    %a: f32[N,4] = relu(%x)
    %b: f32[N,4] = relu(%x)
    return %a
After:
    %a: f32[N,4] = relu(%x)
    return %a
"""

from __future__ import annotations

from snnc.ir.graph import Graph
from snnc.options import DEFAULT, Options


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    live = set(graph.outputs) | {s.write for s in graph.states}
    kept = []
    for node in reversed(graph.nodes):
        if any(v in live for v in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    consts = {v: a for v, a in graph.constants.items() if v in live}
    if len(kept) == len(graph.nodes) and len(consts) == len(graph.constants):
        return graph
    return graph.replace(nodes=tuple(reversed(kept)), constants=consts)
