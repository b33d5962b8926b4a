"""fold_scales, pot_to_shift and the range check, each four ways (fires, near miss, meaning,
verifier), on small graphs whose neurons fire; the whole heterogeneous Spikformer is in
test_quant.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zoo
from spikingjelly.activation_based import neuron
from torch import nn

import snnc
from snnc.check import parity as H
from snnc.check.parity import interp_trace
from snnc.driver import compile_program
from snnc.ir import ranges
from snnc.ir.builder import Builder
from snnc.ir.graph import TimeSpec
from snnc.ir.interp import run
from snnc.ir.verify import verify
from snnc.options import Options
from snnc.passes import fold_scales, pot_to_shift, unroll_timesteps

RNG = np.random.default_rng(7)
LIF = {"leak": "div", "leak_value": 2.0, "decay_input": True, "threshold": 1.0, "v_reset": 0.0}
CONV = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}


def quantized_net(scheme="pot", bits=4, bn=True, pool=False, reset=0.0, exact=False, steps=4):
    """x -> LIF (spikes) -> dequantize -> conv -> [batch_norm] -> [max_pool] -> LIF.

    Channel 1's BatchNorm gamma is negative (its weights flip) and channel 2's is zero (it
    sums nothing); without BatchNorm the conv has a dyadic bias. exact=True: power-of-two
    scales, so (without BatchNorm) the fold rounds nothing."""
    rng = np.random.default_rng(1)
    b = Builder()
    x = b.input(("N", 3, 6, 6))
    v0 = b.state(("N", 3, 6, 6), "lif0")
    s0, v0n = b.add("neuron", [x, v0], {**LIF, "threshold": 0.5}, "lif0", "s0")
    b.write(v0, v0n)
    high = 2 ** (bits - 1)
    low = -(high - 1) if scheme == "pot" else -high
    codes = b.const(rng.integers(low, high, size=(4, 3, 3, 3)), "conv.weight_codes", "i32")
    levels = 1.0 if scheme == "pot" else high  # the largest weight magnitude ~ 1 x scale
    scale = 2.0 ** -rng.integers(2, 4, size=4) if exact else rng.uniform(0.2, 0.3, 4) / levels
    w, = b.add("dequantize", [codes, b.const(scale, "conv.weight_scale")],
               {"scheme": scheme, "bits": bits}, "conv", "w")
    bias = [b.const([0.75, 0.875, 1.0, 0.5], "conv.bias")] if not bn else []
    y, = b.add("conv", [s0, w, *bias], CONV, "conv", "y")
    if bn:
        params = [b.const([1.5, -0.8, 0.0, 1.1], "bn.weight"), b.const([0.8, 0.9, 1.2, 0.7]),
                  b.const([0.0, 0.1, 0.0, -0.1]), b.const([0.3, 0.2, 0.3, 0.25])]
        y, = b.add("batch_norm", [y, *params], {"eps": 1e-5}, "bn", "z")
    if pool:
        y, = b.add("max_pool", [y], {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0]},
                   "pool", "p")
    v1 = b.state(y.shape, "lif1")
    s1, v1n = b.add("neuron", [y, v1], {**LIF, "v_reset": reset}, "lif1", "s1")
    b.write(v1, v1n)
    return b.build([s1], TimeSpec(steps, ("repeat",), ("stack",)))


def rounding_only(before, after, x, tol=1e-5):
    """Spikes equal, except at most a few decided by float rounding at the threshold."""
    ref, got = interp_trace(before, x), interp_trace(after, x)
    flips = 0
    for layer in ref.spikes:
        diff = ref.spikes[layer] != got.spikes[layer]
        if diff.any():
            t = int(np.argmax(diff.reshape(diff.shape[0], -1).any(axis=1)))
            h = ref.membranes[layer][t]
            distance = np.abs(h - np.broadcast_to(ref.thresholds[layer], h.shape))[diff[t]]
            assert distance.max() <= tol, (layer, distance.max())
            flips += int(diff[t].sum())
            break  # later layers legitimately differ after a rounding-decided spike
    return flips, ref


def test_fold_scales_fires():
    before = quantized_net()
    after = fold_scales.run(before)
    verify(after, "fold_scales")
    ops = [n.op for n in after.nodes]
    assert ops == ["neuron", "dequantize", "conv", "add", "neuron"]
    text = str(after)
    assert "= add(%y, %w.beta_folded)  # bn" in text
    assert "neuron(%z, %lif1.v, %w.threshold) leak='div' leak_value=2.0 decay_input=True " \
           "threshold=None v_reset=0.0  # lif1" in text
    unit = after.constants[after.nodes[1].inputs[1]]
    assert unit.tolist() == [64.0, -64.0, 0.0, 64.0]  # 2^E: flipped channel 1, dead channel 2


@pytest.mark.parametrize("case", [dict(), dict(pool=True), dict(scheme="uniform", bits=3),
                                  dict(bn=False), dict(reset=None)])
def test_fold_scales_preserves_meaning(case):
    before = quantized_net(**case)
    after = fold_scales.run(before)
    verify(after, "fold_scales")
    assert after is not before and "batch_norm" not in str(after)
    total_flips = 0
    for seed in range(3):
        x = np.random.default_rng(seed).random((4, 3, 6, 6), dtype=np.float32) * 2
        flips, ref = rounding_only(before, after, x)
        total_flips += flips
        assert all(0.02 < s.mean() < 0.9 for s in ref.spikes.values())  # it really fires
    assert total_flips <= 2


def test_fold_scales_exact_case_is_bit_exact():
    before = quantized_net(scheme="uniform", bits=4, bn=False, exact=True)
    after = fold_scales.run(before)
    x = RNG.random((4, 3, 6, 6), dtype=np.float32) * 2
    assert np.array_equal(run(after, [x])[0], run(before, [x])[0])
    assert run(before, [x])[0].mean() > 0.05


def test_fold_scales_near_miss():
    g = quantized_net()
    g = g.replace(outputs=g.outputs + (g.nodes[1].outputs[0],))  # the weights are an output
    assert fold_scales.run(g) is g
    unrolled = unroll_timesteps.run(quantized_net(bn=False))
    # folding happens in the one-step body; unrolled, the layer feeds T neuron copies
    assert fold_scales.run(unrolled) is unrolled


def test_fold_scales_keeps_unfoldable_neurons_but_sums_integers():
    before = quantized_net(reset=-0.2)  # a nonzero reset would need a per-channel reset value
    after = fold_scales.run(before)
    verify(after, "fold_scales")
    neuron = after.nodes[-1]
    assert neuron.attrs["threshold"] == 1.0 and len(neuron.inputs) == 2
    assert "= mul(%y_sum, %w.weight_scale)" in str(after)  # scale after the integer sum
    x = RNG.random((4, 3, 6, 6), dtype=np.float32) * 2
    assert rounding_only(before, after, x)[0] <= 1


def attention_like(scale=0.125):
    b = Builder()
    q = b.input(("N", 2, 8, 5), "q")
    qs, = b.add("relu", [q], {}, "spikes", "qs")  # stand-in for spikes: any values work
    kt, = b.add("transpose", [qs], {"perm": [0, 1, 3, 2]}, "attn", "kt")
    a, = b.add("matmul", [qs, kt], {}, "attn", "a")
    m, = b.add("mul", [a, b.const(scale, f"c{scale}")], {}, "attn", "m")
    v = b.state(("N", 2, 8, 8), "attn_lif")
    s, vn = b.add("neuron", [m, v], {**LIF, "threshold": 0.5}, "attn_lif", "s")
    b.write(v, vn)
    return b.build([s], TimeSpec(3, ("repeat",), ("stack",)))


def test_fold_scales_power_of_two_multiplier_is_exact():
    before = attention_like()
    after = fold_scales.run(before)
    verify(after, "fold_scales")
    assert "mul" not in [n.op for n in after.nodes]
    assert "threshold=4.0" in str(after)
    x = np.round(RNG.normal(0, 1.5, (6, 2, 8, 5))).astype(np.float32)
    want = run(before, [x])[0]
    assert np.array_equal(run(after, [x])[0], want) and 0.05 < want.mean() < 0.95
    near = attention_like(scale=0.1)  # not a power of two: dividing would round
    assert fold_scales.run(near) is near


def test_pot_to_shift_fires_and_is_exact():
    folded = fold_scales.run(quantized_net())
    after = pot_to_shift.run(folded)
    verify(after, "pot_to_shift")
    text = str(after)
    assert "= shift_conv(%s0.0, %conv.weight_codes) stride=[1,1] padding=[1,1] " \
           "dilation=[1,1] groups=1 bits=4  # conv" in text
    assert "dequantize" not in text
    for seed in range(3):
        x = np.random.default_rng(seed).random((4, 3, 6, 6), dtype=np.float32) * 2
        assert np.array_equal(run(after, [x])[0], run(folded, [x])[0])


def test_pot_to_shift_near_misses():
    unfolded = quantized_net()
    assert pot_to_shift.run(unfolded) is unfolded  # real scales still in the weights
    uniform = fold_scales.run(quantized_net(scheme="uniform", bits=3))
    assert pot_to_shift.run(uniform) is uniform
    b = Builder()  # a PoT layer reading a real-valued input: no integers to shift
    x = b.input(("N", 3))
    codes = b.const([[1, -2, 3], [0, 1, -1]], "fc.weight_codes", "i32")
    w, = b.add("dequantize", [codes, b.const([64.0, -64.0])], {"scheme": "pot", "bits": 4})
    y, = b.add("linear", [x, w], {}, "fc", "y")
    g = b.build([y], None)
    assert pot_to_shift.run(g) is g


def wide_net(fan_in: int, steps: int = 4, leak: str = "none"):
    """A spike input into a linear layer of 8-bit codes 127 and an IF (or LIF) neuron."""
    b = Builder()
    x = b.input(("N", fan_in))
    v0 = b.state(("N", fan_in), "lif0")
    s0, v0n = b.add("neuron", [x, v0], LIF, "lif0", "s0")
    b.write(v0, v0n)
    codes = b.const(np.full((1, fan_in), 127), "fc.weight_codes", "i32")
    w, = b.add("dequantize", [codes, b.const([1.0])], {"scheme": "uniform", "bits": 8})
    y, = b.add("linear", [s0, w], {}, "fc", "y")
    v1 = b.state(("N", 1), "if1")
    attrs = {**LIF, "leak": leak, "threshold": 1e6}
    s1, v1n = b.add("neuron", [y, v1], attrs, "if1", "s1")
    b.write(v1, v1n)
    return b.build([s1], TimeSpec(steps, ("repeat",), ("stack",)))


def test_range_check_accepts_and_tabulates():
    g = wide_net(1000)
    table = ranges.check(g)
    assert [m.layer for m in table] == ["lif0", "if1"]
    m = table[1]
    assert (m.input.lo, m.input.hi, m.input.integer) == (0.0, 127000.0, True)
    assert m.bound == 1e6 + 4 * 127000 and m.integer_bits == 21 and m.fractional_bits == 0
    assert m.exact  # integer input, no leak, 21 bits
    lif = ranges.membranes(wide_net(1000, leak="div"))[1]
    assert lif.bound == 1e6 and lif.integer_bits == 20 and lif.fractional_bits == 1
    assert lif.exact  # 20 integer + 4 steps x 1 fractional bit <= 24
    assert not ranges.membranes(wide_net(1000, leak="div", steps=5))[1].exact
    assert "if1" in ranges.format_table(table)


def test_range_check_refuses_overflowing_sums_and_membranes():
    with pytest.raises(ranges.RangeError, match=r"fc.*integer sums can reach .*2\^24"):
        ranges.check(wide_net(140_000))
    small = wide_net(40_000, steps=8)  # sums 5.1e6 fit; an IF membrane over 8 steps does not
    with pytest.raises(ranges.RangeError, match=r"if1: the membrane can reach"):
        ranges.check(small)
    assert ranges.check(small, stream=True)  # stream mode: an IF membrane may sink for ever


def test_a_layer_whose_folded_sums_could_leave_float32s_integers_is_not_folded():
    """PoT-5 weights reach 2^14: over a fan-in of 4096 spikes their integer sums could pass 2^24,
    which ranges.check refuses. Such a layer keeps its real scale (runs as PyTorch runs it, in
    float32) instead of being folded into an unexact integer sum; a narrow one is folded."""
    class Wide(nn.Module):
        def __init__(self, fan_in):
            super().__init__()
            self.fc0, self.sn0 = nn.Linear(8, fan_in), neuron.IFNode(step_mode="m")
            self.fc1, self.sn1 = nn.Linear(fan_in, 6), neuron.LIFNode(step_mode="m")

        def forward(self, x):
            s = self.sn0(self.fc0(x.unsqueeze(0).repeat(2, 1, 1)))
            return self.sn1(self.fc1(s)).mean(0)

    for fan_in, folded in ((64, True), (4096, False)):
        torch.manual_seed(0)
        model = Wide(fan_in).eval()
        nn.init.constant_(model.fc0.bias, 0.6)
        nn.init.uniform_(model.fc1.weight, -1.0 / fan_in, 3.0 / fan_in)
        nn.init.constant_(model.fc1.bias, 1.2)
        model = snnc.quantize(model, {"fc0": {"scheme": "uniform", "bits": 8},
                                      "fc1": {"scheme": "pot", "bits": 5}})
        result = compile_program(zoo.export(model, (1, 8)), Options(debug_outputs=True))
        neurons = [n for n in result.lowered.nodes if n.op == "neuron"
                   and n.source.layer == "sn1"]
        assert (neurons[0].attrs["threshold"] is None) == folded  # a per-channel threshold
        x = np.random.default_rng(3).random((3, 8), dtype=np.float32)
        reference = H.torch_trace(zoo.export(model, (3, 8)), x)
        got = H.onnx_trace(H.onnx_session(result.data), x)
        comparison = H.compare(reference, got, H.Comparison(), batch_axis=0, max_flips=2)
        assert not comparison.problems, comparison.problems
        assert 0 < reference.outputs[0].mean() < 1  # sn1 fires, not always
