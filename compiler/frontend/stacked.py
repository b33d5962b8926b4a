"""Layers that read the whole run: lifted on the stacked steps, then per step again.

The IR value of an activation is its tensor at one timestep (axes.py). Most layers of a
spiking network work step by step, so that is all they need. Some read every step at
once: a temporal attention pools over time and pixels together
(`AdaptiveAvgPool3d` over [B, C, T, H, W]), mixes the steps with a conv whose channels are
the time axis, or flattens time into the channels (`x.flatten(1, 2)` of [B, T, C, H, W]).
Their rules refuse a time axis they would have to compute over.

When a rule refuses, the op is tried again on the whole run: each operand that has a time
axis becomes one tensor with its T steps on that axis (`time_stack`, docs/ir.md), exactly
the tensor PyTorch computes on, whose time axis is a feature axis like any other; the op and
everything computed from its result alone then exist once per run (Act.post). If a rule
refuses such a whole-run tensor where it needs steps (a neuron, a conv on [T*B, ...]), the
op is tried with the tensor cut back into steps: a whole-run [T, B, ...] tensor's axis 0
is time (`time_unstack`), and the tensor stays cut into steps for the ops after it (a
neuron's loop over time reads its input node by node). Both are exact changes of representation (the same numbers), so
whichever lets the rule lift the op is right; stacking costs one copy of the activation.
"""

from __future__ import annotations

from typing import Callable

import torch

from snnc.frontend import axes
from snnc.frontend.axes import AxisError, Layout
from snnc.frontend.lifter import Act, Lifter, Marker, Unsupported, dims
from snnc.ir.ops import ShapeError


def lifted(lx: Lifter, node: torch.fx.Node, attempt: Callable[[], object], stack: bool = True):
    """attempt() (a rule, or a node of a neuron's loop); if it refuses, what it emitted is
    taken back and the op is retried over the whole run (`retry`); if that refuses too, the
    rule's own refusal (with what it said on the whole run, `both`, when it stacked)."""
    undo = undo_point(lx)
    try:
        return attempt()
    except (Unsupported, AxisError) as why:
        undo()
        got, whole = retry(lx, node, attempt, stack)
        if got is None:
            raise (both(why, whole) if stack else why) from None
        return got


def retry(lx: Lifter, node: torch.fx.Node, attempt: Callable[[], object], stack: bool = True):
    """(the op lifted over the whole run (its operands with time stacked; if `stack`), or
    with whole-run [T, B, ...] operands cut into steps, or None; the last reason a rule
    refused a converted attempt, or None). What a refused attempt emitted is taken back."""
    if lx.explicit:  # a single-step program has no time axis to stack
        return None, None
    why = None
    for convert in (_stacked, _unstacked)[0 if stack else 1:]:
        mark = undo_point(lx)
        swapped = {}
        for arg in node.all_input_nodes:
            new = convert(lx, arg, lx.env.get(arg), node)
            if new is not None:
                swapped[arg] = lx.env[arg]
                lx.env[arg] = new
        if not swapped:
            continue
        try:
            lifted = attempt()
        except (Unsupported, AxisError, ShapeError) as error:
            lx.env.update(swapped)
            mark()
            why = error
            continue
        if convert is _stacked:  # later ops see the steps again; cut steps stay cut
            lx.env.update(swapped)
        return lifted, None
    return None, why


def both(why: Exception, whole: Exception | None) -> Exception:
    """The refusal to report: the rule's own, and, where that was about time, what it said
    on the whole run if that differs (a conv3d over time is refused per step for its axes,
    on the whole run for its kernel)."""
    if whole is None or str(whole) == str(why) or "time" not in str(why):
        return why
    return type(why)(f"{why} (and lifted on the whole run: {whole})")


_CACHES = ("views", "weights", "reduced")  # the Lifter's caches of emitted values, which
# only ever gain entries (in order), so an undo point is their lengths


def undo_point(lx: Lifter) -> Callable[[], None]:
    """A function that takes back the nodes and states emitted after now, and forgets the
    values it cached since (stacked views, dequantized weights, time reductions)."""
    nodes, states = len(lx.builder.nodes), len(lx.builder.states)
    sizes = {name: len(getattr(lx, name)) for name in _CACHES}

    def undo():
        del lx.builder.nodes[nodes:]
        del lx.builder.states[states:]
        for name, size in sizes.items():
            cache = getattr(lx, name)
            for key in list(cache)[size:]:
                del cache[key]
    return undo


def _stacked(lx: Lifter, arg: torch.fx.Node, got, node: torch.fx.Node) -> Act | None:
    """A per-step activation with a time axis of T steps, as one whole-run tensor: the
    time axis kept in place as a feature axis (emitted where `node` needs it). x[0] of such
    a tensor (which the lifter keeps for a neuron's initial membrane) is step 0's value."""
    if isinstance(got, Marker) and got.kind == "first_step":
        whole = _stacked(lx, arg.args[0], got.payload, node)
        if whole is None:
            return None
        t = got.payload.layout.roles.index(axes.T)
        first, = lx.emit("gather", [whole.value], {"axis": t, "indices": [0]}, node)
        shape = [d for i, d in enumerate(whole.value.shape) if i != t]
        value, = lx.emit("reshape", [first], {"shape": shape}, node)
        return Act(value, whole.layout.drop(t), post=True)
    if not isinstance(got, Act) or got.post or axes.T not in got.layout.roles:
        return None
    t = got.layout.roles.index(axes.T)
    if dims(arg)[t] != lx.steps:
        return None
    key = ("stack", got.value, got.layout)
    if key not in lx.views:
        value, = lx.emit("time_stack", [got.value], {"axis": t, "steps": lx.steps}, node)
        roles = tuple(axes.F if r == axes.T else r for r in got.layout.roles)
        lx.views[key] = Act(value, Layout(roles), post=True)
    return lx.views[key]


def steps_of(lx: Lifter, arg: torch.fx.Node, got) -> Act | None:
    """A whole-run [T, B, ...] tensor (a model output) as step values, else None."""
    return None if lx.explicit else _unstacked(lx, arg, got, arg)


def _unstacked(lx: Lifter, arg: torch.fx.Node, got, node: torch.fx.Node) -> Act | None:
    """A whole-run [T, B, ...] tensor as the step values of a [T, B, ...] activation."""
    if not isinstance(got, Act) or not got.post or got.layout.roles[:2] != (axes.F, axes.B) \
            or dims(arg)[0] != lx.steps:
        return None
    key = ("unstack", got.value, got.layout)
    if key not in lx.views:
        value, = lx.emit("time_unstack", [got.value], {"axis": 0}, node)
        lx.views[key] = Act(value, Layout((axes.T, *got.layout.roles[1:])))
    return lx.views[key]
