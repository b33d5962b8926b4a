"""ONNX lowering of `neuron_model` (snnc.ir.neurons): the model's step, written once against
an arithmetic interface, run with one ONNX node per operation. The interpreter runs the same
step in numpy, so the two compute the same float32 operations in the same order."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from snnc.ir.neurons import MODELS, arguments


class _OnnxArith:
    """snnc.ir.neurons' arithmetic as ONNX nodes: each method adds one node (comparisons a
    comparison and a Cast to float) and returns its output's name, so a model's step lowers
    to the operations the interpreter evaluates, in the same order."""

    def __init__(self, e, module: str):
        self.e, self.module = e, module

    def c(self, x) -> str:
        """A float parameter as a constant; a per-channel one is already an input's name."""
        if isinstance(x, str):
            return x
        return self.e.scalar(x)

    def _op(self, op: str, inputs, what: str, **attrs) -> str:
        return self.e.op(op, inputs, self.module, what, **attrs)

    def add(self, a, b):
        return self._op("Add", [a, b], "add")

    def sub(self, a, b):
        return self._op("Sub", [a, b], "sub")

    def mul(self, a, b):
        return self._op("Mul", [a, b], "mul")

    def div(self, a, b):
        return self._op("Div", [a, b], "div")

    def exp(self, a):
        return self._op("Exp", [a], "exp")

    def ge(self, a, b):
        return self._op("Cast", [self._op("GreaterOrEqual", [a, b], "ge")], "fired",
                        to=TensorProto.FLOAT)

    def lt(self, a, b):
        return self._op("Cast", [self._op("Less", [a, b], "lt")], "below", to=TensorProto.FLOAT)

    def round(self, a):
        return self._op("Round", [a], "round")

    def clip(self, a, lo, hi):
        return self._op("Clip", [a, self.c(lo), self.c(hi)], "clip")


def lower_neuron_model(e, node, ins, outs, module) -> None:
    """A neuron model's step (snnc.ir.neurons) as elementwise ONNX nodes. The node that
    makes each result is renamed to write the IR output directly (an Identity where a
    result is an input or is returned twice)."""
    model = MODELS[node.attrs["model"]]
    first = len(e.nodes)
    arith = _OnnxArith(e, module)
    x, states, params, threshold = arguments(list(ins), node.attrs, arith.c)
    out, states = model.step(arith, x, states, params, threshold, node.attrs["v_reset"])
    made = {o: n for n in e.nodes[first:] for o in n.output}
    renamed: dict[str, str] = {}
    for result, name in zip([out, *states], outs):
        if result in made and result not in renamed:
            renamed[result] = name
        else:
            e.add("Identity", [renamed.get(result, result)], [name], module)
    for n in e.nodes[first:]:
        n.input[:] = [renamed.get(i, i) for i in n.input]
        n.output[:] = [renamed.get(o, o) for o in n.output]


def fire_arithmetic(e, node, h: str, fired: str, module: str) -> bool:
    """With a static batch (--batch: for NNAPI and CoreML, which refuse every comparison),
    the spike h >= threshold as float arithmetic they take (against). False (nothing emitted)
    without a static batch, for a threshold that is not a constant, or one holding -inf or
    NaN. (A NaN membrane gives NaN here where the comparison gives 0.)"""
    a = node.attrs
    t = a["threshold"] if a["threshold"] is not None else e.graph.constants.get(node.inputs[2])
    if e.opts.batch is None or t is None:
        return False
    t = np.asarray(t, np.float32)
    if np.any(np.isneginf(t) | np.isnan(t)):
        return False
    against(e, h, "ge", t, fired, module, f"{module}/threshold_below")
    return True


def positive_step(e, a: str, b: str, out: str, module: str) -> None:
    """out = 1.0 where a - b > 0, else 0.0, in float32 arithmetic alone: r = Relu((a - b) *
    2^127 * 2^127) is 0 where a <= b and at least 1 (or +inf) where a > b (two different
    float32 values differ by at least 2^-149), and 1 - Relu(1 - r) is then exactly 0 or 1."""
    big, one = e.scalar(2.0 ** 127), e.scalar(1.0)
    d, m1, m2, r, rest, over = (e.temp(module, w) for w in ("over", "big1", "big2", "ramp",
                                                           "rest", "clip"))
    e.add("Sub", [a, b], [d], module)
    e.add("Mul", [d, big], [m1], module)
    e.add("Mul", [m1, big], [m2], module)
    e.add("Relu", [m2], [r], module)
    e.add("Sub", [one, r], [rest], module)
    e.add("Relu", [rest], [over], module)
    e.add("Sub", [one, over], [out], module)


_SWAPPED = {"ge": "le", "gt": "lt", "le": "ge", "lt": "gt"}  # c op x == x swapped c


def compare_arithmetic(e, node, ins, outs, module) -> bool:
    """With --batch (NNAPI and CoreML refuse comparisons), x op c against a finite
    float32 constant c as arithmetic they take (against)."""
    consts = [e.graph.constants.get(v) for v in node.inputs]
    if e.opts.batch is None or (consts[0] is None) == (consts[1] is None):
        return False
    k = 1 if consts[1] is not None else 0
    c = np.asarray(consts[k], np.float32)
    if not np.all(np.isfinite(c)) or node.inputs[1 - k].dtype != "f32":
        return False
    op = node.attrs["op"] if k == 1 else _SWAPPED[node.attrs["op"]]
    name = ins[k] if op in ("gt", "lt") else f"{module}/{op}_bound"  # c itself: its own
    against(e, ins[1 - k], op, c, outs[0], module, name)  # initializer (equal ones share)
    return True


def against(e, x: str, op: str, c: np.ndarray, out: str, module: str, name: str) -> None:
    """out = x op c (1.0 or 0.0) for a float32 constant c, as positive_step: x > c is x - c
    > 0, x >= c is x - below(c) > 0, x < c is c - x > 0, x <= c is above(c) - x > 0, below
    and above the neighbouring float32 (the constant subtracted is named `name`, unless an
    equal one exists)."""
    bound = c if op in ("gt", "lt") else \
        np.nextafter(c, np.float32(-np.inf if op == "ge" else np.inf)).astype(np.float32)
    bound = e.const(bound, name)
    a, b = (x, bound) if op in ("gt", "ge") else (bound, x)
    positive_step(e, a, b, out, module)
