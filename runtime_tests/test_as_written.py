"""Networks written the way published code writes them, compiled and run in ONNX Runtime
against PyTorch (the rounding rule of docs/testing.md), plain and heterogeneous-quantized:
in-place writes (`out += identity`, `relu(inplace=True)`, slice assignment into zeros and
into an activation, writes through a transposed view, a view taken before a write and read
after it), constants computed in forward from parameters and buffers (a 1/sqrt scale,
weight standardization of a (quantized) conv weight, relative-position tables, a border
of per-channel values written into a padded activation), padding of every mode,
constant-index gathers (roll, flip, index_select, strided slices), nearest and bilinear
resampling, einsum and bmm attention. The integer lowering still applies
after padding and gathers of spikes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zoo
from spikingjelly.activation_based import layer, neuron
from torch import nn

import snnc
from snnc.check import parity as H
from snnc.driver import compile_program
from snnc.options import Options

T = 2
SHAPE = (1, 2, 8, 8)


class Base(nn.Module):
    """stem: image -> [T, B, C, 8, 8] spikes; head: spikes -> logits averaged over time."""

    def __init__(self, C: int = 8):
        super().__init__()
        self.conv1 = layer.Conv2d(2, C, 3, padding=1, step_mode="m")
        self.bn1 = layer.BatchNorm2d(C, step_mode="m")
        self.sn1 = neuron.LIFNode(step_mode="m")
        self.conv2 = layer.Conv2d(C, C, 3, padding=1, step_mode="m")
        self.bn2 = layer.BatchNorm2d(C, step_mode="m")
        self.sn2 = neuron.LIFNode(step_mode="m")
        self.fc = layer.Linear(C, 5, step_mode="m")

    def stem(self, x):
        return self.sn1(self.bn1(self.conv1(x.unsqueeze(0).repeat(T, 1, 1, 1, 1))))

    def head(self, x):
        return self.fc(x.mean((3, 4))).mean(0)


class Writes(Base):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU(inplace=True)
        self.register_buffer("rate", torch.tensor(0.5))

    def forward(self, x):
        y = self.stem(x)
        out = self.bn2(self.conv2(y))
        out += y  # aten.add_
        out = self.act(out)
        out.mul_(1 / torch.sqrt(self.rate * 2)).sub_(0.25)  # a scale from a buffer
        z = torch.zeros_like(out)
        z[:, :, 1:5] = out[:, :, 0:4]  # into a zero fill
        v = out[:, :, 0:4]  # a view read after the writes below
        out[:, :, 6] = 0.25
        out.transpose(3, 4)[:, :, :, 0] = z[:, :, :, :, 1].mean(2, keepdim=True)
        return self.head(self.sn2(out + z + torch.cat([v, v], 2)))


class Resample(Base):
    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d(1)
        self.conv2 = layer.Conv2d(8, 8, 3, step_mode="m")

    def forward(self, x):
        y = self.stem(x)
        s = y.flatten(0, 1)
        shuffled = (torch.roll(s, 1, 2) + s.flip(3) + s[:, :, ::2].repeat_interleave(2, 2)
                    + s.index_select(1, torch.arange(8).flip(0)))
        small = F.avg_pool2d(s, 2)
        up = F.interpolate(small, scale_factor=2, mode="nearest") + F.interpolate(
            small, size=(8, 8), mode="bilinear", align_corners=False)
        padded = self.pad(s) + F.pad(shuffled + up, (1, 1, 1, 1), mode="reflect") + F.pad(
            s, (1, 1, 1, 1), mode="replicate")
        border = F.pad(s, [1] * 4)  # Meta-SpikeFormer's BNAndPadLayer: BN's value at 0
        values = (self.bn2.bias - self.bn2.running_mean * self.bn2.weight / torch.sqrt(
            self.bn2.running_var + self.bn2.eps)).view(1, -1, 1, 1)
        border[:, :, 0:1, :] = values
        border[:, :, :, -1:] = values
        z = self.conv2(self.pad(s).unflatten(0, (T, -1)))  # spikes, padded: integer GEMM
        mixed = (padded + border).unflatten(0, (T, -1))[..., 0:8, 2:10]
        return self.head(self.sn2(self.bn2(z) + mixed))


class Products(Base):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(15) * 0.1)
        self.register_buffer("idx", torch.arange(8)[:, None] - torch.arange(8)[None, :] + 7)
        self.sn3 = neuron.LIFNode(step_mode="m")

    def forward(self, x):
        y = self.stem(x)
        T_, B, C, H, W = y.shape
        w = self.conv2.weight  # weight standardization (of the quantized weight, quantized)
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), keepdim=True) + 1e-5).sqrt()
        z = F.conv2d(y.flatten(0, 1), w, self.conv2.bias, padding=1).unflatten(0, (T, -1))
        t = y.flatten(3)[..., :8]  # [T, B, C, 8] tokens
        bias = self.table[self.idx.reshape(-1)].reshape(8, 8)  # a relative-position table
        a = torch.einsum("tbcn,tbcm->tbnm", t, t) * 0.75 + bias
        o = torch.einsum("tbnm,tbcm->tbcn", self.sn3(a), t)
        b = torch.bmm(t.flatten(0, 1).transpose(1, 2), t.flatten(0, 1)).unflatten(0, (T, -1))
        mixed = o.unsqueeze(-1) + b.mean(-1).unsqueeze(2).unsqueeze(-1)
        return self.head(self.sn2(self.bn2(z) + mixed.mean(-1, keepdim=True)))


MODELS = {"writes": Writes, "resample": Resample, "products": Products}


@pytest.mark.parametrize("quantized", [False, True], ids=["plain", "quantized"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_as_written_matches_pytorch(name, quantized):
    torch.manual_seed(0)
    model = zoo.make_firing(MODELS[name]().eval(), SHAPE)
    if quantized:
        snnc.quantize(model, zoo.heterogeneous(model))
    result = compile_program(zoo.export(model, SHAPE), Options(debug_outputs=True))
    x = np.random.default_rng(7).random((3, *SHAPE[1:]), dtype=np.float32)
    reference = H.torch_trace(zoo.export(model, (3, *SHAPE[1:])), x)
    got = H.onnx_trace(H.onnx_session(result.data), x)
    comparison = zoo.compared(reference, got)
    assert all(r > 0 for r in comparison.layers_firing.values()), comparison.layers_firing
    assert any(0.01 <= r <= 0.6 for r in comparison.layers_firing.values())
    if quantized and name == "resample":  # conv2 reads padded spikes: still integer
        ops = {n.op_type for n in result.model.graph.node}
        assert "Pad" in ops and "Gather" in ops
        assert any(n.op in ("int_matmul",) for n in result.lowered.nodes), \
            "the conv after a pad of spikes lost its integer lowering"
