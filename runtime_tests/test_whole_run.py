"""Layers that read every step at once (compiler/frontend/stacked.py, docs/ir.md
"time_stack"): temporal attention as SpikingJelly's MA-SNN and Att-MS-ResNet build it
(their own classes, small), and ops over the time axis written by hand. Each is compiled
plain and heterogeneous-quantized from a batch-1 export, run in ONNX Runtime on 4 samples
and on each alone, and compared with PyTorch layer by layer under the rounding rule
(docs/testing.md); every neuron layer must fire. Also: the whole-run ops in the IR (the
interpreter against the unrolled graph) and what cannot run one step at a time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zoo
from spikingjelly.activation_based import layer, neuron
from torch import nn

import snnc
from snnc.check import parity as H
from snnc.driver import compile_program
from snnc.ir import interp
from snnc.ir.graph import Graph, TimeSpec, Value
from snnc.ir.verify import verify
from snnc.options import Options
from snnc.passes import unroll_timesteps

BATCH = 4


class ByHand(nn.Module):
    """[T, B, C, H, W] spikes through ops over the time axis: a max over time and channels
    (flatten(1, 2) of [B, T, C, H, W]), a linear with the steps as features, a delay by one
    step (a slice and a pad of the time axis), a mean over time and pixels fed back to
    every step, a causal conv1d over time of the pooled channels, and step 0's spikes added
    to every step."""

    def __init__(self, T: int, C: int = 4):
        super().__init__()
        self.T = T
        self.conv = layer.Conv2d(2, C, 3, padding=1, step_mode="m")
        self.bn = layer.BatchNorm2d(C, step_mode="m")
        self.sn1 = neuron.LIFNode(step_mode="m")
        self.mix = nn.Linear(T, T)
        self.tconv = nn.Conv1d(C, C, 2, padding=1)
        self.sn2 = neuron.LIFNode(step_mode="m")
        self.fc = layer.Linear(C, 5, step_mode="m")

    def forward(self, x):
        s = self.sn1(self.bn(self.conv(x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1))))
        T, B, C, H, W = s.shape
        peak = s.transpose(0, 1).flatten(1, 2).amax(1, keepdim=True)  # [B, 1, H, W]
        mixed = self.mix(s.permute(1, 2, 3, 4, 0)).permute(4, 0, 1, 2, 3)
        delayed = nn.functional.pad(s[:-1], (0,) * 8 + (1, 0))
        gate = torch.sigmoid(s.mean((0, 3, 4), keepdim=True))  # [1, B, C, 1, 1]
        pooled = s.mean((3, 4)).permute(1, 2, 0)  # [B, C, T]
        over = self.tconv(pooled)[..., :T].permute(2, 0, 1)[..., None, None]  # causal
        h = mixed + delayed + peak.unsqueeze(0) + gate * s + 0.5 * over + 0.25 * s[0]
        return self.fc(self.sn2(2 * h).mean((3, 4))).mean(0)


def _masnn(T: int):
    """MA-SNN with SpikingJelly's LIF op (spiking_neuron=LIFNode: its spikes are recorded
    and compared layer by layer)."""
    from spikingjelly.activation_based.model import masnn

    return masnn.MASNN(T=T, in_channels=2, num_classes=5, input_size=(8, 8), channels=(8, 8),
                       pools=(1, 2), fc_hidden=16, reduction_t=2, reduction_c=4,
                       spiking_neuron=neuron.LIFNode, tau=2.0, v_threshold=0.1,
                       detach_reset=True)


def _att_ms(T: int):
    """Att-MS-ResNet with its paper neuron (LIFNode without input decay: PyTorch arithmetic,
    a loop over time re-rolled; no spikes recorded, so its firing is measured in PyTorch
    and its outputs compared)."""
    from spikingjelly.activation_based.model import masnn

    return masnn.AttMSResNet(T=T, in_channels=2, num_classes=5, layers=(1, 1, 1),
                             base_channels=8, stem_kernel_size=3, stem_stride=1,
                             stage_channels=(8, 16, 16), reduction_c=4)


MODELS = {"by_hand": ByHand, "masnn": _masnn, "att_ms_resnet": _att_ms}
SHAPE = (1, 2, 8, 8)


def _build(name: str, T: int):
    torch.manual_seed(0)
    return zoo.make_firing(MODELS[name](T).eval(), SHAPE)


@pytest.mark.parametrize("quantized", [False, True], ids=["plain", "quantized"])
@pytest.mark.parametrize("name,T", [("by_hand", 3), ("masnn", 4), ("att_ms_resnet", 2),
                                    ("att_ms_resnet", 1)])
def test_whole_run_layers_match_pytorch(name, T, quantized):
    model = _build(name, T)
    if quantized:
        snnc.quantize(model, zoo.heterogeneous(model))
    result = compile_program(zoo.export(model, SHAPE), Options(debug_outputs=True))
    assert any(n.op == "time_stack" for n in result.graph.nodes) or T == 1
    x = np.random.default_rng(7).random((BATCH, *SHAPE[1:]), dtype=np.float32)
    reference = H.torch_trace(zoo.export(model, (BATCH, *SHAPE[1:])), x)
    session = H.onnx_session(result.data)
    got = H.onnx_trace(session, x)
    comparison = zoo.compared(reference, got)
    rates = comparison.layers_firing or zoo.firing_rates(model, torch.from_numpy(x))
    silent = [k for k, rate in rates.items() if rate == 0]
    assert rates and not silent, f"silent neuron layers: {silent}"
    if not comparison.layers_firing:  # no spikes recorded: the outputs decide
        assert comparison.max_logit_diff < 1e-4, comparison.report()
    assert np.ptp(reference.outputs[0], axis=0).max() > 0, "the same output for every sample"
    zoo.compared(reference, H.interp_trace(result.graph, x))  # the reference interpreter too
    for i in range(BATCH):  # batch 1 and batch 4 from the one file
        alone = H.onnx_trace(session, x[i:i + 1])
        np.testing.assert_allclose(alone.outputs[0], got.outputs[0][i:i + 1], atol=1e-5)
    if quantized:  # layers after the attention's neurons still read spikes: integer GEMMs
        assert any(n.op == "int_matmul" for n in result.lowered.nodes)


def test_whole_run_cannot_stream():
    program = zoo.export(_build("masnn", 4), SHAPE)
    with pytest.raises(snnc.BadInputError, match="mixes all T timesteps"):
        compile_program(program, Options(timesteps="stream"))


def _graph(steps: int = 3) -> Graph:
    """x [N, 2] per step -> stacked [N, T, 2]; step t's output is x(t) * w[t] (a whole-run
    product unstacked on axis 1) plus the mean of x over time (once, added to every step)."""
    x = Value("f32", ("N", 2), "x")
    w = Value("f32", (1, steps, 2), "w")
    stacked = Value("f32", ("N", steps, 2), "stacked")
    scaled = Value("f32", ("N", steps, 2), "scaled")
    back = Value("f32", ("N", 2), "back")
    mean = Value("f32", ("N", 2), "mean")
    out = Value("f32", ("N", 2), "out")
    from snnc.ir.graph import Node
    nodes = (Node("time_stack", (x,), (stacked,), {"axis": 1, "steps": steps}),
             Node("mul", (stacked, w), (scaled,), {}),
             Node("reduce_mean", (stacked,), (mean,), {"axes": [1], "keepdims": False}),
             Node("time_unstack", (scaled,), (back,), {"axis": 1}),
             Node("add", (back, mean), (out,), {}))
    weights = np.arange(steps * 2, dtype=np.float32).reshape(1, steps, 2)
    return Graph((x,), nodes, (out,), {w: weights}, (), TimeSpec(steps, ("seq",), ("stack",)))


def test_interpreter_and_unrolled_graph_agree_on_whole_run_ops():
    graph = _graph()
    verify(graph, "test")
    xs = np.random.default_rng(0).random((3, 5, 2), dtype=np.float32)  # [T, N, 2]
    want = xs * np.arange(6, dtype=np.float32).reshape(3, 1, 2) + \
        xs.mean(axis=0, keepdims=True)
    np.testing.assert_allclose(interp.run(graph, [xs])[0], want, rtol=1e-6)
    unrolled = unroll_timesteps.run(graph)
    verify(unrolled, "test")
    np.testing.assert_allclose(interp.run(unrolled, [xs])[0], want, rtol=1e-6)


def test_verify_refuses_whole_run_ops_that_do_not_fit_the_steps():
    graph = _graph()
    wrong = graph.replace(time=TimeSpec(2, ("seq",), ("stack",)))
    with pytest.raises(snnc.SnncError, match="time_stack does not fit 2 steps"):
        verify(wrong, "test")


def test_a_whole_run_view_keeps_the_batch_as_one_axis():
    """Any axes of a whole-run tensor may be regrouped, but the batch stays one axis; at an
    example batch of 1 a unit axis beside it is not guessed to be it."""
    from snnc.frontend import axes

    whole = axes.Layout((axes.F, axes.B, axes.F, axes.F))
    got = axes.reshape_whole(whole, (4, 3, 2, 5), (2, 2, 3, 10))  # time split in chunks
    assert got.roles == (axes.F, axes.F, axes.B, axes.F)
    got = axes.reshape_whole(whole, (1, 1, 2, 5), (1, 1, 10))  # axes before it unchanged
    assert got.roles == (axes.F, axes.B, axes.F)
    with pytest.raises(axes.AxisError, match="batch can be axis 2 or 3"):
        axes.reshape_whole(whole, (2, 1, 2, 5), (1, 2, 1, 1, 10))
    with pytest.raises(axes.AxisError, match="splits or merges the batch axis"):
        axes.reshape_whole(whole, (4, 3, 2, 5), (12, 10))


def test_a_whole_run_output_is_returned_over_time():
    """A model that returns a [T, B, ...] tensor computed on the whole run (a softmax over
    time) returns it as any [T, B, ...] output: mode "stack", batch on axis 1."""
    class Softmaxed(nn.Module):
        def __init__(self):
            super().__init__()
            self.sn = neuron.LIFNode(step_mode="m")

        def forward(self, x):
            s = self.sn(x.unsqueeze(0).repeat(3, 1, 1) * 2)
            return (s + torch.arange(4.0)).softmax(0)

    model = Softmaxed().eval()
    result = compile_program(zoo.export(model, (1, 4)))
    assert result.graph.time.outputs == ("stack",)
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    got = H.onnx_trace(H.onnx_session(result.data), x).outputs[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (3, 5, 4)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_refusals_over_time_say_what_stops_them():
    """The indices of a max over time (an argmax) are not lifted; a conv3d over time is
    refused for its kernel too, not only told to flatten time into the batch."""
    class Over(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn, self.sn = fn, neuron.LIFNode(step_mode="m")
            self.conv = nn.Conv3d(4, 4, (2, 1, 1))

        def forward(self, x):
            return self.fn(self, self.sn(x.unsqueeze(0).repeat(3, 1, 1, 1, 1) * 2)).mean(0)

    cases = [(lambda m, s: s.max(0)[1].float() + s, "indices of a max"),
             (lambda m, s: m.conv(s.permute(1, 2, 0, 3, 4)).permute(2, 0, 1, 3, 4),
              "conv3d that is not pointwise")]
    for fn, says in cases:
        with pytest.raises(snnc.UnsupportedOpError, match=says) as error:
            compile_program(zoo.export(Over(fn).eval(), (1, 4, 4, 4)))
        assert "Over) test_whole_run.py:" in str(error.value) or \
            "(Conv3d) test_whole_run.py:" in str(error.value)
