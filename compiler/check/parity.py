"""Parity between a source model and its compiled forms: a PyTorch reference that records every
neuron layer's spikes and membrane, and the spike/logit comparison with its rounding rule.

The rounding rule: two float implementations (PyTorch, numpy, ONNX Runtime) sum conv and
matmul products in different orders, so a membrane within float rounding of the threshold
can fire in one and not the other. For each sample we find the first neuron layer (in
execution order, then timestep) where spikes differ; every difference there must lie
within `tol` of the threshold (measured on the reference's membrane; `tol` times the
threshold where that exceeds 1, since rounding scales with the membrane: a layer that
fold_scales divided by a small scale holds membranes in the hundreds), and with
`max_flips` there may be at most that many (a rounding accident flips one or two spikes,
a bug many). Such a sample is "rounding-perturbed": its later layers and outputs
legitimately differ, and it is counted. It is still looked at: its spike agreement over
all layers and steps and its largest output difference are recorded (and with
`perturbed_tol` that difference is bounded), as is whether its prediction changed. Every
other sample must match spike for spike, with outputs within `logit_tol`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch

from snnc.frontend.lifter import NEURON_OPS, bind, source_of
from snnc.frontend.rules_neurons import MODEL_OPS, per_channel

SPIKE_PREFIX = "spike/"


@dataclass
class Trace:
    """Outputs and, per neuron layer (execution order), spikes [T, B, ...] and membranes h."""

    outputs: list[np.ndarray]
    spikes: dict[str, np.ndarray] = field(default_factory=dict)
    membranes: dict[str, np.ndarray] = field(default_factory=dict)
    thresholds: dict[str, float | np.ndarray] = field(default_factory=dict)  # broadcast to h


class Recorder(torch.fx.Interpreter):
    """Runs an exported program, keeping each neuron layer's spikes, membrane h and
    threshold in `trace` (`record_neuron`, which subclasses extend)."""

    def __init__(self, module, trace: Trace):
        super().__init__(module)
        self.trace = trace

    def run_node(self, n):
        result = super().run_node(n)
        name = str(n.target).replace("torch.ops.", "")
        if n.op == "call_function" and name in NEURON_OPS:
            self.record_neuron(n, name, result)
        return result

    def record_neuron(self, n, name, result) -> str:
        layer = source_of(n).layer
        if name in MODEL_OPS:
            return self._record_model(n, name, result, layer)
        spikes, membranes = (result[i].detach().numpy().copy() for i in (0, 2))
        if layer in self.trace.spikes:  # a single-step loop calls the layer once per step
            spikes = np.concatenate([self.trace.spikes[layer], spikes])
            membranes = np.concatenate([self.trace.membranes[layer], membranes])
        self.trace.spikes[layer] = spikes
        self.trace.membranes[layer] = membranes
        self.trace.thresholds[layer] = float(n.args[4] if "lif" in name else n.args[2])
        return layer

    def _record_model(self, n, name, result, layer: str) -> str:
        """A neuron model's spikes, and the value its decision compares with a threshold
        (snnc.ir.neurons.decision), replayed step by step from the op's own arguments."""
        from snnc.ir import neurons

        args, kwargs = self.fetch_args_kwargs_from_env(n)
        fake = type("N", (), {"target": n.target, "args": args, "kwargs": kwargs})
        a = bind(fake)
        step = tuple(a["x"].shape[1:])
        attrs, channel = MODEL_OPS[name](a, lambda p: per_channel(
            a[p].detach().float().numpy(), a, step, p) if isinstance(a[p], torch.Tensor)
            else float(a[p]))
        states = [np.asarray(a[s].detach().float().numpy()) for s in MODEL_OPS[name].states]
        margins = []
        for x in a["x"].detach().float().numpy():
            margins.append(neurons.decision([x, *states, *channel], attrs)[0])
            states = neurons.evaluate([x, *states, *channel], attrs)[1:]
        spikes, margins = result[0].detach().numpy().copy(), np.stack(margins)
        if layer in self.trace.spikes:
            spikes = np.concatenate([self.trace.spikes[layer], spikes])
            margins = np.concatenate([self.trace.membranes[layer], margins])
        self.trace.spikes[layer], self.trace.membranes[layer] = spikes, margins
        self.trace.thresholds[layer] = neurons.decision([x, *states, *channel], attrs)[1]
        return layer


def torch_trace(program: torch.export.ExportedProgram, x: np.ndarray) -> Trace:
    """Run the exported program in PyTorch, recording every neuron layer."""
    trace = Trace(outputs=[])
    module = program.module()
    with torch.no_grad():
        out = Recorder(module, trace).run(torch.from_numpy(x))
    outs = out if isinstance(out, (tuple, list)) else [out]
    # a model may also return None (an unused hook): the compiled model has tensors only
    trace.outputs = [o.detach().numpy() for o in outs if o is not None]
    return trace


def onnx_session(path_or_bytes, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


def onnx_trace(session: ort.InferenceSession, x: np.ndarray) -> Trace:
    """Run a model compiled with --debug-outputs; regroup spike/<layer>/t<k> outputs."""
    names = [o.name for o in session.get_outputs()]
    return regroup(names, session.run(None, {session.get_inputs()[0].name: x}))


def regroup(names: list[str], values: list[np.ndarray]) -> Trace:
    """A compiled model's outputs as a Trace: spike/<layer>/t<k> stacked per layer."""
    trace = Trace(outputs=[v for n, v in zip(names, values) if not n.startswith(SPIKE_PREFIX)])
    per_layer: dict[str, dict[int, np.ndarray]] = {}
    for name, value in zip(names, values):
        if name.startswith(SPIKE_PREFIX):
            layer, step = name[len(SPIKE_PREFIX):].rsplit("/t", 1)
            per_layer.setdefault(layer, {})[int(step)] = value
    for layer, steps in per_layer.items():
        trace.spikes[layer] = np.stack([steps[t] for t in sorted(steps)])
    return trace


def interp_trace(graph, x: np.ndarray) -> Trace:
    """Run the snnc reference interpreter on a one-step graph, recording spikes and h."""
    from snnc.ir import interp
    from snnc.ir.neurons import decision
    from snnc.ir.ops import neuron_charge, neuron_threshold

    spikes: dict[str, list] = {}
    membranes: dict[str, list] = {}
    thresholds: dict[str, float | np.ndarray] = {}

    def observe(node, ins, outs, step):
        if node.op == "neuron":
            layer = node.source.layer
            spikes.setdefault(layer, []).append(outs[0])
            membranes.setdefault(layer, []).append(neuron_charge(ins[0], ins[1], node.attrs))
            thresholds[layer] = neuron_threshold(ins, node.attrs)
        elif node.op == "neuron_model":
            layer = node.source.layer
            spikes.setdefault(layer, []).append(outs[0])
            m, thresholds[layer] = decision(ins, node.attrs)
            membranes.setdefault(layer, []).append(np.broadcast_to(m, outs[0].shape))

    outputs = interp.run(graph, [x], observe)
    trace = Trace(outputs=outputs, thresholds=thresholds)
    trace.spikes = {k: np.stack(v) for k, v in spikes.items()}
    trace.membranes = {k: np.stack(v) for k, v in membranes.items()}
    return trace


@dataclass
class Flip:
    """Where a rounding-perturbed sample first differs."""

    sample: int
    layer: str
    step: int
    spikes: int  # how many spikes differ at that layer and step
    distance: float  # their largest |h - threshold| (reference membrane)


@dataclass
class Comparison:
    samples: int = 0
    perturbed: int = 0  # samples with a rounding-decided spike
    perturbed_samples: list[int] = field(default_factory=list)  # their indices
    flips: int = 0  # spikes decided by rounding (at each perturbed sample's first layer)
    max_flip_distance: float = 0.0  # largest |h - threshold| among them (reference's h)
    max_logit_diff: float = 0.0  # over unperturbed samples
    spikes_compared: int = 0  # spikes held to exact equality (up to each first difference)
    rates: dict[str, list[float]] = field(default_factory=dict)  # per layer, per batch
    problems: list[str] = field(default_factory=list)
    first_flips: list[Flip] = field(default_factory=list)  # one per perturbed sample
    perturbed_logit_diff: float = 0.0  # largest output difference over perturbed samples
    perturbed_agreement: float = 1.0  # lowest spike agreement (all layers) of one of them
    top1_changed: list[int] = field(default_factory=list)  # samples whose prediction differs

    @property
    def layers_firing(self) -> dict[str, float]:
        """Mean firing rate per layer over the batches compared."""
        return {layer: sum(r) / len(r) for layer, r in self.rates.items()}

    @property
    def max_flips_per_sample(self) -> int:
        """The most spikes that differ at a perturbed sample's first differing layer/step."""
        return max((f.spikes for f in self.first_flips), default=0)

    def report(self) -> str:
        text = (f"{self.samples} samples, {self.spikes_compared:,} spikes compared; "
                f"{self.perturbed} sample(s) with {self.flips} rounding-decided spike(s) "
                f"(max |h - threshold| {self.max_flip_distance:.2e}); max logit diff on the "
                f"others {self.max_logit_diff:.2e}")
        if self.first_flips:
            where = ", ".join(f"#{f.sample} {f.layer} t{f.step} x{f.spikes}"
                              for f in self.first_flips[:8])
            more = f", +{len(self.first_flips) - 8}" if len(self.first_flips) > 8 else ""
            text += (f"; perturbed: at most {self.max_flips_per_sample} flip(s) per sample "
                     f"({where}{more}), spike agreement >= {self.perturbed_agreement:.4f}, "
                     f"output diff <= {self.perturbed_logit_diff:.3g}, top-1 changed on "
                     f"{len(self.top1_changed)}")
        return text


def _prediction(output: np.ndarray, b: int, batch_axis: int) -> int | None:
    """The sample's predicted class: its output averaged over every axis but the last
    (time, for per-step outputs); None when the output has no class axis."""
    if output.ndim < 2 or output.shape[-1] == 0 or batch_axis in (-1, output.ndim - 1):
        return None
    sample = np.take(output, b, axis=batch_axis)
    return int(sample.reshape(-1, sample.shape[-1]).mean(axis=0).argmax())


def compare(reference: Trace, other: Trace, comparison: Comparison, tol: float = 1e-5,
            logit_tol: float = 1e-4, batch_axis: int = 1, max_flips: int | None = None,
            perturbed_tol: float | None = None) -> Comparison:
    """Fold one batch into `comparison` (see the module docstring for the rule).

    max_flips: at most this many spikes may differ at a perturbed sample's first differing
    layer and step. perturbed_tol: a perturbed sample's outputs must stay within this of
    the reference's. Either is a problem when exceeded; None checks nothing."""
    layers = list(reference.spikes)
    if set(layers) != set(other.spikes):
        comparison.problems.append(f"layers differ: {sorted(set(layers) ^ set(other.spikes))}")
        return comparison
    batch = reference.outputs[0].shape[batch_axis]
    for layer in layers:
        rate = float(reference.spikes[layer].mean())
        comparison.rates.setdefault(layer, []).append(rate)
    for b in range(batch):
        index = comparison.samples
        comparison.samples += 1
        flip, agreement = _first_flip(reference, other, layers, b, comparison, tol, max_flips)
        out_diff = _output_diff(reference, other, b, batch_axis)
        ref_top, got_top = (_prediction(o.outputs[0], b, batch_axis) for o in (reference, other))
        if ref_top != got_top:
            comparison.top1_changed.append(index)
        if flip is not None:
            _record_perturbed(comparison, flip, out_diff, agreement, perturbed_tol)
            continue
        comparison.max_logit_diff = max(comparison.max_logit_diff, out_diff)
        if out_diff > logit_tol:
            comparison.problems.append(
                f"sample {index}: identical spikes but outputs differ "
                f"by {out_diff:.3g} (> {logit_tol})")
    return comparison


def _first_flip(reference: Trace, other: Trace, layers: list[str], b: int,
                comparison: Comparison, tol: float, max_flips: int | None):
    """(the sample's first differing layer and step as a Flip, or None; its spike agreement
    over every layer). Differences there must be rounding: within tol x max(1, |threshold|)
    of the threshold, and at most max_flips of them."""
    index = comparison.samples - 1
    flip = None
    same = total = 0
    for layer in layers:
        ref, got = reference.spikes[layer][:, b], other.spikes[layer][:, b]
        diff = ref != got
        same += int(diff.size - diff.sum())
        total += diff.size
        if flip is not None:  # after the first difference: only counted
            continue
        comparison.spikes_compared += ref.size
        if not diff.any():
            continue
        first_t = int(np.argmax(diff.reshape(diff.shape[0], -1).any(axis=1)))
        h = reference.membranes[layer][first_t, b]
        threshold = np.broadcast_to(reference.thresholds[layer], h.shape)
        distance = np.abs(h - threshold)[diff[first_t]]
        limit = tol * np.maximum(1.0, np.abs(threshold[diff[first_t]]))
        count = int(diff[first_t].sum())
        if (distance > limit).any():
            comparison.problems.append(
                f"sample {index}: layer {layer} step {first_t}: "
                f"{count} spike(s) differ, up to {distance.max():.3g} from the threshold "
                f"(beyond {tol:g} x max(1, |threshold|): not rounding)")
        elif max_flips is not None and count > max_flips:
            comparison.problems.append(
                f"sample {index}: layer {layer} step {first_t}: {count} spike(s) differ, "
                f"all within {tol:g} of the threshold, but more than {max_flips} cannot "
                "be a rounding accident")
        flip = Flip(index, layer, first_t, count, float(distance.max()))
    return flip, same / max(total, 1)


def _output_diff(reference: Trace, other: Trace, b: int, batch_axis: int) -> float:
    """Largest |difference| of sample b's outputs; NaN counts as infinitely different."""
    out_diff = 0.0
    for ref_out, got_out in zip(reference.outputs, other.outputs):
        r, g = (np.take(o, b, axis=batch_axis) for o in (ref_out, got_out))
        d = float(np.abs(r - g).max()) if r.size else 0.0
        out_diff = max(out_diff, d if d == d else np.inf)
    return out_diff


def _record_perturbed(comparison: Comparison, flip: Flip, out_diff: float, agreement: float,
                      perturbed_tol: float | None) -> None:
    comparison.perturbed += 1
    comparison.perturbed_samples.append(flip.sample)
    comparison.first_flips.append(flip)
    comparison.flips += flip.spikes
    comparison.max_flip_distance = max(comparison.max_flip_distance, flip.distance)
    comparison.perturbed_logit_diff = max(comparison.perturbed_logit_diff, out_diff)
    comparison.perturbed_agreement = min(comparison.perturbed_agreement, agreement)
    if perturbed_tol is not None and out_diff > perturbed_tol:
        comparison.problems.append(
            f"sample {flip.sample} (rounding-perturbed at {flip.layer} t{flip.step}): "
            f"outputs differ by {out_diff:.3g} (> {perturbed_tol})")
