"""Float islands (docs/ops.md): the ops of a model that are not spike-driven (LayerNorm,
GroupNorm, softmax, GELU, SiLU, sigmoid, exp, ...) compile as float ops between the
spike-driven layers, which still lower to integer GEMMs.

Real SpikingJelly models that fire, each with islands in another place: a hybrid spiking
transformer block (LayerNorm before attention, softmax attention, a layer-scale
multiplier, a non-spiking readout), a conv SNN with each activation before a neuron, a
conv SNN normalized by GroupNorm, and readouts after the mean over time. Each compiles
plain and heterogeneous-quantized, runs in ONNX Runtime at batch 1 and 4 from one file,
and is compared with PyTorch under the rounding rule (docs/testing.md). The integer
lowering must have happened on exactly the layers whose input is spikes (found by running
the PyTorch model), and every island op must run in float. Normalizing over the time or
batch axis is refused, saying why.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import onnx
import pytest
import torch
import zoo
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import snnc
from snnc import UnsupportedOpError
from snnc.check import parity as H
from snnc.driver import compile_program
from snnc.frontend.lift import lift
from snnc.ir import interp
from snnc.ir.ops import FLOAT_ISLANDS
from snnc.options import Options

T = 2
IMAGE = (1, 3, 16, 16)
F = nn.functional


def _lif() -> nn.Module:
    return neuron.LIFNode(step_mode="m")


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Module:
    return layer.SeqToANNContainer(nn.Conv2d(cin, cout, k, stride, k // 2 if k == 3 else 0),
                                   nn.BatchNorm2d(cout))


def _tokens_bn(bn: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d over the channels of [T, B, N, C] tokens (Spikformer's way)."""
    return bn(y.flatten(0, 1).transpose(1, 2)).transpose(1, 2).unflatten(0, (y.shape[0], -1))


# ---------------------------------------------------------------- models


class Hybrid(nn.Module):
    """A hybrid spiking transformer block on 16 tokens: conv stem -> LIF; LayerNorm over
    `norm` trailing axes; q, k, v Linear-BN-LIF; softmax(q k^T * scale) over `dim` times v;
    proj -> LIF; a layer-scale multiplier on the residual, LIF; a spiking MLP; a
    non-spiking readout (mean over time and tokens -> LayerNorm -> Linear)."""

    SPIKE_MATMULS = {"<model>"}  # q @ k^T: spikes times spikes

    def __init__(self, norm: int = 1, dim: int = -1, channels: int = 16, heads: int = 2):
        super().__init__()
        c = channels
        self.heads, self.dim, self.scale = heads, dim, 0.25
        self.stem, self.stem_lif = _conv_bn(3, c, 4, 4), _lif()
        self.norm1 = nn.LayerNorm([16, c][-norm:])
        self.q, self.k, self.v, self.proj = (nn.Linear(c, c) for _ in range(4))
        self.q_bn, self.k_bn, self.v_bn, self.proj_bn = (nn.BatchNorm1d(c) for _ in range(4))
        self.q_lif, self.k_lif, self.v_lif, self.proj_lif = (_lif() for _ in range(4))
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, c))
        self.res_lif = _lif()
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.bn1, self.bn2 = nn.BatchNorm1d(2 * c), nn.BatchNorm1d(c)
        self.lif1, self.lif2 = _lif(), _lif()
        self.head_norm, self.head = nn.LayerNorm(c), nn.Linear(c, 10)

    def forward(self, x):
        s = self.stem_lif(self.stem(x.unsqueeze(0).repeat(T, 1, 1, 1, 1)))
        tokens = s.flatten(3).transpose(-1, -2)  # [T, B, N, C]
        h = self.norm1(tokens)
        q, k, v = (lif(_tokens_bn(bn, lin(h)).unflatten(-1, (self.heads, -1)).transpose(2, 3))
                   for lin, bn, lif in ((self.q, self.q_bn, self.q_lif),
                                        (self.k, self.k_bn, self.k_lif),
                                        (self.v, self.v_bn, self.v_lif)))
        weights = (q @ k.transpose(-2, -1) * self.scale).softmax(self.dim)
        o = (weights @ v).transpose(2, 3).flatten(3)
        o = self.proj_lif(_tokens_bn(self.proj_bn, self.proj(o)))
        r = self.res_lif(tokens + self.gamma * o)
        m = self.lif2(_tokens_bn(self.bn2, self.fc2(self.lif1(_tokens_bn(self.bn1,
                                                                         self.fc1(r))))))
        return self.head(self.head_norm(m.mean(0).mean(1)))


class ActNet(nn.Module):
    """conv-BN-LIF, conv-BN -> `act` (scaled by `gain`) -> LIF, conv-BN-LIF, a Linear head
    averaged over time: the activation is an island between a spike-input conv and a
    neuron."""

    SPIKE_MATMULS: set = set()

    def __init__(self, act, gain: float = 1.0):
        super().__init__()
        self.act, self.gain = act, gain
        self.conv1, self.conv2, self.conv3 = _conv_bn(3, 8), _conv_bn(8, 8), _conv_bn(8, 8)
        self.lif1, self.lif2, self.lif3 = _lif(), _lif(), _lif()
        self.pool = layer.MaxPool2d(2, 2, step_mode="m")
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        s = self.pool(self.lif1(self.conv1(x.unsqueeze(0).repeat(T, 1, 1, 1, 1))))
        y = self.act(self.conv2(s))
        s = self.lif2(y * self.gain if self.gain != 1.0 else y)
        s = self.lif3(self.conv3(s))
        return self.fc(s.flatten(2)).mean(0)


class GroupNet(nn.Module):
    """conv-GroupNorm-LIF twice (time flattened into the batch, as SeqToANNContainer does),
    a pooled Linear head."""

    SPIKE_MATMULS: set = set()

    def __init__(self, groups: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.gn1, self.gn2 = nn.GroupNorm(groups, 8), nn.GroupNorm(groups, 8)
        for gn in (self.gn1, self.gn2):
            nn.init.constant_(gn.bias, 1.0)
            nn.init.constant_(gn.weight, 1.5)
        self.lif1, self.lif2 = _lif(), _lif()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
        s = self.lif1(self.gn1(self.conv1(x.flatten(0, 1))).unflatten(0, (T, -1)))
        s = self.lif2(self.gn2(self.conv2(s.flatten(0, 1))).unflatten(0, (T, -1)))
        return self.fc(s.mean((3, 4))).mean(0)


class Readout(nn.Module):
    """A conv SNN whose readout is not spiking: the mean over time of the last spikes, then
    `head` (LayerNorm -> Linear, Linear -> log_softmax, ...)."""

    SPIKE_MATMULS: set = set()

    def __init__(self, head: str):
        super().__init__()
        self.conv1, self.conv2 = _conv_bn(3, 8), _conv_bn(8, 8)
        self.lif1, self.lif2 = _lif(), _lif()
        self.pool = layer.MaxPool2d(4, 4, step_mode="m")
        self.norm, self.fc = nn.LayerNorm(8 * 4 * 4), nn.Linear(8 * 4 * 4, 10)
        self.head_kind = head

    def forward(self, x):
        s = self.pool(self.lif2(self.conv2(self.lif1(self.conv1(
            x.unsqueeze(0).repeat(T, 1, 1, 1, 1))))))
        rate = s.mean(0).flatten(1)  # [B, 128]: firing rates, real-valued
        if self.head_kind == "layernorm_linear":
            return self.fc(self.norm(rate))
        if self.head_kind == "linear_log_softmax":
            return self.fc(rate).log_softmax(-1)
        return torch.sigmoid(self.fc(torch.sqrt(rate + 1.0)))  # "math"


# ---------------------------------------------------------------- the family

ACTIVATIONS = {  # name -> (activation, gain before the neuron)
    "gelu": (F.gelu, 2.0),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), 2.0),
    "silu": (F.silu, 2.0),
    "sigmoid": (torch.sigmoid, 2.0),
    "tanh": (torch.tanh, 2.0),
    "hardtanh": (F.hardtanh, 2.0),
    "relu6": (F.relu6, 1.0),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), 1.0),
    "elu": (F.elu, 1.0),
    "hardswish": (F.hardswish, 2.0),
    "hardsigmoid": (F.hardsigmoid, 2.0),
    "exp": (torch.exp, 1.0),
    "log": (lambda x: torch.log(x.abs() + 0.5), 2.0),
    "sqrt_abs": (lambda x: x.abs().sqrt(), 2.0),
    "rsqrt": (lambda x: torch.rsqrt(x * x + 0.25), 1.0),
    "reciprocal": (lambda x: torch.reciprocal(x.abs() + 0.5), 1.0),
    "pow": (lambda x: x.pow(3) + torch.square(x), 1.0),
    "neg": (lambda x: -x + 1.0, 1.0),
    "erf": (torch.erf, 2.0),
}

MODELS = {
    **{f"hybrid_norm{n}_softmax{d}": (lambda n=n, d=d: Hybrid(norm=n, dim=d))
       for n, d in ((1, -1), (2, -1), (1, -2))},
    **{f"act_{name}": (lambda a=a, g=g: ActNet(a, g)) for name, (a, g) in ACTIVATIONS.items()},
    **{f"groupnorm_{g}": (lambda g=g: GroupNet(g)) for g in (1, 2, 8)},
    **{f"readout_{h}": (lambda h=h: Readout(h))
       for h in ("layernorm_linear", "linear_log_softmax", "math")},
}
QUANTIZED = {"hybrid_norm1_softmax-1", "act_gelu", "act_sigmoid", "groupnorm_2",
             "readout_layernorm_linear", "readout_linear_log_softmax"}  # one of each kind


@functools.lru_cache(maxsize=None)
def _built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return zoo.make_firing(MODELS[name](), IMAGE, batches=2)


def build(name: str) -> nn.Module:
    """The named model, made to fire (a fresh copy: quantizing changes it)."""
    return copy.deepcopy(_built(name))


def spike_fed_layers(model: nn.Module) -> set[str]:
    """The conv and linear modules whose input is spikes or spike counts (nonnegative
    integers) on random images, plus the model's spike products (SPIKE_MATMULS): what the
    integer lowering must turn into integer GEMMs."""
    found: dict[str, bool] = {}

    def hook(name, _module, inputs, _out):
        x = inputs[0]
        integer = bool(torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= 255)
        found[name] = found.get(name, True) and integer

    handles = [m.register_forward_hook(lambda m, i, o, n=n: hook(n, m, i, o))
               for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    functional.reset_net(model)
    with torch.no_grad():
        model(torch.rand(4, *IMAGE[1:], generator=torch.Generator().manual_seed(3)))
    for h in handles:
        h.remove()
    functional.reset_net(model)
    return {n for n, integer in found.items() if integer} | model.SPIKE_MATMULS


def integer_gemm_layers(model: onnx.ModelProto) -> set[str]:
    """The modules of the integer GEMMs in a compiled model: MatMulInteger, or MatMul of
    two DequantizeLinear outputs (snnc.backend.onnx_emit's int_matmul)."""
    made_by = {out: node for node in model.graph.node for out in node.output}
    layers = set()
    for node in model.graph.node:
        dq = [made_by.get(i) for i in node.input]
        if node.op_type == "MatMulInteger" or (node.op_type == "MatMul" and all(
                p is not None and p.op_type == "DequantizeLinear" for p in dq)):
            layers.add(node.name.rsplit("/", 1)[0])
    return layers


ISLAND_TYPES = {"LayerNormalization", "GroupNormalization", "Softmax", "LogSoftmax", "Gelu",
                "Sigmoid", "Tanh", "Clip", "LeakyRelu", "Elu", "HardSwish", "HardSigmoid",
                "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "Erf", "Abs", "Neg"}


def check_islands_float(result) -> None:
    """Every island op reads and makes float32 in the ONNX model, and no cast to bytes
    reads an island's output (it is never taken for spikes)."""
    islands = [n for n in result.lowered.nodes if n.op in FLOAT_ISLANDS]
    assert islands, "the model has no float island"
    users = result.lowered.users()
    for node in islands:
        assert node.inputs[0].dtype == node.outputs[0].dtype == "f32", node
        assert not any(u.op == "cast" and u.attrs["to"] in ("u8", "i8")
                       for u in users.get(node.outputs[0], [])), node
    inferred = onnx.shape_inference.infer_shapes(result.model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input]}
    seen = [n for n in result.model.graph.node if n.op_type in ISLAND_TYPES]
    assert seen
    for node in seen:
        assert types.get(node.input[0]) == onnx.TensorProto.FLOAT, node.name


@pytest.mark.parametrize("name, quantized", [(n, False) for n in sorted(MODELS)] +
                         [(n, True) for n in sorted(QUANTIZED)],
                         ids=[f"{n}-plain" for n in sorted(MODELS)] +
                         [f"{n}-quantized" for n in sorted(QUANTIZED)])
def test_islands_compile_and_match_pytorch(name, quantized):
    model = build(name)
    if quantized:
        snnc.quantize(model, zoo.heterogeneous(model))
    result = compile_program(zoo.export(model, IMAGE), Options(debug_outputs=True))
    check_islands_float(result)
    expected = spike_fed_layers(model) if quantized else model.SPIKE_MATMULS
    assert integer_gemm_layers(result.model) == expected
    x = np.random.default_rng(7).random((4, *IMAGE[1:]), dtype=np.float32)
    reference = H.torch_trace(zoo.export(model, (4, *IMAGE[1:])), x)
    session = H.onnx_session(result.data)
    got = H.onnx_trace(session, x)
    comparison = zoo.compared(reference, got)
    assert set(comparison.top1_changed) <= set(comparison.perturbed_samples)
    firing = [r for r in comparison.layers_firing.values() if 0.01 <= r <= 0.6]
    assert len(firing) >= 2, comparison.layers_firing
    for i in range(4):  # batch 1 and batch 4 from the one file: the same spikes
        alone = H.onnx_trace(session, x[i:i + 1])
        for layer_name, spikes in alone.spikes.items():
            assert np.array_equal(got.spikes[layer_name][:, i:i + 1], spikes), layer_name
        np.testing.assert_allclose(got.outputs[0][i:i + 1], alone.outputs[0], rtol=1e-5,
                                   atol=1e-5)
    assert "not spike-driven" in result.summary()


@pytest.mark.parametrize("name", ["hybrid_norm2_softmax-1", "act_gelu", "groupnorm_2"])
def test_frontend_graph_matches_pytorch(name):
    """The interpreter on the frontend's graph (the islands' numpy kernels) against
    PyTorch, under the rounding rule."""
    model = build(name)
    x = np.random.default_rng(5).random((4, *IMAGE[1:]), dtype=np.float32)
    reference = H.torch_trace(zoo.export(model, (4, *IMAGE[1:])), x)
    got = H.interp_trace(lift(zoo.export(model, IMAGE)), x)
    zoo.compared(reference, got)


@pytest.mark.parametrize("opset", [19, 20])
def test_older_opsets_spell_gelu_and_group_norm_out(opset):
    """Below opset 20 GELU is its erf or tanh formula, below 21 GroupNormalization is a
    LayerNormalization over the groups and a per-channel affine: the same numbers."""
    torch.manual_seed(0)

    class Islands(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gn, self.lif = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), _lif()

        def forward(self, x):
            y = self.gn(self.conv(x))
            y = F.gelu(y) + F.gelu(y, approximate="tanh")
            return self.lif(y.unsqueeze(0).repeat(T, 1, 1, 1, 1)).mean(0)

    program = zoo.export(Islands().eval(), IMAGE)
    x = np.random.default_rng(2).random((3, *IMAGE[1:]), dtype=np.float32)
    outputs = {}
    for version in (opset, 21):
        result = compile_program(program, Options(opset=version))
        types = {n.op_type for n in result.model.graph.node}
        assert ("Gelu" in types) == (version >= 20)
        assert ("GroupNormalization" in types) == (version >= 21)
        session = H.onnx_session(result.data)
        outputs[version] = session.run(None, {session.get_inputs()[0].name: x})[0]
        want = interp.run(result.lowered, [x])[0]
        assert np.abs(outputs[version] - want).max() < 1e-5
    assert np.abs(outputs[opset] - outputs[21]).max() < 1e-5


class _Wrong(nn.Module):
    """A spiking layer, then `fn(spikes)` where spikes is [T, B, 4, 8] (or [T*B, 4, 8])."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.lif = fn, _lif()
        self.ln_time = nn.LayerNorm([T, 1, 4, 8])
        self.gn = nn.GroupNorm(2, T)

    def forward(self, x):
        return self.fn(self, self.lif(x.unsqueeze(0).repeat(T, 1, 1, 1)))


@pytest.mark.parametrize("fn, why", [
    (lambda m, s: s.log_softmax(1), r"log_softmax over axis 1, the batch axis .* would mix "
                                    r"the samples"),
    (lambda m, s: s.flatten(0, 1).softmax(0), r"softmax over axis 0, the time axis"),
    (lambda m, s: m.ln_time(s), r"layer norm over axis 0, the time axis"),
], ids=["log_softmax_batch", "softmax_time_x_batch", "layer_norm_time"])
def test_normalizing_over_batch_is_refused(fn, why):
    """Over the batch it would mix the samples; over time and batch merged ([T*B, ...]) or
    time with batch (LayerNorm over [T, 1, ...]) too."""
    with pytest.raises(UnsupportedOpError, match=why) as error:
        lift(zoo.export(_Wrong(fn).eval(), (1, 4, 8)))
    assert "test_islands.py:" in str(error.value)  # the user's line


@pytest.mark.parametrize("fn", [
    lambda m, s: s.softmax(0) * 2,
    lambda m, s: m.gn(s.transpose(0, 1)).transpose(0, 1),
], ids=["softmax_time", "group_norm_time_as_channels"])
def test_normalizing_over_time_runs_on_the_whole_run(fn):
    """A softmax over the steps, or a GroupNorm with the steps as its channels, reads every
    step: lifted on the stacked steps (time_stack, docs/ir.md), as PyTorch computes it."""
    model = _Wrong(fn).eval()
    graph = lift(zoo.export(model, (1, 4, 8)))
    assert any(n.op == "time_stack" for n in graph.nodes)
    x = torch.rand(3, 4, 8, generator=torch.Generator().manual_seed(0)) * 4
    functional.reset_net(model)
    with torch.no_grad():
        want = model(x).numpy()
    functional.reset_net(model)
    assert np.ptp(want) > 0
    np.testing.assert_allclose(interp.run(graph, [x.numpy()])[0], want, atol=1e-5)


def test_report_lists_float_ops_per_layer():
    from snnc.check import report

    result = compile_program(zoo.export(build("hybrid_norm1_softmax-1"), IMAGE))
    data = report.build(result.graph, None, {})
    where = {entry["layer"].split(" ")[0]: entry["ops"] for entry in data["float_ops"]}
    assert where["norm1"] == ["layer_norm"] and where["head_norm"] == ["layer_norm"]
    assert where["<model>"] == ["softmax"]
    assert "not spike-driven (float ops, per layer): norm1 (LayerNorm) test_islands.py:" \
        in report.format_table(data)
    plain = compile_program(zoo.export(ActNet(torch.relu).eval(), IMAGE))  # spikes only
    assert report.build(plain.graph, None, {})["float_ops"] == []
    assert "float ops" not in plain.summary()
    assert math.isfinite(data["totals"]["compression"])


@pytest.mark.parametrize("name", ["hybrid_norm1_softmax-1", "groupnorm_2"])
def test_ort_format_runs_the_islands(name):
    """The .ort for ONNX Runtime Mobile (docs/mobile.md) holds the islands (GroupNorm as
    the ops ONNX Runtime expands it to) and gives the .onnx model's outputs."""
    from snnc.backend import mobile

    model = build(name)
    snnc.quantize(model, zoo.heterogeneous(model))
    result = compile_program(zoo.export(model, IMAGE))
    data, config = mobile.to_ort(result.data)
    x = np.random.default_rng(0).random((3, *IMAGE[1:]), dtype=np.float32)
    outputs = []
    for form in (result.data, data):
        session = H.onnx_session(form)
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert ("Softmax" in config) == name.startswith("hybrid")


def _permuted_island(last: str):
    """x [N, 6, 4] -> transpose -> gelu -> `last` over the 6 axis -> transpose back."""
    from snnc.ir.builder import Builder

    b = Builder()
    x = b.input(("N", 6, 4))
    t, = b.add("transpose", [x], {"perm": [0, 2, 1]})
    g, = b.add("gelu", [t], {"approximate": "none"})
    attrs = {"axis": 2} if last == "softmax" else {"axis": 2, "eps": 1e-5}
    s, = b.add(last, [g], attrs)
    y, = b.add("transpose", [s], {"perm": [0, 2, 1]})
    return b.build([y])


@pytest.mark.parametrize("last, transposes", [("softmax", 0), ("layer_norm", 2)],
                         ids=["fires", "near_miss"])
def test_layout_runs_islands_in_the_layout_they_find(last, transposes):
    """layout: gelu is elementwise and softmax moves its axis with the memory layout, so
    the two transposes go; a layer_norm reads the logical layout, so they stay. The
    values are the same bit for bit and the verifier accepts the result."""
    from snnc.ir.verify import verify
    from snnc.passes import layout

    before = _permuted_island(last)
    after = layout.run(before)
    verify(after, "layout")
    assert layout.count_transposes(after) == transposes
    x = np.random.default_rng(0).standard_normal((3, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(interp.run(before, [x])[0], interp.run(after, [x])[0])
