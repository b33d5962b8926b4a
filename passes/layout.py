"""Choose each tensor's memory layout so the graph transposes only where a layout must change.

lower_integer leaves a transpose on each side of every integer GEMM (its operands must be
channel-last: token-major [T*B, N, C] in a transformer block, NHWC in a spatial stem), and
a logical transpose costs a copy. This pass gives every value a physical layout: a
permutation `p` of its logical axes (the tensor in memory is `transpose(logical, p)`):

- a `transpose` node costs nothing: its output keeps its input's memory and a new `p`;
- elementwise ops (add, sub, mul, div, relu, cast, neuron, and the float islands' gelu,
  sigmoid, exp, ...) run in the layout that needs the fewest conversions: of their
  same-rank inputs, and the logical one for each of their outputs that is a graph output
  (a stream-mode neuron's membrane); a tie goes to the first non-identity layout.
  Constants are permuted to it, other inputs converted;
- split, chunk, concat, softmax and log_softmax run along the permuted axis;
- a reshape keeps the layout when each group of axes it merges or splits stays contiguous
  and in order in memory (a channel axis split into heads);
- every other op (the GEMMs, im2col, pools, reductions, conv, layer_norm, group_norm)
  and every graph output reads the logical layout: a `transpose` node converts a value to
  it where needed, once per value and layout. With --debug-outputs every neuron does too
  (its spikes are outputs).

Requires: a verified graph without a time spec and without state (after unroll_timesteps
or expose_state): graph inputs and outputs keep their layout.
Ensures: the same values at the outputs, bit for bit (transposes and relabelling move data,
never compute); transposes only at a layout change (`count_transposes`).

Before (a token-major layer between two neurons in channel-major [N, C, L]):
    %s_u8: u8[N,384,64] = cast(%s) to='u8'
    %s_cl: u8[N,64,384] = transpose(%s_u8) perm=[0,2,1]
    %y_cl: f32[N,64,1152] = int_matmul(%s_cl, %w)
    %y: f32[N,1152,64] = transpose(%y_cl) perm=[0,2,1]
    %z: f32[N,1152,64] = add(%y, %beta)          (%beta: f32[1152,1])
After (the neuron after it, its threshold and %beta in [N, L, C] too):
    %s_u8: u8[N,64,384] = cast(%s) to='u8'       (%s already token-major)
    %y_cl: f32[N,64,1152] = int_matmul(%s_u8, %w)
    %z: f32[N,64,1152] = add(%y_cl, %beta_t)     (%beta_t: f32[1,1,1152])
"""

from __future__ import annotations

import numpy as np

from snnc.ir import islands
from snnc.ir.graph import Graph, Node, Value, batch_factor
from snnc.options import DEFAULT, Options

ELEMENTWISE = ("add", "sub", "mul", "div", "relu", "cast", "neuron", "neuron_model", "compare",
               "where", "clip", "round") + tuple(islands.UNARY)
ALONG_AXIS = ("split", "chunk", "concat", "softmax", "log_softmax")
Perm = tuple[int, ...]


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    if graph.time is not None or graph.states:
        return graph
    if not any(n.op == "transpose" for n in graph.nodes):
        return graph
    return _Layout(graph, opts).run()


def count_transposes(graph: Graph) -> int:
    return sum(n.op == "transpose" for n in graph.nodes)


def _identity(rank: int) -> Perm:
    return tuple(range(rank))


def _inverse(p: Perm) -> Perm:
    inv = [0] * len(p)
    for i, axis in enumerate(p):
        inv[axis] = i
    return tuple(inv)


def _permuted(shape, p: Perm) -> tuple:
    return tuple(shape[a] for a in p)


class _Layout:
    def __init__(self, graph: Graph, opts: Options):
        self.graph = graph
        self.debug = opts.debug_outputs  # neurons' spikes are outputs: keep their layout
        self.consts = dict(graph.constants)
        self.env: dict[Value, tuple[Value, Perm]] = {}
        self.outputs = set(graph.outputs)
        self.converted: dict[tuple[Value, Perm], Value] = {}
        self.nodes: list[Node] = []

    def run(self) -> Graph:
        for v in self.graph.inputs:
            self.env[v] = (v, _identity(len(v.shape)))
        for node in self.graph.nodes:
            rule = getattr(self, f"_{node.op}", None)
            if node.op in ELEMENTWISE:
                rule = self._elementwise
            elif node.op in ALONG_AXIS:
                rule = self._along_axis
            if rule is None or not rule(node):
                self._logical(node)
        outputs = [self.to(v, _identity(len(v.shape)), None) for v in self.graph.outputs]
        graph = self.graph.replace(outputs=tuple(outputs))
        return graph.with_nodes(self.nodes, self.consts)

    # -- values

    def perm(self, value: Value) -> Perm:
        if value in self.consts:
            return _identity(len(value.shape))
        return self.env[value][1]

    def to(self, value: Value, target: Perm, node: Node | None) -> Value:
        """`value` held in layout `target` (a transpose node if it is held otherwise)."""
        if value in self.consts:
            if target == _identity(len(value.shape)):
                return value
            return self.const_in(value, target)
        physical, p = self.env[value]
        if p == target:
            return physical
        key = (value, target)
        if key not in self.converted:
            inv = _inverse(p)
            r = tuple(inv[a] for a in target)
            out = Value(physical.dtype, _permuted(physical.shape, r), physical.hint)
            source = node.source if node is not None else "layout"
            self.nodes.append(Node("transpose", (physical,), (out,), {"perm": r}, source))
            self.converted[key] = out
        return self.converted[key]

    def const_in(self, value: Value, target: Perm) -> Value:
        """A constant broadcast against a tensor of rank len(target), in that layout (made
        once: a threshold read by every step of its neuron is one constant)."""
        array = self.consts[value]
        if array.ndim == 0:
            return value  # a scalar broadcasts in any layout
        key = (value, target)
        if key not in self.converted:
            full = array.reshape((1,) * (len(target) - array.ndim) + array.shape)
            moved = np.ascontiguousarray(full.transpose(target))
            self.converted[key] = Value(value.dtype, moved.shape, value.hint)
            self.consts[self.converted[key]] = moved
        return self.converted[key]

    def define(self, old: Value, p: Perm) -> Value:
        """A new value holding `old` in layout p."""
        new = Value(old.dtype, _permuted(old.shape, p), old.hint)
        self.env[old] = (new, p)
        return new

    def _logical(self, node: Node) -> None:
        ins = [self.to(v, _identity(len(v.shape)), node) for v in node.inputs]
        for v in node.outputs:
            self.env[v] = (v, _identity(len(v.shape)))
        self.nodes.append(Node(node.op, ins, node.outputs, dict(node.attrs), node.source))

    # -- rules: each returns False to fall back to the logical layout

    def _transpose(self, node: Node) -> bool:
        (x,), (y,) = node.inputs, node.outputs
        if x in self.consts:
            return False
        physical, p = self.env[x]
        inv_t = _inverse(node.attrs["perm"])
        self.env[y] = (physical, tuple(inv_t[a] for a in p))
        return True

    def _elementwise(self, node: Node) -> bool:
        if node.op in ("neuron", "neuron_model") and self.debug:
            return False
        rank = len(node.outputs[0].shape)
        perms = [self.perm(v) for v in node.inputs
                 if v not in self.consts and len(v.shape) == rank]
        p = self.vote(perms, node, rank)
        if p == _identity(rank) or any(len(v.shape) != rank and v not in self.consts
                                       for v in node.inputs):
            return False
        ins = [self.to(v, p, node) for v in node.inputs]
        outs = [self.define(v, p) for v in node.outputs]
        self.nodes.append(Node(node.op, ins, outs, dict(node.attrs), node.source))
        return True

    def vote(self, perms: list[Perm], node: Node, rank: int) -> Perm:
        """The layout that needs the fewest conversions: inputs already in it, plus graph
        outputs among the node's outputs for the logical layout (a stream-mode neuron reads
        and writes its membrane there); a tie goes to the first non-identity layout (the
        next integer GEMM wants it)."""
        identity = _identity(rank)
        pinned = sum(v in self.outputs for v in node.outputs)
        scores = {q: perms.count(q) + (pinned if q == identity else 0)
                  for q in [*perms, identity]}
        best = max(scores.values())
        return next((q for q in [*perms, identity] if scores[q] == best and q != identity),
                    identity)

    def _along_axis(self, node: Node) -> bool:
        if any(v in self.consts for v in node.inputs):
            return False
        p = self.perm(node.inputs[0])
        if p == _identity(len(p)):
            return False
        ins = [self.to(v, p, node) for v in node.inputs]
        outs = [self.define(v, p) for v in node.outputs]
        attrs = {**node.attrs, "axis": p.index(node.attrs["axis"] % len(p))}
        self.nodes.append(Node(node.op, ins, outs, attrs, node.source))
        return True

    def _reshape(self, node: Node) -> bool:
        (x,), (y,) = node.inputs, node.outputs
        if x in self.consts:
            return False
        physical, p = self.env[x]
        groups = _groups(x.shape, y.shape)
        if groups is None or p == _identity(len(p)):
            return False
        order = []  # groups in memory order
        for axis in p:
            g = next(g for g in groups if axis in g[0])
            if g not in order:
                order.append(g)
        flat = [a for g in order for a in g[0]]
        if flat != list(p):
            return False  # a group is split or reordered in memory
        q = tuple(a for g in order for a in g[1])
        out = self.define(y, q)
        self.nodes.append(Node("reshape", (physical,), (out,),
                               {"shape": _permuted(y.shape, q)}, node.source))
        return True


def _size(d) -> tuple[int, int]:
    """(static factor, batch factor) of a dimension."""
    k = batch_factor(d)
    return (1, k) if k is not None else (int(d), 0)


def _groups(a, b) -> list[tuple[tuple[int, ...], tuple[int, ...]]] | None:
    """The reshape a -> b as groups (input axes, output axes) of equal size, each a run of
    consecutive axes; None if a batch dimension would be mixed with static axes."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj = [i], [j]
        if i >= len(a) or j >= len(b):
            return None
        if isinstance(a[i], str) or isinstance(b[j], str):
            if a[i] != b[j]:
                return None
            groups.append(((i,), (j,)))
            i, j = i + 1, j + 1
            continue
        pa, pb = int(a[i]), int(b[j])
        while pa != pb:
            if pa < pb:
                i += 1
                if i >= len(a) or isinstance(a[i], str):
                    return None
                pa *= int(a[i])
                gi.append(i)
            else:
                j += 1
                if j >= len(b) or isinstance(b[j], str):
                    return None
                pb *= int(b[j])
                gj.append(j)
        groups.append((tuple(gi), tuple(gj)))
        i, j = i + 1, j + 1
    return groups
