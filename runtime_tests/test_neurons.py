"""Every supported neuron variant, through a small conv SNN with a mean-over-time output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snnc.check import parity as H
from snnc.demo import conv_snn, export
from snnc.driver import compile_program
from snnc.options import Options


@pytest.mark.parametrize("kind", ["lif", "if", "plif", "lif_soft", "lif_reset"])
def test_neuron_variant_matches_pytorch(kind):
    """ONNX Runtime and the interpreter on the frontend's graph against PyTorch, and ONNX
    Runtime against the interpreter on the graph it was emitted from (after all passes).
    Measured (4 input seeds, 6 samples each): no sample has a rounding-decided spike and
    outputs differ by <= 1.8e-7; one perturbed sample of 6 is allowed."""
    model = conv_snn(neuron=kind, seed=3)
    program = export(model, torch.zeros(1, 2, 12, 12))
    result = compile_program(program, Options(debug_outputs=True))
    x = np.random.default_rng(5).random((6, 2, 12, 12), dtype=np.float32)
    reference = H.torch_trace(export(model, torch.zeros(6, 2, 12, 12)), x)
    assert reference.outputs[0].shape == (6, 5)  # mean over time
    onnx = H.onnx_trace(H.onnx_session(result.data), x)
    for ref, other in ((reference, onnx), (reference, H.interp_trace(result.graph, x)),
                       (H.interp_trace(result.lowered, x), onnx)):
        comparison = H.compare(ref, other, H.Comparison(), batch_axis=0, max_flips=2)
        assert not comparison.problems, comparison.problems
        assert comparison.samples == 6 and comparison.perturbed <= 1
        assert comparison.max_logit_diff <= 1e-4
        assert all(0.01 <= r <= 0.6 for r in comparison.layers_firing.values()), \
            comparison.layers_firing
    attrs = [n.attrs for n in result.graph.nodes if n.op == "neuron"][1]
    expected = {"lif": ("div", 2.0, 0.0), "if": ("none", 1.0, 0.0),
                "plif": ("mul", float(np.float32(1 / 3)), 0.0), "lif_soft": ("div", 3.0, None),
                "lif_reset": ("div", 2.0, -0.2)}[kind]
    assert attrs["leak"] == expected[0]
    assert attrs["leak_value"] == pytest.approx(expected[1], rel=1e-6)
    assert attrs["v_reset"] == (None if expected[2] is None else pytest.approx(expected[2]))


def test_sequence_input_is_unstacked():
    """A model that takes [T, B, ...] directly (event frames) gets a seq input; its compiled
    spikes match PyTorch's under the rounding rule (measured: identical, on 6 inputs), and
    the module itself gives what its exported program gives."""
    from spikingjelly.activation_based import functional, layer, neuron

    class SeqNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = layer.Conv2d(2, 4, 3, padding=1, step_mode="m")
            self.bn = layer.BatchNorm2d(4, step_mode="m")
            self.lif = neuron.LIFNode(step_mode="m")

        def forward(self, x):
            return self.lif(self.bn(self.conv(x)))

    from snnc.demo import make_firing

    model = make_firing(SeqNet(), (3, 4, 2, 8, 8))
    program = export(model, torch.zeros(3, 1, 2, 8, 8))
    result = compile_program(program, Options(debug_outputs=True))
    assert result.graph.time.inputs == ("seq",)
    x = np.random.default_rng(0).random((3, 5, 2, 8, 8), dtype=np.float32)
    reference = H.torch_trace(export(model, torch.zeros(3, 5, 2, 8, 8)), x)
    with torch.no_grad():
        functional.reset_net(model)
        assert np.array_equal(model(torch.from_numpy(x)).numpy(), reference.outputs[0])
    got = H.onnx_trace(H.onnx_session(result.data), x)
    assert got.outputs[0].shape == (3, 5, 4, 8, 8) and list(got.spikes) == ["lif"]
    for ref, other in ((reference, got), (H.interp_trace(result.lowered, x), got)):
        comparison = H.compare(ref, other, H.Comparison(), batch_axis=1, max_flips=2)
        assert not comparison.problems, comparison.problems
        assert comparison.samples == 5 and comparison.perturbed <= 1
        # the output is the spikes: equal wherever the spikes are
        assert comparison.max_logit_diff == 0.0
        assert all(0.05 <= r <= 0.5 for r in comparison.layers_firing.values()), \
            comparison.layers_firing


@pytest.mark.parametrize("steps, timesteps", [(1, "unroll"), (3, "unroll"), (3, "stream")])
def test_every_initializer_is_read(steps, timesteps):
    """No dead weights or state fills in the file (ORT would warn and drop them)."""
    for kind in ("lif", "if", "lif_reset", "lif_soft"):
        program = export(conv_snn(steps=steps, neuron=kind), torch.zeros(1, 2, 12, 12))
        model = compile_program(program, Options(timesteps=timesteps)).model
        read = {name for node in model.graph.node for name in node.input}
        assert [t.name for t in model.graph.initializer if t.name not in read] == []
