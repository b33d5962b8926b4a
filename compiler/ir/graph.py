"""snnc's graph IR: values, nodes, explicit neuron state, and a time spec.

A `Graph` is inputs, an ordered list of nodes (topological, single assignment), outputs,
constants and state. Everything is immutable: a pass builds a new graph. The dataclasses are
frozen and their sequences tuples; a node's `attrs` and a graph's `constants` and
`metadata` are read-only mappings (`types.MappingProxyType` over a private copy, attrs in
the op schema's order, list values as tuples); every constant array is read-only (a
writeable array is copied when the graph is built, so no caller keeps a way to change it).

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
from types import MappingProxyType
from typing import Mapping

import numpy as np

from snnc.ir.ops import OPS
from snnc.ir.shapes import (BATCH, Dim, Shape, batch_factor, concrete_shape,  # noqa: F401
                            times_batch)

NUMPY_DTYPES = {"f32": np.float32, "i32": np.int32, "i64": np.int64, "bool": np.bool_,
                "u8": np.uint8, "i8": np.int8}


@dataclass(frozen=True, eq=False)
class Value:
    dtype: str  # a key of NUMPY_DTYPES
    shape: Shape
    hint: str = ""

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))

    def __repr__(self) -> str:
        return f"Value({self.hint or '?'}: {type_str(self)})"


@dataclass(frozen=True)
class Provenance:
    """Where a node comes from: the user's module and source line, or, for a node a pass
    made, a note ("time", "output (over time)"). Printed as
    `blocks.0.attn.qkv_lif (LIFNode) spikformer.py:216`."""

    module: str = ""  # the module path in the model; "" with a class: the model itself
    cls: str = ""
    file: str = ""
    line: int = 0
    note: str = ""

    @property
    def layer(self) -> str:
        """The module path (`<model>` for the top level), or the note's first word."""
        if self.module or self.cls:
            return self.module or "<model>"
        return self.note.split(" ")[0] if self.note else ""

    def __bool__(self) -> bool:
        return bool(self.module or self.cls or self.file or self.note)

    def __str__(self) -> str:
        if not (self.module or self.cls or self.file):
            return self.note
        parts = [f"{self.module or '<model>'} ({self.cls})" if self.cls else
                 (self.module or "<model>")]
        if self.file:
            parts.append(f"{self.file}:{self.line}")
        return " ".join(parts)


@dataclass(frozen=True, eq=False)
class Node:
    op: str
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    attrs: Mapping[str, object] = field(default_factory=dict)
    source: Provenance = Provenance()  # where it came from; a str becomes a note

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown IR op {self.op!r}")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not isinstance(self.source, Provenance):
            object.__setattr__(self, "source", Provenance(note=str(self.source or "")))
        object.__setattr__(self, "attrs", _frozen_attrs(self.attrs, OPS[self.op].attrs))


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
    "seq" (the user passes [T, N, ...] and step t reads slice t) or "seq_batch_first" (the
    user passes [N, T, ...] and step t reads x[:, t]).
    outputs: per graph output, "stack" ([T, N, ...]), "mean" / "sum" (reduced over time), or
    "once" (computed once, after a `time_reduce` node or in a one-step program).
    """

    steps: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))


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

    def __post_init__(self):
        for name in ("inputs", "nodes", "outputs", "states", "input_names", "output_names"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        constants = {value: _frozen_array(array) for value, array in self.constants.items()}
        object.__setattr__(self, "constants", MappingProxyType(constants))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

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


def _frozen_value(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen_value(v) for v in value)
    return value


def _frozen_attrs(attrs: Mapping[str, object], schema: Mapping[str, object]
                  ) -> Mapping[str, object]:
    """A read-only copy: the schema's names first, in its order (so equal nodes print
    equally however their dict was built), then any others (the verifier refuses them)."""
    names = [k for k in schema if k in attrs] + [k for k in attrs if k not in schema]
    return MappingProxyType({k: _frozen_value(attrs[k]) for k in names})


def _frozen_array(array):
    """The array itself when already read-only, else a read-only copy."""
    if isinstance(array, np.ndarray) and array.flags.writeable:
        array = array.copy(order="K")
        array.flags.writeable = False
    return array


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


# numpy's defaults, stated: the text must not change with np.set_printoptions elsewhere
_PRINT_OPTIONS = dict(precision=6, threshold=1000, edgeitems=3, linewidth=75, suppress=False,
                      nanstr="nan", infstr="inf", sign="-", formatter=None,
                      floatmode="maxprec", legacy=False)


def format_constant(array: np.ndarray) -> str:
    if array.size <= 4:
        with np.printoptions(**_PRINT_OPTIONS):
            return "const " + np.array2string(np.asarray(array).reshape(-1), separator=",")
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
