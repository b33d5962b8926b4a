"""The numpy reference interpreter: the oracle every pass and backend is checked against."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from snnc.ir.graph import Graph, Node, Value, concrete_shape
from snnc.ir.ops import OPS
from snnc.ir.time_ops import ALL_STEPS, ONCE

Observer = Callable[[Node, Sequence[np.ndarray], Sequence[np.ndarray], int], None]


def run(graph: Graph, inputs: Sequence[np.ndarray], observe: Observer | None = None
        ) -> list[np.ndarray]:
    """Run the graph on float32 inputs; `observe(node, ins, outs, step)` sees every node.

    A one-step graph (`graph.time` set) runs its body T times, threading the state, and
    combines the per-step outputs as the time spec says. A time_mix, time_reduce or
    time_stack node needs all T steps of its input: the nodes before it run all their steps
    first, and what is computed from a time_reduce or time_stack alone runs once (_stages).
    """
    inputs = [np.asarray(x, dtype=np.float32) for x in inputs]
    if graph.time is None:
        env = dict(graph.constants)
        env.update(zip(graph.inputs, inputs))
        _run_body(graph.nodes, env, observe, 0)
        return [env[v] for v in graph.outputs if v in env]
    spec = graph.time
    once = once_nodes(graph)
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
    for kind, stage in _stages(graph.nodes, graph.states, once):
        if kind == "all steps":  # time_mix/_reduce/_stack: every step of the input at once
            for node in stage:
                _over_time(node, per_step, observe)
        elif kind == "once":  # computed once from values that exist once
            for node in stage:
                args = [per_step[-1][v] for v in node.inputs]
                outs = OPS[node.op].evaluate(args, node.attrs)
                if observe is not None:
                    observe(node, args, outs, spec.steps - 1)
                for env in per_step:
                    env.update(zip(node.outputs, outs))
        else:
            for t, env in enumerate(per_step):  # step by step, each state from the step before
                for s in graph.states:
                    before = per_step[t - 1].get(s.write) if t else None
                    env[s.read] = inits[s.read] if before is None else before
                _run_body(stage, env, observe, t)
    return [_output(v, mode, per_step) for v, mode in zip(graph.outputs, spec.outputs)]


def _output(value, mode: str, per_step: list[dict]) -> np.ndarray:
    if mode == "once":
        return per_step[-1][value]
    stacked = np.stack([e[value] for e in per_step])
    if mode == "stack":
        return stacked
    if mode == "mean":
        return stacked.mean(axis=0, dtype=np.float32)
    if mode == "sum":
        return stacked.sum(axis=0, dtype=np.float32)
    raise ValueError(f"unknown time output mode {mode!r}")


def once_nodes(graph: Graph) -> set[Node]:
    """The nodes of a one-step graph computed once per run, not per step: time_reduce and
    time_stack (over all steps), and every node that reads their results and otherwise
    only values the same at every step (constants, a "repeat" input, a dequantized
    weight): a head after `x.mean(0)`, a temporal attention's scores."""
    fixed = set(graph.constants) | {v for v, mode in zip(graph.inputs, graph.time.inputs)
                                    if mode == "repeat"}
    found: set[Node] = set()
    late: set[Value] = set()
    for node in graph.nodes:
        if node.op in ONCE or node.op != "time_unstack" and \
                any(v in late for v in node.inputs) and \
                all(v in late or v in fixed for v in node.inputs):
            found.add(node)
            late.update(node.outputs)
        elif node.op not in _PER_STEP and all(v in fixed for v in node.inputs):
            fixed.update(node.outputs)
    return found


# ops whose outputs differ from step to step even when their inputs do not
_PER_STEP = (*ALL_STEPS, "time_unstack", "neuron", "neuron_model")


def _stages(nodes, states=(), once=frozenset()) -> list[tuple[str, list[Node]]]:
    """The body in the order it can run, as (kind, nodes): "all steps" (the time_mix,
    time_reduce and time_stack nodes, which need every step of their input first), "once"
    (nodes computed once from their results), "steps" (nodes computed step by step; a
    time_unstack hands step t its row t). A node's level is the number of all-steps nodes on
    its longest path from the inputs; a state is read at the level that writes it (verify
    refuses a state that goes through an all-steps node)."""
    level: dict[Value, int] = {}
    order = {"all steps": 0, "once": 1, "unstack": 2, "steps": 3}
    names = ["all steps", "once", "all steps", "steps"]  # a time_unstack runs over time
    for _ in range(len(nodes) + 1):  # until each state's read sits at its write's level
        stages: dict[tuple[int, int], list[Node]] = {}
        for node in nodes:
            kind = "all steps" if node.op in ALL_STEPS else "once" if node in once else \
                "unstack" if node.op == "time_unstack" else "steps"
            k = max((level.get(v, 0) for v in node.inputs), default=0) + (kind == "all steps")
            level.update((v, k) for v in node.outputs)
            stages.setdefault((k, order[kind]), []).append(node)
        moved = [s for s in states if level.get(s.write, 0) > level.get(s.read, 0)]
        if not moved:
            break
        level = {s.read: level[s.write] for s in moved} | \
            {s.read: level.get(s.read, 0) for s in states if s not in moved}
    return [(names[kind], stages[(k, kind)]) for k, kind in sorted(stages)]


def _over_time(node: Node, per_step: list[dict], observe) -> None:
    """A node over all steps: time_mix (its input's T step values stacked; step t gets row
    t), time_reduce / time_stack (the stacked steps; the result exists once) or
    time_unstack (a value that exists once; step t gets row t of the result)."""
    x, *params = node.inputs
    steps = per_step[-1][x] if node.op == "time_unstack" else \
        np.stack([e[x] for e in per_step])
    args = [steps, *(per_step[0][v] for v in params)]
    out, = OPS[node.op].evaluate(args, node.attrs)
    if node.op in ONCE:
        for env in per_step:
            env[node.outputs[0]] = out
        if observe is not None:
            observe(node, args, [out], len(per_step) - 1)
        return
    for t, env in enumerate(per_step):
        env[node.outputs[0]] = out[t]
        if observe is not None:
            observe(node, [steps if node.op == "time_unstack" else steps[t], *args[1:]],
                    [out[t]], t)


def _run_body(nodes, env: dict, observe, step) -> None:
    for node in nodes:
        args = [env[v] for v in node.inputs]
        outs = OPS[node.op].evaluate(args, node.attrs)
        if observe is not None:
            observe(node, args, outs, step)
        env.update(zip(node.outputs, outs))
