"""Every supported neuron variant, through a small conv SNN with a mean-over-time output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snnc import parity as H
from snnc.compile import compile_program
from snnc.demo import conv_snn, export
from snnc.options import Options


@pytest.mark.parametrize("kind", ["lif", "if", "plif", "lif_soft", "lif_reset"])
def test_neuron_variant_matches_pytorch(kind):
    model = conv_snn(neuron=kind, seed=3)
    program = export(model, torch.zeros(1, 2, 12, 12))
    result = compile_program(program, Options(debug_outputs=True))
    x = np.random.default_rng(5).random((6, 2, 12, 12), dtype=np.float32)
    reference = H.torch_trace(export(model, torch.zeros(6, 2, 12, 12)), x)
    assert reference.outputs[0].shape == (6, 5)  # mean over time
    for other in (H.onnx_trace(H.onnx_session(result.data), x), H.interp_trace(result.graph, x)):
        comparison = H.compare(reference, other, H.Comparison(), batch_axis=0)
        assert not comparison.problems, comparison.problems
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
    """A model that takes [T, B, ...] directly (event frames) gets a seq input."""
    from spikingjelly.activation_based import layer, neuron

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
    result = compile_program(program)
    assert result.graph.time.inputs == ("seq",)
    x = np.random.default_rng(0).random((3, 5, 2, 8, 8), dtype=np.float32)
    with torch.no_grad():
        from spikingjelly.activation_based import functional

        functional.reset_net(model)
        expected = model(torch.from_numpy(x)).numpy()
    got = H.onnx_session(result.data).run(None, {"x": x})[0]
    assert expected.mean() > 0.01
    assert (got != expected).mean() < 1e-3


@pytest.mark.parametrize("steps, timesteps", [(1, "unroll"), (3, "unroll"), (3, "stream")])
def test_every_initializer_is_read(steps, timesteps):
    """No dead weights or state fills in the file (ORT would warn and drop them)."""
    for kind in ("lif", "if", "lif_reset", "lif_soft"):
        program = export(conv_snn(steps=steps, neuron=kind), torch.zeros(1, 2, 12, 12))
        model = compile_program(program, Options(timesteps=timesteps)).model
        read = {name for node in model.graph.node for name in node.input}
        assert [t.name for t in model.graph.initializer if t.name not in read] == []
