"""The one IR verifier, run after the frontend and after every pass.

Checks: every node's op is known, its attributes have the schema's names and types, its
inputs are defined before use (graph inputs, constants, state reads, earlier outputs),
every value is defined once, type inference reproduces each output's stored type, outputs
and state writes are defined, state reads and writes agree in type, and the time spec
matches the graph's inputs and outputs.
"""

from __future__ import annotations

from snnc.errors import VerificationError
from snnc.ir.graph import NUMPY_DTYPES, Graph, Node, format_graph
from snnc.ir.ops import OPS, ShapeError
from snnc.ir.time_ops import ALL_STEPS


def verify(graph: Graph, stage: str) -> None:
    """Raise VerificationError naming `stage` if the graph breaks an invariant."""

    def fail(message: str, node: Node | None = None) -> None:
        context = format_graph(graph, mark=node, around=3) if node else format_graph(graph)
        if len(context) > 6000:
            context = context[:6000] + "\n  ..."
        raise VerificationError(
            f"IR invalid after {stage}: {message}\n{context}\n"
            "This is a bug in snnc; please report it with the model."
        )

    defined = set()

    def define(value, what: str, node: Node | None = None) -> None:
        if value in defined:
            fail(f"{what} {value!r} is defined twice", node)
        defined.add(value)

    for value in graph.inputs:
        define(value, "input")
    for value, array in graph.constants.items():
        define(value, "constant")
        if tuple(array.shape) != tuple(value.shape) or \
                array.dtype != NUMPY_DTYPES.get(value.dtype):
            fail(f"constant {value!r} holds a {array.dtype} array of shape {array.shape}")
    for state in graph.states:
        define(state.read, "state read")

    for node in graph.nodes:
        spec = OPS[node.op]
        lo, hi = spec.n_inputs
        if not lo <= len(node.inputs) <= hi:
            fail(f"{node.op} takes {lo}..{hi} inputs, got {len(node.inputs)}", node)
        for value in node.inputs:
            if value not in defined:
                fail(f"input {value!r} of {node.op} is used before it is defined", node)
        missing = set(spec.attrs) - set(node.attrs)
        extra = set(node.attrs) - set(spec.attrs)
        if missing or extra:
            fail(f"{node.op} attributes: missing {sorted(missing)}, unknown {sorted(extra)}", node)
        for name, value in node.attrs.items():
            expected = spec.attrs[name]
            if not isinstance(value, expected):
                fail(f"{node.op} attribute {name}={value!r} is not {expected}", node)
        try:
            inferred = spec.infer([(v.dtype, v.shape) for v in node.inputs], node.attrs)
        except (ShapeError, KeyError, IndexError, TypeError) as error:
            fail(f"{node.op} type inference failed: {error}", node)
        if len(inferred) != len(node.outputs):
            fail(f"{node.op} has {len(node.outputs)} outputs, expected {len(inferred)}", node)
        for value, (dtype, shape) in zip(node.outputs, inferred):
            if (value.dtype, tuple(value.shape)) != (dtype, tuple(shape)):
                fail(f"{node.op} output {value!r} stored as {value.dtype}{list(value.shape)} "
                     f"but infers {dtype}{list(shape)}", node)
            define(value, "output", node)

    for value in graph.outputs:
        if value not in defined:
            fail(f"graph output {value!r} is never defined")
    for state in graph.states:
        if state.write not in defined:
            fail(f"state {state.name} is never written")
        if (state.read.dtype, state.read.shape) != (state.write.dtype, state.write.shape):
            fail(f"state {state.name} reads {state.read!r} but writes {state.write!r}")
    if graph.time is None:
        if graph.states:
            fail("a graph without a time spec cannot carry state")
        if any(n.op in (*ALL_STEPS, "time_unstack") for n in graph.nodes):
            fail("a graph without a time spec cannot reduce or mix over time")
    else:
        if len(graph.time.inputs) != len(graph.inputs):
            fail("time spec and graph disagree on the number of inputs")
        if len(graph.time.outputs) != len(graph.outputs):
            fail("time spec and graph disagree on the number of outputs")
        if graph.time.steps < 1:
            fail(f"time steps must be >= 1, got {graph.time.steps}")
        _check_time_mix(graph, fail)


def _check_time_mix(graph: Graph, fail) -> None:
    """A time_mix, time_reduce or time_stack node reads all T steps: a time_mix weight is
    [T, T], a time_stack makes T rows and a time_unstack takes T, and the input may not
    depend on a state whose next value depends on the output (step t would need steps after
    t)."""
    steps = graph.time.steps
    for node in graph.nodes:
        if node.op == "time_unstack" and node.inputs[0].shape[node.attrs["axis"]] != steps or \
                node.op == "time_stack" and node.attrs["steps"] != steps:
            fail(f"{node.op} does not fit {steps} steps", node)
        if node.op not in ALL_STEPS:
            continue
        if node.op == "time_mix" and tuple(node.inputs[1].shape) != (steps,) * 2:
            fail(f"time_mix weight {node.inputs[1].shape} does not fit {steps} steps", node)
        after = _reached(graph, set(node.outputs))
        before = _ancestors(graph, node.inputs[0])
        for state in graph.states:
            if state.write in after and state.read in before:
                fail(f"state {state.name} goes through a {node.op} and back (a recurrence "
                     "over all steps)", node)


def _reached(graph: Graph, values: set) -> set:
    for node in graph.nodes:
        if any(v in values for v in node.inputs):
            values.update(node.outputs)
    return values


def _ancestors(graph: Graph, value) -> set:
    producers = graph.producers()
    found, todo = set(), [value]
    while todo:
        v = todo.pop()
        if v not in found:
            found.add(v)
            if v in producers:
                todo.extend(producers[v].inputs)
    return found
