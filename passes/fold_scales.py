"""Fold quantization scales, BatchNorm and bias into the neuron that reads a quantized layer,
so the layer sums integer weight codes and the neuron compares against per-channel
thresholds. Also folds a positive power-of-two multiplier (attention's `* 0.125`).

A quantized layer computes w = q * s_c per output channel c (uniform codes q; PoT codes as
the integers sign * 2^(E + 1 - |c|), E = 2^(bits-1) - 2, with s_c divided by 2^E). With
the BatchNorm g_c = gamma_c / sqrt(var_c + eps) after it, the neuron's input is
a_c * S_c + b_c, where S_c is the layer's sum of integer weights times inputs, a_c = s_c g_c
and b_c = (bias_c - mean_c) g_c + beta_c. Dividing the neuron's membrane by |a_c|:

    x'_c = sign(a_c) S_c + b_c / |a_c|,   threshold'_c = threshold / |a_c|

A negative a_c flips the channel's weights (the dequantize scale becomes -1, or -2^E for
PoT; the stored codes do not change, so they keep their bit width); a zero a_c (gamma = 0)
zeroes the channel (scale 0) and keeps a_c = 1. A max pool between the BatchNorm and the
neuron commutes with the positive per-channel map, so it moves before the bias. The
membrane (and, in stream mode, the state tensors) are then in units of |a_c|.

A layer is folded only when its integer sums provably stay below 2^24 (float32's exact
integers, snnc.ir.ranges): otherwise it keeps its real scales and runs in float32 as
PyTorch runs it (no exactness promised for that layer, none broken).

Requires: a verified one-step graph (before unroll_timesteps or expose_state); the chain dequantize -> conv/linear ->
[batch_norm] -> [max_pool] -> neuron with constant codes, scales and statistics, each value
read once; the neuron has a scalar threshold, resets to 0 (hard) or by subtraction (soft)
and starts from 0 (so dividing its membrane changes no constant). A linear layer's
channel axis is its last one, so a BatchNorm (axis 1) after it folds only at rank 2. For
the multiplier: `mul(z, c) -> neuron` with c a positive power-of-two scalar constant.
Ensures: such a neuron reads `add(layer(x, dequantize(codes, +-1|0 [x 2^E])), beta)` (no
add when every beta is 0) with `threshold=None` and a per-channel threshold input shaped
[C, 1, ...]; no batch_norm, bias or scale remains in the chain. A folded multiplier becomes
`neuron(z, v) threshold=threshold/c`.

Exactness. The multiplier fold is exact: dividing by a power of two commutes with every
float32 operation of the neuron. The layer fold sums integer weights exactly (docs/ranges:
every integer sum is checked to stay below 2^24), but b_c / |a_c| is a real number that
enters the membrane every step, and threshold / |a_c| is rounded once to float32: the folded
neuron rounds differently from conv -> BatchNorm -> neuron in float32, so a membrane within
float rounding of the threshold can decide differently. Measured on the heterogeneous
Spikformer (docs/passes.md): such rounding-decided spikes are counted by the parity check.

Before:
    %w: f32[8,4,3,3] = dequantize(%codes, %scale) scheme='uniform' bits=4
    %c: f32[N,8,6,6] = conv(%x, %w) stride=[1,1] padding=[1,1] dilation=[1,1] groups=1
    %b: f32[N,8,6,6] = batch_norm(%c, %gamma, %beta, %mean, %var) eps=1e-05
    %s: f32[N,8,6,6], %v1: f32[N,8,6,6] = neuron(%b, %v) ... threshold=1.0 v_reset=0.0
After:
    %w: f32[8,4,3,3] = dequantize(%codes, %unit_scale) scheme='uniform' bits=4
    %c: f32[N,8,6,6] = conv(%x, %w) stride=[1,1] padding=[1,1] dilation=[1,1] groups=1
    %b: f32[N,8,6,6] = add(%c, %beta_folded)
    %s: f32[N,8,6,6], %v1: f32[N,8,6,6] = neuron(%b, %v, %threshold) ... threshold=None
"""

from __future__ import annotations

import numpy as np

from snnc.ir.graph import Graph, Node, Value
from snnc.ir.ops import dequantize_eval
from snnc.ir.ranges import FLOAT32_EXACT_BITS, analyze, layer_bounds
from snnc.options import DEFAULT, Options
from snnc.quant.weights import pot_shift

LAYERS = ("conv", "linear")


def is_power_of_two(x: float) -> bool:
    mantissa, _ = np.frexp(np.float64(x))
    return x > 0 and mantissa == 0.5


def _foldable_neuron(node: Node, init: dict[Value, float]) -> bool:
    a = node.attrs
    return (node.op == "neuron" and len(node.inputs) == 2 and a["threshold"] is not None
            and a["v_reset"] in (None, 0.0) and init.get(node.inputs[1]) == 0.0)


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    producers, users = graph.producers(), graph.users()
    consts = graph.constants
    protected = set(graph.outputs) | {s.write for s in graph.states}
    if graph.time is None:
        return graph  # neurons are folded once, in the one-step body
    init = {s.read: s.init for s in graph.states}

    def single(value: Value) -> bool:
        return len(users.get(value, [])) == 1 and value not in protected

    ranges: dict = {}  # snnc.ir.ranges of the graph, analysed when a quantized layer needs it

    def fits(layer: Node, dq: Node) -> bool:
        if not ranges:
            ranges.update(analyze(graph))
        return _sums_fit(layer, dq, consts, ranges)

    replace: dict[Node, list[Node]] = {}
    new_consts = dict(consts)
    for neuron in graph.nodes:
        if not _foldable_neuron(neuron, init):
            continue
        chain = _chain(neuron, producers, single, consts)
        if chain is not None and fits(chain[1], chain[0]):
            dq, layer, bn, pool = chain
            _fold_layer(neuron, dq, layer, bn, pool, consts, new_consts, replace)
            continue
        mul = producers.get(neuron.inputs[0])
        if mul is not None and mul.op == "mul" and single(mul.outputs[0]):
            z, c = mul.inputs
            if c not in consts and z in consts:
                z, c = c, z
            if c in consts and consts[c].size == 1 and \
                    is_power_of_two(float(consts[c].reshape(()))) \
                    and mul.outputs[0].shape == z.shape:
                threshold = float(np.float32(neuron.attrs["threshold"]) /
                                  np.float32(consts[c].reshape(())))
                attrs = {**neuron.attrs, "threshold": threshold}
                replace[mul] = []
                replace[neuron] = [Node("neuron", (z, neuron.inputs[1]), neuron.outputs, attrs,
                                        neuron.source)]
    for layer in graph.nodes:  # quantized layers that feed no neuron: scale after the sum
        dq = producers.get(layer.inputs[1]) if layer.op in LAYERS else None
        if layer in replace or dq is None or dq.op != "dequantize" or \
                not single(layer.inputs[1]) or not all(v in consts for v in dq.inputs) or \
                (len(layer.inputs) == 3 and layer.inputs[2] not in consts) or \
                not fits(layer, dq):
            continue
        _scale_after(dq, layer, consts, new_consts, replace)
    if not replace:
        return graph
    return graph.with_nodes((new for node in graph.nodes for new in replace.get(node, [node])),
                            new_consts)


def _sums_fit(layer: Node, dq: Node, consts, ranges) -> bool:
    """Whether the folded layer's sums of integer codes times its input stay within the
    integers float32 holds exactly (2^24; ranges.check refuses them otherwise). A layer whose
    sums could pass that (wide PoT codes over a large fan-in of spike counts) is not folded:
    it runs as quantized, in float32 with its real weights, as PyTorch computes it."""
    x = ranges[layer.inputs[0]]
    if not x.integer:
        return True  # real-valued sums: no exactness to keep
    unit = 2.0 ** pot_shift(dq.attrs["bits"]) if dq.attrs["scheme"] == "pot" else 1.0
    codes = consts[dq.inputs[0]]
    ones = np.full(codes.shape[0], unit, np.float32)
    integers = dequantize_eval([codes, ones], dq.attrs)[0].astype(np.float64)
    return layer_bounds(x, integers, None).magnitude <= 2.0 ** FLOAT32_EXACT_BITS


def _const(new_consts: dict, array: np.ndarray, hint: str) -> Value:
    value = Value("f32", array.shape, hint)
    new_consts[value] = array.astype(np.float32)
    return value


def _prefix(layer: Node) -> str:
    """The layer's parameter path (`blocks.0.mlp.fc1.0`), from its weight's name."""
    hint = layer.inputs[1].hint
    return hint.rsplit(".", 1)[0] if "." in hint else hint


def _chain(neuron: Node, producers, single, consts):
    """(dequantize, layer, batch_norm | None, max_pool | None) feeding the neuron, or None."""
    value, bn, pool = neuron.inputs[0], None, None
    node = producers.get(value)
    if node is not None and node.op == "max_pool" and single(value):
        pool, value = node, node.inputs[0]
        node = producers.get(value)
    if node is not None and node.op == "batch_norm" and single(value):
        bn, value = node, node.inputs[0]
        if not all(v in consts for v in bn.inputs[1:]):
            return None
        node = producers.get(value)
    if node is None or node.op not in LAYERS or not single(value):
        return None
    layer = node
    if layer.op == "linear" and bn is not None and len(layer.outputs[0].shape) != 2:
        return None
    if len(layer.inputs) == 3 and layer.inputs[2] not in consts:
        return None
    dq = producers.get(layer.inputs[1])
    if dq is None or dq.op != "dequantize" or not single(layer.inputs[1]):
        return None
    if not all(v in consts for v in dq.inputs):
        return None
    return dq, layer, bn, pool


def _fold_layer(neuron, dq, layer, bn, pool, consts, new_consts, replace) -> None:
    codes, scale_val = dq.inputs
    scale = consts[scale_val].astype(np.float64)
    unit = 1.0
    if dq.attrs["scheme"] == "pot":
        unit = 2.0 ** pot_shift(dq.attrs["bits"])
    a = scale / unit  # the real factor per channel of the integer sum
    channels = a.shape[0]
    b = consts[layer.inputs[2]].astype(np.float64) if len(layer.inputs) == 3 \
        else np.zeros(channels)
    if bn is not None:
        gamma, beta, mean, var = (consts[v].astype(np.float64) for v in bn.inputs[1:])
        g = gamma / np.sqrt(var + np.float64(np.float32(bn.attrs["eps"])))
        a, b = a * g, (b - mean) * g + beta
    sign = np.sign(a)
    magnitude = np.where(a == 0, 1.0, np.abs(a))  # a zero channel sums nothing: factor 1
    # per-channel constants broadcast against [N, C, ...] (conv) or [..., C] (linear)
    axis_shape = (channels,) + (1,) * (len(neuron.inputs[0].shape) - 2) \
        if layer.op == "conv" else (channels,)

    def const(array: np.ndarray, hint: str) -> Value:
        return _const(new_consts, array, hint)

    prefix = _prefix(layer)
    unit_scale = const(sign * unit, f"{prefix}.weight_unit_scale")
    w = Value("f32", dq.outputs[0].shape, dq.outputs[0].hint)
    new_dq = Node("dequantize", (codes, unit_scale), (w,), dict(dq.attrs), dq.source)
    summed = Value("f32", layer.outputs[0].shape, layer.outputs[0].hint)
    new_layer = Node(layer.op, (layer.inputs[0], w), (summed,), dict(layer.attrs), layer.source)
    chain = [new_dq, new_layer]
    x = summed
    if pool is not None:
        pooled = Value("f32", pool.outputs[0].shape, pool.outputs[0].hint)
        chain.append(Node("max_pool", (x,), (pooled,), dict(pool.attrs), pool.source))
        x = pooled
    beta = b / magnitude
    if np.any(beta.astype(np.float32) != 0):
        biased = Value("f32", x.shape, (bn or layer).outputs[0].hint)
        chain.append(Node("add", (x, const(beta.reshape(axis_shape), f"{prefix}.beta_folded")),
                          (biased,), {}, (bn or layer).source))
        x = biased
    threshold = np.float64(np.float32(neuron.attrs["threshold"])) / magnitude
    attrs = {**neuron.attrs, "threshold": None}
    chain.append(Node("neuron", (x, neuron.inputs[1],
                                 const(threshold.reshape(axis_shape), f"{prefix}.threshold")),
                      neuron.outputs, attrs, neuron.source))
    for node in (dq, layer, bn, pool):
        if node is not None:
            replace[node] = []
    replace[neuron] = chain


def _scale_after(dq, layer, consts, new_consts, replace) -> None:
    """layer(x, q * s) + b  ->  layer(x, q) * s + b: the layer sums integers."""
    codes, scale_val = dq.inputs
    unit = 2.0 ** pot_shift(dq.attrs["bits"]) if dq.attrs["scheme"] == "pot" else 1.0
    factor = consts[scale_val].astype(np.float64) / unit
    channels = factor.shape[0]
    out = layer.outputs[0]
    axis_shape = (channels,) + (1,) * (len(out.shape) - 2) if layer.op == "conv" \
        else (channels,)
    prefix = _prefix(layer)

    def const(array: np.ndarray, hint: str) -> Value:
        return _const(new_consts, array, hint)

    w = Value("f32", dq.outputs[0].shape, dq.outputs[0].hint)
    chain = [Node("dequantize", (codes, const(np.full(channels, unit), f"{prefix}.weight_unit_scale")),
                  (w,), dict(dq.attrs), dq.source)]
    summed = Value("f32", out.shape, f"{out.hint}_sum")
    chain.append(Node(layer.op, (layer.inputs[0], w), (summed,), dict(layer.attrs), layer.source))
    scaled = out if len(layer.inputs) == 2 else Value("f32", out.shape, f"{out.hint}_scaled")
    chain.append(Node("mul", (summed, const(factor.reshape(axis_shape), f"{prefix}.weight_scale")),
                      (scaled,), {}, layer.source))
    if len(layer.inputs) == 3:
        bias = consts[layer.inputs[2]].reshape(axis_shape)
        chain.append(Node("add", (scaled, const(bias, f"{prefix}.bias")), (out,), {},
                          layer.source))
    replace[dq] = []
    replace[layer] = chain
