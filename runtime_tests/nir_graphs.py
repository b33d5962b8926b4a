"""Small NIR graphs of every node type snnc compiles (test_nir.py), built from a seed, and an
independent reference: a NumPy simulator of docs/nir.md's equations that runs the whole
graph one step at a time (not layer by layer, as snnc's NIRModule does)."""

from __future__ import annotations

import nir
import numpy as np

F32 = np.float32


def _rng(seed):
    return np.random.default_rng(seed)


def lif(n, tau=2e-3, threshold=0.5, reset=0.0, leak=0.0, r=1.0):
    shape = (n,) if isinstance(n, int) else tuple(n)
    return nir.LIF(tau=np.full(shape, tau), r=np.full(shape, r), v_leak=np.full(shape, leak),
                   v_threshold=np.full(shape, threshold), v_reset=np.full(shape, reset))


def feed_forward(seed=0):
    """Affine-LIF-Linear-CubaLIF-Scale-IF-Affine-LI: spikes and membranes."""
    g = _rng(seed)
    nodes = {
        "input": nir.Input(np.array([6])),
        "fc1": nir.Affine(g.normal(size=(10, 6)).astype(F32), g.normal(size=10).astype(F32)),
        "lif": lif(10, tau=g.uniform(1.5e-3, 4e-3, 10), threshold=0.4),
        "fc2": nir.Linear(g.normal(size=(8, 10)).astype(F32)),
        "cuba": nir.CubaLIF(tau_syn=np.full(8, 2e-3), tau_mem=g.uniform(2e-3, 5e-3, 8),
                            r=np.full(8, 1.5), v_leak=np.zeros(8), v_threshold=np.full(8, 0.3),
                            v_reset=np.full(8, -0.1), w_in=np.full(8, 2.0)),
        "scale": nir.Scale(g.uniform(0.5, 1.5, 8).astype(F32)),
        "if": nir.IF(r=np.full(8, 400.0), v_threshold=np.full(8, 0.6), v_reset=np.zeros(8)),
        "fc3": nir.Affine(g.normal(size=(4, 8)).astype(F32), np.zeros(4, F32)),
        "li": nir.LI(tau=np.full(4, 3e-3), r=np.ones(4), v_leak=np.full(4, 0.1)),
        "output": nir.Output(np.array([4])),
    }
    chain = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(chain, chain[1:])))


def conv(seed=0):
    """Conv2d-LIF-SumPool2d-Conv2d-IF-AvgPool2d-Flatten-Affine-CubaLI, and a Threshold
    read beside the integrator I (two outputs)."""
    g = _rng(seed)
    nodes = {
        "input": nir.Input(np.array([2, 8, 8])),
        "conv1": nir.Conv2d(input_shape=(8, 8), weight=g.normal(size=(4, 2, 3, 3)).astype(F32),
                            stride=1, padding=1, dilation=1, groups=1,
                            bias=g.normal(size=4).astype(F32) * 0.1),
        "lif1": lif((4, 8, 8), threshold=0.6),
        "sum": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                             padding=np.array([0, 0])),
        "conv2": nir.Conv2d(input_shape=(4, 4), weight=g.normal(size=(4, 4, 3, 3)).astype(F32),
                            stride=1, padding=0, dilation=1, groups=1,
                            bias=np.zeros(4, F32)),
        "if1": nir.IF(r=np.full((4, 2, 2), 500.0), v_threshold=np.full((4, 2, 2), 0.5),
                      v_reset=np.zeros((4, 2, 2))),
        "avg": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                             padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([4, 1, 1])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine((g.normal(size=(3, 4)) * 0.5).astype(F32),
                         np.array([0.6, 0.1, -0.3], F32)),
        "culi": nir.CubaLI(tau_syn=np.full(3, 2e-3), tau_mem=np.full(3, 4e-3), r=np.ones(3),
                           v_leak=np.zeros(3), w_in=np.ones(3)),
        "output": nir.Output(np.array([3])),
        "integ": nir.I(r=np.full(3, 200.0)),
        "thr": nir.Threshold(np.full(3, 0.2, F32)),
        "output2": nir.Output(np.array([3])),
    }
    chain = ["input", "conv1", "lif1", "sum", "conv2", "if1", "avg", "flat", "fc", "culi",
             "output"]
    edges = list(zip(chain, chain[1:])) + [("fc", "integ"), ("integ", "thr"),
                                           ("thr", "output2")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def recurrent(seed=0, delay=None):
    """Affine into a LIF whose spikes come back through a Linear (snnTorch's RLeaky), a
    nested graph (Affine-LIF) after it, a Delay of `delay` seconds before the output."""
    g = _rng(seed)
    inner = nir.NIRGraph(nodes={
        "input": nir.Input(np.array([8])),
        "fc": nir.Affine(g.normal(size=(5, 8)).astype(F32), g.normal(size=5).astype(F32)),
        "lif": lif(5, threshold=0.3),
        "output": nir.Output(np.array([5]))},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    nodes = {
        "input": nir.Input(np.array([6])),
        "fc": nir.Affine(g.normal(size=(8, 6)).astype(F32), g.normal(size=8).astype(F32)),
        "lif": lif(8, threshold=0.5),
        "rec": nir.Linear((g.normal(size=(8, 8)) * 0.6).astype(F32)),
        "block": inner,
        "output": nir.Output(np.array([5])),
    }
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "rec"), ("rec", "lif"),
             ("lif", "block")]
    if delay is None:
        edges.append(("block", "output"))
    else:
        nodes["delay"] = nir.Delay(np.full(5, delay))
        edges += [("block", "delay"), ("delay", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def conv1d(seed=0):
    """Conv1d (stride 2, padding, dilation) -> LIF -> Flatten -> Affine -> LIF: an audio-like
    [C, L] input. (NIR 1.0.8's type inference ignores groups: a grouped conv cannot be
    built with its type check, nor read.)"""
    g = _rng(seed)
    nodes = {
        "input": nir.Input(np.array([2, 16])),
        "conv": nir.Conv1d(input_shape=16, weight=g.normal(size=(4, 2, 3)).astype(F32),
                           stride=2, padding=2, dilation=2, groups=1,
                           bias=g.normal(size=4).astype(F32) * 0.1),
        "lif1": lif((4, 8), threshold=0.4),
        "flat": nir.Flatten(input_type={"input": np.array([4, 8])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine((g.normal(size=(3, 32)) * 1.0).astype(F32),
                         np.zeros(3, F32)),
        "lif2": lif(3, threshold=0.5),
        "output": nir.Output(np.array([3])),
    }
    chain = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(chain, chain[1:])))


GRAPHS = {"feed_forward": feed_forward, "conv": conv, "conv1d": conv1d, "recurrent": recurrent,
          "delayed": lambda seed=0: recurrent(seed, delay=2e-3)}


# -- the reference: docs/nir.md's equations, one step of the whole graph at a time ---------

def simulate(graph, dt: float, x: np.ndarray, discretize: str = "euler") -> list[np.ndarray]:
    """Every Output node's sequence (in the graph's node order) for input x [T, B, ...]
    (float32). Each step runs every node once its inputs of the step are known; when no
    node is ready (a cycle), the stateless nodes on a cycle that read no value of the step
    run (on the previous step's values, 0 at step 0: a value is delayed at a neuron), else
    the first (by name) waiting node that has an input of the step."""
    nodes, edges = _inline(graph)
    preds = {n: [a for a, b in edges if b == n] for n in nodes}
    cyclic = {n for n in nodes if _reaches(n, n, edges)}
    neurons = ("LIF", "IF", "LI", "I", "CubaLIF", "CubaLI")
    state: dict = {}
    last: dict = {}
    outs = {n: [] for n, v in nodes.items() if isinstance(v, nir.Output) and "." not in n}
    for t in range(x.shape[0]):
        now: dict = {n: x[t] for n, v in nodes.items() if isinstance(v, nir.Input)
                     and "." not in n}  # nested graphs' Input nodes pass values on
        while len(now) < len(nodes):
            waiting = sorted(n for n in nodes if n not in now)
            ready = [n for n in waiting if all(p in now for p in preds[n])] or \
                [n for n in waiting if n in cyclic and type(nodes[n]).__name__ not in neurons
                 and not any(p in now for p in preds[n])] or \
                [n for n in waiting if any(p in now for p in preds[n])][:1]
            for name in ready:
                parts = [now[p] if p in now else last.get(p, _zeros(nodes[p], x.shape[1]))
                         for p in preds[name]]
                known = parts
                total = known[0]
                for p in known[1:]:
                    total = (total + p).astype(F32)
                now[name] = _step(nodes[name], total, state.setdefault(name, {}), dt,
                                  discretize)
        for name in outs:
            outs[name].append(now[name])
        last = now
    return [np.stack(v) for v in outs.values()]


def _zeros(node, batch):
    """A node's value before step 0: zeros of its output type."""
    return np.zeros((batch, *(int(d) for d in node.output_type["output"])), F32)


def _reaches(a, b, edges) -> bool:
    seen, todo = set(), [a]
    while todo:
        n = todo.pop()
        for x, y in edges:
            if x == n and y not in seen:
                if y == b:
                    return True
                seen.add(y)
                todo.append(y)
    return False


def _inline(graph, prefix=""):
    nodes, edges, ports = {}, [], {}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            sub_nodes, sub_edges = _inline(node, f"{prefix}{name}.")
            nodes.update(sub_nodes)
            edges += sub_edges
            ports[name] = node
        else:
            nodes[prefix + name] = node

    def end(name, kind):
        if name in ports:
            return [f"{prefix}{name}.{n}" for n, v in ports[name].nodes.items()
                    if isinstance(v, kind)]
        return [prefix + name]
    for a, b in graph.edges:
        edges += [(p, q) for p in end(a, nir.Output) for q in end(b, nir.Input)]
    return nodes, edges


def _f(a):
    return np.asarray(a, dtype=F32)


def _step(node, x, st, dt, discretize="euler"):
    """One step of one node (float32, the operations in docs/nir.md's order)."""
    kind = type(node).__name__
    if kind in ("Input", "Output"):
        return x
    if kind in ("Affine", "Linear"):
        y = np.einsum("...i,oi->...o", x.astype(np.float64), _f(node.weight).astype(np.float64))
        return (y + (_f(node.bias) if kind == "Affine" else 0)).astype(F32)
    if kind == "Scale":
        return (x * _f(node.scale)).astype(F32)
    if kind == "Threshold":
        return (x > _f(node.threshold)).astype(F32)
    if kind == "Flatten":
        return x.reshape(x.shape[0], -1)
    if kind == "Delay":
        queue = st.setdefault("queue", [])
        queue.append(x)
        d = int(round(float(np.asarray(node.delay).reshape(-1)[0]) / dt))
        return queue[-1 - d] if len(queue) > d else np.zeros_like(x)
    if kind in ("Conv1d", "Conv2d", "SumPool2d", "AvgPool2d"):
        return _spatial(node, kind, x)
    def a(tau):  # the factor of v += a (target - v): Euler's dt / tau, or exact
        r = dt / np.asarray(tau, np.float64)
        return _f(r if discretize == "euler" else -np.expm1(-r))
    v = st.get("v", np.zeros_like(x))
    if kind in ("LIF", "LI"):
        v = (v + a(node.tau) *
             (_f(node.v_leak) - v + _f(node.r) * x)).astype(F32)
    elif kind in ("IF", "I"):
        v = (v + _f(dt * np.asarray(node.r, np.float64)) * x).astype(F32)
    elif kind in ("CubaLIF", "CubaLI"):
        i = st.get("i", np.zeros_like(x))
        i = (i + a(node.tau_syn) * (_f(node.w_in) * x - i))
        st["i"] = i.astype(F32)
        v = (v + a(node.tau_mem) *
             (_f(node.v_leak) - v + _f(node.r) * st["i"])).astype(F32)
    if kind in ("LI", "I", "CubaLI"):
        st["v"] = v
        return v
    z = (v > _f(node.v_threshold)).astype(F32)
    st["v"] = np.where(z > 0, _f(node.v_reset), v).astype(F32)
    return z


def _spatial(node, kind, x):
    import torch
    from torch.nn import functional as F
    t = torch.from_numpy(np.ascontiguousarray(x)).double()
    if kind in ("Conv1d", "Conv2d"):
        y = (F.conv1d if kind == "Conv1d" else F.conv2d)(t, torch.from_numpy(_f(node.weight)).double(),
                     torch.from_numpy(_f(node.bias)).double(), tuple(np.atleast_1d(node.stride)),
                     node.padding if isinstance(node.padding, str) else
                     tuple(int(p) for p in np.atleast_1d(node.padding)),
                     tuple(np.atleast_1d(node.dilation)), int(node.groups))
    else:
        k = tuple(int(v) for v in node.kernel_size)
        y = F.avg_pool2d(t, k, tuple(int(v) for v in node.stride))
        if kind == "SumPool2d":
            y = y * (k[0] * k[1])
    return y.numpy().astype(F32)
