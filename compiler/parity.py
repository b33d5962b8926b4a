"""Parity between a source model and its compiled forms: a PyTorch reference that records every
neuron layer's spikes and membrane, and the spike/logit comparison with its rounding rule.

The rounding rule: two float implementations (PyTorch, numpy, ONNX Runtime) sum conv and
matmul products in different orders, so a membrane within float rounding of the threshold
can fire in one and not the other. For each sample we find the first neuron layer (in
execution order, then timestep) where spikes differ; every difference there must lie
within `tol` of the threshold (measured on the reference's membrane). Such a sample is
"rounding-perturbed": its later layers and logits legitimately differ, and it is counted.
Every other sample must match spike for spike, with logits within `logit_tol`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch

from .frontend import NEURON_OPS, source_of

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
        layer = source_of(n).split(" ")[0]
        self.trace.spikes[layer] = result[0].detach().numpy().copy()
        self.trace.membranes[layer] = result[2].detach().numpy().copy()
        self.trace.thresholds[layer] = float(n.args[4] if "lif" in name else n.args[2])
        return layer


def torch_trace(program: torch.export.ExportedProgram, x: np.ndarray) -> Trace:
    """Run the exported program in PyTorch, recording every neuron layer."""
    trace = Trace(outputs=[])
    module = program.module()
    with torch.no_grad():
        out = Recorder(module, trace).run(torch.from_numpy(x))
    outs = out if isinstance(out, (tuple, list)) else [out]
    trace.outputs = [o.detach().numpy() for o in outs]
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
    from . import interp
    from .ops import neuron_charge, neuron_threshold

    spikes: dict[str, list] = {}
    membranes: dict[str, list] = {}
    thresholds: dict[str, float | np.ndarray] = {}

    def observe(node, ins, outs, step):
        if node.op == "neuron":
            layer = node.source.split(" ")[0]
            spikes.setdefault(layer, []).append(outs[0])
            membranes.setdefault(layer, []).append(neuron_charge(ins[0], ins[1], node.attrs))
            thresholds[layer] = neuron_threshold(ins, node.attrs)

    outputs = interp.run(graph, [x], observe)
    trace = Trace(outputs=outputs, thresholds=thresholds)
    trace.spikes = {k: np.stack(v) for k, v in spikes.items()}
    trace.membranes = {k: np.stack(v) for k, v in membranes.items()}
    return trace


@dataclass
class Comparison:
    samples: int = 0
    perturbed: int = 0  # samples with a rounding-decided spike
    perturbed_samples: list[int] = field(default_factory=list)  # their indices
    flips: int = 0  # spikes decided by rounding (at each perturbed sample's first layer)
    max_flip_distance: float = 0.0  # largest |h - threshold| among them
    max_logit_diff: float = 0.0  # over unperturbed samples
    spikes_compared: int = 0
    rates: dict[str, list[float]] = field(default_factory=dict)  # per layer, per batch
    problems: list[str] = field(default_factory=list)

    @property
    def layers_firing(self) -> dict[str, float]:
        """Mean firing rate per layer over the batches compared."""
        return {layer: sum(r) / len(r) for layer, r in self.rates.items()}

    def report(self) -> str:
        return (f"{self.samples} samples, {self.spikes_compared:,} spikes compared; "
                f"{self.perturbed} sample(s) with {self.flips} rounding-decided spike(s) "
                f"(max |h - threshold| {self.max_flip_distance:.2e}); max logit diff on the "
                f"others {self.max_logit_diff:.2e}")


def compare(reference: Trace, other: Trace, comparison: Comparison, tol: float = 1e-5,
            logit_tol: float = 1e-4, batch_axis: int = 1) -> Comparison:
    """Fold one batch into `comparison` (see the module docstring for the rule)."""
    layers = list(reference.spikes)
    if set(layers) != set(other.spikes):
        comparison.problems.append(f"layers differ: {sorted(set(layers) ^ set(other.spikes))}")
        return comparison
    batch = reference.outputs[0].shape[batch_axis]
    for layer in layers:
        rate = float(reference.spikes[layer].mean())
        comparison.rates.setdefault(layer, []).append(rate)
    for b in range(batch):
        comparison.samples += 1
        perturbed = False
        for layer in layers:
            ref, got = reference.spikes[layer][:, b], other.spikes[layer][:, b]
            comparison.spikes_compared += ref.size
            diff = ref != got
            if not diff.any():
                continue
            first_t = int(np.argmax(diff.reshape(diff.shape[0], -1).any(axis=1)))
            h = reference.membranes[layer][first_t, b]
            threshold = np.broadcast_to(reference.thresholds[layer], h.shape)
            distance = np.abs(h - threshold)[diff[first_t]]
            if distance.max() > tol:
                comparison.problems.append(
                    f"sample {comparison.samples - 1}: layer {layer} step {first_t}: "
                    f"{int(diff[first_t].sum())} spike(s) differ, up to {distance.max():.3g} "
                    "from the threshold (not rounding)")
            comparison.flips += int(diff[first_t].sum())
            comparison.max_flip_distance = max(comparison.max_flip_distance,
                                               float(distance.max()))
            perturbed = True
            break
        if perturbed:
            comparison.perturbed += 1
            comparison.perturbed_samples.append(comparison.samples - 1)
            continue
        for ref_out, got_out in zip(reference.outputs, other.outputs):
            r, g = (np.take(o, b, axis=batch_axis) for o in (ref_out, got_out))
            d = float(np.abs(r - g).max())
            comparison.max_logit_diff = max(comparison.max_logit_diff, d)
            if d > logit_tol:
                comparison.problems.append(
                    f"sample {comparison.samples - 1}: identical spikes but outputs differ "
                    f"by {d:.3g} (> {logit_tol})")
    return comparison
