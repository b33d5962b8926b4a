"""SpikingJelly's neuron zoo (runtime_tests/neuron_zoo.py): every neuron class snnc compiles,
in a small firing conv net, multi-step and single-step, plain and heterogeneous-quantized,
ONNX Runtime against PyTorch under the rounding rule (docs/testing.md), batch 3 and batch 1
from one file (its batch is symbolic); integer-valued spikes reach integer GEMMs."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

import neuron_zoo as NZ
from spikingjelly.activation_based import neuron
import snnc
from snnc import UnsupportedOpError
import zoo
from snnc.check import parity as H
from snnc.driver import compile_program
from snnc.frontend import rules_neurons
from snnc.options import Options

# Plain (float layers) once per class, in its first step mode; quantized in every mode.
CASES = [(name, mode, q) for name, (_, _, modes) in NZ.NEURONS.items() for mode in modes
         for q in ("plain", "quant") if q == "quant" or mode == modes[0]]


@pytest.mark.parametrize("name,mode,q", CASES, ids=["-".join(c) for c in CASES])
def test_neuron_class_matches_pytorch(name, mode, q):
    _check_matches_pytorch(NZ.build(name, mode), NZ.NEURONS[name][1], q)


@pytest.mark.parametrize("q", ["plain", "quant"])
def test_gated_lif_channel_wise_matches_pytorch(q):
    """Channel-wise GLIF (inplane=C): its gates, conductance per step and starting membrane
    are per channel."""
    _check_matches_pytorch(NZ.build("GatedLIFNode", "m", make=NZ.gated_channel_wise()), "u8", q)


@pytest.mark.parametrize("mode,q", [("m", "plain"), ("m", "quant"), ("s", "quant")])
def test_activation_aware_if_per_channel_matches_pytorch(mode, q):
    """ActivationAwareIFNode with a threshold and offset per channel: m, its registered op,
    is a neuron_model reading them as per-channel constants; s is PyTorch arithmetic."""
    _check_matches_pytorch(NZ.build(None, mode, make=NZ.aaif_channel_wise()), "u8", q)


@pytest.mark.parametrize("steps", [2, 5])
def test_lagging_loop_at_other_timesteps_matches_pytorch(steps, monkeypatch):
    """RAFNode's spikes lag its input by one step: at T = 2 its loop is one step after the
    constant first (nothing to match), at T = 5 the last step's unread state updates reach
    back two steps."""
    monkeypatch.setattr(NZ, "T", steps)
    _check_matches_pytorch(NZ.build("RAFNode", "m"), "u8", "quant")


def _check_matches_pytorch(model, kind, q):
    if q == "quant":
        model = snnc.quantize(model, zoo.heterogeneous(model))
    program = zoo.export(model, (3, *NZ.SHAPE[1:]))
    result = compile_program(program, Options(debug_outputs=True))
    x = np.random.default_rng(5).random((3, *NZ.SHAPE[1:]), dtype=np.float32)
    reference = H.torch_trace(program, x)
    session = H.onnx_session(result.data)
    onnx = H.onnx_trace(session, x)
    layers = reference.spikes  # recorded for neuron ops; plain-PyTorch ones by output only
    for ref, other in ((reference, onnx), (reference, H.interp_trace(result.graph, x)),
                       (H.interp_trace(result.lowered, x), onnx)):
        comparison = H.compare(ref, other, H.Comparison(), batch_axis=0, max_flips=2)
        assert not comparison.problems, comparison.problems
        assert comparison.samples == 3 and comparison.perturbed <= (1 if layers else 0)
    rates = NZ.rates(model, torch.from_numpy(x))
    assert len(rates) == 3 and all(0.01 <= r <= 0.9 for r in rates.values()), rates
    one = H.onnx_trace(session, x[:1])  # batch 1 from the same file: the same spikes
    for layer, spikes in one.spikes.items():
        np.testing.assert_array_equal(spikes[:, 0], onnx.spikes[layer][:, 0])
    np.testing.assert_allclose(one.outputs[0][0], onnx.outputs[0][0], atol=1e-5)
    casts = {n.attrs["to"] for n in result.lowered.nodes if n.op == "cast"}
    gemms = sum(n.op == "int_matmul" for n in result.lowered.nodes)
    if q == "quant" and kind in ("u8", "i8"):  # conv2, fc1, fc2 read spikes: integer GEMMs
        assert kind in casts and gemms >= 3, (casts, gemms)
    elif q == "quant" and kind == "real":
        assert gemms == 0


class _NoisyIF(neuron.IFNode):
    """An IF neuron that adds Gaussian noise to its input: nondeterministic."""

    __module__ = "spikingjelly.activation_based.neuron.noisy_test"  # a SpikingJelly neuron

    def single_step_forward(self, x):
        return super().single_step_forward(x + 0.1 * torch.randn_like(x))


class _LastStepDiffers(neuron.SimpleIFNode):
    """A multi-step loop whose last step doubles its input: not one computation per step."""

    __module__ = "spikingjelly.activation_based.neuron.loop_test"
    doubled = -1  # the step that doubles its input

    def multi_step_forward(self, x_seq):
        doubled = self.doubled % len(x_seq)
        return torch.stack([self.single_step_forward(x * (2.0 if t == doubled else 1.0))
                            for t, x in enumerate(x_seq)])


class _LaggingStepDiffers(neuron.RAFNode):
    """A loop whose outputs lag its input (RAF) and whose step 1 doubles its input."""

    __module__ = "spikingjelly.activation_based.neuron.loop_test"
    multi_step_forward = _LastStepDiffers.multi_step_forward
    doubled = 1


@pytest.mark.parametrize("make,mode,says", [
    (lambda m: _NoisyIF(step_mode=m), "s", "_NoisyIF: draws random numbers"),
    (lambda m: neuron.SlidingPSN(k=2, step_mode=m), "s", "SlidingPSN: single-step"),
    (lambda m: _LastStepDiffers(step_mode=m), "m", "compute different things"),
    (lambda m: _LaggingStepDiffers(step_mode=m), "m", "compute different things"),
])
def test_neurons_snnc_cannot_compile_are_refused_by_class(make, mode, says):
    model = NZ.Net(make, mode).eval()
    with pytest.raises(UnsupportedOpError) as error:
        compile_program(zoo.export(model, NZ.SHAPE))
    assert says in str(error.value) and "sn1" in str(error.value), str(error.value)


def test_a_mix_over_time_cannot_stream():
    """A PSN's step t reads every step: --timesteps stream is refused, naming the layer."""
    with pytest.raises(snnc.BadInputError, match="sn1 .PSN.*mixes all T timesteps"):
        compile_program(zoo.export(NZ.build("PSN", "m"), NZ.SHAPE), Options(timesteps="stream"))


def test_docs_neuron_table_is_the_code_and_the_tested_list():
    """docs/ops.md's neuron table is rules_neurons.neurons_table(), and the classes it says
    compile are exactly the ones compiled above, in the same step modes."""
    doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "ops.md").read_text()
    table = doc.split("<!-- neurons: begin -->\n")[1].split("\n<!-- neurons: end -->")[0]
    assert table == rules_neurons.neurons_table(), \
        "regenerate it: python3 -m snnc.frontend.rules docs/ops.md"
    claimed = {cls: modes.replace(", ", "") for cls, modes, *_ in rules_neurons.NEURON_CLASSES
               if modes}
    tested = {name: modes for name, (_, _, modes) in NZ.NEURONS.items()}
    assert claimed == tested
