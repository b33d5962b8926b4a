"""Merge chains of reshapes and drop reshapes that do not change the shape.

Requires: a verified graph.
Ensures: no `reshape` reads the output of another `reshape`, no `reshape` maps a shape to
itself (unless its output is a graph output), and no `reshape` output is unread. Meaning is preserved exactly (a reshape only
reinterprets a row-major tensor; two in a row are one).

Before:
    %a: f32[N,384,8,8] = reshape(%x) shape=['N',384,8,8]
    %b: f32[N,384,64] = reshape(%a) shape=['N',384,64]
    %y: f32[N,384,64] = add(%b, %x)
After:
    %y: f32[N,384,64] = add(%x, %x)
"""

from __future__ import annotations

from snnc.ir.graph import Graph, Node, Value
from snnc.options import DEFAULT, Options


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    protected = set(graph.outputs) | {s.write for s in graph.states}
    root: dict[Value, Value] = {}  # reshape output -> the non-reshape value it reinterprets
    alias: dict[Value, Value] = {}  # value -> the value that replaces it
    nodes: list[Node] = []
    for node in graph.nodes:
        inputs = tuple(alias.get(v, v) for v in node.inputs)
        if node.op == "reshape":
            source = root.get(inputs[0], inputs[0])
            out = node.outputs[0]
            root[out] = source
            if source.shape == out.shape and out not in protected:
                alias[out] = source
                continue
            inputs = (source,)
        if inputs != node.inputs:
            node = Node(node.op, inputs, node.outputs, node.attrs, node.source)
        nodes.append(node)
    live = {v for n in nodes for v in n.inputs} | protected
    kept = tuple(n for n in nodes if n.op != "reshape" or n.outputs[0] in live)
    if kept == graph.nodes:
        return graph
    return graph.replace(nodes=kept)
