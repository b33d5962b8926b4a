"""The numpy reference interpreter: the oracle every pass and backend is checked against."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from snnc.ir.graph import Graph, Node, Value, concrete_shape
from snnc.ir.ops import OPS

Observer = Callable[[Node, Sequence[np.ndarray], Sequence[np.ndarray], int], None]


def run(graph: Graph, inputs: Sequence[np.ndarray], observe: Observer | None = None
        ) -> list[np.ndarray]:
    """Run the graph on float32 inputs; `observe(node, ins, outs, step)` sees every node.

    A one-step graph (`graph.time` set) runs its body T times, threading the state, and
    combines the per-step outputs as the time spec says.
    """
    inputs = [np.asarray(x, dtype=np.float32) for x in inputs]
    if graph.time is None:
        return _run_body(graph.nodes, graph, inputs, {}, observe, 0)[0]
    spec = graph.time
    post = after_time(graph)
    body = [n for n in graph.nodes if n not in post]
    batch = inputs[0].shape[1 if spec.inputs[0] == "seq" else 0]
    pick = {"seq": lambda x, t: x[t], "seq_batch_first": lambda x, t: x[:, t],
            "repeat": lambda x, t: x}
    env_state = {s.read: np.full(concrete_shape(s.read.shape, batch), s.init, np.float32)
                 for s in graph.states}
    per_step, env = [], {}
    for t in range(spec.steps):
        step_inputs = [pick[mode](x, t) for x, mode in zip(inputs, spec.inputs)]
        _, env = _run_body(body, graph, step_inputs, env_state, observe, t)
        env_state = {s.read: env[s.write] for s in graph.states}
        per_step.append(env)
    for node in (n for n in graph.nodes if n in post):  # once, after the last step
        if node.op == "time_reduce":
            args = [np.stack([e[node.inputs[0]] for e in per_step])]
        else:
            args = [env[v] for v in node.inputs]
        outs = OPS[node.op].evaluate(args, node.attrs)
        if observe is not None:
            observe(node, args, outs, spec.steps - 1)
        env.update(zip(node.outputs, outs))
    return [_output(v, mode, per_step, env) for v, mode in zip(graph.outputs, spec.outputs)]


def _output(value, mode: str, per_step: list[dict], env: dict) -> np.ndarray:
    if mode == "once":
        return env[value]
    stacked = np.stack([e[value] for e in per_step])
    if mode == "stack":
        return stacked
    if mode == "mean":
        return stacked.mean(axis=0, dtype=np.float32)
    if mode == "sum":
        return stacked.sum(axis=0, dtype=np.float32)
    raise ValueError(f"unknown time output mode {mode!r}")


def after_time(graph: Graph) -> set[Node]:
    """The time_reduce nodes of a one-step graph and every node computed from them."""
    late: set[Value] = set()
    found: set[Node] = set()
    for node in graph.nodes:
        if node.op == "time_reduce" or any(v in late for v in node.inputs):
            found.add(node)
            late.update(node.outputs)
    return found


def _run_body(nodes, graph: Graph, inputs, state_values, observe, step):
    env: dict[Value, np.ndarray] = dict(zip(graph.inputs, inputs))
    env.update(graph.constants)
    env.update(state_values)
    for node in nodes:
        args = [env[v] for v in node.inputs]
        outs = OPS[node.op].evaluate(args, node.attrs)
        if observe is not None:
            observe(node, args, outs, step)
        env.update(zip(node.outputs, outs))
    return [env[v] for v in graph.outputs if v in env], env
