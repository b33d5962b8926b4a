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
    combines the per-step outputs as the time spec says. A time_mix node needs all T steps
    of its input: the nodes before it run all their steps first (_stages).
    """
    inputs = [np.asarray(x, dtype=np.float32) for x in inputs]
    if graph.time is None:
        env = dict(graph.constants)
        env.update(zip(graph.inputs, inputs))
        _run_body(graph.nodes, env, observe, 0)
        return [env[v] for v in graph.outputs if v in env]
    spec = graph.time
    post = after_time(graph)
    batch = inputs[0].shape[1 if spec.inputs[0] == "seq" else 0]
    pick = {"seq": lambda x, t: x[t], "seq_batch_first": lambda x, t: x[:, t],
            "repeat": lambda x, t: x}
    per_step = []
    for t in range(spec.steps):
        env = dict(graph.constants)
        env.update((v, pick[mode](x, t)) for v, x, mode in zip(graph.inputs, inputs, spec.inputs))
        per_step.append(env)
    inits = {s.read: np.full(concrete_shape(s.read.shape, batch), s.init, np.float32)
             for s in graph.states}
    for stage in _stages([n for n in graph.nodes if n not in post], graph.states):
        if stage[0].op == "time_mix":  # all steps of its input at once
            for node in stage:
                _over_time(node, per_step, observe)
            continue
        for t, env in enumerate(per_step):  # step by step, each state from the step before
            for s in graph.states:
                before = per_step[t - 1].get(s.write) if t else None
                env[s.read] = inits[s.read] if before is None else before
            _run_body(stage, env, observe, t)
    env = per_step[-1]
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


def _stages(nodes: list[Node], states=()) -> list[list[Node]]:
    """The body in the order it can run: runs of nodes computed step by step, and between
    them the time_mix nodes, which need every step of their input first. A node's stage is
    the number of time_mix nodes on its longest path from the inputs; a state is read in
    the stage that writes it (verify refuses a state that goes through a time_mix)."""
    level: dict[Value, int] = {}
    for _ in range(len(nodes) + 1):  # until each state's read sits at its write's level
        stages: dict[tuple[int, bool], list[Node]] = {}
        for node in nodes:
            mix = node.op == "time_mix"
            k = max((level.get(v, 0) for v in node.inputs), default=0) + mix
            level.update((v, k) for v in node.outputs)
            stages.setdefault((k, not mix), []).append(node)
        moved = [s for s in states if level.get(s.write, 0) > level.get(s.read, 0)]
        if not moved:
            break
        level = {s.read: level[s.write] for s in moved} | \
            {s.read: level.get(s.read, 0) for s in states if s not in moved}
    return [stages[key] for key in sorted(stages)]


def _over_time(node: Node, per_step: list[dict], observe) -> None:
    """A time_mix node on its input's T step values stacked; step t gets row t."""
    x, *params = node.inputs
    args = [np.stack([e[x] for e in per_step]), *(per_step[0][v] for v in params)]
    out, = OPS[node.op].evaluate(args, node.attrs)
    for t, env in enumerate(per_step):
        env[node.outputs[0]] = out[t]
        if observe is not None:
            observe(node, [args[0][t], *args[1:]], [out[t]], t)


def _run_body(nodes, env: dict, observe, step) -> None:
    for node in nodes:
        args = [env[v] for v in node.inputs]
        outs = OPS[node.op].evaluate(args, node.attrs)
        if observe is not None:
            observe(node, args, outs, step)
        env.update(zip(node.outputs, outs))
