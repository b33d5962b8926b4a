"""Frontend: a torch.export ExportedProgram of a SpikingJelly network -> an IR graph.

The walk is generic; what each aten op means is one entry of `rules.RULES` (rules.py), and
the types both share live in lifter.py. Every activation carries a `Layout` (axes.py) saying
which of its axes is time, batch, time x batch or a feature, derived op by op; its IR value
is the tensor at one timestep.

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

import numpy as np
import torch

from snnc.errors import BadInputError, UnsupportedOpError
from snnc.frontend import axes, fold, neuron_regions, prepare, queues, rules, stacked
from snnc.frontend.axes import AxisError, Layout
from snnc.frontend.lifter import (ELEMENTWISE, NEURON_OPS, REPORTED, Act, Lifter, Marker,
                                  Unsupported, axis_args, dims, op_name, source_of)
from snnc.ir.graph import BATCH, Graph, TimeSpec, Value


def lift(program: torch.export.ExportedProgram) -> Graph:
    """The IR graph of an exported SpikingJelly program."""
    graph, kinds, constants = _prepared(program)
    inputs = [n for n in graph.nodes if n.op == "placeholder"
              and kinds[n.name].kind.name == "USER_INPUT"]
    lx = Lifter(program, graph, neuron_regions.find(graph, NEURON_OPS, constants),
                {n.name for n in inputs})
    lx.unsupported.extend(neuron_regions.problems(lx.regions))
    lx.batch = _find_batch(lx, inputs)
    outputs: list[tuple[str, Value]] = []
    for node in graph.nodes:
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
        elif node in lx.refused:  # a neuron region reported as a whole
            lx.env[node] = REPORTED
        elif node in lx.loop_of:  # a neuron's loop over time, re-rolled
            _guard(lx, node, op_name(node), _in_loop, lx, node)
        elif not fold.fold(lx, node):
            _guard(lx, node, op_name(node), rules.apply_over_time, lx, node)
    if lx.unsupported:
        raise UnsupportedOpError(lx.unsupported)
    if not outputs:
        raise BadInputError("the model returns no tensor (only None or constants)")
    spec = TimeSpec(lx.steps, tuple(lx.input_modes), tuple(m for m, _ in outputs))
    names = ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))]
    return lx.builder.build([v for _, v in outputs], spec, lx.input_names, names)


def _in_loop(lx: Lifter, node: torch.fx.Node):
    """A node of a neuron's loop over time, re-rolled; its input cut into steps if it is a
    whole-run tensor (stacked.py)."""
    return stacked.lifted(
        lx, node, lambda: neuron_regions.lift_node(lx, lx.loop_of[node], node, rules.apply),
        stack=False)


def _prepared(program: torch.export.ExportedProgram) -> tuple[torch.fx.Graph, dict, set]:
    """The program's graph made functional, with ops that have no rule decomposed
    (prepare.py), its input specs by placeholder name, and the placeholders that are
    parameters, buffers or constants."""
    try:
        graph = prepare.functional_graph(program)
        kinds = prepare.input_specs(program, graph)
        constant = {n for n in graph.nodes if n.op == "placeholder" and n.name in kinds
                    and kinds[n.name].kind.name in fold.CONSTANT_KINDS}
        graph = prepare.decompose(graph, lambda name: name in rules.RULES, constant)
        return queues.per_position(graph, neuron_regions.constant_nodes(graph, constant)), \
            kinds, constant
    except prepare.FunctionalizeError as error:
        raise UnsupportedOpError([(f"{op_name(error.node)}: {error}",
                                   str(source_of(error.node)))]) from None
    except Exception as error:  # noqa: BLE001 - a hand-edited graph torch.fx cannot copy
        raise BadInputError(f"the exported program's graph is malformed ({type(error).__name__}"
                            f": {error}); re-export the model with torch.export") from None


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


# Ops a model input is followed through to find how it is used: elementwise ones keep
# every axis; layers keep the leading axis.
_KEEPS_LEADING = ELEMENTWISE + ("aten.conv1d.default", "aten.conv2d.default",
                                "aten.batch_norm.default", "aten.max_pool2d.default",
                                "aten.avg_pool2d.default", "snnc.fake_quant.default")


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
    if kind in fold.CONSTANT_KINDS:
        tensor = lx.program.state_dict.get(spec.target)
        if tensor is None:
            tensor = lx.program.constants.get(spec.target)
        if not isinstance(tensor, torch.Tensor):
            raise BadInputError(f"the exported program has no data for {spec.target!r}")
        data = tensor.detach().to(torch.float32).numpy() if tensor.is_floating_point() \
            else tensor.detach().numpy()
        lx.env[node] = lx.constant(data, spec.target) if data.dtype == np.float32 else data
        lx.tensors[node] = tensor.detach()
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
    lx.input_names.append(spec.arg.name)  # the name in the model, not in our copy
    lx.input_modes.append(mode)


def _outputs(lx: Lifter, rets) -> list[tuple[str, Value]]:
    found = []
    for ret in rets:
        if ret is None:  # `return x, None` (an unused hook): not an output of the model
            continue
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
    if isinstance(got, Marker) and got.kind == "time_reduce" and id(ret) not in lx.reduced \
            and got.payload[1] in ("mean", "sum"):  # an output mode; others: a node, once
        x, mode = got.payload
        return mode, x.value
    got = lx.operand(ret) if isinstance(ret, torch.fx.Node) else None
    if not isinstance(got, Act):
        raise Unsupported("is not an activation of the model")
    cut = stacked.steps_of(lx, ret, got)  # a whole-run [T, B, ...] tensor: over time
    got = cut or got
    if lx.explicit or got.post or got.layout.time_axis is None:
        return "once", got.value
    if got.layout.roles[:2] == (axes.T, axes.B):
        if dims(ret)[0] != lx.steps:
            raise Unsupported(f"has {dims(ret)[0]} timesteps, not T={lx.steps}")
        return "stack", got.value
    raise Unsupported(f"has axes {got.layout}; return [T, B, ...], or reduce over time "
                      "with .mean(0) / .sum(0)")
