"""The numpy reference interpreter: the oracle every pass and backend is checked against."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .ir import Graph, Node, Value, concrete_shape
from .ops import OPS

Observer = Callable[[Node, Sequence[np.ndarray], Sequence[np.ndarray], int], None]


def run(graph: Graph, inputs: Sequence[np.ndarray], observe: Observer | None = None
        ) -> list[np.ndarray]:
    """Run the graph on float32 inputs; `observe(node, ins, outs, step)` sees every node.

    A one-step graph (`graph.time` set) runs its body T times, threading the state, and
    combines the per-step outputs as the time spec says.
    """
    inputs = [np.asarray(x, dtype=np.float32) for x in inputs]
    if graph.time is None:
        return _run_body(graph, inputs, {}, observe, 0)[0]
    spec = graph.time
    batch = inputs[0].shape[1 if spec.inputs[0] == "seq" else 0]
    env_state = {s.read: np.full(concrete_shape(s.read.shape, batch), s.init, np.float32)
                 for s in graph.states}
    per_step = []
    for t in range(spec.steps):
        step_inputs = [x[t] if mode == "seq" else x for x, mode in zip(inputs, spec.inputs)]
        outputs, env = _run_body(graph, step_inputs, env_state, observe, t)
        env_state = {s.read: env[s.write] for s in graph.states}
        per_step.append(outputs)
    results = []
    for i, mode in enumerate(spec.outputs):
        stacked = np.stack([outs[i] for outs in per_step])
        if mode == "stack":
            results.append(stacked)
        elif mode == "mean":
            results.append(stacked.mean(axis=0, dtype=np.float32))
        elif mode == "sum":
            results.append(stacked.sum(axis=0, dtype=np.float32))
        else:
            raise ValueError(f"unknown time output mode {mode!r}")
    return results


def _run_body(graph: Graph, inputs, state_values, observe, step):
    env: dict[Value, np.ndarray] = dict(zip(graph.inputs, inputs))
    env.update(graph.constants)
    env.update(state_values)
    for node in graph.nodes:
        args = [env[v] for v in node.inputs]
        outs = OPS[node.op].evaluate(args, node.attrs)
        if observe is not None:
            observe(node, args, outs, step)
        env.update(zip(node.outputs, outs))
    return [env[v] for v in graph.outputs], env
