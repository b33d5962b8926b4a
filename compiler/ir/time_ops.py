"""Ops over all timesteps of a one-step graph (numpy only; registered in `ops.OPS`).

Each is evaluated on the T step values of its first input stacked on a leading axis, not one
step at a time: the interpreter runs what they read for all steps first (interp._stages),
and unroll_timesteps lowers them over the stacked steps.

- `time_reduce(x) mode="mean"|"sum"|"max"|"min"|"last"`: the mean, sum, maximum or minimum
  over all timesteps of a step value (a model's `x.mean(0)` before its head; a non-spiking
  readout's `max(v_seq, 0)`), or its value at the last step (`x_seq[-1]`). Its output and
  everything computed from it exist once, after the last step.
- `time_mix(x, w: [T, T], b: [T] or [T, ...])`: step t's value is
  sum_s w[t, s] x(step s) + b[t], a learned mix over all T steps (the parallel spiking
  neuron, PSN); with w = 0 and b [T, ...] a constant that differs per step (GLIF's
  conductance). Unrolled as one matrix product over the stacked steps, plus the bias.
- `time_stack(x) axis=k steps=T`: all T step values of `x` as one tensor, the steps on axis
  k (x.shape with T inserted at k): a layer that reads the whole run (a temporal attention
  pooling over time and pixels, a conv over the time axis). Like time_reduce, its output and
  the nodes computed only from it exist once, after the steps it reads.
- `time_unstack(y) axis=k`: the way back: step t's value is y[..., t, ...] (index t of axis
  k, which has T entries), a step value again that later layers use step by step.
"""

from __future__ import annotations

import numpy as np

from snnc.ir.shapes import ShapeError

F32 = np.float32


REDUCE_MODES = ("mean", "sum", "max", "min", "last")


def _reduce_infer(types, attrs):
    if attrs["mode"] not in REDUCE_MODES:
        raise ShapeError(f"time_reduce mode must be one of {', '.join(REDUCE_MODES)}, got "
                         f"{attrs['mode']!r}")
    return [types[0]]


def _reduce_eval(args, attrs):
    x, mode = args[0], attrs["mode"]
    if mode == "last":
        return [x[-1].astype(F32)]
    if mode in ("max", "min"):  # exact: picks one of the steps' values
        return [(np.max if mode == "max" else np.min)(x, axis=0).astype(F32)]
    reduce = np.mean if mode == "mean" else np.sum
    return [reduce(x, axis=0, dtype=F32)]


def _mix_infer(types, attrs):
    (dx, sx), (_, sw), (_, sb) = types
    if len(sw) != 2 or sw[0] != sw[1] or not sb or sb[0] != sw[0] or \
            len(sb) > len(sx) or any(d not in (1, e) for d, e in zip(sb[:0:-1], sx[::-1])):
        raise ShapeError(f"time_mix needs a [T, T] weight and a [T] or [T, ...] bias whose "
                         f"trailing axes fit a step value {list(sx)} without its batch, got "
                         f"{list(sw)} and {list(sb)}")
    return [(dx, sx)]


def time_mix_bias(b: np.ndarray, rank: int) -> np.ndarray:
    """A [T, ...] bias of time_mix as an array that broadcasts against the stacked steps
    [T, N, ...] of a step value of rank `rank`: [T, 1, ..., 1, *trailing axes]."""
    return b.reshape(b.shape[0], *[1] * (rank - b.ndim + 1), *b.shape[1:])


def _mix_eval(args, attrs):
    """On the T step values stacked on a leading axis: h[t] = sum_s w[t, s] x[s] + b[t], the
    products summed in float32 as torch.addmm does (one matrix product). A bias [T, ...]
    with feature axes (a per-step constant; w may be 0) is added after the product."""
    x, w, b = args
    flat = x.reshape(x.shape[0], -1)
    if b.ndim == 1:
        h = (w.astype(F32) @ flat + b.astype(F32)[:, None]).astype(F32)
        return [h.reshape(x.shape)]
    h = (w.astype(F32) @ flat).astype(F32).reshape(x.shape)
    return [(h + time_mix_bias(b.astype(F32), x.ndim - 1)).astype(F32)]


def _stack_infer(types, attrs):
    (dx, sx), = types
    axis = attrs["axis"]
    if not 0 <= axis <= len(sx) or attrs["steps"] < 1:
        raise ShapeError(f"time_stack axis {axis} / steps {attrs['steps']} do not fit a step "
                         f"value {list(sx)}")
    return [(dx, (*sx[:axis], attrs["steps"], *sx[axis:]))]


def _stack_eval(args, attrs):
    """On the T step values stacked on a leading axis: the steps moved to `axis`."""
    return [np.ascontiguousarray(np.moveaxis(args[0], 0, attrs["axis"]))]


def _unstack_infer(types, attrs):
    (dx, sx), = types
    axis = attrs["axis"]
    if not 0 <= axis < len(sx) or not isinstance(sx[axis], int):
        raise ShapeError(f"time_unstack axis {axis} is not a static axis of {list(sx)}")
    return [(dx, (*sx[:axis], *sx[axis + 1:]))]


def _unstack_eval(args, attrs):
    """All steps at once: [T, ...], step t's value in row t (the interpreter hands row t to
    step t)."""
    return [np.ascontiguousarray(np.moveaxis(args[0], attrs["axis"], 0))]


# ops whose input is every step at once (the interpreter runs what they read for all steps
# first), and the ones among them whose output exists once, not per step
ALL_STEPS = ("time_mix", "time_reduce", "time_stack")
ONCE = ("time_reduce", "time_stack")

SPECS = {  # name -> (attribute schema, infer, evaluate, (min, max) inputs)
    "time_reduce": ({"mode": str}, _reduce_infer, _reduce_eval, (1, 1)),
    "time_mix": ({}, _mix_infer, _mix_eval, (3, 3)),
    "time_stack": ({"axis": int, "steps": int}, _stack_infer, _stack_eval, (1, 1)),
    "time_unstack": ({"axis": int}, _unstack_infer, _unstack_eval, (1, 1)),
}
