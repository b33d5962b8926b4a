"""Spike layers on exact integer GEMMs (docs/onnx.md): the integer ops, the lower_integer
and layout passes (each four ways: fires, near miss, meaning, verifier), and the family.

For every quantized model of the zoo (and the heterogeneous Spikformer), compiled with
default options:
- ONNX Runtime gives exactly the outputs of snnc's interpreter on the lowered graph it
  emitted (integer kernels are exact; nothing is left to float rounding order);
- ONNX Runtime's optimized graph (SessionOptions.optimized_model_filepath) runs every
  spike-input conv, linear and matmul on an integer kernel. Which layers read spikes is
  observed, not taken from snnc's analysis: the float-kernel compile of the same model is
  run by the interpreter and every quantized layer (and matmul) whose input held only
  integers within uint8/int8 on random inputs is counted; the optimized graph must hold
  exactly that many integer GEMMs, and float GEMM kernels only for the rest.
Parity against PyTorch under the rounding rule is test_zoo's (default options too).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import zoo

import snnc
from snnc.check import parity
from snnc.driver import compile_program
from snnc.ir.builder import Builder
from snnc.ir.interp import run
from snnc.ir.ops import OPS
from snnc.ir.ranges import RangeError, check
from snnc.ir.verify import verify
from snnc.options import Options
from snnc.passes import cast_spikes, layout, lower_integer, remove_dead_nodes, unroll_timesteps
from snnc.quant import weights

RNG = np.random.default_rng(0)
LIF = {"leak": "div", "leak_value": 2.0, "decay_input": True, "threshold": 0.5, "v_reset": 0.0}
INTEGER_KERNELS = ("MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeMatMul",
                   "QLinearMatMul", "QLinearConv", "ConvInteger")
FLOAT_KERNELS = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "NchwcConv")


# ----------------------------------------------------------------------------- the ops

@pytest.mark.parametrize("shape,kernel,stride,padding,dilation", [
    ((2, 5, 7, 6), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 4, 9, 8), (3, 2), (2, 1), (1, 0), (1, 2)),
    ((3, 6, 5, 5), (1, 1), (2, 2), (0, 0), (1, 1)),
    ((2, 3, 11), (3,), (1,), (1,), (1,)),
    ((2, 8, 10), (1,), (1,), (0,), (1,)),
    ((1, 2, 12), (5,), (3,), (2,), (2,)),
])
def test_im2col_gemm_is_the_conv(shape, kernel, stride, padding, dilation):
    x = RNG.integers(0, 4, shape).astype(np.uint8)
    w = RNG.integers(-64, 64, (7, shape[1], *kernel))
    attrs = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    channel_last = np.moveaxis(x, 1, -1)
    cols, = OPS["im2col"].evaluate([channel_last], attrs)
    assert (cols.dtype, cols.shape[1:-1]) == (np.uint8, OPS["im2col"].infer(
        [("u8", channel_last.shape)], attrs)[0][1][1:-1])
    y, = OPS["int_matmul"].evaluate([cols, weights.gemm_matrix(w)], {})
    ref, = OPS["conv"].evaluate([x.astype(np.float32), w.astype(np.float32)],
                                dict(stride=stride, padding=padding, dilation=dilation,
                                     groups=1))
    assert np.array_equal(np.moveaxis(y, -1, 1), ref)


def test_casts_and_integer_sums_never_change_a_value():
    with pytest.raises(ValueError, match="outside its integers"):
        OPS["cast"].evaluate([np.array([0.0, 0.5], np.float32)], {"to": "u8"})
    with pytest.raises(ValueError, match="outside its integers"):
        OPS["cast"].evaluate([np.array([-1.0], np.float32)], {"to": "u8"})
    assert OPS["cast"].evaluate([np.array([-128.0, 127.0], np.float32)],
                                {"to": "i8"})[0].tolist() == [-128, 127]
    big = np.full((1, 1100), 127, np.int8)
    with pytest.raises(ValueError, match="exceeds 2"):
        OPS["int_matmul"].evaluate([np.full((1, 1100), 255, np.uint8), big.T.copy()], {})


def test_digits_recombine_to_the_weights():
    edges = np.array([0, 1, -1, 63, 64, -64, -65, 127, -128, 128, 2 ** 14, -2 ** 14, 5000])
    for values in (edges, RNG.integers(-2 ** 14, 2 ** 14 + 1, 5000)):
        parts = weights.digits(values)
        assert all(p.dtype == np.int8 for p in parts)
        assert np.array_equal(sum(p.astype(np.int64) * 128 ** k for k, p in enumerate(parts)),
                              values)
    assert len(weights.digits(np.array([127, -128]))) == 1  # int8 as it is
    assert len(weights.digits(np.array([2 ** 14]))) == 3


# ----------------------------------------------------------------------------- lower_integer

def spike_layer_graph(real_input: bool = False, scheme: str = "uniform", bits: int = 4,
                      fan_in: int = 4, op: str = "conv", code: int | None = None):
    """x -> neuron -> spikes -> dequantize(codes, unit scales) -> conv (or linear) -> neuron.
    With real_input the layer reads x itself (real values)."""
    b = Builder()
    conv = op == "conv"
    x = b.input(("N", fan_in, 6, 6) if conv else ("N", 5, fan_in))
    spikes, _ = b.add("neuron", [x, b.const(0.0, "v0")], LIF, "lif0", "s")
    unit = weights.unit(scheme, bits)
    top = 2 ** (bits - 1) - 1
    low = -top - (scheme == "uniform")
    shape = (8, fan_in, 3, 3) if conv else (8, fan_in)
    values = RNG.integers(low, top + 1, shape) if code is None else np.full(shape, code)
    if code is None:  # whatever the draw: PoT's largest level (code 1) in channel 0, and the
        values[0].flat[0], values[1].flat[0] = 1, low  # lowest code in negated channel 1
    codes = b.const(values, "layer.weight_codes", "i32")
    scale = b.const(np.array([unit, -unit] * 4), "layer.weight_unit_scale")
    w, = b.add("dequantize", [codes, scale], {"scheme": scheme, "bits": bits}, "layer.q", "w")
    attrs = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1} \
        if conv else {}
    y, = b.add(op, [x if real_input else spikes, w], attrs, "layer", "y")
    out, _ = b.add("neuron", [y, b.const(0.0, "v1")], {**LIF, "threshold": 1.0}, "lif1", "o")
    return b.build([out, y], None)


def test_lower_integer_fires():
    before = spike_layer_graph()
    after = lower_integer.run(before)
    verify(after, "lower_integer")
    lines = [line.split("  #")[0] for line in str(after).splitlines()]
    assert "  %w.gemm: i8[36,8] = int_weights(%layer.weight_codes, %layer.weight_unit_scale) " \
           "scheme='uniform' bits=4 digits=1" in lines
    assert "  %s.0_u8: u8[N,4,6,6] = cast(%s.0) to='u8'" in lines
    assert "  %s.0_u8_cl: u8[N,6,6,4] = transpose(%s.0_u8) perm=[0,2,3,1]" in lines
    assert "  %s.0_u8_cols: u8[N,6,6,36] = im2col(%s.0_u8_cl) kernel=[3,3] stride=[1,1] " \
           "padding=[1,1] dilation=[1,1]" in lines
    assert "  %y_cl: f32[N,6,6,8] = int_matmul(%s.0_u8_cols, %w.gemm)" in lines
    assert "  %y: f32[N,8,6,6] = transpose(%y_cl) perm=[0,3,1,2]" in lines
    assert not {"conv", "dequantize"} & {n.op for n in after.nodes}


def test_lower_integer_near_miss():
    g = spike_layer_graph(real_input=True)  # an image: real values stay on float kernels
    assert lower_integer.run(g) is g


@pytest.mark.parametrize("scheme,bits,op", [("uniform", 4, "conv"), ("uniform", 8, "conv"),
                                            ("pot", 3, "linear"), ("pot", 5, "conv"),
                                            ("pot", 5, "linear"), ("uniform", 2, "linear")])
def test_lower_integer_preserves_meaning_exactly(scheme, bits, op):
    before = spike_layer_graph(scheme=scheme, bits=bits, op=op)
    after = lower_integer.run(before)
    verify(after, "lower_integer")
    check(after)
    assert "int_matmul" in {n.op for n in after.nodes}
    digits = next(n.attrs["digits"] for n in after.nodes if n.op == "int_weights")
    assert digits == (3 if bits == 5 else 2 if bits == 8 else 1)  # 8 bits: a flipped -128
    x = RNG.normal(0.4, 1.0, (3, *before.inputs[0].shape[1:])).astype(np.float32)
    expected, got = run(before, [x]), run(after, [x])
    assert 0.02 < expected[0].mean() < 0.98  # the layer's neuron fires, not always
    for e, g in zip(expected, got):
        assert np.array_equal(e, g)


def test_lower_integer_keeps_sums_it_cannot_prove_on_float():
    """PoT-5's largest weight 2^14 over a fan-in of 1,100: a sum could pass 2^24, so the
    layer stays a float layer, and the range check then refuses it, as before this pass."""
    before = spike_layer_graph(scheme="pot", bits=5, fan_in=1100, op="linear", code=1)
    assert lower_integer.run(before) is before
    with pytest.raises(RangeError, match="2\\^24"):
        check(before)


@pytest.mark.parametrize("gain,lowered", [(100.0, True), (200.0, False)])
def test_lower_integer_keeps_pairs_that_could_saturate(gain, lowered):
    """Spikes times `gain` (integers in [0, gain]) into 8-bit weights (up to 127): two
    products could pass 2^15 - 1 at gain 200, which x86 CPUs without VNNI would saturate
    (vpmaddubsw), so that layer stays on float kernels; at gain 100 it is lowered."""
    b = Builder()
    x = b.input(("N", 6))
    s, _ = b.add("neuron", [x, b.const(0.0, "v")], LIF, "lif", "s")
    counts, = b.add("mul", [s, b.const(gain, "gain")], {}, "gain", "counts")
    codes = b.const(np.full((4, 6), 127), "fc.weight_codes", "i32")
    w, = b.add("dequantize", [codes, b.const(np.ones(4), "fc.scale")],
               {"scheme": "uniform", "bits": 8}, "fc", "w")
    y, = b.add("linear", [counts, w], {}, "fc", "y")
    g = b.build([y], None)
    after = lower_integer.run(g)
    assert ("int_matmul" in {n.op for n in after.nodes}) == lowered
    xs = RNG.normal(0.8, 1.0, (3, 6)).astype(np.float32)
    assert np.array_equal(run(g, [xs])[0], run(after, [xs])[0])


# ----------------------------------------------------------------------------- layout

def block_graph():
    """A token block in channel-major [N, C, L] as SpikingJelly writes it: two 1x1 convs on
    spikes with neurons between, a residual add and a reshape of channels into heads."""
    b = Builder()
    x = b.input(("N", 8, 5))
    s, _ = b.add("neuron", [x, b.const(0.0, "v")], LIF, "lif0", "s")
    h = s
    for i in range(2):
        codes = b.const(RNG.integers(-3, 4, (8, 8, 1)), f"fc{i}.weight_codes", "i32")
        w, = b.add("dequantize", [codes, b.const(np.ones(8), f"fc{i}.scale")],
                   {"scheme": "uniform", "bits": 3}, f"fc{i}", f"w{i}")
        y, = b.add("conv", [h, w], {"stride": [1], "padding": [0], "dilation": [1],
                                    "groups": 1}, f"fc{i}", f"y{i}")
        z, = b.add("add", [y, b.const(RNG.normal(size=(8, 1)), f"fc{i}.beta")], {}, f"fc{i}",
                   f"z{i}")
        t, _ = b.add("neuron", [z, b.const(0.0, f"v{i}")], LIF, f"lif{i + 1}", f"t{i}")
        h, = b.add("add", [h, t], {}, f"res{i}", f"h{i}")
    heads, = b.add("reshape", [h], {"shape": ["N", 2, 4, 5]}, "heads", "heads")
    return lower_integer.run(b.build([heads, h], None))


def test_layout_fires():
    before = block_graph()
    assert layout.count_transposes(before) == 4
    after = layout.run(before)
    verify(after, "layout")
    # into token-major: the first layer's uint8 input and the first neuron's spikes for the
    # residual; none between the layers (their outputs, the neurons and the residual stay
    # token-major); back to the logical layout for each of the two graph outputs
    assert layout.count_transposes(after) == 4
    ops = [n.op for n in after.nodes]
    assert ops.index("transpose", ops.index("int_matmul")) > ops.index("int_matmul", 4)
    text = str(after)
    assert "%heads: f32[N,5,2,4] = reshape(" in text  # the channel split kept token-major
    assert "%fc1.beta: f32[1,1,8] = const" in text


def test_layout_near_miss():
    g = spike_layer_graph(real_input=True)  # no transposes to place
    assert layout.run(g) is g


def test_layout_preserves_meaning_exactly():
    for before in (block_graph(), lower_integer.run(spike_layer_graph())):
        after = layout.run(before)
        verify(after, "layout")
        x = RNG.normal(0.4, 1.0, (3, *before.inputs[0].shape[1:])).astype(np.float32)
        for e, g in zip(run(before, [x]), run(after, [x])):
            assert e.shape == g.shape and np.array_equal(e, g)


def test_layout_reshape_groups():
    groups = layout._groups
    assert groups(("N", 8, 5), ("N", 2, 4, 5)) == [((0,), (0,)), ((1,), (1, 2)), ((2,), (3,))]
    assert groups(("4N", 6, 4), ("4N", 24)) == [((0,), (0,)), ((1, 2), (1,))]
    assert groups(("N", 6, 4), ("N", 4, 6)) == [((0,), (0,)), ((1, 2), (1, 2))]  # one block
    assert groups(("N", 4), ("4N",)) is None  # the batch mixed with a static axis


# ----------------------------------------------------------------------------- the family

def spike_input_layers(program, shape) -> int:
    """Quantized conv/linear layers and matmuls whose input held only integers that fit
    uint8/int8 when the float-kernel compile ran on random inputs (observed, not analysed).
    Grouped convs (depthwise) are not GEMMs and stay float by design (docs/onnx.md)."""
    result = compile_program(program, Options(integer_kernels=False))
    graph = result.lowered
    producers = graph.producers()
    seen: dict = {}

    def observe(node, ins, outs, step):
        if node.op in ("conv", "linear", "shift_conv", "shift_linear"):
            dq = producers.get(node.inputs[1])
            if not (node.op.startswith("shift") or (dq is not None and dq.op == "dequantize")):
                return
            if node.attrs.get("groups", 1) > 1:
                return
            operands = ins[:1]
        elif node.op == "matmul":
            operands = ins
        else:
            return
        fits = all(np.array_equal(np.round(a), a) and a.min() >= -128 and a.max() <= 255 and
                   not (a.min() < 0 and a.max() > 127) for a in operands)
        seen[node] = seen.get(node, True) and fits

    x = np.random.default_rng(3).random((2, *shape[1:]), dtype=np.float32)
    run(graph, [x], observe)
    return sum(seen.values())


def kernels(data: bytes, tmp_path) -> dict[str, int]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node:
        if node.op_type in INTEGER_KERNELS + FLOAT_KERNELS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def dyadic(shape, seed: int) -> np.ndarray:
    """Inputs k/16 in [0, 1]: a float layer on them (the first conv, on integer weights
    after fold_scales) sums exactly in any order, so ONNX Runtime and the interpreter can be
    compared bit for bit."""
    return (np.random.default_rng(seed).integers(0, 17, shape) / 16).astype(np.float32)


def check_integer(model, shape, tmp_path) -> None:
    program = zoo.export(model, shape)  # once: the export is most of this check's time
    expected = spike_input_layers(program, shape)
    result = compile_program(program)
    graph = result.lowered
    lowered = sum(n.op == "int_matmul" for n in graph.nodes)
    floating = sum(n.op in ("conv", "linear", "matmul", "shift_conv", "shift_linear")
                   for n in graph.nodes)
    assert lowered == expected
    found = kernels(result.data, tmp_path)
    assert sum(found.get(k, 0) for k in INTEGER_KERNELS) == lowered, found
    assert set(found) - set(FLOAT_KERNELS) <= {"MatMulIntegerToFloat", "MatMulInteger"}
    assert sum(found.get(k, 0) for k in FLOAT_KERNELS) == floating, found
    x = dyadic((3, *shape[1:]), 5)
    session = parity.onnx_session(result.data)
    got = session.run(None, {session.get_inputs()[0].name: x})
    # a head after an average over a window that is not a power of two sums rounded values:
    # its logits within float rounding; everything else bit for bit
    rounded = any(n.op in ("avg_pool", "reduce_mean") for n in graph.nodes)
    for e, g in zip(run(graph, [x]), got):
        if rounded:
            np.testing.assert_allclose(e, g, rtol=1e-5, atol=1e-6)
        else:
            assert np.array_equal(e, g)
    debug = compile_program(program, Options(debug_outputs=True))
    reference = parity.interp_trace(debug.lowered, x)
    spikes = parity.onnx_trace(parity.onnx_session(debug.data), x).spikes
    assert spikes.keys() == reference.spikes.keys()
    assert any(0 < s.mean() < 1 for s in spikes.values())
    for layer, s in spikes.items():
        assert np.array_equal(s, reference.spikes[layer]), layer


@pytest.mark.parametrize("name", sorted(set(zoo.MODELS) - zoo.BIG))
def test_spike_layers_run_on_integer_kernels(name, tmp_path):
    model, shape = zoo.MODELS[name](T=4)
    snnc.quantize(model, zoo.heterogeneous(model))
    check_integer(model, shape, tmp_path)


def test_spikformer_runs_on_integer_kernels(quantized_spikformer, tmp_path):
    check_integer(quantized_spikformer["model"], (1, 3, 32, 32), tmp_path)


def test_pot_lowering_shift_gives_the_same_outputs():
    """--pot-lowering shift stores PoT codes and decodes them in the graph, PoT-5's three
    int8 digits included; ONNX Runtime folds the decoding at load: the same outputs."""
    model, shape = zoo.MODELS["vgg_bn_maxpool"](T=4)
    config = {name: {"scheme": "pot", "bits": 5 if i % 2 else 3}
              for i, (name, m) in enumerate(model.named_modules())
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    snnc.quantize(model, config)
    program = zoo.export(model, shape)
    default = compile_program(program)
    shifted = compile_program(program, Options(pot_lowering="shift"))
    assert "BitShift" in {n.op_type for n in shifted.model.graph.node}
    assert any(n.op == "int_weights" and n.attrs["digits"] == 3 for n in default.lowered.nodes)
    x = np.random.default_rng(1).random((4, *shape[1:]), dtype=np.float32)
    a, b = (parity.onnx_session(r.data) for r in (default, shifted))
    for p, q in zip(a.run(None, {a.get_inputs()[0].name: x}),
                    b.run(None, {b.get_inputs()[0].name: x})):
        assert np.array_equal(p, q)


# ----------------------------------------------------------------------------- cast_spikes

def unrolled_block():
    return unroll_timesteps.run(lower_integer.run(one_step_block()))


def one_step_block():
    """One step of x -> neuron -> 1x1 conv on its spikes -> neuron, T = 3."""
    from snnc.ir.graph import TimeSpec

    b = Builder()
    x = b.input(("N", 4, 5))
    v0 = b.state(("N", 4, 5), "lif0")
    s, v0n = b.add("neuron", [x, v0], LIF, "lif0", "s")
    b.write(v0, v0n)
    codes = b.const(RNG.integers(-3, 4, (6, 4, 1)), "fc.weight_codes", "i32")
    w, = b.add("dequantize", [codes, b.const(np.ones(6), "fc.scale")],
               {"scheme": "uniform", "bits": 3}, "fc", "w")
    y, = b.add("conv", [s, w], {"stride": [1], "padding": [0], "dilation": [1], "groups": 1},
               "fc", "y")
    v1 = b.state(("N", 6, 5), "lif1")
    t, v1n = b.add("neuron", [y, v1], LIF, "lif1", "t")
    b.write(v1, v1n)
    return b.build([t], TimeSpec(3, ("repeat",), ("stack",)))


def test_cast_spikes_fires():
    before = unrolled_block()
    after = cast_spikes.run(before)
    verify(after, "cast_spikes")
    text = str(after)
    assert "%s.0.t0_u8: u8[N,4,5] = cast(%s.0.t0) to='u8'" in text
    assert "%s.0_u8: u8[3N,4,5] = concat(%s.0.t0_u8, %s.0.t1_u8, %s.0.t2_u8) axis=0" in text
    assert "= cast(%s.0) to='u8'" not in text


def test_cast_spikes_moves_casts_through_copies():
    """Attention's path: the steps joined, reshaped into heads, split into q and k, each
    cast for its GEMM: the casts move up to the neurons, the copies move bytes."""
    b = Builder()
    x = b.input(("N", 8))
    s0, v0 = b.add("neuron", [x, b.const(0.0, "v")], LIF, "lif", "s0")
    s1, _ = b.add("neuron", [x, v0], LIF, "lif", "s1")
    joined, = b.add("concat", [s0, s1], {"axis": 0}, "time", "s")
    heads, = b.add("reshape", [joined], {"shape": ["2N", 2, 4]}, "attn", "heads")
    q, k = b.add("split", [heads], {"axis": 1, "sizes": [1, 1]}, "attn", "qk")
    qb, = b.add("cast", [q], {"to": "u8"}, "attn", "q_u8")
    kb, = b.add("cast", [k], {"to": "u8"}, "attn", "k_u8")
    before = b.build([qb, kb, joined], None)  # the float join is an output too
    after = cast_spikes.run(before)
    verify(after, "cast_spikes")
    ops = [(n.op, n.outputs[0].dtype) for n in after.nodes]
    assert ("split", "u8") in ops and ("reshape", "u8") in ops and ("concat", "u8") in ops
    assert ("concat", "f32") in ops and ("reshape", "f32") not in ops  # the float join stays
    assert [n.inputs[0].hint for n in after.nodes if n.op == "cast"] == ["s0.0", "s1.0"]
    x = RNG.normal(0.6, 1.0, (3, 8)).astype(np.float32)
    for e, g in zip(run(before, [x]), run(remove_dead_nodes.run(after), [x])):
        assert e.dtype == g.dtype and np.array_equal(e, g)


def test_cast_spikes_near_miss():
    g = lower_integer.run(spike_layer_graph(real_input=True))  # no concat of spikes
    assert cast_spikes.run(g) is g


def test_cast_spikes_preserves_meaning_exactly():
    before = unrolled_block()
    after = remove_dead_nodes.run(cast_spikes.run(before))
    verify(after, "cast_spikes")
    x = RNG.normal(0.6, 1.0, (2, 4, 5)).astype(np.float32)
    expected, got = run(before, [x])[0], run(after, [x])[0]
    assert 0 < expected.mean() < 1 and np.array_equal(expected, got)
    # in ONNX the neurons make uint8 spikes themselves: no Cast from float to uint8 remains
    from snnc.backend.onnx_emit import to_onnx

    model = to_onnx(layout.run(after))
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert {a.i for n in casts for a in n.attribute} == {onnx.TensorProto.UINT8,
                                                         onnx.TensorProto.FLOAT}
    produced = {o: n for n in model.graph.node for o in n.output}
    for n in casts:
        if n.attribute[0].i == onnx.TensorProto.UINT8:
            assert produced[n.input[0]].op_type == "GreaterOrEqual"
