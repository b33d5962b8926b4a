"""Frontend: a torch.export ExportedProgram of a SpikingJelly network -> a one-step IR graph.

SpikingJelly's multi-step networks carry time as a leading axis: activations are either
"seq" tensors [T, B, ...] or "flat" tensors [T*B, ...] (what convolutions see), and each
neuron layer is one custom op (sj_lif / sj_if / sj_plif) that scans over T. The frontend
lifts time out: every activation becomes a step value [N, ...] (N the symbolic batch),
every neuron becomes a `neuron` node with an explicit membrane `State`, and the graph's
`TimeSpec` records how inputs enter (repeated image or sequence) and outputs leave (stacked
per step or reduced over time). `unroll_timesteps` later turns it back into T copies.

Every operation that cannot be lifted is collected with its source line; one
UnsupportedOpError lists them all.
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import BadInputError, UnsupportedOpError
from .builder import Builder
from .ir import BATCH, Graph, State, TimeSpec, Value

NEURON_OPS = ("sj_lif.forward.default", "sj_if.forward.default", "sj_plif.forward.default")
IDENTITY_OPS = ("aten.clone.default", "aten.alias.default", "aten.detach.default",
                "aten.contiguous.default", "aten.lift_fresh_copy.default")
BINARY_OPS = {"aten.add.Tensor": "add", "aten.sub.Tensor": "sub", "aten.mul.Tensor": "mul",
              "aten.div.Tensor": "div"}
OTHER_OPS = ("aten.dropout.default", "aten.repeat.default", "aten.select.int",
             "aten.full_like.default", "aten.zeros_like.default", "aten.conv1d.default",
             "aten.conv2d.default", "aten.batch_norm.default", "aten.max_pool2d.default",
             "aten.avg_pool2d.default", "aten.linear.default", "aten.relu.default",
             "aten.matmul.default", "aten.transpose.int", "aten.permute.default",
             "aten.chunk.default", "aten.split.Tensor", "aten.split_with_sizes.default",
             "aten.mean.dim", "aten.sum.dim_IntList", "getitem")
QUANT_OP = "snnc.fake_quant.default"
RESHAPE_OPS = ("aten.reshape.default", "aten.view.default", "aten.flatten.using_ints",
               "aten.unflatten.int", "aten.squeeze.dim", "aten.squeeze.dims",
               "aten.unsqueeze.default", "aten._unsafe_view.default")


# Frames inside these files are library plumbing, not the line of the model's code.
_LIBRARY_FRAMES = (f"{os.sep}torch{os.sep}", os.path.join("spikingjelly", "_ops"),
                   os.path.join("activation_based", "base.py"),
                   os.path.join("activation_based", "neuron"),
                   os.path.join("activation_based", "layer"))


@dataclass
class Act:
    """A lifted activation: `value` is the step tensor; kind "seq" = [T,B,...], "flat" = [T*B,...]."""

    kind: str
    value: Value


@dataclass
class Marker:
    """Intermediate facts that are not tensors of the step graph."""

    kind: str  # "unsqueezed_input", "first_step", "state_init", "time_mean", "time_sum"
    payload: Any = None


class _Unsupported(Exception):
    pass


# What lifting a node can raise when its arguments are not what torch.export writes for the
# op (a file edited by hand, say): reported as that node's unsupported use, not as a crash.
_MALFORMED = (_Unsupported, TypeError, ValueError, KeyError, IndexError, AttributeError,
              ZeroDivisionError, ArithmeticError, RuntimeError)


def _reason(error: Exception) -> str:
    if isinstance(error, _Unsupported):
        return str(error)
    return f"its arguments are not what snnc can read ({type(error).__name__}: " \
           f"{str(error).splitlines()[0][:160] if str(error) else ''})"


def source_of(node: torch.fx.Node) -> str:
    """`module.path (Class) file.py:line` for error messages and ONNX names."""
    stack = node.meta.get("nn_module_stack") or {}
    module = ""
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", "")
        module = f"{path} ({cls_name})" if path else f"<model> ({cls_name})"
    where = ""
    trace = node.meta.get("stack_trace") or ""
    frames = [line.strip() for line in trace.splitlines() if line.strip().startswith("File ")]
    user = [f for f in frames if not any(part in f for part in _LIBRARY_FRAMES)]
    if user:
        frame = user[-1]  # File "path", line N, in fn
        try:
            path = frame.split('"')[1]
            line = frame.split(", line ")[1].split(",")[0]
            where = f"{os.path.basename(path)}:{line}"
        except IndexError:
            where = frame
    return " ".join(p for p in (module or "<model>", where) if p)


def _bind(node: torch.fx.Node) -> dict[str, Any]:
    schema = node.target._schema
    bound: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            bound[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            bound[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound


def _meta_shape(node: torch.fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise _Unsupported("has no static tensor shape")
    try:
        return tuple(int(d) for d in val.shape)
    except TypeError as error:
        raise _Unsupported("has a dynamic shape; export with static shapes") from error


class _Lifter:
    def __init__(self, program: torch.export.ExportedProgram):
        self.program = program
        self.builder = Builder()
        self.env: dict[torch.fx.Node, Any] = {}
        self.unsupported: list[tuple[str, str]] = []
        self.scalar_cache: dict[float, Value] = {}
        self.input_modes: list[str] = []
        self.input_names: list[str] = []
        graph = program.graph
        neurons = [n for n in graph.nodes if str(n.target) in NEURON_OPS]
        if not neurons:
            raise BadInputError(
                "the model has no SpikingJelly neuron layer (IFNode, LIFNode or "
                "ParametricLIFNode in multi-step mode): snnc compiles spiking networks. Check "
                "that the neurons use step_mode='m'."
            )
        self.steps = _meta_shape(neurons[0].args[0])[0]
        self.batch = None  # the example batch, found from the user input

    # -- helpers -------------------------------------------------------------------------

    def emit(self, op: str, inputs: list[Value], attrs: dict, source: str, hint: str
             ) -> list[Value]:
        return self.builder.add(op, inputs, attrs, source, hint)

    def constant(self, array: np.ndarray, hint: str) -> Value:
        return self.builder.const(array, hint)

    def scalar(self, x: float) -> Value:
        key = float(np.float32(x))
        if key not in self.scalar_cache:
            self.scalar_cache[key] = self.constant(np.array(key, np.float32), f"c{key:g}")
        return self.scalar_cache[key]

    def tensor_operand(self, arg) -> Value | Act:
        if isinstance(arg, torch.fx.Node):
            got = self.env[arg]
            if isinstance(got, (Act, Value)):
                return got
            what = got.kind if isinstance(got, Marker) else type(got).__name__
            raise _Unsupported(f"uses {arg.name} ({what}) as a tensor")
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return self.scalar(arg)
        raise _Unsupported(f"has an operand of unsupported kind {type(arg).__name__}")

    def act(self, arg, what: str = "input") -> Act:
        got = self.tensor_operand(arg)
        if not isinstance(got, Act):
            raise _Unsupported(f"expects an activation as {what}, got a constant")
        return got

    def step_axis(self, act: Act, axis: int, rank: int) -> int:
        """Map a torch axis of a seq/flat tensor to the step tensor's axis; refuse T/B axes."""
        axis = axis % rank
        time_axes = 2 if act.kind == "seq" else 1
        if axis < time_axes:
            raise _Unsupported(f"operates on the time/batch axis {axis} of a {act.kind} tensor")
        return axis - (1 if act.kind == "seq" else 0)

    def layout_of_shape(self, shape: tuple[int, ...], prefer_seq: bool) -> tuple[str, tuple]:
        """Classify a torch shape as seq [T,B,...] or flat [T*B,...]; return (kind, step shape)."""
        t, b = self.steps, self.batch
        is_seq = len(shape) >= 2 and shape[0] == t and shape[1] == b
        is_flat = len(shape) >= 1 and shape[0] == t * b
        if is_seq and (prefer_seq or not is_flat):
            return "seq", (BATCH, *shape[2:])
        if is_flat:
            return "flat", (BATCH, *shape[1:])
        raise _Unsupported(f"produces shape {list(shape)}, which moves the time or batch axis "
                           f"(T={t}, example batch={b})")

    # -- the walk ------------------------------------------------------------------------

    def lift(self) -> Graph:
        sig = self.program.graph_signature
        kinds = {spec.arg.name: spec for spec in sig.input_specs}
        outputs: list[Value] = []
        output_modes: list[str] = []
        output_names: list[str] = []
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                try:
                    self.placeholder(node, kinds[node.name])
                except _MALFORMED as why:
                    raise UnsupportedOpError([(f"input {node.name}: {_reason(why)}",
                                               source_of(node))]) from None
                continue
            if node.op == "output":
                for i, ret in enumerate(node.args[0]):
                    mode, value = self.output(ret)
                    if value is not None:
                        outputs.append(value)
                        output_modes.append(mode)
                        output_names.append("output" if len(node.args[0]) == 1 else f"output{i}")
                continue
            if node.op != "call_function":
                self.unsupported.append((f"{node.op} {node.target}", source_of(node)))
                self.env[node] = None
                continue
            if any(isinstance(a, torch.fx.Node) and self.env.get(a) is None
                   for a in node.all_input_nodes):
                # Downstream of a reported op: report only ops snnc has no lowering for at all.
                if _op_name(node) not in SUPPORTED_OPS:
                    self.unsupported.append((f"{_op_name(node)}: has no snnc lowering",
                                             source_of(node)))
                self.env[node] = None
                continue
            try:
                self.env[node] = self.call(node)
            except _MALFORMED as why:  # an operation used as snnc cannot read it
                self.unsupported.append((f"{_op_name(node)}: {_reason(why)}",
                                         source_of(node)))
                self.env[node] = None
        if self.unsupported:
            raise UnsupportedOpError(self.unsupported)
        return self.builder.build(
            outputs, TimeSpec(self.steps, tuple(self.input_modes), tuple(output_modes)),
            self.input_names, output_names)

    def placeholder(self, node: torch.fx.Node, spec) -> None:
        kind = spec.kind.name
        if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            target = spec.target
            tensor = self.program.state_dict.get(target)
            if tensor is None:
                tensor = self.program.constants.get(target)
            if tensor is None:
                raise BadInputError(f"the exported program has no data for {target!r}")
            data = tensor.detach().to(torch.float32).numpy() if tensor.is_floating_point() \
                else tensor.detach().numpy()
            self.env[node] = self.constant(data, target) if data.dtype == np.float32 else data
            return
        if kind != "USER_INPUT":
            self.unsupported.append((f"program input of kind {kind}", node.name))
            self.env[node] = None
            return
        shape = _meta_shape(node)
        image_like = any(u.target == torch.ops.aten.unsqueeze.default and u.args[1] == 0
                         for u in node.users)
        if image_like:
            self.batch = shape[0]
            value = Value("f32", (BATCH, *shape[1:]), node.name)
            self.env[node] = Marker("unsqueezed_input_source", value)
            self.input_modes.append("repeat")
        elif len(shape) >= 2 and shape[0] == self.steps:
            self.batch = shape[1]
            value = Value("f32", (BATCH, *shape[2:]), node.name)
            self.env[node] = Act("seq", value)
            self.input_modes.append("seq")
        else:
            raise BadInputError(
                f"cannot tell how input {node.name!r} of shape {list(shape)} enters time: snnc "
                f"expects an image [B, ...] that the model repeats T={self.steps} times "
                f"(x.unsqueeze(0).repeat(T, ...)) or a sequence [T={self.steps}, B, ...]."
            )
        self.builder.inputs.append(value)
        self.input_names.append(node.name)

    def output(self, ret) -> tuple[str, Value | None]:
        got = self.env.get(ret) if isinstance(ret, torch.fx.Node) else None
        if got is None:
            if isinstance(ret, torch.fx.Node) and ret in self.env:
                return "", None  # already reported
            self.unsupported.append((f"output {ret!r} is not a tensor of the model", "return"))
            return "", None
        if isinstance(got, Act) and got.kind == "seq":
            return "stack", got.value
        if isinstance(got, Marker) and got.kind in ("time_mean", "time_sum"):
            return got.kind.split("_")[1], got.payload
        self.unsupported.append((
            f"output {ret.name} is a {getattr(got, 'kind', 'constant')} tensor; snnc supports "
            "outputs of shape [T, B, ...] or reduced over time with .mean(0)/.sum(0)",
            source_of(ret)))
        return "", None

    def call(self, node: torch.fx.Node):
        name = _op_name(node)
        src = source_of(node)
        if node.target is operator.getitem:
            container, index = node.args
            return self.env[container][index]
        if name in NEURON_OPS:
            return self.neuron(node, name, src)
        args = _bind(node)
        if name in IDENTITY_OPS:
            return self.env[node.args[0]]
        if name == "aten.dropout.default":
            if args["train"]:
                raise _Unsupported("dropout in training mode; call model.eval() before export")
            return self.env[node.args[0]]
        if name == "aten.unsqueeze.default" and isinstance(self.env[node.args[0]], Marker):
            marker = self.env[node.args[0]]
            if marker.kind == "unsqueezed_input_source" and args["dim"] == 0:
                return Marker("unsqueezed_input", marker.payload)
        if name == "aten.repeat.default":
            marker = self.env[node.args[0]]
            if isinstance(marker, Marker) and marker.kind == "unsqueezed_input":
                reps = list(args["repeats"])
                if reps[0] != self.steps or any(r != 1 for r in reps[1:]):
                    raise _Unsupported(f"repeats the input {reps}; expected [T={self.steps}, 1, ...]")
                return Act("seq", marker.payload)
            raise _Unsupported("repeat of an activation")
        if name in RESHAPE_OPS:
            return self.reshape(node, name, args, src)
        if name == "aten.select.int":
            act = self.act(node.args[0])
            if act.kind == "seq" and args["dim"] == 0 and args["index"] == 0:
                return Marker("first_step", act)
            raise _Unsupported("indexes into time or batch (only x[0] for a neuron's initial "
                               "state is supported)")
        if name in ("aten.full_like.default", "aten.zeros_like.default"):
            marker = self.env[node.args[0]]
            fill = float(args.get("fill_value", 0.0))
            if isinstance(marker, Marker) and marker.kind == "first_step":
                return Marker("state_init", fill)
            raise _Unsupported("creates a tensor of constant value inside the network")
        if name in BINARY_OPS:
            return self.binary(node, BINARY_OPS[name], args, src)
        if name == QUANT_OP:
            return self.quantized_weight(node, args, src)
        if name in ("aten.conv1d.default", "aten.conv2d.default"):
            x = self.flat(node.args[0])
            weight, bias = self.const_arg(args["weight"]), args["bias"]
            ins = [x.value, weight] + ([self.const_arg(bias)] if bias is not None else [])
            spatial = len(weight.shape) - 2
            attrs = {k: list(_expand(args[k], spatial)) for k in ("stride", "padding", "dilation")}
            if isinstance(args["padding"], str):
                raise _Unsupported("string padding ('same'/'valid'); use explicit padding")
            attrs["groups"] = int(args["groups"])
            return Act("flat", self.emit("conv", ins, attrs, src, node.name)[0])
        if name == "aten.batch_norm.default":
            if args["training"]:
                raise _Unsupported("batch norm in training mode; call model.eval() before export")
            x = self.flat(node.args[0])
            c = x.value.shape[1]
            params = [
                self.const_arg(args["weight"]) if args["weight"] is not None else
                self.constant(np.ones(c, np.float32), f"{node.name}.weight"),
                self.const_arg(args["bias"]) if args["bias"] is not None else
                self.constant(np.zeros(c, np.float32), f"{node.name}.bias"),
                self.const_arg(args["running_mean"]), self.const_arg(args["running_var"]),
            ]
            return Act("flat", self.emit("batch_norm", [x.value, *params],
                                         {"eps": float(args["eps"])}, src, node.name)[0])
        if name in ("aten.max_pool2d.default", "aten.avg_pool2d.default"):
            x = self.flat(node.args[0])
            kernel = list(_expand(args["kernel_size"], 2))
            stride = list(_expand(args["stride"], 2)) or kernel
            padding = list(_expand(args["padding"], 2))
            if args.get("ceil_mode"):
                raise _Unsupported("ceil_mode=True pooling")
            if name.startswith("aten.max"):
                if list(_expand(args["dilation"], 2)) != [1, 1]:
                    raise _Unsupported("dilated max pooling")
                op = "max_pool"
            else:
                if any(padding) or args.get("divisor_override") is not None:
                    raise _Unsupported("padded average pooling or divisor_override")
                op = "avg_pool"
            return Act("flat", self.emit(op, [x.value], {"kernel": kernel, "stride": stride,
                                                         "padding": padding}, src, node.name)[0])
        if name == "aten.linear.default":
            x = self.act(node.args[0])
            ins = [x.value, self.const_arg(args["weight"])]
            if args["bias"] is not None:
                ins.append(self.const_arg(args["bias"]))
            return Act(x.kind, self.emit("linear", ins, {}, src, node.name)[0])
        if name == "aten.relu.default":
            x = self.act(node.args[0])
            return Act(x.kind, self.emit("relu", [x.value], {}, src, node.name)[0])
        if name == "aten.matmul.default":
            a, b = (self.tensor_operand(arg) for arg in node.args[:2])
            kinds = {x.kind for x in (a, b) if isinstance(x, Act)}
            if len(kinds) != 1:
                raise _Unsupported("matmul of a seq and a flat tensor")
            for x in (a, b):
                if not isinstance(x, Act) and len(x.shape) > 2:
                    raise _Unsupported("matmul with a batched constant")
            kind = kinds.pop()
            ins = [x.value if isinstance(x, Act) else x for x in (a, b)]
            return Act(kind, self.emit("matmul", ins, {}, src, node.name)[0])
        if name == "aten.transpose.int":
            x = self.act(node.args[0])
            rank = len(_meta_shape(node))
            d0, d1 = self.step_axis(x, args["dim0"], rank), self.step_axis(x, args["dim1"], rank)
            perm = list(range(len(x.value.shape)))
            perm[d0], perm[d1] = perm[d1], perm[d0]
            return Act(x.kind, self.emit("transpose", [x.value], {"perm": perm}, src,
                                         node.name)[0])
        if name == "aten.permute.default":
            x = self.act(node.args[0])
            dims = [d % len(args["dims"]) for d in args["dims"]]
            keep = 2 if x.kind == "seq" else 1
            if dims[:keep] != list(range(keep)):
                raise _Unsupported(f"permutes the time/batch axes {dims}")
            perm = [0] + [d - keep + 1 for d in dims[keep:]]
            return Act(x.kind, self.emit("transpose", [x.value], {"perm": perm}, src,
                                         node.name)[0])
        if name in ("aten.chunk.default", "aten.split.Tensor", "aten.split_with_sizes.default"):
            x = self.act(node.args[0])
            rank = len(x.value.shape) + (1 if x.kind == "seq" else 0)
            axis = self.step_axis(x, args["dim"], rank)
            size = x.value.shape[axis]
            if name == "aten.chunk.default":
                each = -(-size // args["chunks"])
                sizes = [min(each, size - i) for i in range(0, size, each)]
            elif name == "aten.split.Tensor":
                sizes = [min(args["split_size"], size - i)
                         for i in range(0, size, args["split_size"])]
            else:
                sizes = list(args["split_sizes"])
            outs = self.emit("split", [x.value], {"axis": axis, "sizes": sizes}, src, node.name)
            return [Act(x.kind, v) for v in outs]
        if name in ("aten.mean.dim", "aten.sum.dim_IntList"):
            x = self.act(node.args[0])
            rank = len(x.value.shape) + (1 if x.kind == "seq" else 0)
            dims = [d % rank for d in (args["dim"] or range(rank))]
            if x.kind == "seq" and dims == [0] and not args["keepdim"]:
                kind = "time_mean" if name == "aten.mean.dim" else "time_sum"
                return Marker(kind, x.value)
            if name != "aten.mean.dim":
                raise _Unsupported("sum over non-time axes")
            axes = [self.step_axis(x, d, rank) for d in dims]
            return Act(x.kind, self.emit("reduce_mean", [x.value],
                                         {"axes": axes, "keepdims": bool(args["keepdim"])},
                                         src, node.name)[0])
        raise _Unsupported("has no snnc lowering")

    def quantized_weight(self, node, args: dict, src: str) -> Value:
        """snnc::fake_quant(weight, scale, scheme, bits) -> codes, scales, dequantize."""
        from . import quant

        weight, scale = self.const_arg(args["weight"]), self.const_arg(args["scale"])
        consts = self.builder.constants
        scheme, bits = str(args["scheme"]), int(args["bits"])
        codes = quant.codes(torch.from_numpy(consts[weight]), torch.from_numpy(consts[scale]),
                            scheme, bits).numpy()
        module = src.split(" ")[0].split(".parametrizations.")[0]  # the layer, not its quantizer
        code_value = self.builder.const(codes, f"{module}.weight_codes", "i32")
        scale_value = self.builder.const(consts[scale], f"{module}.weight_scale")
        return self.emit("dequantize", [code_value, scale_value],
                         {"scheme": scheme, "bits": bits}, src, f"{module}.weight")[0]

    def flat(self, arg) -> Act:
        act = self.act(arg)
        if act.kind != "flat":
            raise _Unsupported("expects a [T*B, ...] tensor (flatten(0, 1) first)")
        return act

    def const_arg(self, arg) -> Value:
        got = self.env.get(arg) if isinstance(arg, torch.fx.Node) else None
        if not isinstance(got, Value):
            raise _Unsupported("needs a constant (parameter or buffer) here, got an activation")
        return got

    def binary(self, node, op: str, args: dict, src: str) -> Act:
        if args.get("alpha", 1) != 1:
            raise _Unsupported("add/sub with alpha != 1")
        a, b = self.tensor_operand(node.args[0]), self.tensor_operand(node.args[1])
        acts = [x for x in (a, b) if isinstance(x, Act)]
        if not acts:
            raise _Unsupported("arithmetic on constants only")
        if len({x.kind for x in acts}) != 1:
            raise _Unsupported("arithmetic between a seq and a flat tensor")
        kind = acts[0].kind
        rest_rank = len(acts[0].value.shape) - 1
        for x in (a, b):
            if not isinstance(x, Act) and len(x.shape) > rest_rank:
                raise _Unsupported("broadcasts a constant over the time or batch axis")
        ins = [x.value if isinstance(x, Act) else x for x in (a, b)]
        return Act(kind, self.emit(op, ins, {}, src, node.name)[0])

    def reshape(self, node, name: str, args: dict, src: str) -> Act:
        x = self.act(node.args[0])
        out_shape = _meta_shape(node)
        # flatten/unflatten say which axes they touch; view/reshape are classified by shape.
        prefer_seq = True
        if name == "aten.flatten.using_ints":
            rank = len(x.value.shape) + (1 if x.kind == "seq" else 0)
            start, end = args["start_dim"] % rank, args["end_dim"] % rank
            if x.kind == "seq" and start == 0:
                if end != 1:
                    raise _Unsupported("flattens time and batch with feature axes")
                prefer_seq = False
            elif x.kind == "flat" and start == 0 and end > 0:
                raise _Unsupported("flattens the batch axis with feature axes")
            else:
                prefer_seq = x.kind == "seq"
        elif name == "aten.unflatten.int":
            prefer_seq = x.kind == "seq" or args["dim"] % len(x.value.shape) == 0
        elif name in ("aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims"):
            prefer_seq = x.kind == "seq"
        kind, shape = self.layout_of_shape(out_shape, prefer_seq)
        if shape == x.value.shape:
            return Act(kind, x.value)
        return Act(kind, self.emit("reshape", [x.value], {"shape": list(shape)}, src,
                                   node.name)[0])

    def neuron(self, node, name: str, src: str):
        args = _bind(node)
        x = self.act(args["x"], "neuron input")
        if x.kind != "seq":
            raise _Unsupported("neuron input must be [T, B, ...]")
        v_init = self.env.get(args["v"])
        if not (isinstance(v_init, Marker) and v_init.kind == "state_init"):
            raise _Unsupported("neuron with a non-constant initial membrane potential")
        users = {u.args[1] for u in node.users if u.target is operator.getitem and u.users}
        if users - {0}:
            raise _Unsupported("uses the neuron's membrane potential as a tensor (only spikes "
                               "are supported)")
        reset = args["reset"]
        attrs = {
            "leak": "none", "leak_value": 1.0, "decay_input": True,
            "threshold": float(args["threshold"]),
            "v_reset": None if reset is None else float(reset),
        }
        if name.startswith("sj_lif"):
            attrs.update(leak="div", leak_value=float(args["tau"]),
                         decay_input=bool(args["decay_input"]))
        elif name.startswith("sj_plif"):
            w = self.env.get(args["w"])
            if not isinstance(w, Value) or w.shape != ():
                raise _Unsupported("parametric LIF with a non-scalar or non-constant w")
            q = torch.from_numpy(self.builder.constants[w]).float().sigmoid().item()
            attrs.update(leak="mul", leak_value=float(q), decay_input=bool(args["decay_input"]))
        module = src.split(" ")[0]
        read = Value("f32", x.value.shape, f"{module}.v")
        spike, v_next = self.emit("neuron", [x.value, read], attrs, src, node.name)
        self.builder.states.append(State(read, v_next, float(v_init.payload), module))
        return (Act("seq", spike), None, None)


SUPPORTED_OPS = frozenset((*NEURON_OPS, *IDENTITY_OPS, *BINARY_OPS, *OTHER_OPS, *RESHAPE_OPS,
                           QUANT_OP))


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    if target is operator.getitem:
        return "getitem"
    name = str(target)
    return name[len("torch.ops."):] if name.startswith("torch.ops.") else name


def _expand(value, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    values = tuple(int(v) for v in value)
    return values * n if len(values) == 1 else values


def lift(program: torch.export.ExportedProgram) -> Graph:
    """The one-step IR graph of an exported SpikingJelly program."""
    return _Lifter(program).lift()
