"""The lifter's state and what its walk (lift.py) and its rules (rules_*.py) share.

A lifted activation is an `Act`: its IR value at one timestep and a `Layout` (axes.py) saying
which torch axis is time, batch, time x batch or a feature. A fact that is not a tensor is a
`Marker`. A use snnc cannot lift raises `Unsupported`, which the walk collects. The `Lifter`
holds one lift's state: the IR being built, what each fx node became, the example batch.
Rule modules register their rules in a `Rules` table and read arguments with the readers
below (a malformed argument is an unsupported use, never a crash).
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from snnc.errors import BadInputError
from snnc.frontend import axes
from snnc.frontend.axes import Layout
from snnc.ir.builder import Builder
from snnc.ir.graph import BATCH, Provenance, Value

# SpikingJelly's neuron ops and how many states (membrane first) each takes after x.
NEURON_STATES = {"sj_lif.forward.default": 1, "sj_if.forward.default": 1,
                 "sj_plif.forward.default": 1, "sj_ilif.forward.default": 1,
                 "sj_eif.forward.default": 1, "sj_qif.forward.default": 1,
                 "sj_izhikevich.forward.default": 2, "sj_stbif.forward.default": 2,
                 "sj_activation_aware_if.forward.default": 1}
NEURON_OPS = tuple(NEURON_STATES)
QUANT_OP = "snnc.fake_quant.default"

# Frames inside these files are library plumbing, not the line of the model's code.
_LIBRARY_FRAMES = (f"{os.sep}torch{os.sep}", os.path.join("spikingjelly", "_ops"),
                   os.path.join("activation_based", "base.py"),
                   os.path.join("activation_based", "neuron"),
                   os.path.join("activation_based", "layer"))


# A multi-step neuron given [T*B, ...]: a bug in the model (QKFormer's code has it).
BATCH_LEAK = ("a multi-step neuron reads axis 0 of its input as time; given [T*B, ...] (time "
              "and batch merged, e.g. a convolution's output not unflattened) it steps through "
              "T*B 'timesteps', each sample's membrane carrying into the next sample: the batch "
              "leaks through time, a bug in the model. Give it [T, B, ...]: "
              "x.unflatten(0, (T, -1)) before the neuron and flatten(0, 1) after, or wrap the "
              "layers before it in layer.SeqToANNContainer")


class Unsupported(Exception):
    """A use of an op snnc cannot lift; the message says what to change."""


@dataclass(frozen=True)
class Act:
    """A lifted activation: its one-step IR value and the roles of its torch axes. `post`:
    computed once, after a reduction over time (multi-step programs only)."""

    value: Value
    layout: Layout
    post: bool = False


@dataclass(frozen=True)
class Marker:
    """A fact that is not a tensor of the IR: `kind` is "init" (a membrane's constant
    initial fill, payload the float), "first_step" (x[0] of a [T, B, ...] tensor, only for
    full_like), "time_reduce" (payload (Act, a time_reduce mode): emitted when used),
    "shape" (a size, for view arguments), "indices" (of a max or min: not lifted) or
    "none" (an op with no result)."""

    kind: str
    payload: Any = None


REPORTED = Marker("reported")  # the node was reported as unsupported
_NOT_A_TENSOR = {
    "membrane": "reads a multi-step neuron's membrane potential (v_seq); only its spikes "
                "can be compiled: read spikes, or write the model single-step",
    "first_step": "uses x[0] of a [T, B, ...] tensor; a multi-step model is compiled whole "
                  "(x[0] only starts a neuron's membrane)",
    "shape": "uses a tensor size as a tensor",
    "time_rows": "flattens [T, B, ...] to [T, B*...]: snnc lifts that only as the right "
                 "operand of a matrix product with a constant [T, T] weight (a mix over "
                 "time, as PSN), viewed back to [T, B, ...]",
    "none": "uses the result of an op that has none",
    "indices": "uses the indices of a maximum or minimum (an argmax); snnc computes only "
               "its values",
}


def source_of(node: torch.fx.Node) -> Provenance:
    """The module path, class, file and line of the user's code that made `node`."""
    stack = node.meta.get("nn_module_stack") or {}
    module = cls_name = ""
    if stack:
        module, cls = list(stack.values())[-1]
        cls_name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", "")
        cls_name = cls_name or "?"
    file, line = _user_frame(node.meta.get("stack_trace") or "")
    return Provenance(module=module, cls=cls_name, file=file, line=line)


def _user_frame(trace: str) -> tuple[str, int]:
    frames = [line.strip() for line in trace.splitlines() if line.strip().startswith("File ")]
    user = [f for f in frames if not any(part in f for part in _LIBRARY_FRAMES)]
    if not user:
        return "", 0
    try:  # File "path", line N, in fn
        path = user[-1].split('"')[1]
        return os.path.basename(path), int(user[-1].split(", line ")[1].split(",")[0])
    except (IndexError, ValueError):
        return "", 0


def op_name(node: torch.fx.Node) -> str:
    target = node.target
    if target is operator.getitem:
        return "getitem"
    if getattr(target, "__module__", None) in ("_operator", "operator"):
        return f"operator.{target.__name__}"
    name = str(target)
    return name[len("torch.ops."):] if name.startswith("torch.ops.") else name


def bind(node: torch.fx.Node) -> dict[str, Any]:
    """The op's arguments by schema name, defaults filled in."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {f"arg{i}": a for i, a in enumerate(node.args)}
    bound: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            bound[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            bound[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound


def dims(node: torch.fx.Node) -> tuple:
    """The torch shape of a node's value: ints, or sympy expressions for dynamic sizes."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise Unsupported("has no tensor shape in the exported program")
    return tuple(_dim(d) for d in val.shape)


def _dim(d):
    if isinstance(d, int):
        return d
    expr = d.node.expr if isinstance(d, torch.SymInt) else d
    return int(expr) if getattr(expr, "is_number", False) else expr


class Values:
    """Building the IR: nodes with the fx node's provenance, constants, activations."""

    def __init__(self, steps: int):
        self.builder = Builder()
        self.steps = steps
        self.scalars: dict[float, Value] = {}

    def emit(self, op: str, inputs, attrs: dict, node: torch.fx.Node, hint: str = ""
             ) -> list[Value]:
        return self.builder.add(op, inputs, attrs, source_of(node), hint or node.name)

    def constant(self, array: np.ndarray, hint: str, dtype: str = "f32") -> Value:
        return self.builder.const(array, hint, dtype)

    def scalar(self, x: float) -> Value:
        key = float(np.float32(x))
        if key not in self.scalars:
            self.scalars[key] = self.constant(np.array(key, np.float32), f"c{key:g}")
        return self.scalars[key]

    def new_act(self, value: Value, layout: Layout, post: bool = False) -> Act:
        """An activation, refusing layouts the time-major unroll cannot carry."""
        if self.steps > 1 and not post and layout.step_roles[0] != axes.B:
            raise Unsupported(f"moves the batch axis (axes {layout}); in a multi-step model "
                              "keep [T, B, ...], [T*B, ...] or [B, ...] leading")
        return Act(value, layout, post)


class Lifter(Values):
    """The state of one lift; rules (compiler/rules.py) read their arguments with it."""

    def __init__(self, program: torch.export.ExportedProgram, graph: torch.fx.Graph,
                 regions=(), inputs=None):
        self.regions = list(regions)  # neuron module calls (neuron_regions.find)
        # inputs: the placeholder names of the model's own inputs in `graph`
        self.explicit, steps, loops = _time_form(graph, self.regions, inputs)
        super().__init__(steps)
        self.loop_of = {n: r for r in loops for n in r.nodes}
        self.refused = {n for r in self.regions if r.error for n in r.nodes}
        self.region_of = {n: r for r in self.regions if not r.op for n in r.nodes}
        self.program = program
        self.graph = graph  # the program's graph made functional (prepare.py)
        self.env: dict[torch.fx.Node, Any] = {}
        self.tensors: dict[torch.fx.Node, Any] = {}  # constants as torch values (fold.py)
        self.unsupported: list[tuple[str, str]] = []
        self.reduced: dict[int, Act] = {}  # time_reduce nodes made, by fx node
        self.views: dict[tuple, Act] = {}  # activations stacked over time and back (stacked.py)
        self.weights: dict[tuple, Value] = {}  # dequantized weights, one per quantized layer
        self.loops: dict = {}  # per-step loops: stack node -> {t: (x_seq[t] node, its uses)}
        self.input_modes: list[str] = []
        self.input_names: list[str] = []
        self.batch = None  # the example batch: an int, or a sympy symbol (dynamic batch)

    def operand(self, arg) -> Act | Value:
        """An activation, a constant tensor, or a Python number (as a constant)."""
        if isinstance(arg, torch.fx.Node):
            got = self.value_of(arg)
            if isinstance(got, Marker) and got.kind == "time_reduce":
                return _reduced(self, arg, *got.payload)
            if isinstance(got, Marker) and got.kind == "init":  # full_like: a constant
                return self.scalar(got.payload)
            if isinstance(got, (Act, Value)):
                return got
            raise Unsupported(_NOT_A_TENSOR.get(getattr(got, "kind", ""), f"uses {arg.name} "
                                                "as a tensor, which it is not"))
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return self.scalar(arg)
        raise Unsupported(f"has an operand of unsupported kind {type(arg).__name__}")

    def value_of(self, node: torch.fx.Node):
        if node not in self.env:
            raise Unsupported(f"reads {node.name}, which is not computed before it")
        return self.env[node]

    def act(self, arg, what: str = "input") -> Act:
        got = self.operand(arg)
        if not isinstance(got, Act):
            got = _neuron_constant(self, arg, got)
        if got is None:
            raise Unsupported(f"expects an activation as its {what}, got a constant")
        return got

    def const(self, arg) -> Value:
        got = self.env.get(arg) if isinstance(arg, torch.fx.Node) else None
        if not isinstance(got, Value):
            raise Unsupported("needs a constant (parameter or buffer) here, got an activation")
        return got


def _neuron_constant(lx: Lifter, node, got) -> Act | None:
    """A value of a neuron written in PyTorch that is one constant everywhere (RAFNode's
    first spike: it fires on the state before the step, which starts from a fill), as
    an activation of the neuron's input's shape: where(x, c, c), c wherever x is. None
    if `node` is no such value."""
    region = lx.region_of.get(node)
    if region is None or not isinstance(got, Value) or got not in lx.builder.constants:
        return None
    array = np.asarray(lx.builder.constants[got])
    if not array.size or np.any(array != array.reshape(-1)[0]):
        return None
    inside = set(region.nodes)
    x = next((a for n in region.nodes for a in n.all_input_nodes
              if a not in inside and isinstance(lx.env.get(a), Act)), None)
    if x is None:
        return None
    act, shape = lx.env[x], dims(node)
    if dims(x) == shape:
        layout = act.layout
    elif dims(x)[1:] == shape and act.layout.roles[0] == axes.T:  # x_seq[t] of [T, B, ...]
        layout = act.layout.drop(0)
    else:
        return None
    c = lx.scalar(float(array.reshape(-1)[0]))
    value, = lx.emit("where", [act.value, c, c], {}, node)
    return lx.new_act(value, layout, act.post)


def _neurons(graph: torch.fx.Graph, regions=()) -> list[torch.fx.Node]:
    """The neuron op calls; refuses programs without any neuron (op or plain-PyTorch
    region), and multi-step neurons reused with their membrane carried over (one module
    called for two layers). Calls inside a re-rolled loop (a region's) are the loop's."""
    looped = {n for r in regions if r.loop is not None for n in r.nodes}
    calls = [n for n in graph.nodes if op_name(n) in NEURON_OPS and n not in looped]
    if not calls and regions:
        return calls
    other = sorted({op_name(n).split(".")[0] for n in graph.nodes
                    if op_name(n).startswith("sj_") and op_name(n) not in NEURON_OPS})
    if not calls:
        raise BadInputError(
            "the model has no SpikingJelly neuron layer snnc compiles (docs/ops.md, "
            "Neurons" + (f"; it uses {', '.join(other)}, which snnc does not "
                         "compile" if other else "") + ").")
    for n in calls:
        states = n.args[1:1 + NEURON_STATES[op_name(n)]]
        if any(_membrane_of(s) for s in states) and isinstance(n.args[0], torch.fx.Node) \
                and dims(n.args[0])[0] != 1:
            raise BadInputError(
                f"the neuron {source_of(n)} starts from another multi-step call's final "
                "membrane: one neuron module is used for two layers. Give each layer its "
                "own neuron module.")
    return calls


def _time_form(graph: torch.fx.Graph, regions, inputs=None) -> tuple[bool, int, list]:
    """(single-step?, T, the neuron regions that loop over time). Single-step: a membrane
    passed from one neuron call to the next, or a neuron module written in PyTorch called
    more than once (and no loop over time in a neuron): the time loop is in forward."""
    plain = [r for r in regions if not r.op]  # neurons written in PyTorch
    neurons = _neurons(graph, plain)
    loops = [r for r in plain if r.loop is not None or r.error]
    paths = [r.module for r in plain]
    explicit = any(_membrane_of(n.args[1]) for n in neurons) or (
        not neurons and not loops and len(set(paths)) < len(paths))
    if not explicit:
        _same_steps(neurons)
    steps = 1 if explicit else _time_steps(neurons[0]) if neurons else \
        _region_steps(plain[0], loops[0] if loops else None, _from_inputs(graph, inputs))
    return explicit, steps, loops


def _from_inputs(graph: torch.fx.Graph, inputs) -> set | None:
    """The nodes computed from the model's inputs (named in `inputs`), or None if unknown."""
    if inputs is None:
        return None
    found: set = set()
    for node in graph.nodes:
        if (node.op == "placeholder" and node.name in inputs) or \
                any(a in found for a in node.all_input_nodes):
            found.add(node)
    return found


def _region_steps(region, loop, activations=None) -> int:
    """T of a multi-step neuron written in PyTorch: its loop's, or (treating [T, B, ...]
    elementwise) its input's first axis: the first input computed from the model's input
    (`activations`), not a parameter (a PSN's weights)."""
    if loop is not None and loop.loop is not None:
        return len(loop.loop.stack.args[0])
    region = loop or region
    for node in region.nodes:
        for arg in node.all_input_nodes:
            if arg not in region.nodes and isinstance(arg.meta.get("val"), torch.Tensor) \
                    and (activations is None or arg in activations) and dims(arg):
                steps = dims(arg)[0]
                if isinstance(steps, int) and steps >= 1:
                    return steps
    raise BadInputError(f"the neuron {region.where} has no input with a static time axis")


def _same_steps(neurons: list[torch.fx.Node]) -> None:
    """Multi-step neurons all run over the same T; one whose axis 0 is a multiple of the
    others' (T*B) is given time and batch merged."""
    sizes = {n: dims(n.args[0])[0] for n in neurons if isinstance(n.args[0], torch.fx.Node)}
    steps = [s for s in sizes.values() if isinstance(s, int) and s > 1]
    if not steps:
        return
    merged = [n for n, s in sizes.items() if isinstance(s, int) and s > min(steps)
              and s % min(steps) == 0]
    if merged:
        other = next(n for n, s in sizes.items() if s == min(steps))
        raise BadInputError(
            f"the neuron {source_of(merged[0])} runs over {sizes[merged[0]]} steps, the "
            f"neuron {source_of(other)} over {min(steps)}. If its input is [T*B, ...]: "
            f"{BATCH_LEAK}. If it really runs over more steps (a sequence extended in "
            "time), snnc compiles models whose neurons all run over the same T")


def _time_steps(neuron: torch.fx.Node) -> int:
    steps = dims(neuron.args[0])[0] if isinstance(neuron.args[0], torch.fx.Node) else None
    if not isinstance(steps, int) or steps < 1:
        raise BadInputError("the first neuron's input has no static time axis; export "
                            "with a fixed number of timesteps T")
    return steps


def _reduced(lx: Lifter, node: torch.fx.Node, x: Act, mode: str) -> Act:
    """x.mean(0), x.sum(0), max or min over time, or x_seq[-1], used by another op: a
    time_reduce node, once."""
    if id(node) not in lx.reduced:
        value, = lx.emit("time_reduce", [x.value], {"mode": mode}, node)
        lx.reduced[id(node)] = Act(value, x.layout.drop(x.layout.time_axis), post=True)
    return lx.reduced[id(node)]


# The float islands' elementwise ops (rules_float.py lifts them).
FLOAT_ELEMENTWISE = ("aten.gelu.default", "aten.silu.default", "aten.sigmoid.default",
                     "aten.tanh.default", "aten.hardtanh.default", "aten.relu6.default",
                     "aten.leaky_relu.default",
                     "aten.elu.default", "aten.hardswish.default", "aten.hardsigmoid.default",
                     "aten.exp.default", "aten.log.default", "aten.sqrt.default",
                     "aten.rsqrt.default", "aten.reciprocal.default", "aten.pow.Tensor_Scalar",
                     "aten.square.default", "aten.abs.default", "aten.neg.default",
                     "aten.erf.default", "aten.sign.default")
# Ops that keep every axis of their input: the walk follows a model input through them to
# see how it is used (lift._first_use), and rules._want looks through them too.
ELEMENTWISE = ("aten.clone.default", "aten.detach.default", "aten.contiguous.default",
               "aten.dropout.default", "aten.relu.default", "aten.add.Tensor",
               "aten.sub.Tensor", "aten.mul.Tensor", "aten.div.Tensor", "aten.rsub.Scalar",
               "aten.linear.default") + FLOAT_ELEMENTWISE


def axis_args(node: torch.fx.Node) -> list:
    """The axis argument(s) of an index, reduction or permute node, as a list."""
    value = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _membrane_of(arg) -> bool:
    """Whether a neuron's initial membrane is another neuron call's membrane output (seen
    through a conversion to float32, as STBIF's single-step form passes it)."""
    while isinstance(arg, torch.fx.Node) and op_name(arg) == "aten.to.device":
        arg = arg.args[0]
    return (isinstance(arg, torch.fx.Node) and arg.target is operator.getitem
            and isinstance(arg.args[0], torch.fx.Node) and op_name(arg.args[0]) in NEURON_OPS
            and isinstance(arg.args[1], int)
            and 1 <= arg.args[1] <= NEURON_STATES[op_name(arg.args[0])])


# -- rule tables ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    fn: Callable
    ir: str  # the IR ops it makes, for docs/ops.md
    note: str


class Rules(dict):
    """Rules by op name. Each rule module fills its own table with `@RULES.rule(name, ...,
    ir=..., note=...)`; rules.RULES is their union."""

    def rule(self, *names: str, ir: str = "", note: str = ""):
        def register(fn):
            for name in names:
                self[name] = Rule(fn, ir, note)
            return fn
        return register

    @classmethod
    def union(cls, *tables: "Rules") -> "Rules":
        merged = cls()
        for table in tables:
            both = set(merged) & set(table)
            assert not both, f"two rule modules lift {sorted(both)}"
            merged.update(table)
        return merged


# -- argument readers: a malformed argument is an unsupported use, never a crash ---------

def int_arg(a: dict, name: str) -> int:
    value = a.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Unsupported(f"its {name} argument {value!r} is not an integer")
    return value


def ints_arg(a: dict, name: str, n: int | None = None) -> list[int]:
    value = a.get(name)
    values = [value] if isinstance(value, int) else value
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise Unsupported(f"its {name} argument {value!r} is not a list of integers")
    values = list(values)
    if n is not None and len(values) == 1:
        values = values * n
    if n is not None and len(values) != n:
        raise Unsupported(f"its {name} argument {value!r} does not have {n} values")
    return values


def float_arg(a: dict, name: str) -> float:
    value = a.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unsupported(f"its {name} argument is {type(value).__name__}, not a number")
    return float(value)


def positive(values: list[int], name: str) -> list[int]:
    if any(v < 1 for v in values):
        raise Unsupported(f"its {name} {values} has a value below 1")
    return values


# -- values rules share --------------------------------------------------------------------

def reshaped(lx: Lifter, node, x: Act, layout: Layout) -> Act:
    """x with a new layout and the torch shape of `node`: a reshape if the step value's
    shape changes."""
    shape = layout.step_shape(dims(node), BATCH)
    value = x.value
    if tuple(shape) != tuple(value.shape):
        value, = lx.emit("reshape", [value], {"shape": list(shape)}, node)
    return lx.new_act(value, layout, x.post)


def image_input(x: Act, rank: tuple[int, ...], what: str) -> None:
    roles = x.layout.roles
    if x.layout.rank not in rank or roles[0] not in (axes.B, axes.TB) or any(
            r != axes.F for r in roles[1:]):
        want = " or ".join(f"{k}-D" for k in rank)
        raise Unsupported(f"{what} expects a {want} [B or T*B, C, ...] tensor, got axes "
                          f"{x.layout}; flatten time into the batch first (x.flatten(0, 1), "
                          "or SeqToANNContainer)")


def reduced_features(lx: Lifter, node, x: Act, picked: list[int], keep: bool, op: str) -> Act:
    """The reduce_<op> (mean, sum, max, min) of x over its feature axes `picked` (torch
    axes; the time and batch axes are refused), keeping them as 1s with `keep`."""
    step_axes = [x.layout.step_axis(d) for d in picked]
    layout = x.layout if keep else Layout(tuple(r for i, r in enumerate(x.layout.roles)
                                                if i not in picked))
    value, = lx.emit(f"reduce_{op}", [x.value], {"axes": step_axes, "keepdims": keep}, node)
    return lx.new_act(value, layout, x.post)


def part(lx, node, x: Act, axis: int, start: int, end: int, size: int) -> Act:
    """x[..., start:end] along feature axis `axis` (of `size`): a split, its middle part."""
    step = x.layout.step_axis(axis)
    if (start, end) == (0, size):
        return x
    sizes = [s for s in (start, end - start, size - end) if s]
    outs = lx.emit("split", [x.value], {"axis": step, "sizes": sizes}, node)
    return lx.new_act(outs[1 if start else 0], x.layout, x.post)


def post_of(acts: list[Act]) -> bool:
    if any(v.post for v in acts) and any(not v.post and v.layout.time_axis is not None
                                         for v in acts):
        raise Unsupported("combines a value reduced over time with one that still has time")
    return any(v.post for v in acts)
