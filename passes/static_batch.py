"""Fix the batch (`--batch N`): every symbolic batch dimension ("N", "kN") in the graph's
values, states and attributes becomes the number k * N.

Requires: a graph after `layout` (the last pass that reads shapes' batch symbol to decide).
Ensures: no symbolic dimension anywhere, so every ONNX input, output and intermediate has a
static shape, as CoreML, NNAPI and Qualcomm's QNN need (they refuse dynamic dimensions or
take nothing; ../shared/design/runtime_facts.md). The arithmetic is unchanged: a reshape
to [-1, ...] or [T, "N", ...] now names the same sizes as numbers.

Before (N = 2):
    %s: f32[2N,4] = concat(%s.t0, %s.t1) axis=0
    %output: f32[2,N,4] = reshape(%s) shape=[2,'N',4]
After:
    %s: f32[4,4] = concat(%s.t0, %s.t1) axis=0
    %output: f32[2,2,4] = reshape(%s) shape=[2,2,4]
"""

from __future__ import annotations

from snnc.errors import PassError
from snnc.ir.graph import Graph, Node, State, Value
from snnc.ir.shapes import batch_factor
from snnc.options import DEFAULT, Options


def _dim(d, batch: int):
    if isinstance(d, str):
        try:
            k = batch_factor(d)
        except ValueError:
            return d
        return d if k is None else k * batch
    return d


def _attr(value, batch: int):
    if isinstance(value, (list, tuple)):
        return type(value)(_attr(v, batch) for v in value)
    return _dim(value, batch)


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    batch = opts.batch
    if batch is None:
        return graph
    if not isinstance(batch, int) or batch < 1:
        raise PassError(f"--batch must be a positive number of samples, not {batch!r}")
    fixed: dict = {}

    def value(v: Value) -> Value:
        if v not in fixed:
            fixed[v] = Value(v.dtype, tuple(_dim(d, batch) for d in v.shape), v.hint)
        return fixed[v]
    nodes = tuple(Node(n.op, tuple(value(v) for v in n.inputs),
                       tuple(value(v) for v in n.outputs),
                       {k: _attr(a, batch) for k, a in n.attrs.items()}, n.source)
                  for n in graph.nodes)
    return Graph(tuple(value(v) for v in graph.inputs), nodes,
                 tuple(value(v) for v in graph.outputs),
                 {value(v): a for v, a in graph.constants.items()},
                 tuple(State(value(s.read), value(s.write), s.init, s.name)
                       for s in graph.states),
                 graph.time, graph.input_names, graph.output_names, graph.metadata)
