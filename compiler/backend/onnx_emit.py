"""ONNX backend: a fully lowered (unrolled, verified) IR graph -> an ONNX ModelProto.

Dumb and strict: it accepts only graphs without a time spec. Each IR op has one lowering
in `LOWER`. Names carry the source module path (readable in Netron) and are made unique in
graph order, so the same graph always gives byte-identical bytes. The batch dimension is
the symbolic "N" on every input and output.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from snnc.backend import onnx_float
from snnc.backend.onnx_neurons import compare_arithmetic, fire_arithmetic, lower_neuron_model
from snnc.backend.pack import (CODES, DIGESTS_KEY, GEMM, SIGNED, Layer, skeleton_location,
                               weight_digest)
from snnc.errors import PassError
from snnc.ir.graph import NUMPY_DTYPES, Graph, Node, Value
from snnc.options import DEFAULT, Options
from snnc.quant.weights import (channel_signs, container, gemm_weights, pot_shift, signed_container,
                                unit)

DTYPES = {"f32": TensorProto.FLOAT, "bool": TensorProto.BOOL, "i64": TensorProto.INT64,
          "i32": TensorProto.INT32, "u8": TensorProto.UINT8, "i8": TensorProto.INT8}
IR_VERSION = 10  # the IR version onnx pairs with opset 21; ONNX Runtime 1.31 loads it


def module_of(node: Node) -> str:
    return node.source.layer if node.source else "graph"


def step_of(value: Value) -> int | None:
    """The timestep unroll_timesteps tagged a value with (hint suffix `.t<k>`), if any."""
    tail = value.hint.rsplit(".t", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else None


class _Emitter:
    def __init__(self, graph: Graph, opts: Options):
        self.graph = graph
        self.opts = opts
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: dict[Value, str] = {}
        self.taken: set[str] = set()
        self.suffix: dict[str, int] = {}  # base -> the last k tried for it (unique)
        self.node_count: dict[str, int] = {}
        self.shared: dict[tuple, str] = {}  # content key -> initializer name
        self.used = graph.live_values()
        self.debug: list[tuple[str, Value]] = []
        self.packed: list = []  # a pack.Layer per quantized weight (to_onnx passes its list)
        # a neuron's spikes read by a cast to uint8: the neuron makes them as uint8 itself
        self.users = users = graph.users()
        self.byte_spikes: dict[Value, Node] = {}
        for node in graph.nodes:
            if node.op == "neuron":
                casts = [u for u in users.get(node.outputs[0], [])
                         if u.op == "cast" and u.attrs["to"] == "u8"]
                if casts:
                    self.byte_spikes[node.outputs[0]] = casts[0]
        self.fused_casts: set[Node] = set(self.byte_spikes.values())

    def unique(self, base: str) -> str:
        """`base`, else the first of base_2, base_3, ... not taken. Names are only ever
        added, so the search for a base resumes where it last stopped (a neuron's T steps
        ask for the same bases T times: linear, not quadratic, in T)."""
        name, k = base, self.suffix.get(base, 1)
        if k > 1:
            name = f"{base}_{k}"
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.suffix[base] = k
        self.taken.add(name)
        return name

    def name(self, value: Value, module: str = "") -> str:
        if value not in self.names:
            base = value.hint or "v"
            self.names[value] = self.unique(f"{module}/{base}" if module else base)
        return self.names[value]

    def temp(self, module: str, what: str) -> str:
        return self.unique(f"{module}/{what}")

    def ref(self, value: Value) -> str:
        """The ONNX name of a value; a constant becomes an initializer on first use."""
        if value not in self.names:
            if value not in self.graph.constants:
                raise PassError(f"value {value!r} is used before it is defined")
            self.names[value] = self.const(self.graph.constants[value], value.hint or "const")
        return self.names[value]

    def add(self, op: str, inputs, outputs: list[str], module: str, **attrs) -> None:
        k = self.node_count.get(module, 0)
        self.node_count[module] = k + 1
        self.nodes.append(helper.make_node(op, list(inputs), outputs,
                                           name=self.unique(f"{module}/{op}_{k}"), **attrs))

    def const(self, array: np.ndarray, base: str) -> str:
        """An initializer; equal arrays share one (a single-step loop's T calls of a layer
        fold to T equal weights)."""
        key = (array.dtype.str, array.shape, hashlib.sha256(array.tobytes()).digest())
        if key in self.shared:
            return self.shared[key]
        name = self.unique(base)
        self.initializers.append(numpy_helper.from_array(array, name))
        self.shared[key] = name
        return name

    def ints(self, values, base: str) -> str:
        return self.const(np.asarray(values, dtype=np.int64), base)

    def scalar(self, x: float) -> str:
        """A float32 scalar constant, named by its value (equal scalars share one)."""
        return self.const(np.array(x, np.float32), f"c{float(np.float32(x)):g}")

    def op(self, op: str, inputs, module: str, what: str, **attrs) -> str:
        """One node with a fresh output named `module/what`; returns that name."""
        out = self.temp(module, what)
        self.add(op, list(inputs), [out], module, **attrs)
        return out

    def debug_spikes(self, node: Node, spikes: str, module: str, op: str = "Identity",
                     **attrs) -> None:
        """With --debug-outputs: the neuron's spikes as output spike/<layer>[/t<step>]."""
        if not self.opts.debug_outputs:
            return
        step = step_of(node.outputs[0])
        name = f"spike/{module}" + (f"/t{step}" if step is not None else "")
        self.add(op, [spikes], [name], module, **attrs)
        self.debug.append((name, node.outputs[0]))

    def emit(self) -> onnx.ModelProto:
        g = self.graph
        for value, name in zip(g.inputs, g.input_names or [v.hint for v in g.inputs]):
            self.names[value] = self.unique(name)
        for node in g.nodes:
            module = module_of(node)
            outs = [self.name(v, module) for v in node.outputs]
            LOWER[node.op](self, node, _Refs(self, node), outs, module)
        graph_inputs = [self.value_info(v, self.names[v]) for v in g.inputs]
        graph_outputs = []
        out_names = g.output_names or [f"output{i}" for i in range(len(g.outputs))]
        for value, name in zip(g.outputs, out_names):
            if self.names[value] != name:
                self.add("Identity", [self.names[value]], [name], "output")
            graph_outputs.append(self.value_info(value, name))
        for name, value in self.debug:
            graph_outputs.append(self.value_info(value, name))
        graph = helper.make_graph(self.nodes, "snnc", graph_inputs, graph_outputs,
                                  initializer=self._read(graph_outputs))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opts.opset)],
                                  producer_name="snnc", producer_version="0.1.0")
        model.ir_version = IR_VERSION
        for key, value in sorted(g.metadata.items()):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model

    def _read(self, graph_outputs) -> list[onnx.TensorProto]:
        """The initializers some node or graph output reads: a lowering may make a constant
        it then replaces (a transposed or re-encoded copy), and a compiled file holds only
        what its graph reads. Every packed weight is read (it is made for a node)."""
        read = {name for node in self.nodes for name in node.input}
        read |= {output.name for output in graph_outputs}
        unread = {t.name for t in self.initializers} - read
        if unread & {layer.name for layer in self.packed}:
            raise PassError(f"packed weight(s) {sorted(unread)[:3]} are read by no node; this "
                            "is a bug in snnc's ONNX backend")
        return [t for t in self.initializers if t.name in read]

    def value_info(self, value: Value, name: str) -> onnx.ValueInfoProto:
        dims = [d if isinstance(d, int) else str(d) for d in value.shape]
        return helper.make_tensor_value_info(name, DTYPES[value.dtype], dims)


class _Refs:
    """A node's input names, resolved on access: a lowering that reads a constant's data
    directly (dequantize) never turns it into an initializer."""

    def __init__(self, emitter: _Emitter, node: Node):
        self.emitter, self.node = emitter, node

    def __getitem__(self, index: int) -> str:
        return self.emitter.ref(self.node.inputs[index])

    def __len__(self) -> int:
        return len(self.node.inputs)

    def __iter__(self):
        return (self.emitter.ref(v) for v in self.node.inputs)


# ----------------------------------------------------------------------------- lowerings

def _simple(onnx_op: str):
    def lower(e: _Emitter, node: Node, ins, outs, module):
        e.add(onnx_op, ins, outs, module)
    return lower


def _conv(e, node, ins, outs, module):
    a = node.attrs
    kernel = list(node.inputs[1].shape[2:])
    e.add("Conv", ins, outs, module, kernel_shape=kernel, strides=list(a["stride"]),
          pads=list(a["padding"]) * 2, dilations=list(a["dilation"]), group=a["groups"])


def _batch_norm(e, node, ins, outs, module):
    e.add("BatchNormalization", ins, outs, module, epsilon=float(node.attrs["eps"]))


def _pool(onnx_op):
    def lower(e, node, ins, outs, module):
        a = node.attrs
        e.add(onnx_op, ins, outs, module, kernel_shape=list(a["kernel"]),
              strides=list(a["stride"]), pads=list(a["padding"]) * 2)
    return lower


def _linear(e, node, ins, outs, module):
    weight = e.graph.constants.get(node.inputs[1])
    if len(node.inputs[0].shape) == 2:
        e.add("Gemm", ins, outs, module, transB=1)
        return
    if weight is not None:  # named after the weight, which itself never reaches the file
        wt = e.const(np.ascontiguousarray(weight.T), f"{node.inputs[1].hint or 'weight'}.T")
    else:  # a dequantized weight: transposed in the graph, as Gemm's transB does
        wt = e.op("Transpose", [ins[1]], module, "weight_t", perm=[1, 0])
    if len(ins) == 2:
        e.add("MatMul", [ins[0], wt], outs, module)
        return
    e.add("Add", [e.op("MatMul", [ins[0], wt], module, "matmul"), ins[2]], outs, module)


def _reshape(e, node, ins, outs, module):
    shape = [-1 if isinstance(d, str) else int(d) for d in node.attrs["shape"]]  # the batch
    e.add("Reshape", [ins[0], e.ints(shape, f"{module}/shape")], outs, module)


def _transpose(e, node, ins, outs, module):
    e.add("Transpose", ins, outs, module, perm=list(node.attrs["perm"]))


def _split(e, node, ins, outs, module):
    e.add("Split", [ins[0], e.ints(node.attrs["sizes"], f"{module}/split")], outs, module,
          axis=node.attrs["axis"])


def _reduce(onnx_op):
    def lower(e, node, ins, outs, module):
        e.add(onnx_op, [ins[0], e.ints(node.attrs["axes"], f"{module}/axes")], outs, module,
              keepdims=int(node.attrs["keepdims"]))
    return lower


def _concat(e, node, ins, outs, module):
    e.add("Concat", ins, outs, module, axis=node.attrs["axis"])


def _pad(e, node, ins, outs, module):
    pads, k = list(node.attrs["pads"]), len(node.attrs["pads"]) // 2
    rank = len(node.inputs[0].shape)
    full = [0] * (rank - k) + pads[:k] + [0] * (rank - k) + pads[k:]
    value = np.array(node.attrs["value"], NUMPY_DTYPES[node.inputs[0].dtype])
    e.add("Pad", [ins[0], e.ints(full, f"{module}/pads"), e.const(value, f"{module}/pad_value")],
          outs, module)


def _gather(e, node, ins, outs, module):
    e.add("Gather", [ins[0], e.ints(node.attrs["indices"], f"{module}/indices")], outs, module,
          axis=node.attrs["axis"])


def _chunk(e, node, ins, outs, module):
    e.add("Split", ins, outs, module, axis=node.attrs["axis"], num_outputs=node.attrs["count"])


def _apply_leak(e, attrs, value: str, out: str, module: str) -> None:
    """out = value / tau (leak "div") or value * q (leak "mul"). Division by a power of two
    equals multiplication by its exact reciprocal (both are the correctly rounded x / 2^k),
    and Mul is cheaper than Div."""
    k = attrs["leak_value"]
    if attrs["leak"] == "div":
        mantissa, _ = np.frexp(np.float32(k))
        if mantissa != 0.5:  # not a power of two: 1/tau would round
            e.add("Div", [value, e.scalar(k)], [out], module)
            return
        k = float(np.float32(1.0) / np.float32(k))
    e.add("Mul", [value, e.scalar(k)], [out], module)


def _neuron(e, node, ins, outs, module):
    """One neuron step in as few ONNX nodes as its rounding allows (docs/onnx.md).

    h = charge(x, v); spike = h >= threshold; v' = h - spike * h (hard reset to 0),
    spike * r + (h - spike * h) (hard reset to r) or h - spike * threshold (soft reset).
    With v the zero initial state and a zero reset value, charging reduces to x, x / tau or
    x * q exactly.
    """
    a = node.attrs
    x = ins[0]
    reset = 0.0 if a["v_reset"] is None else a["v_reset"]
    v_const = e.graph.constants.get(node.inputs[1])
    zero_start = v_const is not None and v_const.shape == () and float(v_const) == 0.0 \
        and reset == 0.0
    v = None if zero_start else ins[1]  # the zero initial membrane is never stored
    h = e.temp(module, "h")
    leak = a["leak"]
    if zero_start:
        if leak == "none" or not a["decay_input"]:
            h = x
        else:
            _apply_leak(e, a, x, h, module)
    elif leak == "none":
        e.add("Add", [v, x], [h], module)
    else:
        delta = v
        if reset != 0.0:
            delta = e.temp(module, "v_minus_reset")
            e.add("Sub", [v, e.scalar(reset)], [delta], module)
        if a["decay_input"]:
            diff, scaled = e.temp(module, "x_minus_v"), e.temp(module, "leak")
            e.add("Sub", [x, delta], [diff], module)
            _apply_leak(e, a, diff, scaled, module)
            e.add("Add", [v, scaled], [h], module)
        else:
            scaled, kept = e.temp(module, "leak"), e.temp(module, "kept")
            _apply_leak(e, a, delta, scaled, module)
            e.add("Sub", [v, scaled], [kept], module)
            e.add("Add", [kept, x], [h], module)
    threshold = ins[2] if a["threshold"] is None else e.scalar(a["threshold"])
    fired = e.temp(module, "fired")
    if not fire_arithmetic(e, node, h, fired, module):
        e.add("GreaterOrEqual", [h, threshold], [fired], module)
    cast = e.byte_spikes.get(node.outputs[0])
    if cast is None:
        e.add("Cast", [fired], [outs[0]], module, to=TensorProto.FLOAT)
    else:  # uint8 spikes for an integer layer; float ones, if needed, from those bytes
        as_bytes = e.name(cast.outputs[0], module_of(cast))
        e.add("Cast", [fired], [as_bytes], module, to=TensorProto.UINT8)
        if node.outputs[1] in e.used or e.opts.debug_outputs or \
                any(u is not cast for u in e.users.get(node.outputs[0], [])) or \
                node.outputs[0] in e.graph.outputs:
            e.add("Cast", [as_bytes], [outs[0]], module, to=TensorProto.FLOAT)
    e.debug_spikes(node, outs[0], module)
    if node.outputs[1] not in e.used:
        return
    # The reset, with SpikingJelly's own arithmetic (spike is exactly 0 or 1):
    #   soft: h - spike * threshold;  hard to 0: h - spike * h;
    #   hard to r: spike * r + (h - spike * h)  (= spike*r + (1 - spike)*h, exactly)
    # Two Mul/Sub nodes are cheaper in ONNX Runtime than one Where with a scalar branch.
    dropped = e.temp(module, "dropped")
    if a["v_reset"] is None:
        e.add("Mul", [outs[0], threshold], [dropped], module)
        e.add("Sub", [h, dropped], [outs[1]], module)
        return
    e.add("Mul", [outs[0], h], [dropped], module)
    if reset == 0.0:
        e.add("Sub", [h, dropped], [outs[1]], module)
        return
    kept, refill = e.temp(module, "kept"), e.temp(module, "refill")
    e.add("Sub", [h, dropped], [kept], module)
    e.add("Mul", [outs[0], e.scalar(reset)], [refill], module)
    e.add("Add", [refill, kept], [outs[1]], module)


def _neuron_model(e, node, ins, outs, module):
    """A neuron model's step as elementwise ONNX nodes (snnc.backend.onnx_neurons)."""
    lower_neuron_model(e, node, ins, outs, module)
    e.debug_spikes(node, outs[0], module)


# -------------------------------------------------------------------- comparisons, selection

_COMPARE = {"ge": "GreaterOrEqual", "gt": "Greater", "le": "LessOrEqual", "lt": "Less"}


def _compare(e, node, ins, outs, module):
    if compare_arithmetic(e, node, ins, outs, module):
        return
    mask = e.op(_COMPARE[node.attrs["op"]], ins, module, node.attrs["op"])
    e.add("Cast", [mask], outs, module, to=TensorProto.FLOAT)


def _where(e, node, ins, outs, module):
    mask = e.op("Cast", [ins[0]], module, "mask", to=TensorProto.BOOL)
    e.add("Where", [mask, ins[1], ins[2]], outs, module)


def _clip(e, node, ins, outs, module):
    bounds = ["" if node.attrs[k] is None else e.scalar(node.attrs[k]) for k in ("min", "max")]
    e.add("Clip", [ins[0], *bounds], outs, module)


def _dequantize(e, node, ins, outs, module):
    codes = e.graph.constants.get(node.inputs[0])
    scale = e.graph.constants.get(node.inputs[1])
    if codes is None or scale is None:
        raise PassError(f"dequantize at {node.source} needs constant codes and scales")
    _weights(e, codes, scale, node.attrs["scheme"], node.attrs["bits"], node.inputs[0].hint,
             node.inputs[1].hint, outs[0], module)


def _weights(e, codes, scale, scheme, bits, codes_hint, scale_hint, out, module) -> None:
    """Integer weights for a float layer, recorded for the weight pack: DequantizeLinear of
    the smallest container; or, for a folded layer whose scales are +-1 or 0 (after the
    container's shift) and an int8/int16 container, the signed integers and a Cast, which
    ONNX Runtime folds into a constant at load (a DequantizeLinear it keeps, and runs every
    time, so the layer cannot prepack its weights)."""
    values, element, shift = container(codes, scheme, bits,
                                       e.opts.weight_container == "int4" and bits <= 4)
    element = {"int4": TensorProto.INT4, "int8": TensorProto.INT8,
               "int16": TensorProto.INT16}[element]
    name = e.unique(codes_hint or f"{module}.weight_codes")
    unit = scale.astype(np.float64) * 2.0 ** -shift
    if element != TensorProto.INT4 and np.all(np.isin(unit, (-1.0, 0.0, 1.0))):
        signed = signed_container(codes, scheme, bits, scale)
        e.initializers.append(numpy_helper.from_array(signed, name))
        e.packed.append(Layer(name, "", scheme, bits, codes, scale.astype(np.float32),
                              layout=SIGNED))
        e.add("Cast", [name], [out], module, to=TensorProto.FLOAT)
        return
    scale_name = e.unique(scale_hint or f"{module}.weight_scale")
    if element == TensorProto.INT4:
        tensor = helper.make_tensor(name, element, values.shape, values.reshape(-1).tolist())
    else:
        tensor = numpy_helper.from_array(values, name)
    e.initializers.append(tensor)
    scaled = (scale.astype(np.float32) * np.float32(2.0 ** -shift)).astype(np.float32)
    e.initializers.append(numpy_helper.from_array(scaled, scale_name))
    e.packed.append(Layer(name, scale_name, scheme, bits, codes, scale.astype(np.float32)))
    e.add("DequantizeLinear", [name, scale_name], [out], module, axis=0)


def _shift_weights(e, node, module) -> str:
    """The integer weights sign * 2^(shift + 1 - |c|) of a shift layer, as float32.

    Default: DequantizeLinear of the int8 container (ONNX Runtime's fast path). With
    --pot-lowering shift: the codes themselves (int8, sign * c) decoded in the graph,
    2^e = BitShift(1, e) on uint8 (uint32 when e can reach 8), times the sign. The two give
    the same float32 weights bit for bit."""
    codes = e.graph.constants.get(node.inputs[1])
    if codes is None:
        raise PassError(f"{node.op} at {node.source} needs constant codes")
    bits = node.attrs["bits"]
    shift = pot_shift(bits)
    out = e.temp(module, "weight")
    if e.opts.pot_lowering != "shift":
        unit = np.full(codes.shape[0], 2.0 ** shift, np.float32)
        hint = node.inputs[1].hint
        scale_hint = hint.replace("weight_codes", "weight_unit_scale") \
            if "weight_codes" in hint else f"{hint}.unit_scale"
        _weights(e, codes, unit, "pot", bits, hint, scale_hint, out, module)
        return out
    name = e.unique(node.inputs[1].hint or f"{module}.weight_codes")
    e.initializers.append(numpy_helper.from_array(codes.astype(np.int8), name))
    e.packed.append(Layer(name, "", "pot", bits, codes,
                          np.full(codes.shape[0], 2.0 ** shift, np.float32),
                          layout=CODES))
    _decode_shifts(e, name, bits, out, module, TensorProto.FLOAT)
    return out


def _decode_shifts(e, codes: str, bits: int, out: str, module: str, to: int) -> None:
    """PoT codes (int8, sign * c) -> the integers sign * 2^(E + 1 - |c|) as `to` (float32 or
    int32), in the graph: 2^e = BitShift(1, e) on uint8 (uint32 when e can reach 8: ONNX
    Runtime has unsigned BitShift kernels for uint8/32/64 only at opset 21), times the sign
    (c = 0: sign 0 makes the weight 0). Every input is a constant: ONNX Runtime folds it at
    load."""
    top = pot_shift(bits) + 1
    wide = top >= 8
    as_int, magnitude, sign, exponent, narrow, power, power_t, sign_t = (
        e.temp(module, k) for k in ("codes_i32", "magnitude", "sign", "exponent",
                                    "exponent_u", "power", "power_t", "sign_t"))
    shift_type = TensorProto.UINT32 if wide else TensorProto.UINT8
    one = e.const(np.array(1, np.uint32 if wide else np.uint8), "one_u32" if wide else "one_u8")
    e.add("Cast", [codes], [as_int], module, to=TensorProto.INT32)
    e.add("Abs", [as_int], [magnitude], module)
    e.add("Sign", [as_int], [sign], module)
    e.add("Sub", [e.const(np.array(top, np.int32), f"c{top}_i32"), magnitude], [exponent],
          module)
    e.add("Cast", [exponent], [narrow], module, to=shift_type)
    e.add("BitShift", [one, narrow], [power], module, direction="LEFT")
    if to == TensorProto.FLOAT:
        e.add("Cast", [power], [power_t], module, to=TensorProto.FLOAT)
        e.add("Cast", [sign], [sign_t], module, to=TensorProto.FLOAT)
        e.add("Mul", [power_t, sign_t], [out], module)
        return
    e.add("Cast", [power], [power_t], module, to=TensorProto.INT32)
    e.add("Mul", [power_t, sign], [out], module)


def _digits_in_graph(e, matrix: str, count: int, out: str, module: str) -> None:
    """An int32 matrix -> its `count` balanced base-128 int8 digits side by side
    (snnc.quant.weights.digits): d = Mod(v + 64, 128) - 64, v' = (v - d) / 128, exact in int32."""
    def i32(x):
        return e.const(np.array(x, np.int32), f"c{x}_i32")

    if count == 1:
        e.add("Cast", [matrix], [out], module, to=TensorProto.INT8)
        return
    parts, v = [], matrix
    for k in range(count):
        shifted, mod, digit, part = (e.temp(module, f"{w}{k}") for w in
                                     ("shifted", "mod", "digit", "digit_i8_"))
        e.add("Add", [v, i32(64)], [shifted], module)
        e.add("Mod", [shifted, i32(128)], [mod], module)
        e.add("Sub", [mod, i32(64)], [digit], module)
        e.add("Cast", [digit], [part], module, to=TensorProto.INT8)
        parts.append(part)
        if k < count - 1:
            rest, nxt = e.temp(module, f"rest{k}"), e.temp(module, f"high{k}")
            e.add("Sub", [v, digit], [rest], module)
            e.add("Div", [rest, i32(128)], [nxt], module)
            v = nxt
    e.add("Concat", parts, [out], module, axis=1)


def _shift_conv(e, node, ins, outs, module):
    _conv(e, node, [ins[0], _shift_weights(e, node, module)], outs, module)


def _shift_linear(e, node, ins, outs, module):
    weight = _shift_weights(e, node, module)
    if len(node.inputs[0].shape) == 2:
        e.add("Gemm", [ins[0], weight], outs, module, transB=1)
        return
    wt = e.op("Transpose", [weight], module, "weight_t", perm=[1, 0])
    e.add("MatMul", [ins[0], wt], outs, module)


# ----------------------------------------------------------------------------- integer kernels

def _cast(e, node, ins, outs, module):
    if node in e.fused_casts:
        return  # made by the neuron (uint8 spikes)
    e.add("Cast", ins, outs, module, to=DTYPES[node.attrs["to"]])


def _int_weights(e, node, ins, outs, module):
    """The int8 [K, M] GEMM matrix of a folded layer, recorded for the pack (layout gemm).
    With --pot-lowering shift, a PoT layer stores its signed codes and decodes them in the
    graph (BitShift; all constant, so ONNX Runtime computes it once at load)."""
    codes = e.graph.constants.get(node.inputs[0])
    scale = e.graph.constants.get(node.inputs[1])
    if codes is None or scale is None:
        raise PassError(f"int_weights at {node.source} needs constant codes and scales")
    scheme, bits = node.attrs["scheme"], node.attrs["bits"]
    name = e.unique(node.inputs[0].hint or f"{module}.weight_codes")
    if scheme == "pot" and e.opts.pot_lowering == "shift":
        signed = codes.astype(np.int64) * channel_signs(scale).reshape(
            (-1,) + (1,) * (codes.ndim - 1))
        e.initializers.append(numpy_helper.from_array(signed.astype(np.int8), name))
        e.packed.append(Layer(name, "", "pot", bits, signed.astype(np.int32),
                              np.full(codes.shape[0], unit(scheme, bits), np.float32),
                              layout=CODES))
        decoded = e.temp(module, "weight_i32")
        _decode_shifts(e, name, bits, decoded, module, TensorProto.INT32)
        order = [*range(2, codes.ndim), 1, 0] if codes.ndim > 2 else [1, 0]
        moved, matrix = e.temp(module, "weight_moved"), e.temp(module, "weight_matrix")
        e.add("Transpose", [decoded], [moved], module, perm=order)
        e.add("Reshape", [moved, e.ints([-1, codes.shape[0]], f"{module}/gemm_shape")],
              [matrix], module)
        _digits_in_graph(e, matrix, node.attrs["digits"], outs[0], module)
        return
    matrix = gemm_weights(codes, scheme, bits, scale)
    e.initializers.append(numpy_helper.from_array(matrix, name))
    e.packed.append(Layer(name, "", scheme, bits, codes, scale.astype(np.float32), layout=GEMM))
    e.names[node.outputs[0]] = name  # the initializer is the value itself


def _int_matmul(e, node, ins, outs, module):
    """DequantizeLinear (scale 1, zero point 0) on both operands into a MatMul with no
    QuantizeLinear after it: ONNX Runtime fuses this into an integer GEMM that accumulates
    in int32 and converts the sums to float (MatMulIntegerToFloat), exactly. On [N, K] rows
    ONNX Runtime would first fuse MatMul + Add into a float Gemm (its level-1 fusions run
    before the QDQ ones), so there: MatMulInteger (int32 sums) and a Cast."""
    if len(node.inputs[0].shape) == 2:
        sums = e.temp(module, "sums_i32")
        e.add("MatMulInteger", ins, [sums], module)
        e.add("Cast", [sums], outs, module, to=TensorProto.FLOAT)
        return
    deq = []
    for value, name in zip(node.inputs, ins):
        zero = e.const(np.array(0, NUMPY_DTYPES[value.dtype]), f"zero_{value.dtype}")
        out = e.temp(module, f"{name.rsplit('/', 1)[-1]}_dq")
        e.add("DequantizeLinear", [name, e.scalar(1.0), zero], [out], module)
        deq.append(out)
    e.add("MatMul", deq, outs, module)


def _digits_sum(e, node, ins, outs, module):
    """Split the digit blocks, then b_0 + b_1 * 128 (+ b_2 * 16384 ...), in this order."""
    count = node.attrs["count"]
    parts = [e.temp(module, f"digit{k}") for k in range(count)]
    e.add("Split", [ins[0]], parts, module, axis=len(node.inputs[0].shape) - 1,
          num_outputs=count)
    total = parts[0]
    for k in range(1, count):
        term = e.temp(module, f"digit{k}_scaled")
        e.add("Mul", [parts[k], e.scalar(float(128 ** k))], [term], module)
        target = outs[0] if k == count - 1 else e.temp(module, f"digits_acc{k}")
        e.add("Add", [total, term], [target], module)
        total = target


def _im2col(e, node, ins, outs, module):
    """Pad (zeros), one strided Slice per kernel tap, Concat along the channels."""
    a = node.attrs
    x, shape = ins[0], node.inputs[0].shape
    spatial = len(shape) - 2
    if any(a["padding"]):
        pads = [0, *a["padding"], 0] * 2
        x = e.op("Pad", [x, e.ints(pads, f"{module}/pads")], module, "padded")
    out_sizes = node.outputs[0].shape[1:-1]
    axes = e.ints(list(range(1, spatial + 1)), f"{module}/axes")
    steps = e.ints(list(a["stride"]), f"{module}/steps")
    taps = []
    for offsets in np.ndindex(*a["kernel"]):
        starts = [o * d for o, d in zip(offsets, a["dilation"])]
        ends = [b + (n - 1) * s + 1 for b, n, s in zip(starts, out_sizes, a["stride"])]
        tap = e.temp(module, "tap")
        e.add("Slice", [x, e.ints(starts, f"{module}/starts"), e.ints(ends, f"{module}/ends"),
                        axes, steps], [tap], module)
        taps.append(tap)
    if len(taps) == 1:
        e.add("Identity", taps, outs, module)
        return
    e.add("Concat", taps, outs, module, axis=spatial + 1)


LOWER = {
    "add": _simple("Add"), "sub": _simple("Sub"), "mul": _simple("Mul"), "div": _simple("Div"),
    "relu": _simple("Relu"), "matmul": _simple("MatMul"),
    "conv": _conv, "batch_norm": _batch_norm,
    "max_pool": _pool("MaxPool"), "avg_pool": _pool("AveragePool"),
    "linear": _linear, "reshape": _reshape, "transpose": _transpose, "split": _split,
    "reduce_mean": _reduce("ReduceMean"), "reduce_sum": _reduce("ReduceSum"),
    "reduce_max": _reduce("ReduceMax"), "reduce_min": _reduce("ReduceMin"),
    "concat": _concat, "chunk": _chunk, "pad": _pad, "gather": _gather, "neuron": _neuron,
    "neuron_model": _neuron_model, "dequantize": _dequantize,
    "compare": _compare, "where": _where, "clip": _clip, "round": _simple("Round"),
    "shift_conv": _shift_conv, "shift_linear": _shift_linear,
    "cast": _cast, "int_weights": _int_weights, "int_matmul": _int_matmul, "im2col": _im2col,
    "digits_sum": _digits_sum,
}
LOWER.update(onnx_float.LOWER)  # the float islands (LayerNorm, softmax, GELU, ...)


def to_onnx(graph: Graph, opts: Options = DEFAULT, packed: list | None = None
            ) -> onnx.ModelProto:
    """The ONNX model; with `packed`, appends a pack.Layer per quantized weight to it."""
    if graph.time is not None or graph.states:
        raise PassError("the ONNX backend needs an unrolled graph (run unroll_timesteps)")
    missing = sorted({n.op for n in graph.nodes} - set(LOWER))
    if missing:
        raise PassError(f"no ONNX lowering for IR op(s) {missing}")
    emitter = _Emitter(graph, opts)
    emitter.packed = [] if packed is None else packed
    model = emitter.emit()
    onnx.checker.check_model(model, full_check=True)
    if opts.external_weights:
        externalize(model, {layer.name for layer in emitter.packed}, opts.pack_location)
    return model


def externalize(model: onnx.ModelProto, names: set[str], location: str) -> None:
    """Replace these initializers by external-data references of the same name, type and
    shape: what ONNX Runtime's add_external_initializers fills in (snnc.backend.runtime does).
    The metadata entry DIGESTS_KEY records each one's weight_digest: the skeleton then takes
    only the pack compiled with it."""
    digests = {}
    for tensor in model.graph.initializer:
        if tensor.name not in names:
            continue
        digests[tensor.name] = weight_digest(numpy_helper.to_array(tensor))
        stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type,
                                dims=list(tensor.dims), data_location=TensorProto.EXTERNAL)
        for key, value in (("location", skeleton_location(location)), ("offset", "0"),
                           ("length", "0")):
            entry = stub.external_data.add()
            entry.key, entry.value = key, value
        tensor.CopyFrom(stub)
    entry = model.metadata_props.add()
    entry.key, entry.value = DIGESTS_KEY, json.dumps(digests, sort_keys=True)


def model_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)
