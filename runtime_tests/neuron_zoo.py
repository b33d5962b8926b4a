"""SpikingJelly's neuron classes in one small conv net each, multi-step and single-step, made
to fire (test_neuron_zoo.py)."""

from __future__ import annotations

import importlib
import itertools

import torch
from spikingjelly.activation_based import neuron, surrogate
from torch import nn

import zoo
from snnc.frontend.neuron_regions import is_neuron_class

for _op in ("ilif", "eif", "qif", "izhikevich", "stbif", "activation_aware_if"):
    importlib.import_module(f"spikingjelly._ops.{_op}")

T = 3
SHAPE = (1, 2, 8, 8)


def _stbif(step_mode):
    return neuron.STBIFNode(q_threshold=torch.tensor(0.5), level=8, step_mode=step_mode)


class _Gated(nn.Module):
    """GatedLIFNode (GLIF, multi-step only), layer-wise (inplane None) or channel-wise. It
    views its parameters as (1, -1, 1, 1), so it takes [T, B, C, H, W]: a linear layer's
    [T, B, F] is given to it as [T, B, F, 1, 1], as a user would. Its gates are drawn from
    torch's seed (SpikingJelly draws alpha, beta, gamma from numpy's) and its conductance
    differs per step (a constant the re-rolled loop indexes by step)."""

    def __init__(self, inplane=None):
        super().__init__()
        self.sn = neuron.GatedLIFNode(T=T, inplane=inplane)
        with torch.no_grad():
            for p in (self.sn.alpha, self.sn.beta, self.sn.gamma):
                p.copy_(0.4 * (torch.rand_like(p) - 0.5))
            self.sn.conduct.add_(torch.randn_like(self.sn.conduct))

    def forward(self, x):
        return self.sn(x[..., None, None]).flatten(2) if x.dim() == 3 else self.sn(x)


def gated_channel_wise():
    """A Net factory of channel-wise GLIF: its three layers have 4, 8 and 16 channels."""
    channels = iter((4, 8, 16))
    return lambda m: _Gated(next(channels))


def aaif_channel_wise():
    """A Net factory of ActivationAwareIFNode with parameters per channel (channel_dim 1):
    layer 1 (4 channels) threshold and offset, soft reset; layer 2 (8) threshold, hard
    reset; layer 3 (16 features of a linear layer) offset."""
    g = torch.Generator().manual_seed(3)
    layers = iter(((4, True, True, None), (8, True, False, 0.0), (16, False, True, None)))

    def make(step_mode):
        c, threshold, offset, reset = next(layers)
        return neuron.ActivationAwareIFNode(
            v_threshold=0.6 + 0.8 * torch.rand(c, generator=g) if threshold else 1.0,
            v_offset=0.5 * (torch.rand(c, generator=g) - 0.5) if offset else 0.25,
            channel_dim=1, v_reset=reset, step_mode=step_mode)
    return make


def _dhs():
    from spikingjelly.activation_based.model import spike_dhs
    return spike_dhs


class _Stacked(nn.Module):
    """A non-spiking neuron (multi-step only) with decode None returns its membranes as a
    list of T tensors; a model stacks them to go on: torch.stack(v_seq)."""

    def __init__(self, sn):
        super().__init__()
        self.sn = sn

    def forward(self, x_seq):
        return torch.stack(self.sn(x_seq))


def _masked_psn(step_mode):
    """MaskedPSN(k=2): single-step needs lambda_ >= 1 (the mask is then the band of k
    diagonals); multi-step mixes the band and the full matrix by lambda_ = 0.5."""
    return neuron.MaskedPSN(k=2, T=T, lambda_init=1.0 if step_mode == "s" else 0.5,
                            step_mode=step_mode)


def _few_spike_table(scale: float = 1.0):
    """K = T thresholds theta, resets h and spike weights d = 1 (0/1 spikes)."""
    from spikingjelly.activation_based.neuron.few_spike import FewSpikeTable

    theta = [scale * 0.5 ** k for k in range(T)]
    return FewSpikeTable(theta=theta, h=theta, d=[1.0] * T)


_MPBN_SIZES = itertools.cycle((("out_channels", 4), ("out_channels", 8), ("out_features", 16)))


def _mpbn(step_mode):
    """MPBNLIFNode normalizes its membrane per channel (or feature): Net's three layers have
    4 and 8 channels and 16 features, and Net makes them in that order."""
    key, size = next(_MPBN_SIZES)
    return neuron.MPBNLIFNode(step_mode=step_mode, **{key: size})


class _Flat(nn.Module):
    """An inter-layer-connection neuron (ILC*: multi-step only) on [T, B, F], F = act_dim *
    dec_pop_dim: Net's [T, B, C, H, W] maps are given to it flattened, as a user would."""

    def __init__(self, sn):
        super().__init__()
        self.sn = sn
        with torch.no_grad():  # a drive of the same order as the input's
            sn.conn.weight.mul_(0.5)
            sn.conn.bias.zero_()

    def forward(self, x):
        return self.sn(x.flatten(2)).view_as(x)


_ILC_SIZES = itertools.cycle((4 * 8 * 8, 8 * 4 * 4, 16))  # Net's three layers, in order


def _ilc(cls, **kwargs):
    """A factory of ILC neurons of class `cls` (two neurons per population)."""
    def make(step_mode):
        return _Flat(getattr(neuron, cls)(next(_ILC_SIZES) // 2, 2, **kwargs))
    return make


def _flex_lif_core(x, v):
    """A FlexSN core: a LIF (tau 2, hard reset to 0) written by its user."""
    h = v + (x - v) / 2.0
    spike = (h >= 1.0).to(h.dtype)
    return spike, h * (1.0 - spike)


def _with_step_mode(node, step_mode):
    """CUBALIFNode takes no step_mode argument (it starts single-step)."""
    node.step_mode = step_mode
    return node


# class name -> (factory(step_mode), the integer type its outputs take in lower_integer
# ("real": none, so no integer GEMM after it; None: not checked), the step modes it
# compiles in)
NEURONS = {
    "IFNode": (lambda m: neuron.IFNode(step_mode=m), "u8", "ms"),
    "LIFNode": (lambda m: neuron.LIFNode(step_mode=m), "u8", "ms"),
    "ParametricLIFNode": (lambda m: neuron.ParametricLIFNode(step_mode=m), "u8", "ms"),
    "ILIFNode": (lambda m: neuron.ILIFNode(  # one surrogate each: export refuses a shared one
        surrogate_function=surrogate.MultiLevelSpikeCount(4), step_mode=m), "u8", "ms"),
    "EIFNode": (lambda m: neuron.EIFNode(step_mode=m), "u8", "ms"),
    "QIFNode": (lambda m: neuron.QIFNode(step_mode=m), "u8", "ms"),
    "IzhikevichNode": (lambda m: neuron.IzhikevichNode(step_mode=m), "u8", "ms"),
    "STBIFNode": (_stbif, "real", "ms"),
    "ActivationAwareIFNode": (lambda m: neuron.ActivationAwareIFNode(
        v_offset=0.25, step_mode=m), "u8", "ms"),  # m: registered op; s: PyTorch arithmetic
    # written in plain PyTorch (compiler/frontend/neuron_regions.py)
    "TernaryIFNode": (lambda m: neuron.TernaryIFNode(step_mode=m), "i8", "ms"),
    "TernaryLIFNode": (lambda m: neuron.TernaryLIFNode(step_mode=m), "i8", "ms"),
    "KLIFNode": (lambda m: neuron.KLIFNode(step_mode=m), "u8", "ms"),
    "CUBALIFNode": (lambda m: _with_step_mode(neuron.CUBALIFNode(), m), "u8", "ms"),
    "LIAFNode": (lambda m: neuron.LIAFNode(act=nn.ReLU(), threshold_related=False,
                                           step_mode=m), None, "ms"),  # m: spikes
    "ComplementaryLIFNode": (lambda m: neuron.ComplementaryLIFNode(step_mode=m), "u8", "ms"),
    # their state starts as a Python float: step 0 reads a number where later steps read v
    "SimpleIFNode": (lambda m: neuron.SimpleIFNode(step_mode=m), "u8", "ms"),
    "SimpleLIFNode": (lambda m: neuron.SimpleLIFNode(tau=2.0, decay_input=True, step_mode=m),
                      "u8", "ms"),
    "OTTTLIFNode": (lambda m: neuron.OTTTLIFNode(step_mode=m), "u8", "s"),
    # few-spike coding: K thresholds and resets per input (m: the K steps of the summed
    # input; T = K)
    "FewSpikeNode": (lambda m: neuron.FewSpikeNode(_few_spike_table(), step_mode=m), "u8",
                     "ms"),
    # few-spike coding with an outlier table for large inputs (sign * clamp)
    "OutlierAwareThresholdNode": (lambda m: neuron.OutlierAwareThresholdNode(
        _few_spike_table(), _few_spike_table(2.0), 2.0, step_mode=m), "real", "ms"),
    # few-spike coding whose table each element picks by its input's region (bucketize)
    "HGNode": (lambda m: neuron.HGNode([_few_spike_table(), _few_spike_table(2.0)], [1.5],
                                       step_mode=m), "u8", "ms"),
    # a LIF whose membrane is batch-normalized (eval: its running statistics, folded)
    "MPBNLIFNode": (_mpbn, "u8", "ms"),
    # its membrane starts at half the threshold
    "HalfThresholdIFNode": (lambda m: neuron.HalfThresholdIFNode(step_mode=m), "u8", "ms"),
    "SLTTLIFNode": (lambda m: neuron.SLTTLIFNode(step_mode=m), "u8", "s"),
    # a neuron of SpikingJelly's model zoo (spike_dhs): LIFNode with the DSpike surrogate
    # (no op), keeping its mean membrane as an attribute (dead code in the export)
    "save_v_LIFNode": (lambda m: _with_step_mode(_dhs().get_save_v_SpikingNode(), m), "u8",
                       "ms"),
    # parallel over time: a learned [T, T] mix of the steps (the IR's time_mix), then a
    # threshold
    "PSN": (lambda m: neuron.PSN(T=T), "u8", "m"),
    # s: a queue of the last k inputs, flattened with the batch but read position by
    # position (compiler/frontend/queues.py)
    "SlidingPSN": (lambda m: neuron.SlidingPSN(k=2, step_mode=m), "u8", "ms"),
    "MaskedPSN": (_masked_psn, "u8", "ms"),
    # non-spiking: their outputs are membranes (real, nearly all nonzero); multi-step only
    "NonSpikingIFNode": (lambda m: _Stacked(neuron.NonSpikingIFNode()), "real", "m"),
    "NonSpikingLIFNode": (lambda m: _Stacked(neuron.NonSpikingLIFNode(tau=3.0)), "real", "m"),
    # noisy neurons (NoisySpikingNN) in inference: is_training=False adds no noise
    "NoisyCUBALIFNode": (lambda m: neuron.NoisyCUBALIFNode(1, is_training=False, T=T), "u8",
                         "m"),
    "NoisyNonSpikingIFNode": (lambda m: _Stacked(neuron.NoisyNonSpikingIFNode(
        1, is_training=False, T=T)), "real", "m"),
    # a loop over T whose steps also read a parameter indexed by the step (conductance)
    "GatedLIFNode": (lambda m: _Gated(), "u8", "m"),
    # resonate-and-fire: it fires on its state before the step, so its output lags its
    # input by one step (the first spike a constant; re-rolled with a delay state)
    "RAFNode": (lambda m: neuron.RAFNode(step_mode=m), "u8", "ms"),
    # DSR (multi-step only): a soft-reset IF / LIF loop whose spikes are v_threshold (DSRLIF:
    # / delta_t); v_threshold a parameter (clamped)
    "DSRIFNode": (lambda m: neuron.DSRIFNode(T=T, v_threshold=2.0, step_mode=m), "u8", "m"),
    "DSRLIFNode": (lambda m: neuron.DSRLIFNode(T=T, delta_t=0.5, step_mode=m), "real", "m"),
    # a neuron defined by its user's core function (x, states) -> (spike, states)
    "FlexSN": (lambda m: neuron.FlexSN(_flex_lif_core, 1, step_mode=m), "u8", "ms"),
    # inter-layer connection: each step adds a grouped conv of its spikes to the next
    # step's input, written into the input tensor (x_seq[t + 1] = x_seq[t + 1] + ...)
    "ILCIFNode": (_ilc("ILCIFNode"), "u8", "m"),
    "ILCLIFNode": (_ilc("ILCLIFNode"), "u8", "m"),
    "ILCCUBALIFNode": (_ilc("ILCCUBALIFNode"), "u8", "m"),
    "NoisyILCCUBALIFNode": (_ilc("NoisyILCCUBALIFNode", is_training=False, T=T), "u8", "m"),
}


class Net(nn.Module):
    """conv-BN-sn, max pool, conv-BN-sn, flatten, linear-BN-sn, linear, mean over T; every
    sn built by `make(step_mode)`. step_mode "s": the loop over T in forward."""

    def __init__(self, make, step_mode: str = "m"):
        super().__init__()
        self.step_mode = step_mode
        self.conv1 = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.conv2 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.fc1 = nn.Sequential(nn.Linear(8 * 4 * 4, 16), nn.BatchNorm1d(16))
        self.sn1, self.sn2, self.sn3 = (make(step_mode) for _ in range(3))
        self.pool = nn.MaxPool2d(2)
        self.fc2 = nn.Linear(16, 5)

    def step(self, x):
        x = self.pool(self.sn1(self.conv1(x)))
        x = self.sn2(self.conv2(x))
        return self.fc2(self.sn3(self.fc1(x.flatten(1))))

    def forward(self, x):
        if self.step_mode == "s":
            return torch.stack([self.step(x) for _ in range(T)]).mean(0)
        x = x.unsqueeze(0).repeat(T, 1, 1, 1, 1).flatten(0, 1)
        x = self.pool(self.sn1(self.conv1(x).unflatten(0, (T, -1))).flatten(0, 1))
        x = self.sn2(self.conv2(x).unflatten(0, (T, -1))).flatten(0, 1)
        x = self.sn3(self.fc1(x.flatten(1)).unflatten(0, (T, -1))).flatten(0, 1)
        return self.fc2(x).unflatten(0, (T, -1)).mean(0)


# classes whose outputs are membranes, not spikes: nonzero almost everywhere
MEMBRANES = ("NonSpikingIFNode", "NonSpikingLIFNode", "NoisyNonSpikingIFNode")
# classes whose outputs are weighted spike sums: nonzero wherever one of K spikes fires
MULTI_SPIKE = ("OutlierAwareThresholdNode", "HGNode")


class Readout(Net):
    """Net (multi-step) whose last neuron `readout` decodes its membranes over time into one
    [B, 16] value (a non-spiking neuron's decode 'mean-mem', 'max-mem', 'max-abs-mem',
    'last_mem'), which fc2 reads once."""

    def __init__(self, make, readout):
        super().__init__(make, "m")
        self.sn3 = readout

    def forward(self, x):
        x = x.unsqueeze(0).repeat(T, 1, 1, 1, 1).flatten(0, 1)
        x = self.pool(self.sn1(self.conv1(x).unflatten(0, (T, -1))).flatten(0, 1))
        x = self.sn2(self.conv2(x).unflatten(0, (T, -1))).flatten(0, 1)
        return self.fc2(self.sn3(self.fc1(x.flatten(1)).unflatten(0, (T, -1))))


def build(name: str, step_mode: str, seed: int = 0, bias: float = 0.5, weight: float = 1.5,
          make=None, readout=None):
    """The firing net of neuron class `name` (or of the factory `make`; with `readout`, a
    Readout net ending in it): BatchNorm biases `bias` and weights `weight`, statistics
    calibrated on random inputs with the neurons in eval mode (OTTT and SLTT return their
    traces too in training mode)."""
    torch.manual_seed(seed)
    make = make or NEURONS[name][0]
    model = (Net(make, step_mode) if readout is None else Readout(make, readout)).eval()
    for bn in model.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            nn.init.constant_(bn.bias, bias)
            nn.init.constant_(bn.weight, weight)
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
    with torch.no_grad():
        for _ in range(4):
            zoo.functional.reset_net(model)
            model(torch.rand(8, *SHAPE[1:]))
    zoo.functional.reset_net(model)
    return model.eval()


def rates(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Per neuron module, the fraction of nonzero outputs over all steps and calls."""
    sums: dict[str, list] = {}

    def hook(name, _module, _inputs, out):
        out = torch.stack(out) if isinstance(out, (list, tuple)) else out  # v_seq as a list
        total = sums.setdefault(name, [0.0, 0])
        total[0] += float((out.detach() != 0).float().sum())
        total[1] += out.numel()

    handles = [m.register_forward_hook(lambda mod, i, o, n=name: hook(n, mod, i, o))
               for name, m in model.named_modules()
               if is_neuron_class(f"{type(m).__module__}.{type(m).__qualname__}")]
    zoo.functional.reset_net(model)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        zoo.functional.reset_net(model)
    return {name: s / n for name, (s, n) in sums.items()}
