"""Rewrite a folded power-of-two layer over integers as a shift-accumulate op.

After fold_scales a PoT layer's weights are the integers sign * 2^(E + 1 - |c|) (the
dequantize scale is +-2^E or 0 per channel, E = 2^(bits-1) - 2). When the layer's input
holds only integers (spikes, or sums of spikes: snnc.ir.ranges), the layer is
y = sum(sign * (x << exponent)), which `shift_conv` / `shift_linear` state directly: their
inputs are x and the codes (each channel's sign folded in: a PoT code's sign flips without
leaving its bit width); the interpreter evaluates them in int64.

Requires: a verified graph; `dequantize(codes, scale) scheme='pot'` read only by a conv or
linear (no bias), every scale exactly +2^E, -2^E or 0, codes constant; the layer's input
integer-valued.
Ensures: no such pair remains; `shift_conv(x, codes') bits=k` (or `shift_linear`) computes
the same integers exactly (so meaning is preserved bit for bit: both sum the same integers,
below 2^24, snnc.ir.ranges.check).

Before:
    %w: f32[16,8,1] = dequantize(%codes, %unit_scale) scheme='pot' bits=4
    %y: f32[N,16,64] = conv(%s, %w) stride=[1] padding=[0] dilation=[1] groups=1
After:
    %y: f32[N,16,64] = shift_conv(%s, %codes_signed) stride=[1] padding=[0] dilation=[1]
        groups=1 bits=4
"""

from __future__ import annotations

import numpy as np

from snnc.ir.graph import Graph, Node, Value
from snnc.ir.ranges import analyze
from snnc.options import DEFAULT, Options
from snnc.quant.weights import pot_shift


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    producers, users = graph.producers(), graph.users()
    consts = graph.constants
    ranges = None
    replace: dict[Node, Node | None] = {}
    new_consts = dict(consts)
    for layer in graph.nodes:
        if layer.op not in ("conv", "linear") or len(layer.inputs) != 2:
            continue
        dq = producers.get(layer.inputs[1])
        if dq is None or dq.op != "dequantize" or dq.attrs["scheme"] != "pot":
            continue
        if len(users.get(dq.outputs[0], [])) != 1 or dq.outputs[0] in graph.outputs:
            continue
        codes_val, scale_val = dq.inputs
        if codes_val not in consts or scale_val not in consts:
            continue
        shift = pot_shift(dq.attrs["bits"])
        scale = consts[scale_val].astype(np.float64)
        if not np.all(np.isin(scale, (2.0 ** shift, -(2.0 ** shift), 0.0))):
            continue  # real per-channel scales: fold_scales has not moved them out
        ranges = ranges or analyze(graph)
        if not ranges[layer.inputs[0]].integer:
            continue
        sign = np.sign(scale).astype(np.int32).reshape((-1,) + (1,) * (len(codes_val.shape) - 1))
        codes = consts[codes_val] * sign
        signed = Value("i32", codes_val.shape, codes_val.hint)
        new_consts[signed] = codes.astype(np.int32)
        op = "shift_conv" if layer.op == "conv" else "shift_linear"
        replace[dq] = None
        replace[layer] = Node(op, (layer.inputs[0], signed), layer.outputs,
                              {**layer.attrs, "bits": dq.attrs["bits"]}, layer.source)
    if not replace:
        return graph
    nodes = (replace.get(n, n) for n in graph.nodes if replace.get(n, n) is not None)
    return graph.with_nodes(nodes, new_consts)
