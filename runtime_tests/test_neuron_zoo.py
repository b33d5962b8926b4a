"""SpikingJelly's neuron zoo (runtime_tests/neuron_zoo.py): every neuron class snnc compiles,
in a small firing conv net, multi-step and single-step, plain and heterogeneous-quantized,
ONNX Runtime against PyTorch under the rounding rule (docs/testing.md), batch 3 and batch 1
from one file (its batch is symbolic); integer-valued spikes reach integer GEMMs."""

from __future__ import annotations

import inspect
import pathlib

import numpy as np
import pytest
import torch
from torch import nn

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
    _check_matches_pytorch(NZ.build(name, mode), NZ.NEURONS[name][1], q,
                           high=1.0 if name in NZ.MEMBRANES + NZ.MULTI_SPIKE else 0.9)


READOUTS = [(cls, decode, q) for cls in ("NonSpikingIFNode", "NonSpikingLIFNode")
            for decode in ("mean-mem", "max-mem", "max-abs-mem", "last_mem")
            for q in ("plain", "quant")]


@pytest.mark.parametrize("cls,decode,q", READOUTS, ids=["-".join(c) for c in READOUTS])
def test_non_spiking_readout_decodes_match_pytorch(cls, decode, q):
    """A LIF net whose last layer is a non-spiking neuron decoding its membranes over time
    (max, max by magnitude, mean, last step); fc2 reads the decoded value once, a real
    value: in the quantized net only conv2 and fc1 (reading spikes) are integer GEMMs."""
    readout = getattr(neuron, cls)(decode=decode)
    model = NZ.build(cls, "m", make=NZ.NEURONS["LIFNode"][0], readout=readout)
    _check_matches_pytorch(model, None, q, high=1.0, integer_gemms=2)


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


def _check_matches_pytorch(model, kind, q, high=0.9, integer_gemms=None):
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
    assert len(rates) == 3 and all(0.01 <= r <= high for r in rates.values()), rates
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
    if q == "quant" and integer_gemms is not None:
        assert gemms == integer_gemms, gemms


class _Tokens(nn.Module):
    """Linear(4, 6) then the neuron `sn` over `steps` steps: multi-step on [T, B, 6]
    (a list of membranes stacked), or single-step with the loop in forward."""

    def __init__(self, sn, steps: int, mode: str):
        super().__init__()
        self.fc, self.sn, self.steps, self.mode = nn.Linear(4, 6), sn, steps, mode
        with torch.no_grad():
            self.fc.weight.mul_(4)
            if hasattr(sn, "bias"):  # a PSN's -1 would silence a small random mix
                sn.bias.zero_()

    def forward(self, x):
        if self.mode == "s":
            return torch.stack([self.sn(self.fc(x)) for _ in range(self.steps)])
        y = self.sn(self.fc(x).unsqueeze(0).repeat(self.steps, 1, 1))
        return torch.stack(y) if isinstance(y, list) else y


def _cuba_core(x, i, v):
    """A FlexSN core of two states: a current-based IF with a soft reset at 0.6."""
    i = 0.5 * i + x
    v = v + i
    spike = (v >= 0.6).to(v.dtype)
    return spike, i, v - 0.6 * spike


def _named(value) -> str:
    return getattr(value, "__name__", str(value))


FAMILY = [  # (class, its arguments, T, step mode)
    *((neuron.SlidingPSN, dict(k=k, exp_init=False), steps, mode)
      for k, steps in ((1, 4), (3, 5), (4, 6)) for mode in "ms"),
    *((neuron.MaskedPSN, dict(k=3, T=5, lambda_init=lam), 5, mode)
      for lam, mode in ((1.5, "s"), (1.0, "m"), (0.25, "m"))),
    *((cls, dict(decode=decode, **extra), 5, "m")
      for cls, extra in ((neuron.NonSpikingIFNode, {}), (neuron.NonSpikingLIFNode, {"tau": 1.5}))
      for decode in (None, "max-abs-mem", "last_mem")),
    # inter-layer connection (a conv of step t's spikes into step t + 1's input), other
    # population sizes, decays and thresholds; HalfThresholdIFNode's per-step op loop
    (neuron.ILCIFNode, dict(act_dim=6, dec_pop_dim=1), 2, "m"),
    (neuron.ILCLIFNode, dict(act_dim=3, dec_pop_dim=2, v_decay=0.5), 4, "m"),
    (neuron.ILCCUBALIFNode, dict(act_dim=2, dec_pop_dim=3, v_threshold=0.8), 5, "m"),
    *((neuron.HalfThresholdIFNode, dict(v_threshold=0.7), steps, "m") for steps in (2, 5)),
    *((neuron.FlexSN, dict(core=_cuba_core, num_states=2), steps, mode)
      for steps, mode in ((4, "m"), (3, "s"))),
]


@pytest.mark.parametrize("cls,kwargs,steps,mode", FAMILY,
                         ids=[f"{c.__name__}-{'-'.join(map(_named, k.values()))}-T{t}-{m}"
                              for c, k, t, m in FAMILY])
def test_psn_and_non_spiking_family_matches_pytorch(cls, kwargs, steps, mode):
    """Other k, T, lambda_ and decodes than the zoo nets': ONNX Runtime and the interpreter
    equal PyTorch (spikes exactly; a queue of k <= 4 adds as torch.sum does)."""
    torch.manual_seed(steps)
    if "step_mode" in inspect.signature(cls).parameters and \
            cls not in (neuron.NonSpikingIFNode, neuron.NonSpikingLIFNode):
        kwargs = {**kwargs, "step_mode": mode}
    model = _Tokens(cls(**kwargs), steps, mode).eval()
    program = zoo.export(model, (3, 4))
    result = compile_program(program)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    zoo.functional.reset_net(model)
    with torch.no_grad():
        want = model(x).numpy()
    zoo.functional.reset_net(model)
    session = H.onnx_session(result.data)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    spikes = cls not in (neuron.NonSpikingIFNode, neuron.NonSpikingLIFNode)
    np.testing.assert_allclose(got, want, atol=0 if spikes else 2e-6)
    assert not spikes or 0 < want.mean() < 1, want.mean()  # it fires, not everywhere


def test_tracing_leaves_the_model_as_it_was():
    """snnc.frontend.tracing changes a model only while torch.export traces it: afterwards
    MaskedPSN's lambda_ is its buffer again (in its place in the state dict), no neuron
    keeps a wrapped forward and torch.Tensor.data is torch's, also when tracing fails."""
    from snnc.frontend.tracing import traceable
    model = NZ.build("MaskedPSN", "m")
    keys = list(model.state_dict())
    seen = []
    with pytest.raises(AssertionError), traceable(model):
        seen.append(model.sn1.lambda_)
        model.sn1(torch.zeros(NZ.T + 1, 1, 4))  # MaskedPSN asserts T steps
    assert seen == [0.5]
    assert list(model.state_dict()) == keys and isinstance(model.sn1.lambda_, torch.Tensor)
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert "data" not in torch.Tensor.__dict__
    x = torch.ones(2, requires_grad=True)
    assert x.data.requires_grad is False and x.data.data_ptr() == x.data_ptr()


class _NoisyIF(neuron.IFNode):
    """An IF neuron that adds Gaussian noise to its input: nondeterministic."""

    __module__ = "spikingjelly.activation_based.neuron.noisy_test"  # a SpikingJelly neuron

    def single_step_forward(self, x):
        return super().single_step_forward(x + 0.1 * torch.randn_like(x))


class _QueueMixingSamples(neuron.SlidingPSN):
    """A single-step SlidingPSN that centres its step's potential on its mean over the
    flattened queue: the mean runs over the batch too, so samples mix."""

    __module__ = "spikingjelly.activation_based.neuron.queue_test"

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x = inputs[0]
        queue = (*states[0], x.flatten())[-self.k:]
        h = torch.sum(self.weight[self.k - len(queue):].unsqueeze(-1) * torch.stack(queue), 0)
        spike = self.surrogate_function(h - h.mean() + self.bias)
        return (spike.view(x.shape),), (list(queue),)


class _ScaledSteps(torch.nn.Module):
    """A non-spiking neuron's list of membranes, each step scaled before the stack."""

    def __init__(self):
        super().__init__()
        self.sn = neuron.NonSpikingIFNode()

    def forward(self, x_seq):
        return torch.stack([2.0 * v for v in self.sn(x_seq)])


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
    (lambda m: _QueueMixingSamples(k=2, step_mode=m), "s",
     "_QueueMixingSamples: flattens its input with the batch"),
    (lambda m: _ScaledSteps(), "m", "NonSpikingIFNode returns its steps' values as a list "
     "that its caller does not stack"),
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


def test_a_noisy_neuron_adding_noise_is_refused_naming_it():
    """is_training=True: stored noise, one further each call (not a function of the input)."""
    model = NZ.Net(lambda m: neuron.NoisyCUBALIFNode(1, is_training=True, T=NZ.T), "m").eval()
    with pytest.raises(snnc.BadInputError, match=r"sn1 \(NoisyCUBALIFNode\) has "
                                                 "is_training=True.*is_training=False"):
        zoo.export(model, NZ.SHAPE)


@pytest.mark.parametrize("name", ["SimpleIFNode", "KLIFNode", "TernaryLIFNode"])
def test_loop_neurons_at_one_timestep_match_pytorch(name, monkeypatch):
    """At T = 1 a neuron written as a loop over time runs one step and stacks [spike]: a
    unit time axis, which the net's flatten(0, 1) merges with the batch."""
    monkeypatch.setattr(NZ, "T", 1)
    _check_matches_pytorch(NZ.build(name, "m"), NZ.NEURONS[name][1], "quant")
