"""Small SpikingJelly models that really fire, for runtime tests (no downloads).

    MODELS    name -> builder(T=4, seed=0) -> (model, input_shape): an eval-mode nn.Module
              with random weights (torch.manual_seed(seed)) and the shape of one example
              input at batch 1: a static image [1, C, H, W] the model repeats over T steps
              (dvs_batch_first: event frames [1, T, 2, H, W])
    TAKES_T   names whose model depends on T (all of them: every model runs T steps)
    BIG       names with more than ~2 M parameters (the zoo transformers' defaults)
    firing_rates(model, x) -> {neuron module name: fraction of spikes}
    check_firing(model, input_shape) -> rates; AssertionError unless it fires
    make_firing(model, input_shape, ...), export(model, input_shape)
    heterogeneous(model) -> a snnc.quantize config: every conv and linear layer, uniform or
              power-of-two at 3 to 8 bits

A random SpikingJelly net never fires: `make_firing` sets BatchNorm biases and recalibrates
BatchNorm statistics on random images. Families: multi-step conv SNNs written the ways users
write them (SeqToANNContainer, layer.* with step_mode="m", manual flatten(0, 1)/unflatten),
neuron variants, single-step models (a Python loop over T), and the zoo transformers
(Spikformer, Spike-driven Transformer, QKFormer, Max-Former), small and default. Importing
this module registers SpikingJelly's LIF, IF and PLIF ops (needed to load exported programs).
"""

from __future__ import annotations

import importlib
import warnings
import zlib
from functools import partial
from typing import Callable

import numpy as np
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

from snnc.check import parity as H
from snnc.frontend.tracing import traceable

for _op in ("lif", "if_", "plif"):
    importlib.import_module(f"spikingjelly._ops.{_op}")

NEURON_TYPES = (neuron.BaseNode, neuron.SimpleBaseNode)  # what firing_rates hooks
_NEURONS = {"lif": neuron.LIFNode, "if": neuron.IFNode, "plif": neuron.ParametricLIFNode}


def _sn(kind: str = "lif", step_mode: str = "m", **kwargs) -> nn.Module:
    """A SpikingJelly neuron: kind "lif", "if" or "plif" (PLIF takes init_tau, not tau)."""
    return _NEURONS[kind](step_mode=step_mode, **kwargs)


def _repeat(x: torch.Tensor, T: int) -> torch.Tensor:
    """[B, C, H, W] -> [T, B, C, H, W], as SpikingJelly's models encode a static image."""
    return x.unsqueeze(0).repeat(T, 1, 1, 1, 1)


# ---------------------------------------------------------------- firing and checks

def make_firing(model: nn.Module, input_shape, seed: int = 0, bias: float = 0.5,
                biases: dict[str, float] | None = None, weight: float = 1.0,
                batches: int = 4) -> nn.Module:
    """BatchNorm biases set to `bias` (or to biases[key] for a BatchNorm whose name contains
    key) and weights to `weight`, statistics recalibrated (cumulative average) on `batches`
    random batches of 8 inputs; returns the model in eval mode."""
    torch.manual_seed(seed)
    for name, bn in model.named_modules():
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        value = next((v for k, v in (biases or {}).items() if k in name), bias)
        nn.init.constant_(bn.bias, value)
        nn.init.constant_(bn.weight, weight)
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            functional.reset_net(model)
            model(torch.rand(8, *input_shape[1:]))
    functional.reset_net(model)
    return model.eval()


def firing_rates(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Fraction of 1s in the output of every SpikingJelly neuron module (in call order),
    over all steps: a single-step neuron called T times counts all T calls. The net is
    reset before and after the run."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def hook(name, _module, _inputs, out):
        sums[name] = sums.get(name, 0.0) + float(out.detach().float().sum())
        counts[name] = counts.get(name, 0) + out.numel()

    handles = [m.register_forward_hook(partial(hook, name))
               for name, m in model.named_modules() if isinstance(m, NEURON_TYPES)]
    functional.reset_net(model)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        functional.reset_net(model)
    return {name: sums[name] / counts[name] for name in sums}


def check_firing(model: nn.Module, input_shape, low: float = 0.01, high: float = 0.60,
                 min_layers: int = 3, seed: int = 1) -> dict[str, float]:
    """The firing rates on a random input (batch 2); AssertionError unless at least
    `min_layers` neuron layers (or all of them if fewer) fire at a rate in [low, high] and
    the output is not all zeros."""
    torch.manual_seed(seed)
    x = torch.rand(2, *input_shape[1:])
    rates = firing_rates(model, x)
    in_range = [n for n, r in rates.items() if low <= r <= high]
    assert len(in_range) >= min(min_layers, len(rates)), f"too few firing layers: {rates}"
    functional.reset_net(model)
    with torch.no_grad():
        out = model(x)
    functional.reset_net(model)
    assert out.abs().sum() > 0, "output is all zeros"
    return rates


def export(model: nn.Module, input_shape) -> torch.export.ExportedProgram:
    """torch.export.export on zeros of `input_shape`, the net reset before and after."""
    functional.reset_net(model)
    with torch.no_grad(), warnings.catch_warnings(), traceable(model):
        warnings.simplefilter("ignore")  # SpikingJelly's memories trip a buffer warning
        program = torch.export.export(model, (torch.zeros(*input_shape),))
    functional.reset_net(model)
    return program


def compared(reference, trace, batch_axis: int = 0, perturbed: int = 1) -> H.Comparison:
    """`trace` (ONNX Runtime's or the interpreter's) against PyTorch's `reference` under the
    rounding rule (docs/testing.md): no problem, at most `perturbed` samples with spikes
    decided by rounding."""
    comparison = H.compare(reference, trace, H.Comparison(), batch_axis=batch_axis,
                           max_flips=4, perturbed_tol=0.5)
    assert not comparison.problems, comparison.problems
    assert comparison.perturbed <= perturbed, comparison.report()
    return comparison


# ---------------------------------------------------------------- multi-step conv SNNs

class Head(nn.Module):
    """[T, B, C, H, W] -> pool -> flatten -> (Linear-BN-LIF ->) Linear -> mean over T.
    Written with plain nn layers on time folded into batch (x.flatten(0, 1)/unflatten).
    pool: "flatten" (none), "avg" (AvgPool2d(2)), "adaptive1" (AdaptiveAvgPool2d((1, 1))),
    "adaptive2" (AdaptiveAvgPool2d((2, 2)); on an odd map its windows overlap)."""

    def __init__(self, channels: int, size: int, pool: str = "adaptive1",
                 classes: int = 10, hidden: int = 0):
        super().__init__()
        pools = {"flatten": (nn.Identity(), size * size),
                 "avg": (nn.AvgPool2d(2), (size // 2) ** 2),
                 "adaptive1": (nn.AdaptiveAvgPool2d((1, 1)), 1),
                 "adaptive2": (nn.AdaptiveAvgPool2d((2, 2)), 4)}
        self.pool, area = pools[pool]
        features = channels * area
        self.hidden = nn.Sequential(nn.Linear(features, hidden), nn.BatchNorm1d(hidden)) \
            if hidden else None
        self.sn = _sn() if hidden else None
        self.fc = nn.Linear(hidden or features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        y = self.pool(x.flatten(0, 1)).flatten(1)
        if self.hidden is not None:
            y = self.sn(self.hidden(y).unflatten(0, (T, -1))).flatten(0, 1)
        return self.fc(y).unflatten(0, (T, -1)).mean(0)


class VGG(nn.Module):
    """VGG-style: conv-BN (in a SeqToANNContainer) -> LIF blocks, "M" = layer.MaxPool2d."""

    def __init__(self, T: int = 4, cfg=(8, "M", 16, 16, "M"), size: int = 16,
                 pool: str = "flatten", hidden: int = 0, classes: int = 10):
        super().__init__()
        self.T, blocks, channels = T, [], 3
        for v in cfg:
            if v == "M":
                blocks.append(layer.MaxPool2d(2, 2, step_mode="m"))
                size //= 2
            else:
                blocks += [layer.SeqToANNContainer(nn.Conv2d(channels, v, 3, padding=1, bias=False),
                                                   nn.BatchNorm2d(v)), _sn()]
                channels = v
        self.features = nn.Sequential(*blocks)
        self.head = Head(channels, size, pool, classes, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(_repeat(x, self.T)))


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [layer.Conv2d(cin, cout, k, stride, k // 2, bias=False, step_mode="m"),
            layer.BatchNorm2d(cout, step_mode="m")]


class SEWBlock(nn.Module):
    """SEW-ResNet basic block: conv-BN-LIF-conv-BN-LIF, then connect_f with the identity
    (a conv-BN-LIF downsample when the shape changes): "ADD" out + identity, "AND"
    out * identity, "IAND" (1 - out) * identity."""

    def __init__(self, cin: int, cout: int, stride: int, connect_f: str):
        super().__init__()
        self.connect_f = connect_f
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), _sn(),
                                  *_conv_bn(cout, cout), _sn())
        self.downsample = nn.Sequential(*_conv_bn(cin, cout, 1, stride), _sn()) \
            if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.body(x)
        if self.connect_f == "ADD":
            return out + identity
        if self.connect_f == "AND":
            return out * identity
        if self.connect_f == "IAND":
            return (1.0 - out) * identity
        raise ValueError(f"unknown connect_f {self.connect_f!r}")


class BasicBlock(nn.Module):
    """Spiking ResNet basic block: conv-BN-LIF-conv-BN, + shortcut (conv1x1-BN when the
    shape changes), then LIF."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), _sn(), *_conv_bn(cout, cout))
        self.downsample = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) \
            if stride != 1 or cin != cout else None
        self.sn = _sn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.sn(self.body(x) + identity)


class ResNet(nn.Module):
    """Stem conv-BN-LIF, two residual blocks (8 -> 8, then 8 -> 16 at stride 2), head with
    adaptive average pooling; `connect_f` None builds a spiking ResNet, else a SEW-ResNet."""

    def __init__(self, T: int = 4, connect_f: str | None = None, size: int = 16,
                 classes: int = 10, pool: str = "adaptive1"):
        super().__init__()
        self.T = T
        self.stem = nn.Sequential(*_conv_bn(3, 8), _sn())
        block = BasicBlock if connect_f is None else partial(SEWBlock, connect_f=connect_f)
        self.blocks = nn.Sequential(block(8, 8, 1), block(8, 16, 2))
        self.head = Head(16, size // 2, pool, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(_repeat(x, self.T))))


class NeuronNet(nn.Module):
    """conv-BN-sn, pool, conv-BN-sn, pool, Linear-BN-sn, Linear, mean over T; every sn is
    `kind` ("lif", "if", "plif") with `neuron_kwargs`. Plain nn layers on flatten(0, 1)."""

    def __init__(self, T: int = 4, kind: str = "lif", classes: int = 10, **neuron_kwargs):
        super().__init__()
        self.T = T
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.fc1 = nn.Sequential(nn.Linear(16 * 4 * 4, 32), nn.BatchNorm1d(32))
        self.sn1, self.sn2, self.sn3 = (_sn(kind, **neuron_kwargs) for _ in range(3))
        self.pool = nn.MaxPool2d(2)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.T
        x = _repeat(x, T).flatten(0, 1)
        x = self.pool(self.sn1(self.conv1(x).unflatten(0, (T, -1))).flatten(0, 1))
        x = self.pool(self.sn2(self.conv2(x).unflatten(0, (T, -1))).flatten(0, 1))
        x = self.sn3(self.fc1(x.flatten(1)).unflatten(0, (T, -1))).flatten(0, 1)
        return self.fc2(x).unflatten(0, (T, -1)).mean(0)


# ---------------------------------------------------------------- the authors' layout

class TokenSSA(nn.Module):
    """Spikformer's self-attention as its authors wrote it (ZK-Zhou/spikformer, cifar10/
    model.py, MIT licence): token-major Linear layers, BatchNorm1d over channels through a
    transpose, q k^T v * 0.125 and an attention LIF at threshold 0.5."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        for name in ("q", "k", "v", "proj"):
            setattr(self, f"{name}_linear", nn.Linear(dim, dim))
            setattr(self, f"{name}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{name}_lif", _sn("lif", tau=2.0, detach_reset=True))
        self.attn_lif = _sn("lif", tau=2.0, v_threshold=0.5, detach_reset=True)

    def _branch(self, name: str, x: torch.Tensor, shape) -> torch.Tensor:
        y = getattr(self, f"{name}_linear")(x)
        y = getattr(self, f"{name}_bn")(y.transpose(-1, -2)).transpose(-1, -2)
        return getattr(self, f"{name}_lif")(y.reshape(*shape).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, C = x.shape
        flat = x.flatten(0, 1)
        q, k, v = (self._branch(n, flat, (T, B, N, C)).reshape(
            T, B, N, self.heads, C // self.heads).permute(0, 1, 3, 2, 4).contiguous()
            for n in ("q", "k", "v"))
        y = ((q @ k.transpose(-2, -1)) * 0.125) @ v
        y = self.attn_lif(y.transpose(2, 3).reshape(T, B, N, C).contiguous()).flatten(0, 1)
        return self._branch("proj", y, (T, B, N, C))


class TokenBlock(nn.Module):
    """An attention block and an MLP of token Linear + BatchNorm1d layers; like the authors'
    Block, it keeps two LayerNorms its forward never uses."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = TokenSSA(dim, heads)
        self.fc1_linear, self.fc1_bn = nn.Linear(dim, hidden), nn.BatchNorm1d(hidden)
        self.fc2_linear, self.fc2_bn = nn.Linear(hidden, dim), nn.BatchNorm1d(dim)
        self.fc1_lif, self.fc2_lif = (_sn("lif", tau=2.0, detach_reset=True) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, C = x.shape
        x = x + self.attn(x)
        y = self.fc1_linear(x.flatten(0, 1))
        y = self.fc1_lif(self.fc1_bn(y.transpose(-1, -2)).transpose(-1, -2).reshape(T, B, N, -1))
        y = self.fc2_linear(y.flatten(0, 1))
        y = self.fc2_lif(self.fc2_bn(y.transpose(-1, -2)).transpose(-1, -2).reshape(T, B, N, C))
        return x + y


class AuthorsSpikformer(nn.Module):
    """Spikformer in its authors' layout: a conv-BN-LIF stem with max pools and a relative
    position conv added to its input, token blocks (TokenBlock), head on x.mean(2).mean(0)."""

    def __init__(self, T: int = 4, dim: int = 64, heads: int = 4, depth: int = 1,
                 classes: int = 10):
        super().__init__()
        self.T = T
        widths = (3, dim // 4, dim // 2, dim)
        self.stem = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False),
                                                nn.BatchNorm2d(b))
                                  for a, b in zip(widths, widths[1:]))
        self.stem_lif = nn.ModuleList(_sn("lif", tau=2.0, detach_reset=True) for _ in widths[1:])
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.rpe = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(dim))
        self.rpe_lif = _sn("lif", tau=2.0, detach_reset=True)
        self.blocks = nn.ModuleList(TokenBlock(dim, heads, 4 * dim) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = self.T, x.shape[0]
        x = _repeat(x, T).flatten(0, 1)
        for i, (conv, lif) in enumerate(zip(self.stem, self.stem_lif)):
            y = conv(x)
            x = lif(y.reshape(T, B, *y.shape[1:]).contiguous()).flatten(0, 1)
            x = self.pool(x) if i >= 1 else x
        feat = x.reshape(T, B, *x.shape[1:]).contiguous()
        x = self.rpe_lif(self.rpe(x).reshape(T, B, *x.shape[1:]).contiguous()) + feat
        x = x.flatten(-2).transpose(-1, -2)  # T, B, N, C
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(2).mean(0))


# ---------------------------------------------------------------- single-step models

class SingleStep(nn.Module):
    """Single-step neurons (step_mode="s") driven by a Python loop over T in forward.

    mixed=False: LIF neurons; the conv-BN encoder of the static image runs once before the
    loop; output torch.stack(outs).mean(0). mixed=True: IF, PLIF (init_tau 3) and LIF
    (tau 3, soft reset); every layer runs inside the loop; output a running sum / T."""

    def __init__(self, T: int = 4, mixed: bool = False, classes: int = 10):
        super().__init__()
        self.T, self.mixed = T, mixed
        self.conv1 = nn.Sequential(layer.Conv2d(3, 8, 3, padding=1, bias=False),
                                   layer.BatchNorm2d(8))
        self.conv2 = nn.Sequential(layer.Conv2d(8, 16, 3, padding=1, bias=False),
                                   layer.BatchNorm2d(16))
        self.fc1 = nn.Sequential(layer.Linear(16 * 4 * 4, 32), layer.BatchNorm1d(32))
        self.fc2 = layer.Linear(32, classes)
        self.pool = layer.MaxPool2d(2)
        if mixed:
            self.sn1 = _sn("if", "s")
            self.sn2 = _sn("plif", "s", init_tau=3.0)
            self.sn3 = _sn("lif", "s", tau=3.0, v_reset=None)
        else:
            self.sn1, self.sn2, self.sn3 = (_sn("lif", "s") for _ in range(3))

    def step(self, encoded: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.sn1(encoded))
        y = self.pool(self.sn2(self.conv2(y)))
        return self.fc2(self.sn3(self.fc1(y.flatten(1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mixed:
            total = 0.0
            for _ in range(self.T):
                total = total + self.step(self.conv1(x))
            return total / self.T
        encoded = self.conv1(x)
        outs = []
        for _ in range(self.T):
            outs.append(self.step(encoded))
        return torch.stack(outs).mean(0)


# ---------------------------------------------------------------- builders

class BatchFirstDVS(nn.Module):
    """Event frames batch-first [B, T, 2, H, W] (as a DataLoader stacks them), transposed to
    [T, B, ...] inside forward: SeqToANNContainer conv-BN, LIF, max pool, linear, mean."""

    def __init__(self, T: int):
        super().__init__()
        self.conv = layer.SeqToANNContainer(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.sn1 = neuron.LIFNode(step_mode="m")
        self.pool = layer.SeqToANNContainer(nn.MaxPool2d(2))
        self.conv2 = layer.SeqToANNContainer(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.sn2 = neuron.LIFNode(step_mode="m")
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        s = self.sn2(self.conv2(self.pool(self.sn1(self.conv(x.transpose(0, 1))))))
        return self.fc(s.flatten(2)).mean(0)


IMAGE16 = (1, 3, 16, 16)
IMAGE32 = (1, 3, 32, 32)


def _firing(make: Callable[[], nn.Module], shape, seed: int, **firing):
    """Build with torch.manual_seed(seed), make_firing(**firing); returns (model, shape)."""
    torch.manual_seed(seed)
    return make_firing(make(), shape, seed=seed, **firing), shape


# Leaky neurons with decay_input charge x / tau per step, so from rest one step fires only on
# x >= tau: with BatchNorm N(0.5, 1) a tau-3 LIF is silent at T=1. They get N(1, 1.5).
_LEAKY = {"weight": 1.5, "bias": 1.0}


def vgg(T: int = 4, seed: int = 0, pool: str = "flatten", hidden: int = 32, size: int = 16):
    """VGG-style conv SNN, input [1, 3, size, size]; pool as in Head."""
    return _firing(lambda: VGG(T, size=size, pool=pool, hidden=hidden), (1, 3, size, size), seed)


def resnet(T: int = 4, seed: int = 0, connect_f: str | None = None):
    """Spiking ResNet (connect_f None) or SEW-ResNet ("ADD", "AND", "IAND"), 16x16 input."""
    return _firing(lambda: ResNet(T, connect_f), IMAGE16, seed)


def neuron_net(kind: str = "lif", T: int = 4, seed: int = 0, **neuron_kwargs):
    """NeuronNet with every neuron `kind` built with `neuron_kwargs`, 16x16 input."""
    leaky = kind != "if" and neuron_kwargs.get("decay_input", True)
    return _firing(lambda: NeuronNet(T, kind, **neuron_kwargs), IMAGE16, seed,
                   **(_LEAKY if leaky else {}))


def single_step(T: int = 4, seed: int = 0, mixed: bool = False):
    """SingleStep model, 16x16 input."""
    firing = {"weight": 1.5, "bias": 0.75} if mixed else {}  # IF would fire > 55 % at _LEAKY
    return _firing(lambda: SingleStep(T, mixed), IMAGE16, seed, **firing)


def transformer(family: str, T: int = 4, seed: int = 0, qkv_bias: float = 0.5, **config):
    """A zoo transformer on 32x32 RGB: family "spikformer" (Spikformer), "sdt"
    (SpikeDrivenTransformer), "qkformer" (QKFormer) or "maxformer" (MaxFormer) built with
    T and `config`; without config, the family's default factory (spikformer_cifar10,
    sdt_8_384, qkformer_10_384, maxformer_cifar). `qkv_bias` is the bias of the BatchNorm
    before the q/k/v neurons of spiking self-attention ("attn.qkv*"): with few tokens or
    narrow heads, q @ k^T @ v * 0.125 stays below threshold at 0.5 and attention is silent.
    Spikformer returns [T, B, classes] (its head is per step); the others [B, classes]."""
    from spikingjelly.activation_based.model import (maxformer, qkformer, spike_driven_transformer,
                                                     spikformer)
    classes, factory = {
        "spikformer": (spikformer.Spikformer, spikformer.spikformer_cifar10),
        "sdt": (spike_driven_transformer.SpikeDrivenTransformer,
                spike_driven_transformer.sdt_8_384),
        "qkformer": (qkformer.QKFormer, qkformer.qkformer_10_384),
        "maxformer": (maxformer.MaxFormer, maxformer.maxformer_cifar)}[family]
    make = (lambda: classes(T=T, **config)) if config else (lambda: factory(T=T))
    return _firing(make, IMAGE32, seed, biases={"attn.qkv": qkv_bias})


Builder = Callable[..., tuple[nn.Module, tuple[int, ...]]]

MODELS: dict[str, Builder] = {
    # multi-step conv SNNs
    "vgg_bn_maxpool": partial(vgg, pool="flatten", hidden=32),
    "avgpool_head": partial(vgg, pool="avg", hidden=0),
    "adaptive_avgpool_head": partial(vgg, pool="adaptive1", hidden=0),
    "adaptive_avgpool2x2_head": partial(vgg, pool="adaptive2", hidden=0, size=20),  # 5x5 map
    "sew_add": partial(resnet, connect_f="ADD"),
    "sew_and": partial(resnet, connect_f="AND"),
    "sew_iand": partial(resnet, connect_f="IAND"),
    "resnet_basic": partial(resnet, connect_f=None),
    # neuron variants
    "if": partial(neuron_net, "if"),
    "lif_tau2": partial(neuron_net, "lif", tau=2.0),
    "lif_tau3": partial(neuron_net, "lif", tau=3.0),
    "lif_tau2_nodecay": partial(neuron_net, "lif", tau=2.0, decay_input=False),
    "lif_tau3_nodecay": partial(neuron_net, "lif", tau=3.0, decay_input=False),
    "plif": partial(neuron_net, "plif"),
    "plif_tau3_nodecay": partial(neuron_net, "plif", init_tau=3.0, decay_input=False),
    "soft_reset": partial(neuron_net, "lif", v_reset=None),
    "if_soft_reset": partial(neuron_net, "if", v_reset=None),
    "vreset_nonzero": partial(neuron_net, "lif", v_reset=-0.2),
    "vreset_positive": partial(neuron_net, "lif", tau=3.0, v_reset=0.1),
    # single-step
    "dvs_batch_first": lambda T=4, seed=0: _firing(lambda: BatchFirstDVS(T), (1, T, 2, 16, 16),
                                                    seed),
    "single_step_conv": partial(single_step, mixed=False),
    "single_step_mixed": partial(single_step, mixed=True),
    # zoo transformers
    "spikformer_small": partial(transformer, "spikformer", img_size_h=32, img_size_w=32,
                                patch_size=4, num_classes=10, embed_dims=64, num_heads=2,
                                depths=1),
    "spikformer_cifar10": partial(transformer, "spikformer"),
    "sdt_small": partial(transformer, "sdt", num_classes=10, embed_dims=64, num_heads=2,
                         depths=1),
    "sdt_small2": partial(transformer, "sdt", num_classes=10, embed_dims=128, num_heads=4,
                          depths=2, pooling_stat="0011"),
    "sdt_default": partial(transformer, "sdt"),
    "qkformer_small": partial(transformer, "qkformer", qkv_bias=1.0, num_classes=10,
                              embed_dims=64, num_heads=(1, 2, 2), depths=(1, 1, 1)),
    "qkformer_small_channel": partial(transformer, "qkformer", qkv_bias=1.0, num_classes=10,
                                      embed_dims=128, num_heads=(2, 4, 4), depths=(1, 1, 1),
                                      qka_type="channel"),
    "qkformer_default": partial(transformer, "qkformer", qkv_bias=1.0),
    "maxformer_small": partial(transformer, "maxformer", qkv_bias=1.0, num_classes=10,
                               embed_dims=64, depths=(1, 1, 1)),
    "maxformer_small_cifar": partial(transformer, "maxformer", qkv_bias=1.0, num_classes=10,
                                     embed_dims=64, depths=(1, 1, 1), cifar=True),
    "maxformer_cifar": partial(transformer, "maxformer"),
    # a transformer written as its authors wrote it, not from SpikingJelly's zoo
    "spikformer_authors_small": lambda T=4, seed=0: _firing(
        lambda: AuthorsSpikformer(T, dim=64, heads=4, depth=1), IMAGE32, seed,
        biases={"attn": 1.0}),
}

TAKES_T: set[str] = set(MODELS)
BIG: set[str] = {"spikformer_cifar10", "sdt_default", "qkformer_default", "maxformer_cifar"}


_LADDER = (("pot", 4), ("uniform", 4), ("pot", 3), ("uniform", 3), ("uniform", 6), ("pot", 5))


def heterogeneous(model: nn.Module) -> dict:
    """A heterogeneous snnc.quantize config over every conv and linear layer: the first and
    last uniform 8-bit, the others cycling through power-of-two and uniform at 3 to 6 bits."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d,
                                                                   nn.Linear))]
    return {n: dict(zip(("scheme", "bits"), ("uniform", 8) if i in (0, len(names) - 1)
                        else _LADDER[i % len(_LADDER)])) for i, n in enumerate(names)}


def random_config(model: nn.Module, seed: int) -> dict:
    """A random heterogeneous snnc.quantize config over every conv and linear layer: each
    layer draws its scheme from uniform (2..8 bits), PoT (2..5), ternary and binary, and two
    random layers (of two or more) are made ternary and binary, so every config has both."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d,
                                                                   nn.Linear))]
    rng = np.random.default_rng(seed)
    config = {}
    for name in names:
        scheme = str(rng.choice(["uniform", "pot", "ternary", "binary"]))
        bits = {"uniform": range(2, 9), "pot": range(2, 6)}.get(scheme)
        config[name] = {"scheme": scheme} if bits is None else \
            {"scheme": scheme, "bits": int(rng.choice(bits))}
    for name, scheme in zip(rng.permutation(names), ("ternary", "binary")):
        config[str(name)] = {"scheme": scheme}
    return config


def seed_of(name: str) -> int:
    """A fixed seed per model name (random_config's)."""
    return zlib.crc32(name.encode())
