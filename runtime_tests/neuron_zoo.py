"""SpikingJelly's neuron classes in one small conv net each, multi-step and single-step, made
to fire (test_neuron_zoo.py)."""

from __future__ import annotations

import importlib

import torch
from spikingjelly.activation_based import neuron, surrogate
from torch import nn

import zoo

for _op in ("ilif", "eif", "qif", "izhikevich", "stbif"):
    importlib.import_module(f"spikingjelly._ops.{_op}")

T = 3
SHAPE = (1, 2, 8, 8)


def _stbif(step_mode):
    return neuron.STBIFNode(q_threshold=torch.tensor(0.5), level=8, step_mode=step_mode)


# class name -> (factory(step_mode), the integer type its outputs take in lower_integer or
# None (real-valued), the step modes it compiles in)
NEURONS = {
    "IFNode": (lambda m: neuron.IFNode(step_mode=m), "u8", "ms"),
    "LIFNode": (lambda m: neuron.LIFNode(step_mode=m), "u8", "ms"),
    "ParametricLIFNode": (lambda m: neuron.ParametricLIFNode(step_mode=m), "u8", "ms"),
    "ILIFNode": (lambda m: neuron.ILIFNode(  # one surrogate each: export refuses a shared one
        surrogate_function=surrogate.MultiLevelSpikeCount(4), step_mode=m), "u8", "m"),
    "EIFNode": (lambda m: neuron.EIFNode(step_mode=m), "u8", "ms"),
    "QIFNode": (lambda m: neuron.QIFNode(step_mode=m), "u8", "ms"),
    "IzhikevichNode": (lambda m: neuron.IzhikevichNode(step_mode=m), "u8", "ms"),
    "STBIFNode": (_stbif, None, "ms"),
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


def build(name: str, step_mode: str, seed: int = 0, bias: float = 0.5, weight: float = 1.5):
    """The firing net of neuron class `name`."""
    make = NEURONS[name][0]
    torch.manual_seed(seed)
    return zoo.make_firing(Net(make, step_mode), SHAPE, seed=seed, bias=bias, weight=weight)
