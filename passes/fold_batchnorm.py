"""Fold an inference BatchNorm into the convolution (or rank-2 linear) that feeds it.

Requires: a verified graph; weights and BatchNorm statistics are constants.
Ensures: no `batch_norm` reads a conv/linear output that has no other reader; the folded
layer computes w' = w * g and b' = (b - mean) * g + beta with g = gamma / sqrt(var + eps),
computed in float64 and rounded once to float32. Meaning is preserved up to float32
rounding (the folded layer rounds differently from conv-then-normalize).

Before:
    %conv2d: f32[N,8,8,8] = conv(%x, %w) stride=[1,1] padding=[1,1] dilation=[1,1] groups=1
    %batch_norm: f32[N,8,8,8] = batch_norm(%conv2d, %gamma, %beta, %mean, %var) eps=1e-05
After:
    %batch_norm: f32[N,8,8,8] = conv(%x, %w_folded, %b_folded) stride=[1,1] ...
"""

from __future__ import annotations

import numpy as np

from snnc.ir.graph import Graph, Node, Value
from snnc.options import DEFAULT, Options


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    producers, users = graph.producers(), graph.users()
    consts = graph.constants
    protected = set(graph.outputs) | {s.write for s in graph.states}
    replace: dict[Node, Node | None] = {}
    new_consts = dict(consts)
    for bn in graph.nodes:
        if bn.op != "batch_norm":
            continue
        layer = producers.get(bn.inputs[0])
        if layer is None or layer.op not in ("conv", "linear") or layer in replace:
            continue
        if layer.op == "linear" and len(layer.outputs[0].shape) != 2:
            continue
        if len(users.get(layer.outputs[0], [])) != 1 or layer.outputs[0] in protected:
            continue
        if not all(v in consts for v in (*layer.inputs[1:], *bn.inputs[1:])):
            continue
        gamma, beta, mean, var = (consts[v].astype(np.float64) for v in bn.inputs[1:])
        g = gamma / np.sqrt(var + np.float64(np.float32(bn.attrs["eps"])))
        w_val = layer.inputs[1]
        w = consts[w_val].astype(np.float64)
        b = consts[layer.inputs[2]].astype(np.float64) if len(layer.inputs) == 3 \
            else np.zeros(w.shape[0])
        w_new = (w * g.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        b_new = ((b - mean) * g + beta).astype(np.float32)
        w_out = Value("f32", w_val.shape, w_val.hint)
        b_out = Value("f32", (w.shape[0],), f"{w_val.hint.rsplit('.', 1)[0]}.bias"
                      if "." in w_val.hint else f"{w_val.hint}.bias")
        new_consts[w_out], new_consts[b_out] = w_new, b_new
        fused = Node(layer.op, (layer.inputs[0], w_out, b_out), bn.outputs, dict(layer.attrs),
                     layer.source)
        replace[layer] = None
        replace[bn] = fused
    if not replace:
        return graph
    nodes = (replace.get(n, n) for n in graph.nodes if replace.get(n, n) is not None)
    return graph.with_nodes(nodes, new_consts)
