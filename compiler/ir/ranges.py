"""Value ranges and integrality, and the membrane range analysis (docs/ranges.md).

`analyze(graph)` gives every value an interval [lo, hi] and whether it holds only
integers: spikes are integers in [0, 1]; adds, products and layers with integer weights
over integers stay integers, with interval bounds. `membranes(graph)` bounds, for every
neuron, its input and its membrane, and counts the bits they need: the integer bits of the
largest magnitude and, when 1/tau is a power of two 2^-k, the k fractional bits each step
adds. snnc computes membranes and integer sums in float32, whose integers are exact up to
2^24; `check(graph)` refuses a graph where an integer sum or a membrane could pass that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from snnc.errors import BadInputError
from snnc.ir.graph import Graph, Node, Value
from snnc.ir.neurons import MODELS
from snnc.ir.ops import INTEGER_TYPES, OPS, dequantize_eval
from snnc.quant.weights import pot_shift, shift_terms

FLOAT32_EXACT_BITS = 24  # float32 holds every integer of magnitude <= 2^24
INF = math.inf


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    integer: bool

    @property
    def magnitude(self) -> float:
        return max(abs(self.lo), abs(self.hi))


UNKNOWN = Range(-INF, INF, False)
SPIKE = Range(0.0, 1.0, True)


def _of_array(a: np.ndarray) -> Range:
    if a.size == 0:
        return Range(0.0, 0.0, True)
    a64 = a.astype(np.float64)
    return Range(float(a64.min()), float(a64.max()), bool(np.all(np.round(a64) == a64)))


def _mul(a: Range, b: Range) -> Range:
    products = [x * y for x in (a.lo, a.hi) for y in (b.lo, b.hi)
                if not (math.isinf(x) and y == 0) and not (math.isinf(y) and x == 0)]
    return Range(min(products, default=0.0), max(products, default=0.0), a.integer and b.integer)


def layer_bounds(x: Range, weights: np.ndarray, bias: np.ndarray | None) -> Range:
    """Bounds of a conv/linear/time_mix: per output channel (step), each weight times the
    input's extreme that maximises (minimises) the term; zero padding can only add zero
    terms; the bias per channel (or per step and feature)."""
    w = weights.astype(np.float64).reshape(weights.shape[0], -1)
    if not w.any():  # no term reads the input (a per-step constant): the bias alone
        terms_hi = terms_lo = np.zeros(w.shape[0])
        integer = True
    elif math.isinf(x.magnitude):
        return UNKNOWN
    else:
        terms_hi = np.maximum(np.maximum(w * x.lo, w * x.hi), 0.0).sum(axis=1)
        terms_lo = np.minimum(np.minimum(w * x.lo, w * x.hi), 0.0).sum(axis=1)
        integer = x.integer and bool(np.all(np.round(w) == w))
    if bias is not None:  # one per output channel, or per step and feature (time_mix)
        bias = bias.astype(np.float64).reshape(bias.shape[0], -1)
        terms_hi, terms_lo = terms_hi[:, None] + bias, terms_lo[:, None] + bias
        integer = integer and bool(np.all(np.round(bias) == bias))
    return Range(float(terms_lo.min()), float(terms_hi.max()), integer)


def analyze(graph: Graph) -> dict[Value, Range]:
    """Every value's range. A state's read is unknown, except a delay's (a state whose next
    value does not depend on its own read: a re-rolled loop's output that lags its input,
    docs/ir.md): the hull of its fill and its write's range, iterated until it holds (an
    inductive bound: the fill is in it, and a write from a read in it stays in it)."""
    delays = _delays(graph)
    reads = {s.read: Range(s.init, s.init, float(s.init).is_integer()) for s in delays}
    for _ in range(len(delays) + 2):
        ranges = _analyze(graph, reads)
        new = {s.read: _hull(reads[s.read], ranges[s.write]) for s in delays}
        if new == reads:
            return ranges
        reads = new
    return _analyze(graph, {})


def _hull(a: Range, b: Range) -> Range:
    return Range(min(a.lo, b.lo), max(a.hi, b.hi), a.integer and b.integer)


def _delays(graph: Graph) -> list:
    """The states whose write is not computed from their own read."""
    producers = {v: n for n in graph.nodes for v in n.outputs}
    found = []
    for s in graph.states:
        seen, todo = set(), [s.write]
        while todo and s.read not in seen:
            v = todo.pop()
            if v not in seen:
                seen.add(v)
                todo.extend(producers[v].inputs if v in producers else ())
        if s.read not in seen:
            found.append(s)
    return found


def _analyze(graph: Graph, reads: dict) -> dict[Value, Range]:
    ranges: dict[Value, Range] = {v: UNKNOWN for v in graph.inputs}
    values: dict[Value, np.ndarray] = dict(graph.constants)  # constants and dequantized weights
    for v, a in graph.constants.items():
        ranges[v] = _of_array(a)
    for s in graph.states:
        ranges[s.read] = reads.get(s.read, UNKNOWN)
    steps = graph.time.steps if graph.time is not None else 1
    for node in graph.nodes:
        if node.op == "time_reduce":  # the sum grows T times; the other modes keep it
            x = ranges[node.inputs[0]]
            k = steps if node.attrs["mode"] == "sum" else 1
            ranges[node.outputs[0]] = Range(x.lo * k, x.hi * k,
                                            x.integer and node.attrs["mode"] != "mean")
            continue
        for value, r in zip(node.outputs, _infer(node, ranges, values)):
            ranges[value] = r
    return ranges


def _infer(node: Node, ranges, values) -> list[Range]:
    op, ins = node.op, [ranges[v] for v in node.inputs]
    same = ("reshape", "transpose", "max_pool", "chunk", "split", "cast", "gather",
            "reduce_max", "reduce_min", "time_stack", "time_unstack")
    if op in same:
        return [ins[0]] * len(node.outputs)
    if op == "pad":  # the border's value joins the range
        c = node.attrs["value"]
        return [Range(min(ins[0].lo, c), max(ins[0].hi, c), ins[0].integer and float(c).is_integer())]
    if op == "concat":
        return [Range(min(r.lo for r in ins), max(r.hi for r in ins), all(r.integer for r in ins))]
    if op == "add":
        a, b = ins
        return [Range(a.lo + b.lo, a.hi + b.hi, a.integer and b.integer)]
    if op == "sub":
        a, b = ins
        return [Range(a.lo - b.hi, a.hi - b.lo, a.integer and b.integer)]
    if op == "mul":
        return [_mul(*ins)]
    if op == "relu":
        return [Range(max(ins[0].lo, 0.0), max(ins[0].hi, 0.0), ins[0].integer)]
    if op in ("avg_pool", "reduce_mean"):
        return [Range(ins[0].lo, ins[0].hi, False)]
    if op == "reduce_sum":
        shape = node.inputs[0].shape
        count = math.prod(int(shape[a]) for a in node.attrs["axes"]
                          if isinstance(shape[a], int))
        return [Range(ins[0].lo * count, ins[0].hi * count, ins[0].integer)]
    if op == "matmul":
        k = node.inputs[0].shape[-1]
        r = _mul(ins[0], ins[1])
        return [Range(min(r.lo * k, 0.0), max(r.hi * k, 0.0), r.integer)]
    if op == "neuron":
        return [SPIKE, UNKNOWN]
    if op == "compare":
        return [SPIKE]
    if op == "round":
        r = ins[0]
        return [Range(float(np.round(r.lo)), float(np.round(r.hi)), True)]
    if op == "clip":
        r, lo, hi = ins[0], node.attrs["min"], node.attrs["max"]
        lo = -INF if lo is None else lo
        hi = INF if hi is None else hi
        integer = r.integer and all(math.isinf(b) or float(b).is_integer() for b in (lo, hi))
        return [Range(min(max(r.lo, lo), hi), max(min(r.hi, hi), lo), integer)]
    if op == "where":
        a, b = ins[1], ins[2]
        return [Range(min(a.lo, b.lo), max(a.hi, b.hi), a.integer and b.integer)]
    if op == "neuron_model":  # its output's range by model (snnc.ir.neurons); states real
        model = MODELS[node.attrs["model"]]
        lo, hi, integer = model.out_range(dict(zip(model.params, node.attrs["params"])))
        return [Range(lo, hi, integer)] + [UNKNOWN] * len(model.states)
    if op == "dequantize":
        if all(v in values for v in node.inputs):
            w = dequantize_eval([values[v] for v in node.inputs], node.attrs)[0]
            values[node.outputs[0]] = w
            return [_of_array(w)]
        return [UNKNOWN]
    if op in ("conv", "linear", "time_mix"):
        weights = values.get(node.inputs[1])
        bias = values.get(node.inputs[2]) if len(node.inputs) == 3 else None
        if weights is None or (len(node.inputs) == 3 and bias is None):
            return [UNKNOWN]
        return [layer_bounds(ins[0], weights, bias)]
    if op in ("shift_conv", "shift_linear"):
        codes = values.get(node.inputs[1])
        if codes is None:
            return [UNKNOWN]
        sign, exponent = shift_terms(codes, pot_shift(node.attrs["bits"]))
        weights = (sign * np.left_shift(np.int64(1), exponent)).astype(np.float64)
        return [layer_bounds(ins[0], weights, None)]
    if op == "im2col":  # windows of the input, zero padding
        return [Range(min(ins[0].lo, 0.0), max(ins[0].hi, 0.0), ins[0].integer)]
    if op == "int_weights" and all(v in values for v in node.inputs):
        w = OPS["int_weights"].evaluate([values[v] for v in node.inputs], node.attrs)[0]
        values[node.outputs[0]] = w
        return [_of_array(w)]
    if op == "int_matmul":
        w = values.get(node.inputs[1])
        if w is not None and len(node.inputs[1].shape) == 2:  # a layer: per output column
            values[node.outputs[0]] = (ins[0], w)  # for a digits_sum after it
            return [layer_bounds(ins[0], w.T, None)]
        k = node.inputs[0].shape[-1]
        r = _mul(ins[0], ins[1])
        return [Range(min(r.lo * k, 0.0), max(r.hi * k, 0.0), True)]
    if op == "digits_sum":
        gemm = values.get(node.inputs[0])
        if gemm is None:
            return [UNKNOWN]
        x, w = gemm
        return [layer_bounds(x, recombined(w, node.attrs["count"]).T, None)]
    return [UNKNOWN] * len(node.outputs)  # batch_norm, div: real-valued


def recombined(matrix: np.ndarray, count: int) -> np.ndarray:
    """The integer weights [K, M] of a digit matrix [K, count * M] (float64)."""
    blocks = np.split(matrix.astype(np.float64), count, axis=1)
    return sum(b * 128.0 ** k for k, b in enumerate(blocks))


def digit_sums_bound(x: Range, parts: list[np.ndarray]) -> float:
    """The largest magnitude a layer's GEMM over int8 digits d_k (each [M, ...], least
    significant first) and digits_sum's running sum can reach on x: sum_k 128^k |x @ d_k|."""
    return sum(layer_bounds(x, d.astype(np.float64), None).magnitude * 128.0 ** k
               for k, d in enumerate(parts))


def holds(r: Range, dtype: str) -> bool:
    """Whether every value of the range is an integer of that type (u8, i8)."""
    _, low, high = INTEGER_TYPES[dtype]
    return r.integer and low <= r.lo and r.hi <= high


# ----------------------------------------------------------------------------- membranes

@dataclass(frozen=True)
class Membrane:
    layer: str
    source: str
    input: Range  # the neuron's input x (in the folded units)
    bound: float  # |membrane| <= bound at every step (inf: unbounded)
    integer_bits: int  # bits of the largest magnitude (sign not counted)
    fractional_bits: int | None  # added per step by a power-of-two 1/tau (None: not dyadic)
    steps: int | None  # timesteps (None: stream mode, unbounded)

    @property
    def total_bits(self) -> float:
        if self.fractional_bits is None or self.steps is None and self.fractional_bits:
            return INF
        return self.integer_bits + self.fractional_bits * (self.steps or 0)

    @property
    def exact(self) -> bool:
        """Every membrane update rounds nothing in float32: integer input, dyadic leak, and
        integer plus fractional bits within float32's 24-bit significand."""
        return self.input.integer and self.total_bits <= FLOAT32_EXACT_BITS

    def describe(self) -> str:
        frac = "-" if self.fractional_bits is None else str(self.fractional_bits)
        kind = "int" if self.input.integer else "real"
        bound = "inf" if math.isinf(self.bound) else f"{self.bound:.6g}"
        bits = "-" if math.isinf(self.bound) else str(self.integer_bits)
        return (f"{self.layer:<40} x in [{self.input.lo:.6g}, {self.input.hi:.6g}] ({kind})  "
                f"|v| <= {bound}  bits {bits} int + {frac}/step frac  "
                f"{'exact' if self.exact else 'rounds'}")


def _bits(bound: float) -> int:
    return 10 ** 6 if math.isinf(bound) else max(0, math.ceil(math.log2(bound + 1)))


def _fractional_bits(attrs) -> int | None:
    if attrs["leak"] == "none":
        return 0
    if attrs["leak"] != "div":
        return None  # a multiplier sigmoid(w): not dyadic in general
    mantissa, exponent = np.frexp(np.float64(attrs["leak_value"]))
    return int(exponent - 1) if mantissa == 0.5 and exponent >= 1 else None


def _threshold(graph: Graph, node: Node) -> float:
    if node.attrs["threshold"] is not None:
        return abs(float(node.attrs["threshold"]))
    return float(np.abs(graph.constants[node.inputs[2]]).max())


def membranes(graph: Graph, stream: bool = False,
              ranges: dict[Value, Range] | None = None) -> list[Membrane]:
    """One Membrane per neuron node of a one-step graph, over its time spec's steps (in
    stream mode the number of steps is open). `ranges`: analyze(graph), if already done."""
    ranges = ranges or analyze(graph)
    steps = None if stream or graph.time is None else graph.time.steps
    inits = {s.read: abs(s.init) for s in graph.states}
    result = []
    for node in graph.nodes:
        if node.op != "neuron":
            continue
        a = node.attrs
        x = ranges[node.inputs[0]]
        big_x = x.magnitude
        theta = _threshold(graph, node)
        start = max(inits.get(node.inputs[1], 0.0), abs(a["v_reset"] or 0.0))
        if a["leak"] == "none":  # IF: v may sink by |x| every step
            bound = INF if steps is None else start + theta + steps * big_x
        elif a["decay_input"]:  # v' = v + (x - v) k: a convex mix of v and x
            bound = max(start, big_x, theta)
        else:  # v' = v (1 - k) + x: geometric, at most |x| / k
            k = 1 / a["leak_value"] if a["leak"] == "div" else a["leak_value"]
            bound = max(start, theta, big_x / k)
        # the reset keeps |v| within |h| (hard) or |h| + threshold (soft)
        if a["v_reset"] is None and not math.isinf(bound):
            bound += theta
        layer = node.source.layer or node.outputs[0].hint
        result.append(Membrane(layer, str(node.source), x, bound, _bits(bound), _fractional_bits(a),
                               steps))
    return result


def integer_sums(graph: Graph, ranges: dict[Value, Range] | None = None
                 ) -> list[tuple[Node, Range]]:
    """Nodes whose float32 outputs are integer sums: conv/linear/shift/matmul over integers,
    integer GEMMs, and adds, subtractions and products of integers (a GEMM's digits
    recombined, summed spikes)."""
    ranges = ranges or analyze(graph)
    layers = ("conv", "linear", "shift_conv", "shift_linear", "matmul", "int_matmul", "add",
              "sub", "mul")
    return [(n, ranges[n.outputs[0]]) for n in graph.nodes
            if n.op in layers and ranges[n.outputs[0]].integer]


class RangeError(BadInputError):
    pass


def _int_weights(graph: Graph, producers, value: Value) -> np.ndarray | None:
    """The GEMM matrix `value` holds: a constant, or what an int_weights node of constants
    makes; None otherwise."""
    if value in graph.constants:
        return graph.constants[value]
    node = producers.get(value)
    if node is None or node.op != "int_weights" or \
            not all(v in graph.constants for v in node.inputs):
        return None
    return OPS["int_weights"].evaluate([graph.constants[v] for v in node.inputs], node.attrs)[0]


def _span(r: Range) -> str:
    kind = "integers" if r.integer else "real values"
    return f"{kind} in [{r.lo:.4g}, {r.hi:.4g}]"


def check(graph: Graph, stream: bool = False) -> list[Membrane]:
    """Refuse a graph whose integer sums or integer-input membranes could leave float32's
    exact integers; return the membrane table (docs/ranges.md)."""
    limit = 2.0 ** FLOAT32_EXACT_BITS
    ranges = analyze(graph)
    producers = graph.producers()
    for node in graph.nodes:
        if node.op == "cast" and node.attrs["to"] in INTEGER_TYPES:
            to, r = node.attrs["to"], ranges[node.inputs[0]]
            if not holds(r, to):
                raise RangeError(
                    f"{node.source or node.op}: a value cast to {to} for an integer kernel "
                    f"can be {_span(r)}, not only integers in {list(INTEGER_TYPES[to][1:])}. "
                    "This is a bug in snnc's integer lowering; please report it with the model.")
        if node.op == "digits_sum":
            gemm = producers.get(node.inputs[0])
            matrix = _int_weights(graph, producers, gemm.inputs[1]) \
                if gemm is not None and gemm.op == "int_matmul" else None
            bound = INF if matrix is None else digit_sums_bound(
                ranges[gemm.inputs[0]],
                [b.T for b in np.split(matrix, node.attrs["count"], axis=1)])
            if bound > limit:
                raise RangeError(
                    f"{node.source or node.op}: this layer's int8 digit sums can reach "
                    f"{bound:.4g}, beyond the 2^24 that float32 holds exactly. This is a bug "
                    "in snnc's integer lowering; please report it with the model.")
    for node, r in integer_sums(graph, ranges):
        if r.magnitude > limit:
            raise RangeError(
                f"{node.source or node.op}: this {node.op}'s integer sums can reach "
                f"{r.magnitude:.4g} = 2^{math.log2(r.magnitude):.1f}, beyond the 2^24 that "
                "float32 holds exactly. Use fewer weight bits or a smaller fan-in for this "
                "layer, or compile it unfolded.")
    table = membranes(graph, stream, ranges)
    for m in table:
        if math.isinf(m.bound) and m.steps is None:
            continue  # stream mode: an IF membrane may sink for ever; the app resets it
        if m.input.integer and m.bound > limit:
            raise RangeError(
                f"{m.source or m.layer}: the membrane can reach {m.bound:.4g} (2^"
                f"{math.log2(m.bound) if not math.isinf(m.bound) else math.inf:.1f}), beyond "
                "the 2^24 that float32 holds exactly. Lower the threshold or the number of "
                "timesteps, or use fewer weight bits.")
    return table


def format_table(table: list[Membrane]) -> str:
    exact = sum(m.exact for m in table)
    lines = [m.describe() for m in table]
    finite = [m.integer_bits for m in table if not math.isinf(m.bound)]
    lines.append(f"{len(table)} membranes, {exact} exact in float32 (integer input, dyadic "
                 f"leak, <= 24 bits); largest bounded membrane {max(finite, default=0)} "
                 "integer bits")
    return "\n".join(lines)
