"""The family snnc compiles (runtime_tests/zoo.py): SpikingJelly's transformers (Spikformer,
Spike-driven Transformer, QKFormer, Max-Former; small configurations and the defaults),
conv SNNs as users write them (VGG, SEW-ResNet ADD/AND/IAND, spiking ResNet, pooling
heads), every neuron variant, and single-step models with the time loop in forward.

Each model, plain, quantized with a heterogeneous uniform/PoT configuration over all its
conv and linear layers, and quantized at a random configuration with ternary and binary
layers too (zoo.random_config), is compiled (with all passes) from a batch-1 export
and run in ONNX Runtime on 4 samples against PyTorch (the rounding rule of
docs/testing.md); batch 1 and 4 from the one file give the same spikes; several layers fire
between 1 % and 60 %. Measured (onnxruntime 1.32.0; 4 samples per run): at T = 4, one
rounding-perturbed sample in 1 of the 56 small-model runs and in 3 of the 8 default-
configuration runs (batch 4); at T = 1 and 8, one in 2 of 112 runs; never more than one per
run, flipping one spike. Small models may have one per run (the 99.9th percentile of a
binomial at that rate); the defaults, see test_default_configuration.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import zoo

import snnc
from snnc.check import parity as H
from snnc.driver import compile_program
from snnc.frontend.lift import lift
from snnc.options import Options

SMALL = sorted(set(zoo.MODELS) - zoo.BIG)
heterogeneous = zoo.heterogeneous


def unread_initializers(model) -> list[str]:
    """Initializers no node and no graph output reads: a compiled file holds only what its
    graph reads (ONNX Runtime would warn and drop them)."""
    read = {i for node in model.graph.node for i in node.input}
    read |= {o.name for o in model.graph.output}
    return [t.name for t in model.graph.initializer if t.name not in read]


def check(name: str, steps: int = 4, quantized: bool = False, batch: int = 4,
          perturbed: int = 1, config=heterogeneous) -> H.Comparison:
    model, shape = zoo.MODELS[name](T=steps)
    if quantized:
        snnc.quantize(model, config(model))
    result = compile_program(zoo.export(model, shape), Options(debug_outputs=True))
    if quantized:
        assert len(result.packed) == len(config(model))
    assert unread_initializers(result.model) == []
    x = np.random.default_rng(7).random((batch, *shape[1:]), dtype=np.float32)
    reference = H.torch_trace(zoo.export(model, (batch, *shape[1:])), x)
    session = H.onnx_session(result.data)
    got = H.onnx_trace(session, x)
    axis = 1 if result.graph.time.outputs[0] == "stack" else 0
    comparison = zoo.compared(reference, got, batch_axis=axis, perturbed=perturbed)
    assert comparison.samples == batch, comparison.report()
    assert set(comparison.top1_changed) <= set(comparison.perturbed_samples)
    firing = [r for r in comparison.layers_firing.values() if 0.01 <= r <= 0.6]
    assert len(firing) >= min(3, len(comparison.layers_firing)), comparison.layers_firing
    for i in range(batch):  # batch 1 and batch 4 from the one file: the same spikes; ORT
        # may pick another matrix kernel for one row (GEMV), so logits within float rounding
        alone = H.onnx_trace(session, x[i:i + 1])
        for layer, spikes in alone.spikes.items():
            assert np.array_equal(np.take(got.spikes[layer], [i], axis=1), spikes), layer
        np.testing.assert_allclose(np.take(got.outputs[0], [i], axis=axis), alone.outputs[0],
                                   rtol=1e-5, atol=1e-6)
    return comparison


@pytest.mark.parametrize("quantized", [False, True], ids=["plain", "quantized"])
@pytest.mark.parametrize("name", SMALL)
def test_model_matches_pytorch(name, quantized):
    check(name, quantized=quantized)


@pytest.mark.parametrize("name", SMALL)
def test_random_configurations_with_ternary_and_binary(name):
    """Each model at a random configuration (zoo.random_config, seeded by its name): uniform
    and PoT layers of random widths, ternary and binary ones (at least one each), compiled
    with all passes: the same parity and firing checks as above."""
    check(name, quantized=True, config=lambda model: zoo.random_config(model, zoo.seed_of(name)))


@pytest.mark.parametrize("steps", [1, 8])
@pytest.mark.parametrize("name", SMALL)
def test_other_timesteps(name, steps):
    check(name, steps=steps, quantized=steps == 8)


@pytest.mark.parametrize("name", sorted(zoo.BIG - {"spikformer_cifar10"}))  # test_spikformer
def test_default_configuration(name):
    """Measured by bench_zoo on 16 inputs: 2 (sdt_8_384, qkformer_10_384) and 6
    (maxformer_cifar) rounding-perturbed samples; at batch 2 the 99.9th percentile of a
    binomial at those rates is 2, so both may be: each still first differs in a spike
    within rounding of its threshold, and its outputs and prediction are checked."""
    check(name, quantized=True, batch=2, perturbed=2)


def _ir_text(program) -> str:
    return re.sub(r"%[\w.#]+", "%", str(lift(program)))


@pytest.mark.parametrize("name", ["vgg_bn_maxpool", "sew_iand", "single_step_mixed",
                                  "dvs_batch_first",
                                  "sdt_small", "qkformer_small", "maxformer_small",
                                  "adaptive_avgpool2x2_head"])
def test_same_ir_at_any_batch(name):
    """Exported at batch 1, at batch 3 and with a dynamic batch: the same IR (the batch-1
    export is where shapes alone cannot tell batch from a unit axis)."""
    model, shape = zoo.MODELS[name](T=4)
    one = _ir_text(zoo.export(model, shape))
    assert one == _ir_text(zoo.export(model, (3, *shape[1:])))
    dim = torch.export.Dim("batch", min=1, max=64)
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
    with torch.no_grad():
        dynamic = torch.export.export(model, (torch.zeros(2, *shape[1:]),),
                                      dynamic_shapes=({0: dim},))
    functional.reset_net(model)
    assert one == _ir_text(dynamic)


def test_python_api(tmp_path):
    """snnc.compile on a module: in memory, and to files (ONNX, pack) like torch.onnx.export."""
    model, shape = zoo.MODELS["sew_add"](T=4)
    snnc.quantize(model, heterogeneous(model))
    result = snnc.compile(model, torch.zeros(*shape))
    assert result.model.graph.node and result.pack_bytes() and "timesteps" in result.summary()
    path, pack = tmp_path / "m.onnx", tmp_path / "m.snnpack"
    again = snnc.compile(model, torch.zeros(*shape), str(path), pack_path=str(pack))
    assert path.read_bytes() == again.data == result.data
    assert pack.read_bytes() == result.pack_bytes()
    x = np.random.default_rng(0).random((2, *shape[1:]), dtype=np.float32)
    session = H.onnx_session(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        from spikingjelly.activation_based import functional

        functional.reset_net(model)
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 1e-4
    skeleton = snnc.compile(model, torch.zeros(*shape), str(tmp_path / "s.onnx"),
                            pack_path=str(tmp_path / "s.snnpack"), external_weights=True)
    from snnc.backend import runtime

    from snnc.backend.pack import skeleton_location
    assert {entry.value for tensor in skeleton.model.graph.initializer for entry in
            tensor.external_data if entry.key == "location"} == {skeleton_location("s.snnpack")}
    session = runtime.load_session(str(tmp_path / "s.onnx"))
    assert np.array_equal(session.run(None, {session.get_inputs()[0].name: x})[0], got)
    with pytest.raises(snnc.BadInputError, match="example input"):
        snnc.compile(model)
    with pytest.raises(snnc.BadInputError, match="unknown option"):
        snnc.compile(model, torch.zeros(*shape), timestep="stream")


def test_stream_mode_refuses_what_it_cannot_stream():
    """A head after x.mean(0) and a single-step loop have no per-step outputs: stream mode
    says so instead of compiling something else."""
    for name in ("sdt_small", "single_step_conv"):
        model, shape = zoo.MODELS[name](T=4)
        with pytest.raises(snnc.BadInputError, match="without --timesteps stream"):
            compile_program(zoo.export(model, shape), Options(timesteps="stream"))


def test_verify_a_model_that_returns_its_spikes():
    """Output [T, N, C, H, W] from a batch-1 export: verify finds the batch at the compiled
    model's symbolic N (axis 1), not at axis 0 (it took samples for steps and failed)."""
    from spikingjelly.activation_based import layer, neuron
    from torch import nn

    from snnc.check import accuracy

    class Spikes(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = layer.Conv2d(3, 8, 3, padding=1, bias=False, step_mode="m")
            self.bn = layer.BatchNorm2d(8, step_mode="m")
            self.sn = neuron.LIFNode(step_mode="m")

        def forward(self, x):
            return self.sn(self.bn(self.conv(x.unsqueeze(0).repeat(4, 1, 1, 1, 1))))

    model = zoo.make_firing(Spikes(), (1, 3, 8, 8))
    program = zoo.export(model, (1, 3, 8, 8))
    result = compile_program(program, Options(debug_outputs=True))
    x = np.random.default_rng(0).random((8, 3, 8, 8), dtype=np.float32)
    v = accuracy.verify(program, H.onnx_session(result.data), x, None)
    assert v.n == 8 and v.top1_agreement == 1.0 and not v.spike_problems
    assert 0.0 < v.firing_rates["sn"] < 1.0
