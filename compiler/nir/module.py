"""A NIR graph as a PyTorch module snnc compiles like any other (docs/nir.md).

`NIRModule(graph, dt)` takes the input sequence `[T, B, ...]` (the per-step shape the
graph's Input node gives) and returns every Output node's sequence `[T, B, ...]`. Nested
graphs are flattened (their nodes named `outer.inner`); a node with several incoming edges
reads their sum. Stateless nodes run on the whole sequence, neurons (neurons.py) loop over
it. A cycle of the graph (snnTorch's RLeaky, Norse's recurrent cells) runs as one loop over
the steps (neurons.Recurrent), its edges that close the cycle reading the previous step's
value (0 at step 0).
"""

from __future__ import annotations

import keyword
import re

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from snnc.errors import BadInputError
from snnc.nir import neurons

STATELESS = ("Affine", "Linear", "Scale", "Conv1d", "Conv2d", "Flatten", "AvgPool2d",
             "SumPool2d", "Threshold", "Delay", "Pass")


def flatten_graph(graph, prefix: str = "") -> tuple[dict, list]:
    """(nodes by dotted name, edges) with nested NIRGraphs inlined: an edge into a subgraph
    goes to its Input nodes, one out of it leaves from its Output nodes."""
    nodes, edges = {}, []
    inner: dict = {}
    for name, node in graph.nodes.items():
        if type(node).__name__ == "NIRGraph":
            sub_nodes, sub_edges = flatten_graph(node, f"{prefix}{name}.")
            nodes.update(sub_nodes)
            edges.extend(sub_edges)
            inner[name] = ([n for n, v in node.nodes.items() if type(v).__name__ == "Input"],
                           [n for n, v in node.nodes.items() if type(v).__name__ == "Output"])
        elif prefix and type(node).__name__ in ("Input", "Output"):
            nodes[prefix + name] = Pass()  # a nested graph's ports pass values on
        else:
            nodes[prefix + name] = node

    def ends(name: str, side: int) -> list:
        base, _, port = name.partition(".")
        if base in inner:
            ports = inner[base][side]
            return [f"{prefix}{base}.{p}" for p in ports if not port or p == port]
        return [prefix + name]
    for src, dst in graph.edges:
        edges.extend((a, b) for a in ends(src, 1) for b in ends(dst, 0))
    return nodes, edges


class Pass:
    """The Input or Output node of a nested graph: its value passes through."""


READOUTS = ("mean", "sum", "last")


def from_nir(nir, dt: float, readout: str | None = None, discretize: str = "euler"
             ) -> "NIRModule":
    """The factory of snnc checkpoints of NIR graphs (docs/nir.md): `nir` the NIR file's
    bytes as a uint8 tensor, read as `snnc compile` reads the file."""
    from snnc.nir.reader import read
    if not (isinstance(nir, torch.Tensor) and nir.dtype == torch.uint8 and nir.dim() == 1):
        raise BadInputError("the checkpoint's kwargs['nir'] must be the NIR file's bytes as a "
                            "1-D uint8 tensor")
    import io
    return NIRModule(read(io.BytesIO(nir.numpy().tobytes()), "the checkpoint's NIR graph"),
                     float(dt), readout, discretize)


class NIRModule(nn.Module):
    """The module of a NIR graph at time step `dt` seconds (module docstring). With a
    `readout` ("mean", "sum" or "last" over the steps) it returns [B, ...] instead of the
    sequence: a classifier's logits (snnc search trains on them)."""

    def __init__(self, graph, dt: float, readout: str | None = None,
                 discretize: str = "euler"):
        super().__init__()
        if discretize not in neurons.DISCRETIZATIONS:
            raise BadInputError(f"--discretize must be euler or exp, not {discretize!r}")
        if readout not in (None, *READOUTS):
            raise BadInputError(f"--readout must be one of {', '.join(READOUTS)}, not "
                                f"{readout!r}")
        self.readout = readout
        if not (isinstance(dt, float) and np.isfinite(dt) and dt > 0):
            raise BadInputError(f"--dt must be a positive number of seconds, not {dt!r}")
        nodes, edges = flatten_graph(graph)
        self.inputs = [n for n, v in nodes.items() if type(v).__name__ == "Input"]
        self.outputs = [n for n, v in nodes.items() if type(v).__name__ == "Output"]
        if len(self.inputs) != 1 or not self.outputs:
            raise BadInputError(f"the NIR graph has {len(self.inputs)} Input and "
                                f"{len(self.outputs)} Output nodes; snnc compiles graphs "
                                "with one Input and at least one Output")
        if not any(type(v).__name__ in neurons.NEURONS for v in nodes.values()):
            raise BadInputError("the NIR graph has no neuron node (LIF, IF, LI, I, CubaLIF, "
                                "CubaLI); snnc compiles spiking networks")
        self.preds = {n: [a for a, b in edges if b == n] for n in nodes}
        self.order, groups = schedule(nodes, edges)
        self.layers = nn.ModuleDict()
        self.keys = _keys(nodes)  # module names torch accepts, after the nodes
        for name in self.order:
            group = groups.get(name)
            if group is not None:
                self.layers[self.keys[name]] = _recurrent(group, nodes, (dt, discretize),
                                                          self.preds)
            elif name not in self.inputs + self.outputs:
                self.layers[self.keys[name]] = make(nodes[name], name, (dt, discretize))

    def forward(self, x: torch.Tensor):
        values = {self.inputs[0]: x}
        for name in self.order:
            if name in values:
                continue
            key = self.keys[name]
            layer = self.layers[key] if key in self.layers else None
            if isinstance(layer, neurons.Recurrent):
                values[layer.exit] = layer(values)
                continue
            total = neurons.summed([values[p] for p in self.preds[name]])
            values[name] = total if name in self.outputs else self.layers[key](total)
        out = tuple(values[n] for n in self.outputs)
        if self.readout is not None:
            out = tuple(o.mean(0) if self.readout == "mean" else o.sum(0)
                        if self.readout == "sum" else o[-1] for o in out)
        return out[0] if len(out) == 1 else out


def _keys(nodes: dict) -> dict:
    """Each node's module name: its NIR name with '.' (and what Python names cannot hold) as
    '_', prefixed `n_` if it is not a name Python can spell ("0", "if"), made unique; so a
    quantization config names layers as the graph does (`layers.fc1.layer`)."""
    keys: dict = {}
    for name in nodes:
        key = re.sub(r"\W", "_", name)
        if not key.isidentifier() or keyword.iskeyword(key):
            key = f"n_{key}"  # "0" (Norse), "if": names Python code can spell
        while key in keys.values() or key in dir(nn.Module):
            key += "_"
        keys[name] = key
    return keys


def schedule(nodes: dict, edges: list) -> tuple[list, dict]:
    """(an evaluation order, {first node of a cycle: the cycle's nodes in order}): nodes in
    topological order, each strongly connected component of more than one node (or with a
    self-edge) in place of its members, listed once under its first member."""
    succ = {n: [b for a, b in edges if a == n] for n in nodes}
    order, groups = [], {}
    for comp in reversed(_components(nodes, succ)):  # Tarjan: reverse topological order
        members = sorted(comp, key=list(nodes).index)
        if len(comp) > 1 or members[0] in succ[members[0]]:
            groups[members[0]] = _cycle_order(members, succ, nodes)
        order.append(members[0])
    return order, groups


def _components(nodes: dict, succ: dict) -> list:
    """Tarjan's strongly connected components (iterative)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    out.append(comp)
            elif nxt not in index:
                index[nxt] = low[nxt] = len(index)
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(succ[nxt])))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
    return out


def _cycle_order(members: list, succ: dict, nodes: dict) -> list:
    """The cycle's members in the order a step computes them (docs/nir.md, cycles): the
    stateless members that lead to an entry (a member the rest of the graph feeds) without
    passing a neuron, on the previous step's values; then the entries; then the others in
    topological order. A value goes around the cycle delayed by one step at a neuron (the
    recurrent weights of snnTorch's RLeaky act on the previous step's spikes)."""
    inside = set(members)
    preds = {m: [p for p in succ if m in succ[p] and p in inside] for m in members}
    entries = [m for m in members if any(m in succ[p] for p in succ if p not in inside)]
    stateless = {m for m in members if type(nodes[m]).__name__ in STATELESS}
    early: set = set()
    while True:
        more = {m for m in stateless - early - set(entries)
                if all(n in entries or n in early for n in succ[m] if n in inside)}
        if not more:
            break
        early |= more
    order = [m for m in members if m in early]
    order = _topological(order, preds) + list(entries)
    while entries and len(order) < len(members):
        ready = [m for m in members if m not in order and all(p in order for p in preds[m])]
        if not ready:
            rest = [m for m in members if m not in order]
            raise BadInputError(f"the NIR graph's cycle {members} holds another cycle among "
                                f"{rest} that does not pass through the node(s) {entries} "
                                "the rest of the graph feeds; snnc cannot tell which of its "
                                "edges reads the previous step")
        order.append(ready[0])
    return order


def _topological(names: list, preds: dict) -> list:
    """`names` in an order where each comes after those of them it reads."""
    order: list = []
    while len(order) < len(names):
        ready = [m for m in names if m not in order and
                 all(p in order or p not in names for p in preds[m])]
        order.append(ready[0] if ready else next(m for m in names if m not in order))
    return order


def _recurrent(group: list, nodes: dict, time: tuple, preds: dict) -> nn.Module:
    readers = {n for n in nodes for p in preds[n] if p in group and n not in group}
    exits = [n for n in group if any(p == n for r in readers for p in preds[r])]
    if len(exits) != 1:
        raise BadInputError(f"the NIR graph's cycle {group} is read outside it from "
                            f"{len(exits)} nodes ({exits}); snnc compiles a cycle read from one")
    outside = sorted({p for n in group for p in preds[n] if p not in group})
    if len(outside) != 1:
        raise BadInputError(f"the NIR graph: the cycle {group} reads {len(outside)} nodes from "
                            f"outside it ({outside}); snnc compiles a cycle fed by one node")
    return neurons.Recurrent(group, {n: make(nodes[n], n, time) for n in group}, preds,
                             outside[0], exits[0], _output_shape(nodes[outside[0]]))


def _output_shape(node) -> tuple:
    """The per-sample shape of a node's output, from its NIR type."""
    types = getattr(node, "output_type", None) or getattr(node, "input_type", None) or {}
    shape = next(iter(types.values()), None) if isinstance(types, dict) else None
    if shape is None or not len(shape):
        raise BadInputError(f"the NIR graph's node feeding a cycle ({type(node).__name__}) has "
                            "no output type; write the graph with its types (nir's "
                            "infer_types) so that snnc knows the shape of the cycle's values")
    return tuple(int(d) for d in shape)


def make(node, name: str, time: tuple) -> nn.Module:
    """The module of one NIR node; `time` is (dt, discretize)."""
    kind = type(node).__name__
    if kind in neurons.NEURONS:
        return neurons.NEURONS[kind](node, *time)
    if kind in STATELESS:
        return Stateless(node, kind, name, time[0])
    raise BadInputError(f"NIR node {name!r} is a {kind}, which snnc does not compile "
                        f"(docs/nir.md lists the node types)")


class Stateless(nn.Module):
    """A NIR node without state, on a whole sequence [T, B, ...] or on one step [B, ...]
    (in a cycle): `forward(x, whole)`."""

    def __init__(self, node, kind: str, name: str, dt: float):
        super().__init__()
        self.kind = kind
        if kind in ("Affine", "Linear"):
            w = np.asarray(node.weight, dtype=np.float32)
            self.layer = nn.Linear(w.shape[1], w.shape[0], bias=kind == "Affine")
            with torch.no_grad():
                self.layer.weight.copy_(torch.from_numpy(w))
                if kind == "Affine":
                    self.layer.bias.copy_(torch.from_numpy(np.asarray(node.bias, np.float32)))
        elif kind in ("Conv1d", "Conv2d"):
            self.layer = _conv(node, kind)
        elif kind in ("AvgPool2d", "SumPool2d"):
            self.pool = (_pair(node.kernel_size), _pair(node.stride), _pair(node.padding))
        elif kind == "Scale":
            self.register_buffer("scale", torch.as_tensor(np.asarray(node.scale, np.float32)))
        elif kind == "Threshold":
            self.register_buffer("threshold", torch.as_tensor(
                np.asarray(node.threshold, np.float32)))
        elif kind == "Flatten":
            self.shape = tuple(int(d) for d in node.output_type["output"])
        elif kind == "Delay":
            self.steps = _delay_steps(node, name, dt)

    def forward(self, x: torch.Tensor, lead: int = 2) -> torch.Tensor:
        """`lead`: the leading axes (2: [T, B]; 1: one step [B] in a cycle)."""
        kind = self.kind
        if kind == "Pass":
            return x
        if kind in ("Affine", "Linear"):
            return self.layer(x)
        if kind == "Scale":
            return x * self.scale
        if kind == "Threshold":
            return (x > self.threshold).to(x.dtype)
        if kind == "Flatten":
            return x.reshape(*x.shape[:lead], *self.shape)
        if kind == "Delay":
            if lead != 2:
                raise BadInputError("a NIR Delay node inside a cycle is not compiled")
            if self.steps == 0:
                return x
            kept = x[:x.shape[0] - self.steps]  # then d zero steps in front (time padding)
            return F.pad(kept, (0, 0) * (x.dim() - 1) + (self.steps, 0))
        flat = x.flatten(0, lead - 1) if lead == 2 else x
        if kind in ("Conv1d", "Conv2d"):
            y = self.layer(flat)
        else:
            kernel, stride, padding = self.pool
            y = F.avg_pool2d(flat, kernel, stride, padding)
            if kind == "SumPool2d":
                y = y * float(kernel[0] * kernel[1])
        return y.unflatten(0, x.shape[:2]) if lead == 2 else y


def _pair(v) -> tuple:
    a = np.asarray(v).reshape(-1)
    return (int(a[0]), int(a[-1]))


def _conv(node, kind: str) -> nn.Module:
    w = np.asarray(node.weight, dtype=np.float32)
    cls = nn.Conv1d if kind == "Conv1d" else nn.Conv2d
    padding = node.padding if isinstance(node.padding, str) else tuple(
        int(p) for p in np.asarray(node.padding).reshape(-1))
    single = lambda v: tuple(int(p) for p in np.asarray(v).reshape(-1))  # noqa: E731
    layer = cls(w.shape[1] * int(node.groups), w.shape[0], w.shape[2:],
                stride=single(node.stride), padding=padding, dilation=single(node.dilation),
                groups=int(node.groups), bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
        layer.bias.copy_(torch.from_numpy(np.asarray(node.bias, np.float32).reshape(-1)))
    return layer


def _delay_steps(node, name: str, dt: float) -> int:
    delays = np.asarray(node.delay, dtype=np.float64).reshape(-1) / dt
    steps = np.round(delays)
    if not delays.size or np.any(np.abs(delays - steps) > 1e-6 * np.maximum(1, steps)) or \
            np.any(steps != steps[0]) or steps[0] < 0:
        raise BadInputError(f"NIR Delay {name!r}: delays {np.asarray(node.delay)} s are not one "
                            f"non-negative integer multiple of dt = {dt} s; snnc compiles a "
                            "delay of whole steps, the same for every element")
    return int(steps[0])
