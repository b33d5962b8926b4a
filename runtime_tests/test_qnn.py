"""`--target qnn` (docs/qnn.md) on the CPU: the form Qualcomm's HTP takes whole. The HTP
emulator itself runs in runtime_tests/qnn_check.py (not in this suite). Here: the QNN form of
both samples agrees with its PyTorch source spike for spike under the rounding rule on the
whole test split; it holds only the ops and types the emulator was measured to run exactly;
--batch 1 computes what the symbolic batch does; what it cannot lower is refused clearly."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from test_cli import assert_clean_failure, snnc

from snnc.check import accuracy
from snnc.check.parity import onnx_session
from snnc.driver import compile_program
from snnc.files import loader
from snnc.files.data import load_data
from snnc.options import Options

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")
# each sample's input codes: pixels k/256 in [0, 1]; event counts (at most 24 in the data)
INPUTS = {"digits": (1 / 256, 256), "digits_events": (1.0, 255)}


@pytest.fixture(scope="module", params=sorted(INPUTS))
def qnn(request):
    name = request.param
    here = os.path.join(SAMPLES, name)
    program = loader.load_program(os.path.join(here, "quantized.pt"))
    scale, top = INPUTS[name]
    opts = Options(target="qnn", input_scale=scale, input_max=top, debug_outputs=True)
    x, y = load_data(os.path.join(here, "test.npz"))
    return {"name": name, "program": program, "opts": opts, "x": x, "y": y,
            "result": compile_program(program, opts)}


def test_spikes_agree_with_the_source_on_the_whole_test_split(qnn):
    """Every neuron layer at every step, 360 samples: spikes differ only where PyTorch's
    membrane lies within float rounding of the threshold (docs/testing.md), top-1 never."""
    v = accuracy.verify(qnn["program"], onnx_session(qnn["result"].data), qnn["x"], qnn["y"])
    assert len(v.spike_agreement_per_layer) == 15
    assert min(v.firing_rates.values()) > 0.0  # every layer fires: the comparison means something
    assert not v.spike_problems, v.spike_problems[:3]
    assert v.spike_agreement >= 0.9995
    assert v.rounding_perturbed <= len(qnn["x"]) // 20
    assert v.top1_agreement == 1.0
    # the outputs leave HTP's fp16 range only as float: kept to 15 bits of their bound
    assert v.max_abs_diff_unperturbed < 0.01


def test_holds_only_what_htp_runs_exactly(qnn):
    """The ops and types measured on the HTP emulator (docs/qnn.md): int32 arithmetic and
    data movement, QDQ GEMMs of uint8 activations and per-tensor int8 weights into int16;
    no Pad, BitShift or integer GEMM ops; quantized tensors only between Q and DQ."""
    model = onnx.shape_inference.infer_shapes(onnx.ModelProto.FromString(qnn["result"].data))
    g = model.graph
    ops = {n.op_type for n in g.node}
    assert not ops & {"Pad", "BitShift", "MatMulInteger", "ConvInteger", "QLinearMatMul"}
    assert ops >= {"Conv", "MatMul", "QuantizeLinear", "DequantizeLinear", "GreaterOrEqual"}
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    producer = {o: n for n in g.node for o in n.output}
    quantized = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.INT16,
                 onnx.TensorProto.UINT16}
    for n in g.node:
        if n.op_type == "Cast":  # no raw cast into or out of a quantized type
            assert n.attribute[0].i not in quantized, n.name
            assert types.get(n.input[0]) not in quantized, n.name
        if n.op_type in ("Conv", "MatMul"):  # every GEMM operand comes from a DQ
            assert all(producer[i].op_type == "DequantizeLinear" for i in n.input), n.name
        if n.op_type == "DequantizeLinear" and types.get(n.input[0]) == onnx.TensorProto.INT8:
            scale = next(t for t in g.initializer if t.name == n.input[1])
            assert list(scale.dims) == [], f"{n.name}: per-channel weights (HTP: garbage)"
        for out in n.output:  # quantized tensors feed DQ only
            if types.get(out) in quantized and n.op_type == "QuantizeLinear":
                for user in (u for u in g.node if out in u.input):
                    assert user.op_type == "DequantizeLinear", (n.name, user.op_type)
    gemm_outputs = [producer[n.input[0]] for n in g.node if n.op_type == "QuantizeLinear"
                    and types.get(n.output[0]) == onnx.TensorProto.INT16]
    assert gemm_outputs and all(p.op_type in ("Conv", "MatMul", "MaxPool") for p in gemm_outputs)


def test_batch_1_computes_what_the_symbolic_batch_does(qnn):
    """--batch 1, the file HTP takes, against the symbolic-batch form on 8 samples."""
    from dataclasses import replace

    static = compile_program(qnn["program"], replace(qnn["opts"], batch=1))
    model = onnx.ModelProto.FromString(static.data)
    dims = [d for v in [*model.graph.input, *model.graph.output]
            for d in v.type.tensor_type.shape.dim]
    assert all(d.HasField("dim_value") for d in dims)
    one, any_batch = onnx_session(static.data), onnx_session(qnn["result"].data)
    x = qnn["x"][:8]
    for i in range(len(x)):
        xi = x[i:i + 1].swapaxes(0, 1).copy() if x.ndim == 5 else x[i:i + 1]
        a = one.run(None, {one.get_inputs()[0].name: xi})
        b = any_batch.run(None, {any_batch.get_inputs()[0].name: xi})
        assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_inputs_beyond_the_codes_saturate(qnn):
    """An input outside [0, input_max * scale] is clamped to it (the bounds every layer was
    checked against then hold): x * 4 and -x read as the clamped codes."""
    session = onnx_session(qnn["result"].data)
    scale, top = INPUTS[qnn["name"]]
    x = qnn["x"][:2]
    x = x.swapaxes(0, 1).copy() if x.ndim == 5 else x
    name = session.get_inputs()[0].name
    clamped = np.clip(np.round(x * 4 / scale), 0, top) * scale
    np.testing.assert_array_equal(session.run(None, {name: (x * 4).astype(np.float32)})[0],
                                  session.run(None, {name: clamped.astype(np.float32)})[0])
    np.testing.assert_array_equal(session.run(None, {name: -x})[0],
                                  session.run(None, {name: np.zeros_like(x)})[0])


def test_cli_compiles_and_verifies_the_qnn_form(tmp_path):
    out = tmp_path / "digits_qnn.onnx"
    r = snnc("compile", os.path.join(SAMPLES, "digits", "quantized.pt"), "-o", str(out),
             "--target", "qnn", "--input-scale", "0.00390625", "--input-max", "256",
             "--verify", os.path.join(SAMPLES, "digits", "test.npz"))
    assert r.returncode == 0, r.stderr
    assert "QNN form" in r.stdout and "top-1 agreement      100.00 %" in r.stdout
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["snnc.target"] == "qnn"


@pytest.mark.parametrize("flags, says", [
    (["--target", "qnn"], "--target qnn needs --input-scale"),
    (["--input-scale", "1"], "add --target qnn or drop them"),
    (["--target", "qnn", "--input-scale", "1", "--ort"], "cannot go with --ort"),
    (["--target", "qnn", "--input-scale", "1", "--input-max", "1024"], "1<=x<=1023"),
])
def test_cli_refuses_what_cannot_go_together(tmp_path, flags, says):
    out = tmp_path / "m.onnx"
    r = snnc("compile", os.path.join(SAMPLES, "digits", "quantized.pt"), "-o", str(out),
             *flags)
    assert_clean_failure(r, str(out), says)


def test_a_float_model_is_refused_naming_its_layer(tmp_path):
    """The float (unquantized) sample has real-valued weights HTP would round: refused with
    the layer and what to do, nothing written."""
    out = tmp_path / "m.onnx"
    r = snnc("compile", os.path.join(SAMPLES, "digits", "float.pt"), "-o", str(out),
             "--target", "qnn", "--input-scale", "0.00390625", "--input-max", "256")
    assert_clean_failure(r, str(out), "real-valued weights", "net.patch_embed.stages.0",
                         "without --target qnn")


@pytest.mark.parametrize("name", ["qkformer_small", "spikformer_small", "plif_tau3_nodecay",
                                  "vreset_nonzero", "single_step_mixed"])
def test_zoo_models_agree_with_the_source(name):
    """Quantized zoo models (docs/testing.md) on inputs of k/256: QKFormer's token attention
    (an integer sum into a leaky neuron, a max pool over int32 sums, a spike mask product),
    Spikformer's attention (a spike matmul summing over more than HTP's exact 1024, split),
    PLIF's leak held as float32(1/3), BatchNorms left unfolded by a non-zero v_reset (and
    membranes starting there), a single-step model's mean over time (a division)."""
    import zoo

    import snnc

    model, shape = zoo.MODELS[name](T=4)
    snnc.quantize(model, zoo.heterogeneous(model))
    zoo.check_firing(model, shape)
    program = zoo.export(model, shape)
    result = compile_program(program, Options(target="qnn", input_scale=1 / 256,
                                              input_max=256, debug_outputs=True))
    x = (np.random.default_rng(0).integers(0, 257, (8, *shape[1:])) / 256).astype(np.float32)
    v = accuracy.verify(program, onnx_session(result.data), x, None)
    assert not v.spike_problems, v.spike_problems[:3]
    assert v.spike_agreement >= 0.999 and v.rounding_perturbed <= 1
    assert v.top1_agreement == 1.0


def test_a_residual_add_of_different_units_is_refused_with_why():
    """A BatchNorm'd branch plus its shortcut: the two sides carry different real scales per
    channel, which integers cannot add exactly. Refused naming the add and why."""
    import zoo

    import snnc
    from snnc.backend.onnx_qnn import Refused

    model, shape = zoo.MODELS["resnet_basic"](T=4)
    snnc.quantize(model, zoo.heterogeneous(model))
    with pytest.raises(Refused, match=r"blocks\.0 \(add\): adds values kept in different "
                                      r"units .* Compile without --target qnn"):
        compile_program(zoo.export(model, shape), Options(target="qnn", input_scale=1 / 256,
                                                          input_max=256))


def _exact(model, shape, config, scale, top, n):
    """model quantized with config, its QNN form against PyTorch on n inputs of the grid."""
    import zoo

    import snnc

    snnc.quantize(model.eval(), config)
    zoo.check_firing(model, shape, min_layers=1)
    program = zoo.export(model, shape)
    result = compile_program(program, Options(target="qnn", input_scale=scale, input_max=top,
                                              debug_outputs=True))
    grid = np.random.default_rng(0).integers(0, top + 1, (n, *shape[1:])) * scale
    v = accuracy.verify(program, onnx_session(result.data), grid.astype(np.float32), None)
    assert not v.spike_problems, v.spike_problems[:3]
    assert v.rounding_perturbed <= 1 and v.top1_agreement == 1.0


def _conv_bn_lif(cin: int, cout: int, kernel: int):
    """Conv (no bias) -> BatchNorm -> LIF over 4 steps -> linear head on 8x8 inputs,
    BatchNorms set so that the neurons fire (zoo.make_firing)."""
    import torch
    import zoo
    from spikingjelly.activation_based import layer, neuron

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = layer.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False,
                                     step_mode="m")
            self.bn = layer.BatchNorm2d(cout, step_mode="m")
            self.sn = neuron.LIFNode(step_mode="m")
            self.fc = layer.Linear(cout * 8 * 8, 3, step_mode="m")

        def forward(self, x):
            x = x.unsqueeze(0).repeat(4, 1, 1, 1, 1)
            return self.fc(self.sn(self.bn(self.conv(x))).flatten(2)).mean(0)

    torch.manual_seed(0)
    return zoo.make_firing(Net(), (1, cin, 8, 8), bias=0.5)


EIGHT_BITS = {"conv": {"scheme": "uniform", "bits": 8}, "fc": {"scheme": "uniform", "bits": 8}}


def test_a_negative_folded_scale_keeps_the_threshold_test():
    """A BatchNorm with negative gamma folds into a negative per-channel scale; its sign goes
    into the weights (a negative unit would turn Z >= t around on those channels)."""
    import torch

    model = _conv_bn_lif(3, 8, 3)
    with torch.no_grad():
        model.bn.weight[::2] = -1.0
    _exact(model, (1, 3, 8, 8), EIGHT_BITS, 1 / 256, 256, 8)


@pytest.mark.parametrize("v_reset", [None, -0.3])
def test_if_resets_by_real_amounts_exactly(v_reset):
    """IF neurons after bias-free layers, 16 steps: the soft reset's theta and a non-zero
    v_reset are real amounts in the integer sum's unit; the input gets fraction bits first."""
    import torch
    from spikingjelly.activation_based import layer, neuron

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = layer.Linear(16, 32, bias=False, step_mode="m")
            self.sn1 = neuron.IFNode(v_reset=v_reset, step_mode="m")
            self.fc2 = layer.Linear(32, 32, bias=False, step_mode="m")
            self.sn2 = neuron.IFNode(v_reset=v_reset, step_mode="m")
            self.fc3 = layer.Linear(32, 4, bias=False, step_mode="m")
            with torch.no_grad():
                self.fc1.weight.mul_(3)
                self.fc2.weight.mul_(3)

        def forward(self, x):
            x = x.unsqueeze(0).repeat(16, 1, 1)
            return self.fc3(self.sn2(self.fc2(self.sn1(self.fc1(x))))).mean(0)

    torch.manual_seed(0)
    _exact(Net(), (1, 16), {"fc*": {"scheme": "uniform", "bits": 8}}, 1 / 16, 16, 64)


def test_an_8_bit_7x7_conv_splits_its_kernel():
    """One input channel's 7x7 8-bit kernel sums beyond HTP's exact 1024: it is split into
    convs over parts of the kernel (the rest zero), each within it."""
    _exact(_conv_bn_lif(2, 4, 7), (1, 2, 8, 8), EIGHT_BITS, 1 / 256, 256, 8)
