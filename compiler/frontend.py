"""Frontend: a torch.export ExportedProgram of a SpikingJelly network -> an IR graph.

The walk is generic; what each aten op means is one entry of `rules.RULES`. Every
activation carries a `Layout` (compiler/axes.py) saying which of its axes is time, batch,
time x batch or a feature, derived op by op; its IR value is the tensor at one timestep.

Two kinds of programs:
- multi-step (neurons in step_mode="m"): each neuron scans a [T, B, ...] tensor. The
  graph is the body of ONE timestep with each membrane an explicit `State`, and a
  `TimeSpec` saying how inputs enter (a repeated image or a sequence) and outputs leave
  (stacked per step, reduced over time, or computed once after a reduction);
  `unroll_timesteps` turns it back into T steps;
- single-step (step_mode="s", the time loop written in forward): torch.export has already
  unrolled the loop and passes each membrane from one neuron call to the next. The graph
  is that unrolled program, with the membranes as ordinary values (steps = 1).

Every operation that cannot be lifted is collected with its source line and what to change;
one UnsupportedOpError lists them all.
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import axes
from .axes import AxisError, Layout
from .builder import Builder
from .errors import BadInputError, UnsupportedOpError
from .ir import BATCH, Graph, Provenance, TimeSpec, Value

NEURON_OPS = ("sj_lif.forward.default", "sj_if.forward.default", "sj_plif.forward.default")
QUANT_OP = "snnc.fake_quant.default"

# Frames inside these files are library plumbing, not the line of the model's code.
_LIBRARY_FRAMES = (f"{os.sep}torch{os.sep}", os.path.join("spikingjelly", "_ops"),
                   os.path.join("activation_based", "base.py"),
                   os.path.join("activation_based", "neuron"),
                   os.path.join("activation_based", "layer"))


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
    full_like), "time_reduce" (payload (Act, "mean" | "sum"): emitted when used),
    "shape" (a size, for view arguments) or "none" (an op with no result)."""

    kind: str
    payload: Any = None


REPORTED = Marker("reported")  # the node was reported as unsupported
_NOT_A_TENSOR = {
    "membrane": "reads a multi-step neuron's membrane potential (v_seq); only its spikes "
                "can be compiled: read spikes, or write the model single-step",
    "first_step": "uses x[0] of a [T, B, ...] tensor; a multi-step model is compiled whole "
                  "(x[0] only starts a neuron's membrane)",
    "shape": "uses a tensor size as a tensor",
    "none": "uses the result of an op that has none",
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

    def __init__(self, program: torch.export.ExportedProgram):
        neurons = _neurons(program)
        # A membrane passed from one neuron call to the next: the time loop is in forward.
        self.explicit = any(_membrane_of(n.args[1]) for n in neurons)
        super().__init__(1 if self.explicit else _time_steps(neurons[0]))
        self.program = program
        self.env: dict[torch.fx.Node, Any] = {}
        self.unsupported: list[tuple[str, str]] = []
        self.reduced: dict[int, Act] = {}  # time_reduce nodes made, by fx node
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
            raise Unsupported(f"expects an activation as its {what}, got a constant")
        return got

    def const(self, arg) -> Value:
        got = self.env.get(arg) if isinstance(arg, torch.fx.Node) else None
        if not isinstance(got, Value):
            raise Unsupported("needs a constant (parameter or buffer) here, got an activation")
        return got


def _neurons(program) -> list[torch.fx.Node]:
    """The neuron calls; refuses programs without any, and multi-step neurons reused with
    their membrane carried over (one module called for two layers)."""
    calls = [n for n in program.graph.nodes if op_name(n) in NEURON_OPS]
    other = sorted({op_name(n).split(".")[0] for n in program.graph.nodes
                    if op_name(n).startswith("sj_") and op_name(n) not in NEURON_OPS})
    if not calls:
        raise BadInputError(
            "the model has no SpikingJelly neuron layer snnc compiles (IFNode, LIFNode or "
            "ParametricLIFNode" + (f"; it uses {', '.join(other)}, which snnc does not "
                                    "compile" if other else "") + ").")
    for n in calls:
        if _membrane_of(n.args[1]) and isinstance(n.args[0], torch.fx.Node) \
                and dims(n.args[0])[0] != 1:
            raise BadInputError(
                f"the neuron {source_of(n)} starts from another multi-step call's final "
                "membrane: one neuron module is used for two layers. Give each layer its "
                "own neuron module.")
    return calls


def _time_steps(neuron: torch.fx.Node) -> int:
    steps = dims(neuron.args[0])[0] if isinstance(neuron.args[0], torch.fx.Node) else None
    if not isinstance(steps, int) or steps < 1:
        raise BadInputError("the first neuron's input has no static time axis; export "
                            "with a fixed number of timesteps T")
    return steps


def _reduced(lx: Lifter, node: torch.fx.Node, x: Act, mode: str) -> Act:
    """x.mean(0) / x.sum(0) over time, used by another op: a time_reduce node, once."""
    if id(node) not in lx.reduced:
        value, = lx.emit("time_reduce", [x.value], {"mode": mode}, node)
        lx.reduced[id(node)] = Act(value, x.layout.drop(x.layout.time_axis), post=True)
    return lx.reduced[id(node)]


# -- the walk ------------------------------------------------------------------------------

def lift(program: torch.export.ExportedProgram) -> Graph:
    """The IR graph of an exported SpikingJelly program."""
    from . import rules

    lx = Lifter(program)
    kinds = {spec.arg.name: spec for spec in program.graph_signature.input_specs}
    lx.batch = _find_batch(lx, [n for n in program.graph.nodes if n.op == "placeholder"
                                and kinds[n.name].kind.name == "USER_INPUT"])
    outputs: list[tuple[str, Value]] = []
    for node in program.graph.nodes:
        if node.op == "placeholder":
            _guard(lx, node, f"input {node.name}", _placeholder, lx, node, kinds[node.name])
        elif node.op == "output":
            outputs = _outputs(lx, node.args[0])
        elif node.op != "call_function":
            lx.unsupported.append((f"{node.op} {node.target}", str(source_of(node))))
            lx.env[node] = REPORTED
        elif any(lx.env.get(a) is REPORTED for a in node.all_input_nodes):
            if op_name(node) not in rules.RULES:  # downstream of a reported op
                lx.unsupported.append((rules.no_rule(node), str(source_of(node))))
            lx.env[node] = REPORTED
        else:
            _guard(lx, node, op_name(node), rules.apply, lx, node)
    if lx.unsupported:
        raise UnsupportedOpError(lx.unsupported)
    spec = TimeSpec(lx.steps, tuple(lx.input_modes), tuple(m for m, _ in outputs))
    names = ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))]
    return lx.builder.build([v for _, v in outputs], spec, lx.input_names, names)


def _guard(lx: Lifter, node, label: str, fn, *args) -> None:
    """Run a rule; an unsupported use is collected, not raised."""
    try:
        result = fn(*args)
    except (Unsupported, AxisError) as why:
        lx.unsupported.append((f"{label}: {why}", str(source_of(node))))
        lx.env[node] = REPORTED
        return
    if node.op != "placeholder":
        lx.env[node] = result


# -- inputs and outputs --------------------------------------------------------------------

def _find_batch(lx: Lifter, inputs: list[torch.fx.Node]):
    if not inputs:
        raise BadInputError("the exported program has no input")
    try:
        shape = dims(inputs[0])
    except Unsupported as why:
        raise BadInputError(f"the model's input {inputs[0].name} {why}") from None
    return shape[_input_layout(lx, inputs[0], shape)[0].batch_axis]


def _input_layout(lx: Lifter, node: torch.fx.Node, shape: tuple) -> tuple[Layout, str]:
    """The axes of a model input and its time mode. A dynamic size is the batch. Otherwise
    what the model does with the input decides, following it through ops that keep its
    leading axis: a multi-step model that reaches unsqueeze(0) (to repeat it over time)
    takes an image [B, ...] ("repeat"), one that transposes it to time-major first takes
    [B, T, ...] ("seq_batch_first"), else a sequence [T, B, ...] ("seq") when it starts
    with T and has rank >= 3; a single-step model that indexes x[t] (select or unbind on
    axis 0) takes [T, B, ...] as a plain tensor, else [B, ...]."""
    first = _first_use(node)
    symbolic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    batch_first = not lx.explicit and first == "batch_first" and len(shape) >= 3 \
        and shape[1] == lx.steps
    if symbolic:
        batch = symbolic[0]
    elif lx.explicit:
        batch = 1 if len(shape) >= 2 and first == "index" else 0
    elif batch_first:
        batch = 0
    else:
        batch = 1 if shape[0] == lx.steps and len(shape) >= 3 and first != "repeat" else 0
    roles = [axes.F] * len(shape)
    roles[batch] = axes.B
    mode = "repeat"
    if not lx.explicit and (batch == 1 or (batch == 0 and batch_first)):
        roles[1 - batch] = axes.T
        mode = "seq" if batch == 1 else "seq_batch_first"
    return Layout(tuple(roles)), mode


# Ops a value is followed through to find how it is used: elementwise ones keep every
# axis (rules._want looks through them too); layers keep the leading axis.
ELEMENTWISE = ("aten.clone.default", "aten.detach.default", "aten.contiguous.default",
               "aten.dropout.default", "aten.relu.default", "aten.add.Tensor",
               "aten.sub.Tensor", "aten.mul.Tensor", "aten.div.Tensor", "aten.rsub.Scalar",
               "aten.linear.default")
_KEEPS_LEADING = ELEMENTWISE + ("aten.conv1d.default", "aten.conv2d.default",
                                "aten.batch_norm.default", "aten.max_pool2d.default",
                                "aten.avg_pool2d.default", "snnc.fake_quant.default")


def axis_args(node: torch.fx.Node) -> list:
    """The axis argument(s) of an index, reduction or permute node, as a list."""
    value = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _first_use(node: torch.fx.Node) -> str | None:
    """How an input is first used along ops that keep its leading axis: "repeat"
    (unsqueeze(0) or stack on 0: a static input fed every step), "index" (x[t]: select or
    unbind on axis 0), "batch_first" (transpose(0, 1) or a permute starting (1, 0)), or
    None."""
    todo, seen = list(node.users), set()
    while todo:
        user = todo.pop(0)
        if user in seen:
            continue
        seen.add(user)
        name = op_name(user)
        if (name == "aten.transpose.int" and list(user.args[1:3]) in ([0, 1], [1, 0])) or (
                name == "aten.permute.default" and axis_args(user)[:2] == [1, 0]):
            return "batch_first"
        if name in ("aten.unsqueeze.default", "aten.stack.default") and \
                axis_args(user)[:1] == [0]:
            return "repeat"
        if name in ("aten.select.int", "aten.unbind.int") and axis_args(user)[:1] == [0]:
            return "index"
        if name in _KEEPS_LEADING:
            todo.extend(user.users)
    return None


def _placeholder(lx: Lifter, node: torch.fx.Node, spec) -> None:
    kind = spec.kind.name
    if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
        tensor = lx.program.state_dict.get(spec.target)
        if tensor is None:
            tensor = lx.program.constants.get(spec.target)
        if not isinstance(tensor, torch.Tensor):
            raise BadInputError(f"the exported program has no data for {spec.target!r}")
        data = tensor.detach().to(torch.float32).numpy() if tensor.is_floating_point() \
            else tensor.detach().numpy()
        lx.env[node] = lx.constant(data, spec.target) if data.dtype == np.float32 else data
        return
    if kind != "USER_INPUT":
        raise Unsupported(f"is a program input of kind {kind}")
    shape = dims(node)
    layout, mode = _input_layout(lx, node, shape)
    if shape[layout.batch_axis] != lx.batch:
        raise Unsupported(f"has batch {shape[layout.batch_axis]}, the first input {lx.batch}")
    value = Value("f32", layout.step_shape(shape, BATCH), node.name)
    lx.env[node] = lx.new_act(value, layout)
    lx.builder.inputs.append(value)
    lx.input_names.append(node.name)
    lx.input_modes.append(mode)


def _outputs(lx: Lifter, rets) -> list[tuple[str, Value]]:
    found = []
    for ret in rets:
        if isinstance(ret, torch.fx.Node) and lx.env.get(ret) is REPORTED:
            continue  # its cause is reported already
        try:
            found.append(_output(lx, ret))
        except (Unsupported, AxisError) as why:
            where = str(source_of(ret)) if isinstance(ret, torch.fx.Node) else "return"
            lx.unsupported.append((f"output {getattr(ret, 'name', ret)!r}: {why}", where))
    return found


def _output(lx: Lifter, ret) -> tuple[str, Value]:
    """(time mode, value) of a model output."""
    got = lx.env.get(ret) if isinstance(ret, torch.fx.Node) else None
    if isinstance(got, Marker) and got.kind == "time_reduce" and id(ret) not in lx.reduced:
        x, mode = got.payload
        return mode, x.value
    got = lx.operand(ret) if isinstance(ret, torch.fx.Node) else None
    if not isinstance(got, Act):
        raise Unsupported("is not an activation of the model")
    if lx.explicit or got.post or got.layout.time_axis is None:
        return "once", got.value
    if got.layout.roles[:2] == (axes.T, axes.B):
        if dims(ret)[0] != lx.steps:
            raise Unsupported(f"has {dims(ret)[0]} timesteps, not T={lx.steps}")
        return "stack", got.value
    raise Unsupported(f"has axes {got.layout}; return [T, B, ...], or reduce over time "
                      "with .mean(0) / .sum(0)")


def _membrane_of(arg) -> bool:
    """Whether a neuron's initial membrane is another neuron call's membrane output."""
    return (isinstance(arg, torch.fx.Node) and arg.target is operator.getitem
            and isinstance(arg.args[0], torch.fx.Node) and op_name(arg.args[0]) in NEURON_OPS
            and arg.args[1] == 1)
