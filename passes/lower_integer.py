"""Lower spike-input layers to exact integer GEMMs: u8/i8 activations x int8 weights.

A quantized layer's weights are integer levels times a per-channel scale; after fold_scales
the scales are +-unit or 0 and the layer sums integers (pot_to_shift's shift layers state
the same integers). When its input holds only integers that fit uint8 (spikes, sums of
spikes: snnc.ir.ranges) or int8, the layer is an integer GEMM with exact sums, which ONNX
Runtime runs on its int8 kernels (docs/onnx.md):

- linear / shift_linear on [..., K]: `int_matmul(cast(x, u8), int_weights(codes, scale))`;
- conv / shift_conv (groups 1) on [N, C, *S]: the input cast and made channel-last
  ([N, *S, C]); windows by `im2col` unless the kernel is 1 with stride 1 and no padding;
  the GEMM gives [N, *S', M], transposed back to [N, M, *S'] (the layout pass removes the
  transposes where the next layer wants channel-last too);
- matmul of two such integer values (attention's spike products): both cast.
Weights beyond int8 (PoT-5's 2^14, an 8-bit code -128 in a channel whose sign flips) are
int8 digits in base 128 side by side in one GEMM, recombined by `digits_sum`. A bias becomes
an `add` after the GEMM. A layer whose scales fold_scales could not fold (its neuron chain
did not match, e.g. a single-step model's shared weights) sums its codes' levels and
multiplies each channel by its real scale once after, as fold_scales does for a layer that
feeds no neuron. Everything else stays as it is: real-valued inputs (an image, a mean over
time), grouped convs (a depthwise conv is no GEMM), a layer whose digit sums could pass
2^24 on its input's range, and one whose input and weights are so large that two products
could pass 2^15 (x86 CPUs without VNNI add pairs of products in int16: `pairs_fit_int16`).

Requires: a verified graph (one-step or unrolled), after fold_scales and pot_to_shift.
Ensures: a layer with unit scales computes the same float32 numbers as before, bit for bit:
both are exact integer sums below 2^24 (snnc.ir.ranges.check proves every sum, cast and digit
recombination); a layer with real scales computes its exact integer sum times the scale,
rounded once (the float layer rounded each product and partial sum: within float rounding).

Before:
    %w: f32[8,4,3,3] = dequantize(%codes, %unit_scale) scheme='uniform' bits=4
    %y: f32[N,8,6,6] = conv(%s, %w) stride=[1,1] padding=[1,1] dilation=[1,1] groups=1
After:
    %w: i8[36,8] = int_weights(%codes, %unit_scale) scheme='uniform' bits=4
    %s_u8: u8[N,4,6,6] = cast(%s) to='u8'
    %s_cl: u8[N,6,6,4] = transpose(%s_u8) perm=[0,2,3,1]
    %cols: u8[N,6,6,36] = im2col(%s_cl) kernel=[3,3] stride=[1,1] padding=[1,1] dilation=[1,1]
    %y_cl: f32[N,6,6,8] = int_matmul(%cols, %w)
    %y: f32[N,8,6,6] = transpose(%y_cl) perm=[0,3,1,2]
"""

from __future__ import annotations

import numpy as np

from snnc.ir import ops
from snnc.ir.graph import Graph, Node, Value
from snnc.ir.ranges import Range, analyze, digit_sums_bound, holds
from snnc.options import DEFAULT, Options
from snnc.quant import weights

LAYERS = ("conv", "linear", "shift_conv", "shift_linear")


def integer_type(r: Range) -> str | None:
    """u8 or i8 if every value of the range is an integer of that type (u8 preferred)."""
    return next((name for name in ("u8", "i8") if holds(r, name)), None)


PAIR_LIMIT = 2 ** 15 - 1


def pairs_fit_int16(x: Range, largest_weight: float) -> bool:
    """x86 CPUs without VNNI multiply uint8 by int8 with vpmaddubsw, which adds two products
    in int16 with saturation (ONNX Runtime's quantization docs call this the U8S8 saturation
    issue): exact only if |x_a w_a + x_b w_b| <= 2^15 - 1. True for spikes and small counts;
    an input near 255 times weights near 128 would saturate there, so such a layer stays
    float."""
    return 2 * max(abs(x.lo), abs(x.hi)) * largest_weight <= PAIR_LIMIT


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    if not opts.integer_kernels or opts.target == "qnn":  # the QNN form lowers float kernels
        return graph
    return _Lowering(graph).run()


class _Lowering:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.consts = dict(graph.constants)
        self.producers, self.users = graph.producers(), graph.users()
        self.ranges = analyze(graph)
        self.casts: dict[tuple[Value, str], Value] = {}
        self.wnodes: dict[Value, Node | None] = {}  # a layer's weight value -> int_weights
        self.digits: dict[Node, list] = {}  # int_weights -> its int8 digits, each [M, K]
        self.scale_after: dict[Node, np.ndarray] = {}  # int_weights -> real scale per channel
        self.nodes: list[Node] = []

    def run(self) -> Graph:
        lowered = {}
        for node in self.graph.nodes:
            plan = self.weights_of(node) if node.op in LAYERS else None
            bias_const = len(node.inputs) < 3 or node.inputs[2] in self.consts
            if plan is not None and bias_const and self.input_type(node.inputs[0]) and \
                    (node.op in ("linear", "shift_linear") or node.attrs["groups"] == 1):
                lowered[node] = plan
            elif node.op == "matmul" and all(self.input_type(v) for v in node.inputs) and \
                    not any(v in self.consts for v in node.inputs) and \
                    pairs_fit_int16(self.ranges[node.inputs[0]],
                                    self.ranges[node.inputs[1]].magnitude):
                lowered[node] = None
        if not lowered:
            return self.graph
        # a dequantize goes when every layer reading it is lowered (a single-step model's
        # T calls of a layer share one)
        dropped = {dq for dq, _ in filter(None, lowered.values()) if dq is not None and
                   dq.outputs[0] not in self.graph.outputs and
                   all(u in lowered for u in self.users[dq.outputs[0]])}
        placed: set[Node] = set()
        for node in self.graph.nodes:
            if node in dropped:
                continue
            if node not in lowered:
                self.nodes.append(node)
            elif node.op == "matmul":
                a, b = (self.cast(v, node) for v in node.inputs)
                self.nodes.append(Node("int_matmul", (a, b), node.outputs, {}, node.source))
            else:
                wnode = lowered[node][1]
                if wnode not in placed:
                    self.nodes.append(wnode)
                    placed.add(wnode)
                self.layer(node, wnode)
        return self.graph.with_nodes(self.nodes, self.consts)

    def input_type(self, value: Value) -> str | None:
        return integer_type(self.ranges[value]) if value in self.ranges else None

    def weights_of(self, layer: Node) -> tuple[Node | None, Node] | None:
        """(the dequantize it reads or None, the int_weights node) if the layer's weights
        are integers whose int8 digits keep every sum below 2^24 on this layer's input, else
        None (the layer stays a float layer, range-checked as before)."""
        weight = layer.inputs[1]
        dq = self.producers.get(weight)
        if weight not in self.wnodes:
            self.wnodes[weight] = self.int_weights(dq, layer)
        wnode = self.wnodes[weight]
        if wnode is None:
            return None
        parts = self.digits[wnode]
        x = self.ranges[layer.inputs[0]]
        largest = max(int(np.abs(d.astype(np.int64)).max(initial=0)) for d in parts)
        if digit_sums_bound(x, parts) > ops.FLOAT32_EXACT or not pairs_fit_int16(x, largest):
            return None
        return dq, wnode

    def int_weights(self, dq: Node | None, layer: Node) -> Node | None:
        """The int_weights node for this layer's weights (their codes' integer levels; real
        per-channel scales are kept for a multiply after the sum), or None if they are not
        constant."""
        after = None
        if layer.op.startswith("shift_"):
            codes = layer.inputs[1]
            if codes not in self.consts:
                return None
            scheme, bits = "pot", layer.attrs["bits"]
            scale = Value("f32", (codes.shape[0],), f"{codes.hint}.unit_scale")
            self.consts[scale] = np.full(codes.shape[0], weights.unit("pot", bits), np.float32)
            hint, source = codes.hint, layer.source
        else:
            if dq is None or dq.op != "dequantize" or \
                    not all(v in self.consts for v in dq.inputs):
                return None
            codes, scale = dq.inputs
            scheme, bits = dq.attrs["scheme"], dq.attrs["bits"]
            unit = weights.unit(scheme, bits)
            real = self.consts[scale].astype(np.float64)
            if not np.all(np.isin(real, (unit, -unit, 0.0))):
                # real scales (a layer fold_scales could not fold): sum the codes' levels,
                # then scale each channel once, as fold_scales does for a layer feeding no
                # neuron
                if not np.all(np.isfinite(real)):
                    return None
                scale = Value("f32", (codes.shape[0],), f"{scale.hint}.unit")
                self.consts[scale] = np.full(codes.shape[0], unit, np.float32)
                after = real / unit
            hint, source = dq.outputs[0].hint, dq.source
        signed = weights.signed_levels(self.consts[codes], scheme, bits, self.consts[scale])
        parts = weights.digits(signed.reshape(signed.shape[0], -1))
        out = Value("i8", (parts[0].shape[1], len(parts) * codes.shape[0]),
                    f"{hint or 'weight'}.gemm")
        node = Node("int_weights", (codes, scale), (out,),
                    {"scheme": scheme, "bits": bits, "digits": len(parts)}, source)
        self.digits[node] = parts
        if after is not None:
            self.scale_after[node] = after.astype(np.float32)
        return node

    def cast(self, value: Value, node: Node) -> Value:
        to = self.input_type(value)
        key = (value, to)
        if key not in self.casts:
            out = Value(to, value.shape, f"{value.hint or 'x'}_{to}")
            self.nodes.append(Node("cast", (value,), (out,), {"to": to}, node.source))
            self.casts[key] = out
        return self.casts[key]

    def emit(self, op: str, inputs, shape, dtype: str, hint: str, source, **attrs) -> Value:
        out = Value(dtype, shape, hint)
        self.nodes.append(Node(op, tuple(inputs), (out,), attrs, source))
        return out

    def gemm(self, x: Value, wnode: Node, out: Value, src) -> None:
        """out = x @ weights; with D digits, the GEMM gives D column blocks, recombined by
        digits_sum (exact: every partial and sum is an integer below 2^24)."""
        w, count = wnode.outputs[0], wnode.attrs["digits"]
        if count == 1:
            self.nodes.append(Node("int_matmul", (x, w), (out,), {}, src))
            return
        wide = self.emit("int_matmul", [x, w], (*out.shape[:-1], w.shape[1]), "f32",
                         f"{out.hint}_digits", src)
        self.nodes.append(Node("digits_sum", (wide,), (out,), {"count": count}, src))

    def layer(self, layer: Node, wnode: Node) -> None:
        x, w, out = self.cast(layer.inputs[0], layer), wnode.outputs[0], layer.outputs[0]
        src, hint = layer.source, out.hint or "y"
        bias = layer.inputs[2] if len(layer.inputs) == 3 else None
        epilogue = [("mul", self.scale_after.get(wnode), "weight_scale"),
                    ("add", None if bias is None else self.consts[bias], "bias")]
        epilogue = [(op, array, name) for op, array, name in epilogue if array is not None]
        summed = out if not epilogue else Value("f32", out.shape, f"{hint}_sum")
        if layer.op.endswith("linear"):
            self.gemm(x, wnode, summed, src)
        else:
            spatial = len(x.shape) - 2
            a = layer.attrs
            to_last = (0, *range(2, spatial + 2), 1)
            cl = self.emit("transpose", [x], tuple(x.shape[p] for p in to_last), x.dtype,
                           f"{x.hint}_cl", src, perm=to_last)
            kernel = tuple(layer.inputs[1].shape[2:])
            if any(k != 1 for k in kernel) or any(s != 1 for s in a["stride"]) or \
                    any(a["padding"]):
                shape = (cl.shape[0], *out.shape[2:], w.shape[0])
                cl = self.emit("im2col", [cl], shape, x.dtype, f"{x.hint}_cols", src,
                               kernel=kernel, stride=a["stride"], padding=a["padding"],
                               dilation=a["dilation"])
            y = Value("f32", (*cl.shape[:-1], out.shape[1]), f"{hint}_cl")
            self.gemm(cl, wnode, y, src)
            back = (0, spatial + 1, *range(1, spatial + 1))
            self.nodes.append(Node("transpose", (y,), (summed,), {"perm": back}, src))
        # per output channel: the channel axis is 1 for a conv, the last for a linear layer
        axis_shape = (out.shape[1],) + (1,) * (len(out.shape) - 2) \
            if layer.op.endswith("conv") else (out.shape[-1],)
        value = summed
        for i, (op, array, name) in enumerate(epilogue):
            c = Value("f32", axis_shape, f"{hint}.{name}")
            self.consts[c] = np.asarray(array, np.float32).reshape(axis_shape)
            target = out if i == len(epilogue) - 1 else Value("f32", out.shape, f"{hint}_scaled")
            self.nodes.append(Node(op, (value, c), (target,), {}, src))
            value = target
