"""Unroll a one-step graph over T timesteps, layer by layer, threading the neuron state.

Requires: a verified graph with a time spec (`graph.time`), as the frontend makes it: the
only state is each neuron's own membrane.
Ensures: `graph.time is None` and no state. Each neuron becomes T neuron nodes, step t
reading step t-1's membrane and step 0 reading its `init` as a scalar constant (no
all-zero tensors are stored). Every other node appears once:
- time-invariant nodes (inputs all constants, "repeat" inputs or such nodes' outputs,
  e.g. weight dequantization or a conv on the static image) run on [N, ...];
- time-varying nodes run on all steps at once, on [TN, ...] (T batches of N, time-major),
  as SpikingJelly's multi-step layers do; a neuron's T inputs are `chunk`s of such a
  tensor and its T spike outputs are `concat`enated back.
"seq" inputs [T, N, ...] (and "seq_batch_first" ones [N, T, ...], transposed) become
[TN, ...]; "stack" outputs are reshaped to [T, N, ...];
"mean"/"sum" outputs are reduced over that axis, and so is the input of a `time_reduce` node
(its "max"/"min" step by step with `compare` and `where`; "last" is the last step's value):
its result and the nodes computed from it (a head after `x.mean(0)`) run once; "once"
outputs are such values. A neuron whose membrane input is not a state (a single-step
program, steps = 1) reads that value. Meaning is preserved exactly: every
sample of every step sees the same operations in the same order.

Arithmetic that reads a state other than through a neuron node and leads to a state's next
value (a neuron written in PyTorch, re-rolled by the frontend) is a recurrence: each
connected group of such nodes is emitted step by step (step t reads step t-1's values),
where graph order allows, and the nodes reading its results run after it.

A `time_mix` node (a parallel spiking neuron's learned mix over time) is one matrix product
over the stacked steps: time moved last, `linear` with its [T, T] weight and [T] bias,
moved back; a bias [T, ...] with feature axes (a per-step constant, GLIF's gates) is added
after moving back, as a constant [T, 1, ...].

A state that no neuron node or recurrence reads only delays a value by one step (the output
of a re-rolled loop that lags its input, RAFNode's spike: docs/ir.md): step t reads the
value its write had at step t - 1, step 0 its fill, `where(w_0, init, init)` (the fill in
the write's shape, exactly).

This is valid because no value flows from one step to the next except through a neuron's
own membrane, a time_mix or such a delay, so a layer can process all steps once the layer
before it has.

Before (T=2):
    state %lif.v: f32[N,4] init=0.0
    %y: f32[N,4] = linear(%x, %w)
    %s: f32[N,4], %v1: f32[N,4] = neuron(%y, %lif.v) ...
    %z: f32[N,4] = relu(%s)
    next %lif.v = %v1
    return %z
After:
    %y: f32[N,4] = linear(%x, %w)
    %s.t0: f32[N,4], %v1.t0: f32[N,4] = neuron(%y, %v_init0) ...
    %s.t1: f32[N,4], %v1.t1: f32[N,4] = neuron(%y, %v1.t0) ...
    %s: f32[2N,4] = concat(%s.t0, %s.t1) axis=0
    %z: f32[2N,4] = relu(%s)
    %output: f32[2,N,4] = reshape(%z) shape=[2,'N',4]
"""

from __future__ import annotations

import numpy as np

from snnc.ir.graph import BATCH, Graph, Node, Value, batch_factor, times_batch
from snnc.ir.ops import OPS, neuron_states
from snnc.ir.time_ops import time_mix_bias
from snnc.options import DEFAULT, Options


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    if graph.time is None:
        return graph
    return _Unroller(graph).run()


def _batched_shape(shape, steps: int):
    return tuple(times_batch(steps) if d == BATCH else d for d in shape)


class _Unroller:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.steps = graph.time.steps
        self.nodes: list[Node] = []
        self.constants = dict(graph.constants)
        self.invariant: dict[Value, Value] = {v: v for v in graph.constants}
        self.batched: dict[Value, Value] = {}  # body value -> its [TN, ...] value
        self.per_step: dict[Value, list[Value]] = {}  # body value -> T values [N, ...]
        self.state_now: dict[Value, Value] = {}
        self.calls: dict[str, int] = {}

    def emit(self, op: str, inputs, attrs, source: str, hints) -> list[Value]:
        types = OPS[op].infer([(v.dtype, v.shape) for v in inputs], attrs)
        outs = [Value(d, tuple(s), h) for (d, s), h in zip(types, hints)]
        self.nodes.append(Node(op, tuple(inputs), tuple(outs), attrs, source))
        return outs

    def run(self) -> Graph:
        g, spec, steps = self.graph, self.graph.time, self.steps
        inputs = []
        for value, mode in zip(g.inputs, spec.inputs):
            if mode == "repeat":
                new = Value(value.dtype, value.shape, value.hint)
                self.invariant[value] = new
            else:
                new = Value(value.dtype, (steps, *value.shape), value.hint)
                time_major = new
                if mode == "seq_batch_first":  # [N, T, ...] -> [T, N, ...]
                    new = Value(value.dtype, (value.shape[0], steps, *value.shape[1:]),
                                value.hint)
                    perm = [1, 0, *range(2, len(new.shape))]
                    time_major, = self.emit("transpose", [new], {"perm": perm},
                                            f"input {value.hint}", [f"{value.hint}.time_major"])
                flat = _batched_shape(value.shape, steps)
                self.batched[value], = self.emit("reshape", [time_major], {"shape": list(flat)},
                                                 f"input {value.hint}", [f"{value.hint}.steps"])
            inputs.append(new)
        for state in g.states:
            const = Value("f32", (), f"v_init{state.init:g}")
            self.constants[const] = np.array(state.init, np.float32)
            self.state_now[state.read] = const
        recurrences = _recurrences(g)
        read = {v for n in g.nodes if n.op in ("neuron", "neuron_model") for v in n.inputs} | {
            v for group in recurrences for n in group for v in n.inputs}
        self.delays = {s.read: s.write for s in g.states if s.read not in read}
        for node in _schedule(g.nodes, recurrences, self.delays):
            if isinstance(node, tuple):  # a neuron written as arithmetic: step by step
                self.recurrence(node)
            elif node.op == "time_reduce":  # its result, and all that uses it, exists once
                self.invariant[node.outputs[0]] = self.over_time(
                    node.inputs[0], node.attrs["mode"], node.source, node.outputs[0].hint)
            elif node.op == "time_mix":
                self.time_mix(node)
            elif node.op == "time_stack":  # like time_reduce: exists once
                self.invariant[node.outputs[0]] = self.time_stack(node)
            elif node.op == "time_unstack":
                self.time_unstack(node)
            elif node.op in ("neuron", "neuron_model"):
                self.neuron(node)
            elif all(v in self.invariant for v in node.inputs):
                outs = self.emit(node.op, [self.invariant[v] for v in node.inputs], node.attrs,
                                 node.source, [v.hint for v in node.outputs])
                self.invariant.update(zip(node.outputs, outs))
            else:
                ins = [self.all_steps(v) for v in node.inputs]
                attrs = dict(node.attrs)
                if node.op == "reshape":
                    attrs["shape"] = list(_batched_shape(attrs["shape"], steps))
                outs = self.emit(node.op, ins, attrs, node.source, [v.hint for v in node.outputs])
                self.batched.update(zip(node.outputs, outs))
        outputs = [self.output(v, mode) for v, mode in zip(g.outputs, spec.outputs)]
        used = {v for n in self.nodes for v in n.inputs}
        constants = {v: a for v, a in self.constants.items() if v in used}
        return g.replace(inputs=tuple(inputs), nodes=tuple(self.nodes), outputs=tuple(outputs),
                         constants=constants, states=(), time=None)

    def step_values(self, value: Value) -> list[Value]:
        """T values [N, ...], one per step."""
        if value in self.per_step:
            return self.per_step[value]
        if value in self.invariant:
            return [self.invariant[value]] * self.steps
        if value in self.delays:  # a state holding the value one step late (a delay)
            later, init = self.step_values(self.delays[value]), self.state_now[value]
            first, = self.emit("where", [later[0], init, init], {}, "time", [f"{value.hint}.t0"])
            self.per_step[value] = [first, *later[:-1]]
            return self.per_step[value]
        whole = self.batched[value]
        parts = self.emit("chunk", [whole], {"axis": 0, "count": self.steps}, "time",
                          [f"{value.hint}.t{t}" for t in range(self.steps)])
        self.per_step[value] = parts
        return parts

    def all_steps(self, value: Value) -> Value:
        """The value for all steps at once: [TN, ...]. Values without a batch dimension
        (constants, dequantized weights) are the same for every sample and stay as they are."""
        if value in self.invariant and BATCH not in value.shape:
            return self.invariant[value]
        if value not in self.batched:
            parts = self.step_values(value)
            source = "time" if value in self.per_step else "time (repeated)"
            self.batched[value], = self.emit("concat", parts, {"axis": 0}, source,
                                             [value.hint])
        return self.batched[value]

    def neuron(self, node: Node) -> None:
        """A neuron (or neuron model) cut into its T steps, its states threaded: inputs x,
        k states, then constant params (a per-channel threshold)."""
        k = neuron_states(node)
        x, reads, params = node.inputs[0], node.inputs[1:1 + k], node.inputs[1 + k:]
        params = [self.invariant[v] for v in params]
        per_output = [[] for _ in node.outputs]
        stateful = reads[0] in self.state_now  # else a single-step program's state values
        for t, x_t in enumerate(self.step_values(x)):
            step = t if stateful else self.call(node)
            hints = [f"{v.hint}.t{step}" for v in node.outputs]
            now = [self.state_now[r] if stateful else self.step_values(r)[t] for r in reads]
            outs = self.emit(node.op, [x_t, *now, *params], node.attrs, node.source, hints)
            if stateful:
                self.state_now.update(zip(reads, outs[1:]))
            for values, out in zip(per_output, outs):
                values.append(out)
        for value, values in zip(node.outputs, per_output):
            self.per_step[value] = values

    def time_mix(self, node: Node) -> None:
        """h[t] = sum_s w[t, s] x[s] + b[t] as one matrix product over the time axis: the
        steps stacked [T, N, ...], time moved last, linear(w, b), moved back to [TN, ...].
        A bias [T, ...] with feature axes is added after moving back, as [T, 1, ...]."""
        x, w, b = node.inputs
        hint = node.outputs[0].hint
        stacked = self.stacked(x, node.source, f"{x.hint}.steps")
        rank = len(stacked.shape)
        last = [*range(1, rank), 0]
        back = [rank - 1, *range(rank - 1)]
        moved, = self.emit("transpose", [stacked], {"perm": last}, node.source,
                           [f"{hint}.time_last"])
        per_step = len(b.shape) == 1
        mixed, = self.emit("linear", [moved, self.invariant[w]] + [self.invariant[b]] * per_step,
                           {}, node.source, [f"{hint}.mixed"])
        steps, = self.emit("transpose", [mixed], {"perm": back}, node.source, [f"{hint}.steps"])
        if not per_step:
            bias = time_mix_bias(np.asarray(self.graph.constants[b], np.float32), rank - 1)
            const = Value("f32", bias.shape, f"{b.hint}.steps")
            self.constants[const] = bias
            steps, = self.emit("add", [steps, const], {}, node.source, [f"{hint}.biased"])
        flat = _batched_shape(node.outputs[0].shape, self.steps)
        self.batched[node.outputs[0]], = self.emit(
            "reshape", [steps], {"shape": list(flat)}, node.source, [hint])

    def time_stack(self, node: Node) -> Value:
        """The stacked steps [T, N, ...], time moved to the node's axis."""
        x, = node.inputs
        hint, axis = node.outputs[0].hint, node.attrs["axis"]
        stacked = self.stacked(x, node.source, f"{hint}.steps" if axis else hint)
        if axis == 0:
            return stacked
        perm = [*range(1, axis + 1), 0, *range(axis + 1, len(stacked.shape))]
        moved, = self.emit("transpose", [stacked], {"perm": perm}, node.source, [hint])
        return moved

    def time_unstack(self, node: Node) -> None:
        """A value that exists once with T on the node's axis, as the steps' value [TN, ...]:
        that axis moved first, merged with the batch."""
        y, = node.inputs
        hint, axis = node.outputs[0].hint, node.attrs["axis"]
        whole = self.invariant[y]
        if axis:
            perm = [axis, *range(axis), *range(axis + 1, len(whole.shape))]
            whole, = self.emit("transpose", [whole], {"perm": perm}, node.source,
                               [f"{hint}.time_major"])
        flat = _batched_shape(node.outputs[0].shape, self.steps)
        self.batched[node.outputs[0]], = self.emit("reshape", [whole], {"shape": list(flat)},
                                                   node.source, [hint])

    def recurrence(self, nodes: tuple[Node, ...]) -> None:
        """Arithmetic that reads states and computes their next values (a neuron written
        in plain PyTorch), emitted step by step: each step reads the previous one's."""
        states = [s for s in self.graph.states if any(s.read in n.inputs for n in nodes)]
        for t in range(self.steps):
            local: dict[Value, Value] = {s.read: self.state_now[s.read] for s in states}
            for s in states:
                self.per_step.setdefault(s.read, []).append(local[s.read])
            for node in nodes:
                ins = [local[v] if v in local else self.step_values(v)[t] for v in node.inputs]
                outs = self.emit(node.op, ins, node.attrs, node.source,
                                 [f"{v.hint}.t{t}" for v in node.outputs])
                local.update(zip(node.outputs, outs))
                for value, out in zip(node.outputs, outs):
                    self.per_step.setdefault(value, []).append(out)
            for s in states:
                self.state_now[s.read] = local[s.write] if s.write in local else \
                    self.step_values(s.write)[t]

    def call(self, node: Node) -> int:
        """A single-step program calls a neuron layer once per step: this call's step."""
        layer = node.source.layer
        self.calls[layer] = self.calls.get(layer, -1) + 1
        return self.calls[layer]

    def output(self, value: Value, mode: str) -> Value:
        if mode == "once":  # computed after the steps (or the program has one step)
            return self.invariant[value] if value in self.invariant else self.all_steps(value)
        if mode == "stack":
            return self.stacked(value, "output (over time)", value.hint)
        return self.over_time(value, mode, "output (over time)", value.hint)

    def stacked(self, value: Value, source, hint: str) -> Value:
        """[T, N, ...]: the value of every step, stacked."""
        whole = self.all_steps(value)
        shape = [self.steps, *(BATCH if batch_factor(d) == self.steps else d
                               for d in whole.shape)]
        stacked, = self.emit("reshape", [whole], {"shape": shape}, source, [hint])
        return stacked

    def over_time(self, value: Value, mode: str, source, hint: str) -> Value:
        """The mean, sum, maximum or minimum over all steps of `value`, or its last step's
        value: [N, ...]. The maximum (minimum) keeps the running one where it is >= (<=)
        the next step's, step by step: one of the values, exactly."""
        if mode == "last":
            return self.step_values(value)[-1]
        if mode in ("max", "min"):
            best, *rest = self.step_values(value)
            for t, x in enumerate(rest, 1):
                keep, = self.emit("compare", [best, x], {"op": "ge" if mode == "max" else "le"},
                                  source, [f"{hint}.keep{t}"])
                best, = self.emit("where", [keep, best, x], {}, source,
                                  [hint if t == len(rest) else f"{hint}.{mode}{t}"])
            return best
        stacked = self.stacked(value, source, f"{hint}.steps")
        op = "reduce_mean" if mode == "mean" else "reduce_sum"
        reduced, = self.emit(op, [stacked], {"axes": [0], "keepdims": False}, source, [hint])
        return reduced


def _recurrences(graph: Graph) -> list[tuple[Node, ...]]:
    """The nodes that read a state (other than through a neuron op) and lead to a state's
    next value, in connected groups, each in graph order: they must run step by step."""
    users, producers = graph.users(), graph.producers()
    states = [s for s in graph.states
              if any(u.op not in ("neuron", "neuron_model") for u in users.get(s.read, []))]
    if not states:
        return []
    forward = {s: _reach([u for u in users.get(s.read, [])],
                         lambda n: [u for v in n.outputs for u in users.get(v, [])])
               for s in states}
    backward = {s: _reach([producers[s.write]] if s.write in producers else [],
                          lambda n: [producers[v] for v in n.inputs if v in producers])
                for s in states}
    core = set()
    for cycle in _state_cycles(states, forward, producers):
        core |= set().union(*(forward[s] for s in cycle)) & \
            set().union(*(backward[s] for s in cycle))
    group = {n: n for n in core}

    def root(n):
        while group[n] is not n:
            n = group[n]
        return n

    def join(a, b):
        group[root(a)] = root(b)

    for node in core:
        for v in node.inputs:
            if producers.get(v) in core:
                join(node, producers[v])
    for s in states:
        if producers.get(s.write) in core:
            for u in users.get(s.read, []):
                if u in core:
                    join(u, producers[s.write])
    groups: dict[Node, list[Node]] = {}
    for node in graph.nodes:
        if node in core:
            groups.setdefault(root(node), []).append(node)
    return [tuple(g) for g in groups.values()]


def _reach(start, step) -> set:
    found: set = set()
    todo = list(start)
    while todo:
        node = todo.pop()
        if node not in found:
            found.add(node)
            todo.extend(step(node))
    return found


def _state_cycles(states, forward, producers) -> list[list]:
    """The states in groups that feed each other within a step (a neuron's own states; two
    neurons in a row are two groups, so the layers between them run on all steps at once)."""
    feeds = {s: {o for o in states if producers.get(o.write) in forward[s]} for s in states}
    closure = {s: _reach([s], lambda x: feeds[x]) for s in states}
    cycles: list[list] = []
    for s in states:
        if not any(s in c for c in cycles):
            cycles.append([o for o in states if o in closure[s] and s in closure[o]])
    return cycles


def _schedule(nodes, groups, delays=None):
    """The nodes in an order where each group runs as one unit (a tuple), after everything
    it reads and before everything that reads it: graph order where possible. `delays`
    (state read -> write): a delay's read is ready when its write is."""
    import heapq

    unit = {n: g for g in groups for n in g}
    position = {n: i for i, n in enumerate(nodes)}
    key = {g: max(position[n] for n in g) for g in groups}
    units = list(dict.fromkeys(unit.get(n, n) for n in nodes))
    produced = {v: unit.get(n, n) for n in nodes for v in n.outputs}
    produced.update({r: produced[w] for r, w in (delays or {}).items() if w in produced})
    needs = {u: {produced[v] for n in (u if isinstance(u, tuple) else (u,)) for v in n.inputs
                 if v in produced} - {u} for u in units}
    readers: dict = {}
    for u, deps in needs.items():
        for d in deps:
            readers.setdefault(d, []).append(u)
    ready = [(key[u] if isinstance(u, tuple) else position[u], i, u)
             for i, u in enumerate(units) if not needs[u]]
    heapq.heapify(ready)
    index = {u: i for i, u in enumerate(units)}
    order = []
    while ready:
        _, _, u = heapq.heappop(ready)
        order.append(u)
        for r in readers.get(u, []):
            needs[r].discard(u)
            if not needs[r]:
                heapq.heappush(ready, (key[r] if isinstance(r, tuple) else position[r],
                                       index[r], r))
    return order
