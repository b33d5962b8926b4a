"""snnc's graph IR: values, nodes, explicit neuron state, and a time spec.

A `Graph` is inputs, an ordered list of nodes (topological, single assignment), outputs,
constants and state. Everything is immutable: a pass builds a new graph.

Time. A frontend graph is the body of ONE timestep (`graph.time` is a `TimeSpec`): each
activation has the batch dimension "N" first and no time dimension. A neuron's membrane is
a `State`: `read` is the value at the start of the step, `write` the value at its end, and
`init` the fill value before step 0. `unroll_timesteps` turns this into a graph with no
state and `time=None`.

Values are compared by identity; `Value.hint` is a readable, not necessarily unique, name
(printers and emitters make names unique deterministically).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

BATCH = "N"  # the symbolic batch dimension
NUMPY_DTYPES = {"f32": np.float32, "i32": np.int32, "i64": np.int64, "bool": np.bool_}
Dim = int | str
Shape = tuple[Dim, ...]


@dataclass(frozen=True, eq=False)
class Value:
    dtype: str  # a key of NUMPY_DTYPES
    shape: Shape
    hint: str = ""

    def __repr__(self) -> str:
        return f"Value({self.hint or '?'}: {type_str(self)})"


@dataclass(frozen=True, eq=False)
class Node:
    op: str
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    attrs: Mapping[str, object] = field(default_factory=dict)
    source: str = ""  # the user's module path and source line this node came from

    def __post_init__(self):
        from .ops import OPS  # the vocabulary: unknown ops fail when a node is built

        if self.op not in OPS:
            raise ValueError(f"unknown IR op {self.op!r}")


@dataclass(frozen=True, eq=False)
class State:
    """One membrane potential carried from a timestep to the next."""

    read: Value
    write: Value
    init: float
    name: str


@dataclass(frozen=True)
class TimeSpec:
    """How a one-step body maps to the whole run.

    inputs: per graph input, "repeat" (the same tensor every step, e.g. a static image) or
    "seq" (the user passes [T, N, ...] and step t reads slice t).
    outputs: per graph output, "stack" ([T, N, ...]), or "mean" / "sum" (reduced over time).
    """

    steps: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Graph:
    inputs: tuple[Value, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Value, ...]
    constants: Mapping[Value, np.ndarray] = field(default_factory=dict)
    states: tuple[State, ...] = ()
    time: TimeSpec | None = None
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)  # copied into the ONNX file

    def replace(self, **changes) -> "Graph":
        fields = dict(
            inputs=self.inputs, nodes=self.nodes, outputs=self.outputs,
            constants=self.constants, states=self.states, time=self.time,
            input_names=self.input_names, output_names=self.output_names,
            metadata=self.metadata,
        )
        fields.update(changes)
        return Graph(**fields)

    def with_nodes(self, nodes, constants: Mapping[Value, np.ndarray]) -> "Graph":
        """This graph with new nodes, keeping those of `constants` that a node reads or that
        are outputs (what a rewriting pass returns)."""
        nodes = tuple(nodes)
        used = {v for n in nodes for v in n.inputs}
        kept = {v: a for v, a in constants.items() if v in used or v in self.outputs}
        return self.replace(nodes=nodes, constants=kept)

    def producers(self) -> dict[Value, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def users(self) -> dict[Value, list[Node]]:
        result: dict[Value, list[Node]] = {}
        for node in self.nodes:
            for value in node.inputs:
                result.setdefault(value, []).append(node)
        return result

    def live_values(self) -> set[Value]:
        """Values read by a node, a graph output or a state write."""
        live = {v for n in self.nodes for v in n.inputs}
        live.update(self.outputs)
        live.update(s.write for s in self.states)
        return live

    def __str__(self) -> str:
        return format_graph(self)


def type_str(value: Value) -> str:
    return f"{value.dtype}[{','.join(str(d) for d in value.shape)}]"


def _fmt_attr(value: object) -> str:
    if isinstance(value, float):
        return repr(float(np.float32(value)))
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt_attr(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


class Namer:
    """Deterministic unique names: `%hint` or `%hint_2`, numbered in first-use order."""

    def __init__(self):
        self.names: dict[Value, str] = {}
        self.taken: set[str] = set()

    def __call__(self, value: Value) -> str:
        if value not in self.names:
            base = value.hint or "v"
            name, k = base, 1
            while name in self.taken:
                k += 1
                name = f"{base}_{k}"
            self.taken.add(name)
            self.names[value] = name
        return self.names[value]


def format_constant(array: np.ndarray) -> str:
    if array.size <= 4:
        return "const " + np.array2string(array.reshape(-1), separator=",", precision=6)
    return "const"


def format_graph(graph: Graph, mark: Node | None = None, around: int | None = None) -> str:
    """The stable text form. With `mark`, prints only the nodes around it and points at it."""
    name = Namer()
    header = ", ".join(f"%{name(v)}: {type_str(v)}" for v in graph.inputs)
    lines = [f"graph({header})"]
    if graph.time is not None:
        t = graph.time
        lines.append(f"  time steps={t.steps} inputs={list(t.inputs)} outputs={list(t.outputs)}")
    for s in graph.states:
        lines.append(f"  state %{name(s.read)}: {type_str(s.read)} init={_fmt_attr(s.init)}")
    for value, array in graph.constants.items():
        if around is None:
            lines.append(f"  %{name(value)}: {type_str(value)} = {format_constant(array)}")
    index = graph.nodes.index(mark) if mark is not None and mark in graph.nodes else None
    for i, node in enumerate(graph.nodes):
        if index is not None and around is not None and abs(i - index) > around:
            for v in (*node.inputs, *node.outputs):
                name(v)
            continue
        outs = ", ".join(f"%{name(v)}: {type_str(v)}" for v in node.outputs)
        args = ", ".join(f"%{name(v)}" for v in node.inputs)
        attrs = " ".join(f"{k}={_fmt_attr(v)}" for k, v in node.attrs.items())
        text = f"  {outs} = {node.op}({args})" + (f" {attrs}" if attrs else "")
        if node.source:
            text += f"  # {node.source}"
        if node is mark:
            text = ">>" + text[2:] + "   <-- here"
        lines.append(text)
    for s in graph.states:
        lines.append(f"  next %{name(s.read)} = %{name(s.write)}")
    lines.append("  return " + ", ".join(f"%{name(v)}" for v in graph.outputs))
    return "\n".join(lines)


def batch_factor(dim: Dim) -> int | None:
    """k for a symbolic batch dimension "kN" (1 for "N"); None for a static size.

    "kN" is k batches of N samples, time-major: what a layer sees when it runs on all
    k = T timesteps at once (unroll_timesteps)."""
    if isinstance(dim, int):
        return None
    if dim == BATCH:
        return 1
    if dim.endswith(BATCH) and dim[:-1].isdigit():
        return int(dim[:-1])
    raise ValueError(f"bad symbolic dimension {dim!r}")


def times_batch(k: int) -> str:
    return BATCH if k == 1 else f"{k}{BATCH}"


def concrete_shape(shape: Shape, batch: int) -> tuple[int, ...]:
    return tuple(int(d) if batch_factor(d) is None else batch * batch_factor(d) for d in shape)
