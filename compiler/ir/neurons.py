"""Neuron models beyond IF / LIF / PLIF: the `neuron_model` op's vocabulary (numpy only).

A model is one timestep of a SpikingJelly neuron: `(x, *states) -> (out, *states')`, written
once against a small arithmetic interface (`Arith`) so the numpy interpreter (`NumpyArith`)
and the ONNX lowering (`snnc.backend.onnx_emit`) compute the same float32 operations in the
same order, each rounding as SpikingJelly's CPU kernel does (spikingjelly/_ops/<op>/cpu.py).
Python-float parameters enter as float32 constants, as PyTorch converts a scalar operand of
a float32 tensor.

`MODELS[name]` holds its parameter names (`params` attribute, in that order), its states
(the membrane first) with the fill each starts from, and the range of its output (for
snnc.ir.ranges: binary spikes are integers in [0, 1], ILIF's spike counts in [0, count],
STBIF's signed spikes times its threshold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

F32 = np.float32


class NumpyArith:
    """The arithmetic a model step uses, in float32 numpy, one IEEE operation at a time."""

    def c(self, x):
        """A parameter as float32: a float, or a per-channel constant array."""
        return np.asarray(x, F32) if isinstance(x, np.ndarray) else F32(x)

    def add(self, a, b):
        return np.add(a, b, dtype=F32)

    def sub(self, a, b):
        return np.subtract(a, b, dtype=F32)

    def mul(self, a, b):
        return np.multiply(a, b, dtype=F32)

    def div(self, a, b):
        return np.divide(a, b, dtype=F32)

    def exp(self, a):
        return np.exp(a, dtype=F32)

    def ge(self, a, b):  # 1.0 where a >= b, else 0.0
        return np.greater_equal(a, b).astype(F32)

    def lt(self, a, b):
        return np.less(a, b).astype(F32)

    def round(self, a):  # half to even, as torch.round and ONNX Round
        return np.round(a).astype(F32)

    def clip(self, a, lo: float, hi: float):
        return np.clip(a, F32(lo), F32(hi)).astype(F32)


def reset(k, h, spike, threshold, v_reset):
    """SpikingJelly's reset (spikingjelly/_ops/reset.py): soft h - spike * threshold, hard
    spike * v_reset + (1 - spike) * h."""
    if v_reset is None:
        return k.sub(h, k.mul(spike, threshold))
    return k.add(k.mul(spike, k.c(v_reset)), k.mul(k.sub(k.c(1.0), spike), h))


def _ilif(k, x, states, p, threshold, v_reset):
    """ILIFNode (_ops/ilif/cpu.py): h = (1 - 1/tau) v + x; spike = round(clamp(h / threshold,
    0, count)), an integer count; soft reset by spike * threshold."""
    v, = states
    h = k.add(k.mul(k.c(1.0 - 1.0 / p["tau"]), v), x)
    spike = k.round(k.clip(k.div(h, threshold), 0.0, p["count"]))
    return spike, [k.sub(h, k.mul(spike, threshold))]


def _eif(k, x, states, p, threshold, v_reset):
    """EIFNode: h = v + (x + rest - v + delta exp((v - theta) / delta)) / tau."""
    v, = states
    rise = k.mul(k.c(p["delta"]), k.exp(k.div(k.sub(v, k.c(p["theta"])), k.c(p["delta"]))))
    h = k.add(v, k.div(k.add(k.sub(k.add(x, k.c(p["rest"])), v), rise), k.c(p["tau"])))
    spike = k.ge(h, threshold)
    return spike, [reset(k, h, spike, threshold, v_reset)]


def _quadratic(k, v, p):
    return k.mul(k.mul(k.c(p["a0"]), k.sub(v, k.c(p["rest"]))), k.sub(v, k.c(p["critical"])))


def _qif(k, x, states, p, threshold, v_reset):
    """QIFNode: h = v + (x + a0 (v - rest)(v - critical)) / tau."""
    v, = states
    h = k.add(v, k.div(k.add(x, _quadratic(k, v, p)), k.c(p["tau"])))
    spike = k.ge(h, threshold)
    return spike, [reset(k, h, spike, threshold, v_reset)]


def _izhikevich(k, x, states, p, threshold, v_reset):
    """IzhikevichNode: h = v + (x + a0 (v - rest)(v - critical) - w) / tau;
    w' = w + (a (h - rest) - w) / tau_w + b spike."""
    v, w = states
    h = k.add(v, k.div(k.sub(k.add(x, _quadratic(k, v, p)), w), k.c(p["tau"])))
    spike = k.ge(h, threshold)
    drift = k.div(k.sub(k.mul(k.c(p["a"]), k.sub(h, k.c(p["rest"]))), w), k.c(p["tau_w"]))
    w_next = k.add(k.add(w, drift), k.mul(k.c(p["b"]), spike))
    return spike, [reset(k, h, spike, threshold, v_reset), w_next]


def _aaif(k, x, states, p, threshold, v_reset):
    """ActivationAwareIFNode (_ops/activation_aware_if/cpu.py): h = v + x; a spike where
    h + offset >= threshold; soft reset by the threshold, or hard."""
    v, = states
    h = k.add(v, x)
    spike = k.ge(k.add(h, k.c(p["offset"])), threshold)
    return spike, [reset(k, h, spike, threshold, v_reset)]


def _stbif(k, x, states, p, threshold, v_reset):
    """STBIFNode (_ops/stbif/cpu.py): q += x / q_threshold; a +1 spike when q >= 1 and the
    count acc is below pos_max, a -1 spike when q < 0 and acc is above neg_min; q and acc
    move by the spike; the output is spike * q_threshold."""
    q, acc = states
    qt = k.c(p["q_threshold"])
    q = k.add(q, k.div(x, qt))
    acc = k.round(acc)
    pos = k.mul(k.ge(q, k.c(1.0)), k.lt(acc, k.c(p["pos_max"])))
    neg = k.mul(k.lt(q, k.c(0.0)), k.lt(k.c(p["neg_min"]), acc))
    current = k.sub(pos, neg)
    return k.mul(current, qt), [k.add(k.sub(q, pos), neg), k.add(acc, current)]


@dataclass(frozen=True)
class Model:
    name: str
    params: tuple[str, ...]
    states: tuple[str, ...]  # the membrane first
    step: Callable
    out_range: Callable[[dict], tuple[float, float, bool]]  # (lo, hi, integers only)
    fires: str  # how it fires, for docs/ops.md


def _binary(p):
    return 0.0, 1.0, True


def _signed(p):
    qt = float(np.float32(p["q_threshold"]))
    return -abs(qt), abs(qt), float(qt).is_integer()


MODELS: dict[str, Model] = {m.name: m for m in [
    Model("ilif", ("tau", "count"), ("v",), _ilif,
          lambda p: (0.0, float(np.round(np.float32(p["count"]))), True),
          "round(clamp(h / threshold, 0, count)): integer spikes 0..count; soft reset"),
    Model("eif", ("tau", "rest", "theta", "delta"), ("v",), _eif, _binary,
          "h >= threshold; hard or soft reset"),
    Model("qif", ("tau", "rest", "critical", "a0"), ("v",), _qif, _binary,
          "h >= threshold; hard or soft reset"),
    Model("izhikevich", ("tau", "rest", "critical", "a0", "a", "b", "tau_w"), ("v", "w"),
          _izhikevich, _binary, "h >= threshold; hard or soft reset; recovery w"),
    Model("aaif", ("offset",), ("v",), _aaif, _binary,
          "h + offset >= threshold; soft (by the threshold) or hard reset"),
    Model("stbif", ("q_threshold", "pos_max", "neg_min"), ("q", "acc"), _stbif, _signed,
          "+1 at q >= 1, -1 at q < 0 within the count bounds, times q_threshold"),
]}


def arguments(args, attrs, constant=F32):
    """(x, states, params, threshold) of a `neuron_model` node's inputs `args` (x, *states,
    then one input per parameter given as None in `params`, in their order, then the
    threshold if it is None: per-channel constants that broadcast against x). A scalar
    parameter or threshold stays a float (`constant` makes the threshold one)."""
    model = MODELS[attrs["model"]]
    k = 1 + len(model.states)
    extra = iter(args[k:])
    params = {name: next(extra) if value is None else value
              for name, value in zip(model.params, attrs["params"])}
    threshold = next(extra) if attrs["threshold"] is None else constant(attrs["threshold"])
    return args[0], list(args[1:k]), params, threshold


def evaluate(args, attrs) -> list[np.ndarray]:
    """`neuron_model` in numpy: args (x, *states, *per-channel constants)."""
    model = MODELS[attrs["model"]]
    x, states, p, threshold = arguments(args, attrs)
    out, states = model.step(NumpyArith(), x.astype(F32, copy=False), states, p, threshold,
                             attrs["v_reset"])
    shape = np.broadcast_shapes(*(a.shape for a in args[:1 + len(model.states)]))
    return [np.broadcast_to(np.asarray(v, F32), shape).copy() for v in (out, *states)]


def decision(args, attrs) -> tuple[np.ndarray, np.ndarray]:
    """(m, threshold): the value a model's spike decision compares and what it compares it
    with, for the rounding rule of snnc.check.parity (a spike near |m - threshold| = 0 can
    be decided by float rounding): the charged membrane and the threshold; for ILIF the
    distance of h / threshold to the nearest rounding boundary (k + 0.5) and 0."""
    spy = _Spy()
    x, states, p, threshold = arguments(args, attrs)
    MODELS[attrs["model"]].step(spy, x.astype(F32, copy=False), states, p, threshold,
                                attrs["v_reset"])
    return spy.seen


class _Spy(NumpyArith):
    """NumpyArith that remembers the first decision a step makes."""

    seen = None

    def ge(self, a, b):
        if self.seen is None:
            self.seen = (np.asarray(a, F32), np.asarray(b, F32))
        return super().ge(a, b)

    def clip(self, a, lo, hi):
        if self.seen is None:
            a = np.asarray(a, F32)
            self.seen = (np.abs(a - np.floor(a) - F32(0.5)).astype(F32), np.zeros((), F32))
        return super().clip(a, lo, hi)
