"""Move casts to uint8/int8 up to the neurons, so spikes travel as bytes.

lower_integer casts a layer's input right before its integer GEMM. Between the neurons that
made the spikes and that cast there are often only data movements: after unroll_timesteps
the join of the T steps (`concat`), and in attention the reshape of channels into heads and
the split into q, k and v. A cast commutes with each of them (it changes no value: the
range check proves it), so this pass moves it up, until it reads a neuron's spikes: the
ONNX backend then makes those spikes as uint8 directly (GreaterOrEqual -> Cast to uint8,
the float spikes the reset needs cast from those bytes; docs/onnx.md), and every copy in
between moves a quarter of the bytes.

- `cast(move(x))` -> `move(cast(x))` for a reshape, transpose, split, chunk or concat whose
  every output is read only by casts to that type;
- `cast(concat(s_0, ..., s_k))` with every s_i a neuron's spikes -> `concat(cast(s_0), ...)`
  also when the float join has other readers (it stays for them).
Repeated until nothing moves.

Requires: a verified graph without a time spec (after unroll_timesteps or expose_state).
Ensures: the same values everywhere (casts of integers in range, moved across copies).

Before:
    %s: f32[4N,8] = concat(%s.t0, %s.t1, %s.t2, %s.t3) axis=0
    %h: f32[4N,2,4] = reshape(%s) shape=['4N',2,4]
    %h_u8: u8[4N,2,4] = cast(%h) to='u8'
After:
    %s.t0_u8: u8[N,8] = cast(%s.t0) to='u8'
    ...
    %s_u8: u8[4N,8] = concat(%s.t0_u8, %s.t1_u8, %s.t2_u8, %s.t3_u8) axis=0
    %h_u8: u8[4N,2,4] = reshape(%s_u8) shape=['4N',2,4]
"""

from __future__ import annotations

from snnc.ir.graph import Graph, Node, Value
from snnc.options import DEFAULT, Options

MOVES = ("reshape", "transpose", "split", "chunk", "concat")
INTEGER = ("u8", "i8")


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    if graph.time is not None:
        return graph
    while True:
        moved = _move_one(graph)
        if moved is graph:
            return graph
        graph = moved


def _move_one(graph: Graph) -> Graph:
    """The graph with one data movement turned to run after its casts, or the same graph."""
    producers, users = graph.producers(), graph.users()
    spikes = {n.outputs[0] for n in graph.nodes if n.op in ("neuron", "neuron_model")}
    for cast in graph.nodes:
        if cast.op != "cast" or cast.attrs["to"] not in INTEGER:
            continue
        move = producers.get(cast.inputs[0])
        if move is None or move.op not in MOVES or \
                any(v in graph.constants for v in move.inputs):
            continue
        to = cast.attrs["to"]
        readers = [users.get(v, []) for v in move.outputs]
        exclusive = all(v not in graph.outputs and len(r) <= 1 and
                        all(u.op == "cast" and u.attrs["to"] == to for u in r)
                        for v, r in zip(move.outputs, readers))
        joins_spikes = move.op == "concat" and all(v in spikes for v in move.inputs)
        if exclusive or joins_spikes:
            return _rewrite(graph, move, cast if not exclusive else None, readers, to)
    return graph


def _rewrite(graph: Graph, move: Node, only: Node | None, readers, to: str) -> Graph:
    """Cast move's inputs, then move: its outputs are the casts' outputs. With `only`, just
    that cast is replaced and the float move stays for its other readers."""
    casts = [Node("cast", (v,), (Value(to, v.shape, f"{v.hint}_{to}"),), {"to": to},
                  move.source) for v in move.inputs]
    outputs, dropped = [], set()
    for value, rs in zip(move.outputs, readers):
        reader = only if only is not None else (rs[0] if rs else None)
        if reader is not None and reader.inputs[0] is value:
            outputs.append(reader.outputs[0])
            dropped.add(reader)
        else:
            outputs.append(Value(to, value.shape, f"{value.hint}_{to}"))
    moved = Node(move.op, tuple(c.outputs[0] for c in casts), tuple(outputs), dict(move.attrs),
                 move.source)
    nodes = []
    for node in graph.nodes:
        if node is move:
            nodes.extend(casts)
            nodes.append(moved)
            if only is not None:
                nodes.append(move)
        elif node not in dropped:
            nodes.append(node)
    return graph.with_nodes(nodes, graph.constants)
