"""Lifting rules for SpikingJelly's neurons: IF, LIF and parametric LIF as one IR `neuron`
node each, the other neuron ops (ILIF, EIF, QIF, Izhikevich, STBIF) as one `neuron_model`
node; their states (membrane, recovery, ...) explicit states of the graph (or, in a
single-step program, values passed from call to call), each starting from a constant fill.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from snnc.frontend.axes import TB, T
from snnc.frontend.lifter import (BATCH_LEAK, Act, Marker, Rules, Unsupported, dims,
                                  float_arg, op_name, source_of)
from snnc.ir.graph import State, Value

RULES = Rules()
rule = RULES.rule


@rule("sj_lif.forward.default", "sj_if.forward.default", "sj_plif.forward.default",
      ir="neuron", note="IFNode, LIFNode, ParametricLIFNode: see Neurons")
def _neuron(lx, node, a):
    x = _neuron_input(lx, node, a)
    attrs = _neuron_attrs(lx, node, a)
    init = lx.env.get(a.get("v"))
    module = source_of(node).layer
    fill = isinstance(init, Marker) and init.kind == "init"
    if not (fill or (stepwise(lx, node) and isinstance(init, Act))):
        raise Unsupported("starts from a membrane potential that is not a constant fill; "
                          "reset the network (functional.reset_net) before export")
    if stepwise(lx, node):  # one call per step: the membrane is a value
        v = lx.scalar(init.payload) if fill else init.value
        spike, v_next = lx.emit("neuron", [x.value, v], attrs, node)
        return (lx.new_act(spike, x.layout), lx.new_act(v_next, x.layout.drop(0)),
                Marker("none"))
    read = Value("f32", x.value.shape, f"{module}.v")
    spike, v_next = lx.emit("neuron", [x.value, read], attrs, node)
    taken = {s.name for s in lx.builder.states}
    name = module if module not in taken else f"{module}#{len(taken)}"
    lx.builder.states.append(State(read, v_next, init.payload, name))
    return (lx.new_act(spike, x.layout), Marker("membrane"), Marker("none"))


def stepwise(lx, node) -> bool:
    """Whether a neuron op is called once per step, its states passed as values: in a
    single-step program, or in a multi-step module that loops over time calling its
    single-step op (HalfThresholdIFNode: re-rolled, neuron_regions.py)."""
    return lx.explicit or node in lx.loop_of


def _neuron_input(lx, node, a) -> Act:
    x = lx.act(a.get("x"), "neuron input")
    size = dims(node.args[0])[0]
    want = 1 if stepwise(lx, node) else lx.steps
    if not lx.explicit and x.layout.roles[0] == TB:
        raise Unsupported(BATCH_LEAK)
    if x.post or x.layout.roles[0] != T or size != want:
        raise Unsupported(f"neuron input has axes {x.layout} and {size} steps; it must be "
                          f"[T={want}, B, ...] (step_mode='m'), or one step of a "
                          "step_mode='s' loop")
    return x


def _neuron_attrs(lx, node, a) -> dict:
    reset = a.get("reset")
    attrs = {"leak": "none", "leak_value": 1.0, "decay_input": True,
             "threshold": float_arg(a, "threshold"),
             "v_reset": None if reset is None else float_arg(a, "reset")}
    name = op_name(node)
    if name.startswith("sj_lif"):
        attrs.update(leak="div", leak_value=float_arg(a, "tau"), decay_input=bool(a["decay_input"]))
    elif name.startswith("sj_plif"):
        w = lx.env.get(a.get("w"))
        if not (hasattr(w, "shape") and w.shape == () and w in lx.builder.constants):
            raise Unsupported("parametric LIF with a non-scalar or non-constant w")
        q = torch.from_numpy(np.asarray(lx.builder.constants[w])).float().sigmoid().item()
        attrs.update(leak="mul", leak_value=float(q), decay_input=bool(a["decay_input"]))
    return attrs


@rule("aten.full_like.default", "aten.zeros_like.default", note="a neuron's initial "
      "membrane, or a constant in arithmetic (a recurrent state's start)")
def _fill(lx, node, a):
    fill = float_arg(a, "fill_value") if "fill_value" in a else 0.0
    got = lx.env.get(node.args[0])
    if isinstance(got, Act) or (isinstance(got, Marker) and got.kind in ("first_step", "init")):
        return Marker("init", fill)  # "init": a second state filled like the membrane
    raise Unsupported("fills a tensor that is not an activation")


# -- neuron models (snnc.ir.neurons) ------------------------------------------------------

@dataclass(frozen=True)
class ModelOp:
    """How a SpikingJelly neuron op maps to a `neuron_model` node: the model, its params'
    argument names, the threshold argument (None: 1.0), the reset argument (None: soft),
    the state arguments (membrane first) and how many outputs the op has."""

    model: str
    params: tuple[str, ...]
    threshold: str | None
    reset: str | None
    outputs: int
    states: tuple[str, ...] = ("v",)
    classes: tuple[str, ...] = ()  # the SpikingJelly classes that export it (docs)

    def __call__(self, a: dict, read=None) -> tuple[dict, list[np.ndarray]]:
        """The node's attributes from the op's bound arguments, and its per-channel
        constants: `read(name)` gives a parameter as a float, or as an array per channel
        (ActivationAwareIFNode's threshold and offset), which the attributes give as None
        and the node reads as an input after its states, in this order."""
        read = read or (lambda name: float(a[name]))
        params = [read(p) for p in self.params]
        threshold = 1.0 if self.threshold is None else read(self.threshold)
        channel = [v for v in (*params, threshold) if isinstance(v, np.ndarray)]
        return {"model": self.model,
                "params": [None if isinstance(v, np.ndarray) else v for v in params],
                "threshold": None if isinstance(threshold, np.ndarray) else threshold,
                "v_reset": None if self.reset is None or a.get(self.reset) is None
                else float_arg(a, self.reset)}, channel


def per_channel(values: np.ndarray, a: dict, step: tuple, name: str) -> float | np.ndarray:
    """A neuron op's parameter: a float if it has one element, else one value per channel
    (the op's `channels`, each spanning `inner` elements) shaped [C, 1, ...] to broadcast
    against one step [B, ...] of shape `step` (a neuron op indexes it by
    element // inner % channels)."""
    values = np.asarray(values, np.float32)
    if values.size == 1:
        return float(values.reshape(()))
    channels, inner = a.get("channels"), a.get("inner")
    if channels is None:
        raise Unsupported(f"its {name} is not a one-element constant")
    for k in range(len(step) - 1):  # k axes after the channel axis
        axis = len(step) - 1 - k
        if axis >= 1 and step[axis] == channels == values.size and \
                int(np.prod(step[axis + 1:], dtype=np.int64)) == inner:
            return values.reshape(channels, *(1,) * k)
    raise Unsupported(f"its {name} has {values.size} values, one per channel of an axis of "
                      f"its input [B, ...] {list(step)} that is not a feature axis; give "
                      "channel_dim a feature axis (1 for [B, C, H, W])")


MODEL_OPS = {
    "sj_ilif.forward.default": ModelOp("ilif", ("tau", "count"), "threshold", None, 3,
                                       classes=("ILIFNode",)),
    "sj_eif.forward.default": ModelOp("eif", ("tau", "rest", "theta", "delta"), "threshold",
                                      "reset", 4, classes=("EIFNode",)),
    "sj_qif.forward.default": ModelOp("qif", ("tau", "rest", "critical", "a0"), "threshold",
                                      "reset", 4, classes=("QIFNode",)),
    "sj_izhikevich.forward.default": ModelOp(
        "izhikevich", ("tau", "rest", "critical", "a0", "a", "b", "tau_w"), "threshold",
        "reset", 5, ("v", "w"), ("IzhikevichNode",)),
    "sj_activation_aware_if.forward.default": ModelOp(
        "aaif", ("offset",), "threshold", "reset", 2, classes=("ActivationAwareIFNode",)),
    "sj_stbif.forward.default": ModelOp("stbif", ("q_threshold", "pos_max", "neg_min"), None,
                                        None, 4, ("q", "acc_q"), ("STBIFNode",)),
}


@rule(*MODEL_OPS, ir="neuron_model", note="ILIFNode, EIFNode, QIFNode, IzhikevichNode, "
      "STBIFNode, ActivationAwareIFNode: see Neurons")
def _neuron_model(lx, node, a):
    spec = MODEL_OPS[op_name(node)]
    x = _neuron_input(lx, node, a)
    module = source_of(node).layer
    attrs, channel = spec(a, lambda name: _param(lx, node, a, name))
    channel = [lx.constant(c, f"{module}.{name}") for c, name in zip(channel, (
        *(p for p, v in zip(spec.params, attrs["params"]) if v is None), "threshold"))]
    inits = [lx.env.get(a.get(s)) for s in spec.states]
    fills = [isinstance(i, Marker) and i.kind == "init" for i in inits]
    if not all(f or (stepwise(lx, node) and isinstance(i, Act)) for f, i in zip(fills, inits)):
        raise Unsupported("starts from a state that is not a constant fill; reset the "
                          "network (functional.reset_net) before export")
    extra = (Marker("none"),) * (spec.outputs - 1 - len(spec.states))
    if stepwise(lx, node):
        states = [lx.scalar(i.payload) if f else i.value for f, i in zip(fills, inits)]
        out, *nexts = lx.emit("neuron_model", [x.value, *states, *channel], attrs, node)
        return (lx.new_act(out, x.layout),
                *(lx.new_act(v, x.layout.drop(0)) for v in nexts), *extra)
    reads = [Value("f32", x.value.shape, f"{module}.{s}") for s in spec.states]
    out, *nexts = lx.emit("neuron_model", [x.value, *reads, *channel], attrs, node)
    taken = {s.name for s in lx.builder.states}
    base = module if module not in taken else f"{module}#{len(taken)}"
    for s, read, write, init in zip(spec.states, reads, nexts, inits):
        lx.builder.states.append(State(read, write, init.payload,
                                       base if s == spec.states[0] else f"{base}.{s}"))
    return (lx.new_act(out, x.layout), *(Marker("membrane"),) * len(spec.states), *extra)


def _param(lx, node, a, name: str) -> float | np.ndarray:
    """A float argument, a one-element constant tensor (STBIF's thresholds and bounds), or
    a constant per channel (ActivationAwareIFNode's threshold and offset: per_channel)."""
    value = a.get(name)
    if isinstance(value, torch.fx.Node):
        const = lx.env.get(value)
        if not (hasattr(const, "shape") and const in lx.builder.constants):
            raise Unsupported(f"its {name} is not a constant")
        return per_channel(lx.builder.constants[const], a, dims(node.args[0])[1:], name)
    return float_arg(a, name)


# -- plumbing SpikingJelly's neurons trace around their ops --------------------------------

@rule("aten.to.device", "aten.to.dtype_layout", ir="nothing",
      note="x.to(device), or a neuron's parameters moved to its input's device, as float32: "
      "the same values")
def _to(lx, node, a):
    val = node.meta.get("val")
    if getattr(val, "dtype", None) != torch.float32:
        raise Unsupported(f"converts to {getattr(val, 'dtype', '?')}; snnc computes in float32")
    return lx.value_of(node.args[0]) if isinstance(node.args[0], torch.fx.Node) else \
        lx.operand(node.args[0])


@rule("aten._assert_tensor_metadata.default", ir="nothing",
      note="a dtype/device assertion torch.export records: nothing")
def _assert_metadata(lx, node, a):
    return Marker("none")


# -- the neuron table of docs/ops.md ---------------------------------------------------------
# SpikingJelly 2.0's neuron classes: (class, step modes snnc compiles ("" if none), how it
# exports, what snnc makes of it, its outputs). runtime_tests/test_neuron_zoo.py compiles every
# class listed with modes, in those modes, and checks the table against its list.
_OP = "registered op `{}`"
_LOOP = "PyTorch arithmetic; m: a loop over T (re-rolled, docs/ir.md)"
_QUEUE_IR = "m: `time_mix`, `compare`; s: `mul`, `add` of the last k inputs, `compare`"
# neuron-op classes whose single-step form is PyTorch arithmetic: (exports as, IR) notes
_S_ARITH = {"ILIFNode": (" (s: PyTorch arithmetic)", " (s: arithmetic)"),
            "ActivationAwareIFNode": (" (s: PyTorch arithmetic)", " (a threshold or offset "
                                      "per channel: constant inputs; s: arithmetic)")}
NEURON_CLASSES = [
    ("IFNode", "m, s", _OP.format("sj_if"), "`neuron` leak='none'", "0/1, uint8"),
    ("LIFNode", "m, s", _OP.format("sj_lif"), "`neuron` leak='div'", "0/1, uint8"),
    ("ParametricLIFNode", "m, s", _OP.format("sj_plif"), "`neuron` leak='mul'", "0/1, uint8"),
    *((cls, "m, s", _OP.format(op.split(".")[0]) + _S_ARITH.get(cls, ("", ""))[0],
       f"`neuron_model` {spec.model}" + _S_ARITH.get(cls, ("", ""))[1],
       {"ilif": "counts 0..D, uint8", "stbif": "+-q_threshold, real"}.get(spec.model,
                                                                          "0/1, uint8"))
      for op, spec in MODEL_OPS.items() for cls in spec.classes),
    ("TernaryIFNode", "m, s", _LOOP, "arithmetic, 1 state", "-1/0/1, int8"),
    ("TernaryLIFNode", "m, s", _LOOP, "arithmetic, 2 states", "-1/0/1, int8"),
    ("KLIFNode", "m, s", _LOOP, "arithmetic, 2 states", "0/1, uint8"),
    ("CUBALIFNode", "m, s", "PyTorch arithmetic (step_mode 'm' is elementwise over [T, B, "
     "...], as SpikingJelly runs it)", "arithmetic", "0/1, uint8"),
    ("LIAFNode", "m, s", "m: " + _OP.format("sj_lif") + "; s: PyTorch arithmetic",
     "m: `neuron`; s: arithmetic", "m: 0/1; s: act(h), real"),
    ("OTTTLIFNode", "s", "PyTorch arithmetic (SpikingJelly refuses step_mode 'm')",
     "arithmetic", "0/1, uint8"),
    ("SLTTLIFNode", "s", "PyTorch arithmetic (SpikingJelly refuses step_mode 'm')",
     "arithmetic", "0/1, uint8"),
    ("PSN", "m", "PyTorch: W @ x_seq.flatten(1) + B, a [T, T] weight over time (PSN has no "
     "single-step form)", "`time_mix`, then `compare`", "0/1, uint8"),
    ("SlidingPSN", "m, s", "m: as PSN, its [T, T] weight built from k weights (folded); s: a "
     "queue of the last k inputs, each flattened with the batch but read position by "
     "position (per sample: the same mix over time, rewritten unflattened, "
     "frontend/queues.py)", _QUEUE_IR, "0/1, uint8"),
    ("MaskedPSN", "m, s", "as SlidingPSN, its weight W * M_k(lambda_) (lambda_, a buffer its "
     "forward branches on, traced as its value: a constant mask, frontend/tracing.py); s needs "
     "lambda_ >= 1 (SpikingJelly's rule)", _QUEUE_IR, "0/1, uint8"),
    ("ComplementaryLIFNode", "m, s", _LOOP + ", sigmoid (a float island)",
     "arithmetic, 2 states", "0/1, uint8"),
    ("GatedLIFNode", "m", _LOOP + " that also reads its conductance indexed by step "
     "(SpikingJelly refuses step_mode 's'; it takes [T, B, C, H, W])",
     "arithmetic, 3 states; per-step constants: `time_mix` (weight 0)", "0/1, uint8"),
    ("SimpleIFNode", "m, s", _LOOP + "; the state starts as a Python float (step 0 "
     "rewritten to read it as a fill)", "arithmetic, 1 state", "0/1, uint8"),
    ("SimpleLIFNode", "m, s", _LOOP + "; as SimpleIFNode", "arithmetic, 1 state",
     "0/1, uint8"),
    ("save_v_LIFNode", "m, s", "(model.spike_dhs) a LIFNode with the DSpike surrogate (no "
     "op): PyTorch arithmetic; m: a loop over T (re-rolled); the mean membrane it stores "
     "for itself is dead code", "arithmetic, 1 state", "0/1, uint8"),
    ("RAFNode", "m, s", _LOOP + "; it fires on its state before the step, so its spikes lag "
     "its input by a step: step 0's spike is a constant (an activation `where(x, c, c)`), "
     "m: the re-rolled body makes the next step's spike, delayed by a state",
     "arithmetic, 2 states (m: and a delay)", "0/1, uint8"),
    *((cls, "m", "PyTorch arithmetic: its autograd Function's forward, a loop over T "
       f"(re-rolled, docs/ir.md): {kind} firing at alpha * v_threshold, subtracting "
       "v_threshold (a parameter, clamped: folded); SpikingJelly refuses step_mode 's'",
       "arithmetic, 1 state", out) for cls, kind, out in (
        ("DSRIFNode", "IF", "0/v_threshold; uint8 if an integer, else real"),
        ("DSRLIFNode", "LIF", "0/(v_threshold / delta_t), real"))),
    *((cls, "m", "PyTorch loop over T (re-rolled; its `x_seq[0].data` traced as "
       "`.detach()`, frontend/tracing.py; SpikingJelly has no step_mode 's'); decode None: "
       "the list of membranes, to stack; 'mean-mem', 'max-mem', 'max-abs-mem', 'last_mem': "
       "decoded over time, once", "arithmetic, 1 state; decodes: `time_reduce` mean, max "
       "(and min), last", "membranes, real") for cls in ("NonSpikingIFNode",
                                                          "NonSpikingLIFNode")),
    ("HalfThresholdIFNode", "m, s", "PyTorch arithmetic; its membrane starts at v_threshold "
     "/ 2 (m: a loop over T calling the IF op once per step on [1, B, ...]: re-rolled, the op "
     "in the body one step's neuron)", "neuron, 1 state", "0/1, uint8"),
    ("FewSpikeNode", "m, s", "PyTorch arithmetic: K thresholds and resets per input, "
     "unrolled by tracing (m: the K steps of the input summed over time, T = K)",
     "arithmetic (a time_reduce sum in m)", "d_k-weighted spikes: 0/1 uint8 if every d_k "
     "is 1, else real"),
    ("OutlierAwareThresholdNode", "m, s", "as FewSpikeNode, a second table for inputs "
     "beyond its split threshold (sign, clamp)", "arithmetic; sign (a float island)",
     "weighted spikes, real"),
    ("HGNode", "m, s", "as FewSpikeNode; each element picks its table by bucketize of its "
     "input (compares with the gate thresholds, counted), then looks its theta, h, d up "
     "(a chain of where)", "arithmetic; compare, where", "0/1, uint8 if every d is 1"),
    ("MPBNLIFNode", "m, s", "PyTorch arithmetic; m: a loop over T (re-rolled): a LIF whose "
     "membrane is batch-normalized with its running statistics in eval (constants)",
     "arithmetic, 1 state", "0/1, uint8"),
    *((cls, "m", "PyTorch loop over T (re-rolled) that adds a grouped conv1d of step t's "
       "spikes to its own input x_seq[t + 1] (read back by store-to-load forwarding, "
       "frontend/prepare.py): a state holding that drive, starting at 0" + extra,
       f"arithmetic, {states} states; conv", "0/1, uint8") for cls, states, extra in (
        ("ILCIFNode", 2, ""), ("ILCLIFNode", 2, ""), ("ILCCUBALIFNode", 3, ""),
        ("NoisyILCCUBALIFNode", 3, "; is_training=False (no noise; True refused as "
         "NoisyCUBALIFNode)"))),
    ("FlexSN", "m, s", "its user's core function, PyTorch arithmetic (m: a loop over T, "
     "re-rolled); SpikingJelly's Triton kernels are for CUDA and are not traced on CPU",
     "arithmetic, its states", "as its core computes (0/1: uint8)"),
    ("NoisyCUBALIFNode", "m", "(NoisySpikingNN) with is_training=False: no noise, a loop over "
     "T (re-rolled); is_training=True replays stored noise that advances with every call: "
     "refused (frontend/tracing.py)", "arithmetic, 2 states", "0/1, uint8"),
    ("NoisyNonSpikingIFNode", "m", "as NoisyCUBALIFNode; its membranes as NonSpikingIFNode's",
     "arithmetic, 1 state", "membranes, real"),
]


def neurons_table() -> str:
    """The markdown table of docs/ops.md "Neurons", one row per class (NEURON_CLASSES)."""
    lines = ["| SpikingJelly class | compiles | exports as | IR | outputs |",
             "| --- | --- | --- | --- | --- |"]
    for cls, modes, how, ir, out in NEURON_CLASSES:
        lines.append(f"| `{cls}` | {modes or 'no'} | {how} | {ir} | {out} |")
    return "\n".join(lines)
