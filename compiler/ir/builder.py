"""Build IR graphs node by node, with output types inferred from the op vocabulary."""

from __future__ import annotations

import numpy as np

from snnc.ir.graph import NUMPY_DTYPES, Graph, Node, State, TimeSpec, Value
from snnc.ir.ops import OPS


class Builder:
    def __init__(self):
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self.constants: dict[Value, np.ndarray] = {}
        self.states: list[State] = []

    def input(self, shape, hint: str = "x", dtype: str = "f32") -> Value:
        value = Value(dtype, tuple(shape), hint)
        self.inputs.append(value)
        return value

    def const(self, array, hint: str = "c", dtype: str = "f32") -> Value:
        array = np.array(array, dtype=NUMPY_DTYPES[dtype])  # a copy; keeps 0-d arrays 0-d
        value = Value(dtype, tuple(array.shape), hint)
        self.constants[value] = array
        return value

    def add(self, op: str, inputs, attrs: dict | None = None, source: str = "",
            hint: str = "") -> list[Value]:
        attrs = dict(attrs or {})
        types = OPS[op].infer([(v.dtype, v.shape) for v in inputs], attrs)
        hint = hint or op
        outputs = [Value(d, tuple(s), hint if len(types) == 1 else f"{hint}.{i}")
                   for i, (d, s) in enumerate(types)]
        self.nodes.append(Node(op, tuple(inputs), tuple(outputs), attrs, source))
        return outputs

    def state(self, shape, name: str, init: float = 0.0) -> Value:
        """A state read; call `write(read, value)` once its next value exists."""
        read = Value("f32", tuple(shape), f"{name}.v")
        self.states.append(State(read, read, init, name))  # write patched by `write`
        return read

    def write(self, read: Value, value: Value) -> None:
        self.states = [State(s.read, value, s.init, s.name) if s.read is read else s
                       for s in self.states]

    def build(self, outputs, time: TimeSpec | None = None, input_names=(), output_names=()
              ) -> Graph:
        return Graph(tuple(self.inputs), tuple(self.nodes), tuple(outputs), self.constants,
                     tuple(self.states), time, tuple(input_names), tuple(output_names))
