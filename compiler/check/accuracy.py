"""snnc verify: the source model in PyTorch against the compiled model in ONNX Runtime, on data.

Reports the source's and the compiled model's accuracy, their top-1 agreement, the largest
logit difference, and, when the compiled model has `--debug-outputs`, the spike agreement
per neuron layer. Along the way it records the source's activity (neuron firing rates; per
conv / linear / matmul the input activity and multiply-accumulates), which `snnc compile
--report` turns into synaptic operations and energy (snnc.check.report).

Data: an .npz with `x` and, optionally, `y` (snnc.files.data).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from snnc.check.parity import SPIKE_PREFIX, Comparison, Recorder, Trace, compare, regroup
from snnc.errors import BadInputError, first_line
from snnc.files.tensors import FINGERPRINT_KEY, fingerprint
from snnc.frontend.lifter import QUANT_OP, source_of

LAYER_OPS = ("aten.conv1d.default", "aten.conv2d.default", "aten.linear.default",
             "aten.matmul.default")


@dataclass
class LayerActivity:
    """A conv / linear / matmul of the source, summed over the samples seen."""

    op: str
    macs: float = 0.0  # dense multiply-accumulates, all timesteps, summed over samples
    input_sum: float = 0.0  # sum of the (first) input's values
    input_count: int = 0  # number of (first) input values
    integer_input: bool = True  # every input value a nonnegative integer (spikes or counts)
    samples: int = 0

    @property
    def input_mean(self) -> float:
        return self.input_sum / self.input_count if self.input_count else 0.0

    def per_sample_macs(self) -> float:
        return self.macs / self.samples if self.samples else 0.0


@dataclass
class Activity:
    firing: dict[str, list[float]] = field(default_factory=dict)  # neuron layer -> [sum, count]
    layers: dict[str, LayerActivity] = field(default_factory=dict)

    def firing_rates(self) -> dict[str, float]:
        return {k: s / c for k, (s, c) in self.firing.items() if c}


class _Recorder(Recorder):
    """parity.Recorder that also sums firing and each conv / linear / matmul's activity."""

    def __init__(self, module, trace: Trace, activity: Activity, samples: int,
                 weights: dict | None = None):
        super().__init__(module, trace)
        self.activity, self.samples = activity, samples
        self.seen: set[str] = set()
        self.weights = {} if weights is None else weights  # fake_quant results, run to run

    def run_node(self, n):
        name = str(n.target).replace("torch.ops.", "")
        if n.op == "call_function" and name == QUANT_OP:  # constant weights: decode once
            if n.name not in self.weights:
                self.weights[n.name] = super().run_node(n)
            return self.weights[n.name]
        result = super().run_node(n)
        if n.op == "call_function" and name in LAYER_OPS:
            self._layer(n, name, result)
        return result

    def record_neuron(self, n, name, result) -> str:
        layer = super().record_neuron(n, name, result)
        total = self.activity.firing.setdefault(layer, [0.0, 0])
        total[0] += float(result[0].sum())
        total[1] += result[0].numel()
        return layer

    def _layer(self, n, name, result) -> None:
        layer = source_of(n).layer
        if name == "aten.matmul.default":
            index = sum(1 for k in self.seen if k.startswith(layer + " (matmul"))
            layer = f"{layer} (matmul {index + 1})"
        while layer in self.seen:  # the same module called twice in one forward
            layer += "'"
        self.seen.add(layer)
        x = self.env[n.args[0]].detach()
        other = self.env[n.args[1]].detach()
        if name == "aten.matmul.default":
            depth = other.shape[-2]
        elif name == "aten.linear.default":
            depth = other.shape[1]
        else:  # conv: one output value costs C_in / groups * kernel MACs
            depth = other[0].numel()
        record = self.activity.layers.setdefault(layer, LayerActivity(name.split(".")[1]))
        record.macs += float(result.numel()) * depth
        record.input_sum += float(x.sum())
        record.input_count += x.numel()
        record.integer_input = record.integer_input and bool(
            ((x >= 0) & (x == torch.round(x))).all())
        record.samples += self.samples


@dataclass
class Verification:
    n: int
    source_accuracy: float | None
    compiled_accuracy: float | None
    top1_agreement: float
    max_abs_diff: float
    spike_agreement: float | None  # over all neuron layers; None without --debug-outputs
    spike_agreement_per_layer: dict[str, float] = field(default_factory=dict)
    disagreements: list[int] = field(default_factory=list)  # sample indices, top-1 differs
    rounding_perturbed: int | None = None  # samples whose first spike difference is rounding
    max_abs_diff_unperturbed: float | None = None  # logits, over the other samples
    spike_problems: list[str] = field(default_factory=list)
    firing_rates: dict[str, float] = field(default_factory=dict)  # source, per neuron layer
    ort_max_abs_diff: float | None = None  # the .ort against the .onnx, every output
    activity: Activity | None = None

    def as_json(self) -> dict:
        out = asdict(self)
        out.pop("activity")
        return out

    def format(self) -> str:
        def pct(v):
            return "n/a (no labels y)" if v is None else f"{100 * v:.2f} %"

        lines = [f"samples              {self.n}",
                 f"source accuracy      {pct(self.source_accuracy)}",
                 f"compiled accuracy    {pct(self.compiled_accuracy)}",
                 f"top-1 agreement      {100 * self.top1_agreement:.2f} %"
                 + (f" (differs on samples {self.disagreements[:10]})" if self.disagreements
                    else ""),
                 f"max |logit diff|     {self.max_abs_diff:.3g}"]
        if self.spike_agreement is None and self.rounding_perturbed is None:
            lines.append("spike agreement      n/a (compile with --debug-outputs to compare "
                         "spikes per layer)")
        elif self.spike_agreement is None:
            lines.append("spike agreement      n/a: the compiled model's spike outputs name no "
                         "neuron layer of the source")
        else:
            lines.append(f"spike agreement      {100 * self.spike_agreement:.4f} % over "
                         f"{len(self.spike_agreement_per_layer)} neuron layers; "
                         f"{self.rounding_perturbed} sample(s) with a rounding-decided spike; "
                         f"max |logit diff| on the others {self.max_abs_diff_unperturbed:.3g}")
            width = max(len(k) for k in self.spike_agreement_per_layer)
            for layer, agree in self.spike_agreement_per_layer.items():
                lines.append(f"  {layer:<{width}}  {100 * agree:9.4f} %   firing "
                             f"{100 * self.firing_rates.get(layer, 0):5.1f} %")
        if self.ort_max_abs_diff is not None:
            lines.append(f".ort vs .onnx         max |diff| {self.ort_max_abs_diff:.3g} over "
                         "every output" + (" (identical)" if self.ort_max_abs_diff == 0 else ""))
        for problem in self.spike_problems[:5]:
            lines.append(f"  warning: {problem}")
        return "\n".join(lines)


def check_labels(y: np.ndarray | None, classes: int, where: str = "the data's y") -> None:
    """Every label must name one of the model's `classes` outputs."""
    if y is None:
        return
    outside = (y < 0) | (y >= classes)
    if outside.any():
        raise BadInputError(f"{where}: {int(outside.sum()):,} of {len(y):,} labels lie outside "
                            f"the model's {classes} classes 0..{classes - 1} (for example "
                            f"{sorted(set(y[outside].tolist()))[:5]} at samples "
                            f"{np.flatnonzero(outside)[:5].tolist()}); fix the labels or the "
                            "model")


def model_classes(session) -> int | None:
    """The number of classes: the last dimension of the compiled model's first output."""
    last = session.get_outputs()[0].shape[-1] if session.get_outputs()[0].shape else None
    return last if isinstance(last, int) and last > 0 else None


def check_source(program, session, allow_other: bool = False) -> None:
    """SOURCE must be the model COMPILED was compiled from: its fingerprint (weights and graph,
    snnc.files.tensors.fingerprint) must equal the one compile recorded in the ONNX metadata."""
    if allow_other:
        return
    recorded = session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)
    if recorded is None:
        raise BadInputError("COMPILED carries no source fingerprint (it was not compiled by "
                            "this snnc, or its metadata was stripped), so snnc cannot tell "
                            "whether SOURCE is the model it was compiled from. Recompile it, "
                            "or pass --allow-other-source to compare anyway.")
    if recorded != fingerprint(program):
        raise BadInputError("SOURCE is not the model COMPILED was compiled from: their weights "
                            "or graphs differ (fingerprint "
                            f"{fingerprint(program)[:12]} vs {recorded[:12]} recorded at "
                            "compile time). Pass the right pair, or --allow-other-source to "
                            "compare two different models on purpose.")


def check_inputs(program: torch.export.ExportedProgram, session, x: np.ndarray,
                 y: np.ndarray | None, batch: int = 64) -> tuple[str, int, int | None]:
    """Before anything runs: x fits the compiled model, y its classes, SOURCE takes the same
    input; (input name, batch axis, the source's fixed batch size or None)."""
    input_name, axis = model_input(session, x)
    classes = model_classes(session)
    if classes is not None:
        check_labels(y, classes)
    source_shape = _check_source_input(program, session, axis)
    static = source_shape[axis] if isinstance(source_shape[axis], int) else None
    if static is not None and (len(x) % static or batch % static):
        raise BadInputError(f"the source was exported with a fixed batch of {static}; verify "
                            f"runs it in chunks of {static}, so the number of samples "
                            f"({len(x)}) and the batch size ({batch}) must be multiples of it. "
                            "Export the model at batch 1 (torch.export's usual example) or "
                            "trim the data")
    return input_name, axis, static


def verify(program: torch.export.ExportedProgram, session, x: np.ndarray,
           y: np.ndarray | None, batch: int = 64,
           progress: Callable[[int], None] | None = None) -> Verification:
    """Run `program` (PyTorch) and `session` (ONNX Runtime) on x; compare."""
    input_name, axis, static = check_inputs(program, session, x, y, batch)
    classes = model_classes(session)
    output_names = [o.name for o in session.get_outputs()]
    spike_outputs = [n for n in output_names if n.startswith(SPIKE_PREFIX)]
    out_axes = _symbolic_axes(session)  # each output's batch axis (None: not symbolic)
    activity = Activity()
    comparison = Comparison()
    agree: dict[str, list[int]] = {}
    source_top, compiled_top = [], []
    max_diff = 0.0
    module = program.module()
    weights: dict = {}
    for start in range(0, len(x), batch):
        xb = x[start:start + batch]
        batch_input = _model_layout(xb, axis)
        trace = _source_trace(module, batch_input, axis, static, activity, weights, out_axes)
        values = session.run(None, {input_name: batch_input})
        got = regroup(output_names, values)
        out_axis = out_axes[0] if out_axes[0] is not None else \
            _output_batch_axis(trace.outputs[0], len(xb))
        source_logits = _logits(trace.outputs[0], len(xb), out_axis)
        compiled_logits = _logits(got.outputs[0], len(xb), out_axis)
        if classes is None:  # the output shape was not static: check on the first batch
            classes = compiled_logits.shape[1]
            check_labels(y, classes)
        source_top.append(source_logits.argmax(1))
        compiled_top.append(compiled_logits.argmax(1))
        if source_logits.shape != compiled_logits.shape:
            raise BadInputError(f"the source gives {source_logits.shape[1]} outputs per sample, "
                                f"the compiled model {compiled_logits.shape[1]}: was it "
                                "compiled from this source?")
        max_diff = max(max_diff, _max_abs(source_logits, compiled_logits))
        if spike_outputs:
            for layer, spikes in got.spikes.items():
                ref = trace.spikes.get(layer)
                if ref is None:
                    continue
                counts = agree.setdefault(layer, [0, 0])
                counts[0] += int((ref == spikes).sum())
                counts[1] += spikes.size
            compare(trace, got, comparison, logit_tol=np.inf, batch_axis=out_axis)
        if progress:
            progress(len(xb))
    source_top = np.concatenate(source_top)
    compiled_top = np.concatenate(compiled_top)
    same = source_top == compiled_top
    total_agree = sum(a for a, _ in agree.values())
    total = sum(t for _, t in agree.values())
    return Verification(
        n=len(x),
        source_accuracy=None if y is None else float((source_top == y).mean()),
        compiled_accuracy=None if y is None else float((compiled_top == y).mean()),
        top1_agreement=float(same.mean()),
        max_abs_diff=max_diff,
        spike_agreement=total_agree / total if total else None,
        spike_agreement_per_layer={k: a / t for k, (a, t) in agree.items()},
        disagreements=[int(i) for i in np.flatnonzero(~same)],
        rounding_perturbed=comparison.perturbed if spike_outputs else None,
        max_abs_diff_unperturbed=comparison.max_logit_diff if spike_outputs else None,
        spike_problems=list(comparison.problems),
        firing_rates=activity.firing_rates(),
        activity=activity)


def _check_source_input(program, session, axis: int) -> list:
    """The source's input shape; SOURCE and COMPILED must take the same input, batch aside."""
    user = program.graph_signature.user_inputs
    shapes = [list(node.meta["val"].shape) for node in program.graph.nodes
              if node.op == "placeholder" and node.name in user]
    onnx_shape = session.get_inputs()[0].shape
    if len(shapes) != 1 or len(shapes[0]) != len(onnx_shape) or any(
            i != axis and isinstance(a, int) and a != b
            for i, (a, b) in enumerate(zip(shapes[0], onnx_shape))):
        raise BadInputError(f"the source takes {[s for s in shapes]} but the compiled model "
                            f"{list(onnx_shape)}: was COMPILED compiled from SOURCE?")
    return shapes[0]


def _source_trace(module, batch_input: np.ndarray, axis: int, static: int | None,
                  activity: Activity, weights: dict, symbolic: list) -> Trace:
    """The source's trace on one batch; a program exported at a fixed batch size s runs in
    chunks of s (its reshapes are specialized to it), merged along the batch: each output's
    axis in `symbolic` (the compiled model's), else as _output_batch_axis guesses."""
    n = batch_input.shape[axis]
    size = n if static is None else static
    parts = []
    for start in range(0, n, size):
        chunk = np.take(batch_input, range(start, start + size), axis=axis)
        trace = Trace(outputs=[])
        try:
            with torch.no_grad(), _threads_for(chunk):
                out = _Recorder(module, trace, activity, size, weights).run(
                    torch.from_numpy(chunk))
        except Exception as error:  # a hand-edited or damaged program
            raise BadInputError(f"SOURCE fails to run in PyTorch on this data "
                                f"({type(error).__name__}: {first_line(error)}); check that "
                                "it is the model you exported") from None
        outs = out if isinstance(out, (tuple, list)) else [out]
        # a model may also return None (an unused hook): the compiled model has tensors only
        trace.outputs = [o.detach().numpy() for o in outs if o is not None]
        parts.append(trace)
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    out_axes = [symbolic[i] if i < len(symbolic) and symbolic[i] is not None else
                _output_batch_axis(o, size) for i, o in enumerate(first.outputs)]
    return Trace(
        outputs=[np.concatenate([p.outputs[i] for p in parts], axis=a)
                 for i, a in enumerate(out_axes)],
        spikes={k: np.concatenate([p.spikes[k] for p in parts], axis=1) for k in first.spikes},
        membranes={k: np.concatenate([p.membranes[k] for p in parts], axis=1)
                   for k in first.membranes},
        thresholds=first.thresholds)


SMALL_CHUNK = 1 << 16  # input elements; below it, PyTorch runs the source on one thread


@contextlib.contextmanager
def _threads_for(chunk: np.ndarray):
    """One PyTorch thread for a small chunk. The source runs op by op; on ops this small,
    a second intra-op thread only waits at every op's barrier, and when another process
    holds the core that wait is a scheduler slice: measured on the digits sample (60 test
    samples, batch 1, a busy 2-core machine), 46.6 s on two threads, 0.87 s on one."""
    threads = torch.get_num_threads()
    if chunk.size > SMALL_CHUNK or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def model_input(session, x: np.ndarray) -> tuple[str, int]:
    """(input name, batch axis) of a one-input compiled model; checks x's sample shape."""
    inputs = session.get_inputs()
    return inputs[0].name, input_axis([(i.name, list(i.shape)) for i in inputs], x)


def input_axis(inputs: list[tuple[str, list]], x: np.ndarray) -> int:
    """The batch axis of a one-input compiled model whose inputs are (name, shape) pairs, after
    checking that x holds samples of its shape."""
    if len(inputs) != 1:
        raise BadInputError(f"the compiled model takes {len(inputs)} inputs "
                            f"({[name for name, _ in inputs]}); verify handles one-input "
                            "models (a streaming model, --timesteps stream, takes its "
                            "membranes too: verify the unrolled model instead)")
    shape = inputs[0][1]
    if "N" not in shape:
        raise BadInputError("the compiled model has no dynamic batch dimension 'N'; verify "
                            "needs a model compiled by snnc compile")
    axis = shape.index("N")
    expected = [d for i, d in enumerate(shape) if i != axis]
    if list(x.shape[1:]) != [int(d) for d in expected]:
        layout = "[n, T, ...] (samples first)" if axis > 0 else "[n, ...] (samples first)"
        raise BadInputError(f"the data's x has samples of shape {list(x.shape[1:])}, but the "
                            f"model takes {list(shape)} (batch at axis {axis}); x must be "
                            f"{layout} with each sample shaped {[int(d) for d in expected]}")
    return axis


def check_data(model, x: np.ndarray, y: np.ndarray | None) -> None:
    """Before a compiled ONNX model (ModelProto) is written: x's samples have its input shape
    and every label names one of its classes."""
    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    input_axis([(i.name, dims(i)) for i in model.graph.input], x)
    last = dims(model.graph.output[0])[-1:]
    if last and isinstance(last[0], int) and last[0] > 0:
        check_labels(y, last[0])


def session_difference(a, b, x: np.ndarray, batch: int = 64) -> float:
    """Largest |difference| between two sessions' outputs (all of them) on x."""
    name, axis = model_input(a, x)
    worst = 0.0
    for start in range(0, len(x), batch):
        xb = _model_layout(x[start:start + batch], axis)
        for u, v in zip(a.run(None, {name: xb}), b.run(None, {name: xb})):
            worst = max(worst, _max_abs(u.astype(np.float64), v))
    return worst


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|; infinite if either holds NaN (a NaN is never 'no difference')."""
    d = np.abs(a - b).max() if a.size else 0.0
    return math.inf if np.isnan(d) else float(d)


def _model_layout(x: np.ndarray, axis: int) -> np.ndarray:
    """Samples-first data -> the model's input, the batch at `axis` ([T, N, ...] for 1)."""
    return np.ascontiguousarray(np.moveaxis(x, 0, axis)) if axis else x


def _output_batch_axis(output: np.ndarray, batch: int) -> int:
    """1 for per-step outputs [T, N, classes], else 0."""
    return 1 if output.ndim == 3 and output.shape[1] == batch else 0


def _symbolic_axes(session) -> list:
    """Each output's batch axis: where the compiled model has its symbolic "N" (a model
    returning spikes [T, N, C, H, W] has it at 1), None where it has none."""
    return [o.shape.index("N") if "N" in o.shape else None for o in session.get_outputs()]



def _logits(output: np.ndarray, batch: int, axis: int) -> np.ndarray:
    """[N, ...] flattened per sample; the axes before a later batch axis (time: per-step
    logits [T, N, classes]) averaged."""
    if axis:
        output = output.mean(axis=tuple(range(axis)))
    return output.reshape(batch, -1)


def write_json(result: Verification) -> str:
    return json.dumps(result.as_json(), indent=None, sort_keys=True)
