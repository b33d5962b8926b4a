"""The search space: each layer's candidates (uniform 2..8 and PoT 2..5 bits, float if
allowed), the hardware cost of a configuration (average bits, estimated energy), and the
candidates' quantized weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from snnc.errors import BadInputError
from snnc.quant import quantize


@dataclass(frozen=True)
class Choice:
    scheme: str  # "uniform", "pot" or "float"
    bits: int  # 32 for float

    @property
    def label(self) -> str:
        return "float" if self.scheme == "float" else f"{self.scheme}{self.bits}"

    def rule(self):
        return "float" if self.scheme == "float" else {"scheme": self.scheme, "bits": self.bits}


def candidates(allow_float: bool = False) -> list[Choice]:
    """Uniform 2..8 and PoT 2..5 bits (docs/quantization.md), and float if allowed."""
    out = [Choice(s, b) for s, bits in quantize.SCHEMES.items() for b in bits]
    return out + [Choice("float", 32)] if allow_float else out


def choice_of(label: str) -> Choice:
    if label == "float":
        return Choice("float", 32)
    scheme = "uniform" if label.startswith("uniform") else "pot"
    return Choice(scheme, int(label[len(scheme):]))


# Energy per synaptic operation, 45 nm, from Horowitz, "Computing's energy problem (and what
# we can do about it)", ISSCC 2014: integer add 0.03 pJ (8 bits) to 0.1 pJ (32 bits), about
# linear in the width; integer multiply 0.2 pJ (8 bits) to 3.1 pJ (32 bits), about quadratic;
# float32 add 0.9 pJ and multiply 3.7 pJ (the report's AC and MAC: snnc.check.report).
ADD_PJ_PER_BIT = 0.1 / 32
MUL_PJ_PER_BIT2 = 3.1 / 32 ** 2
INPUT_BITS = 8  # a real-valued input (the image) as 8-bit activations for the integer MAC


def energy_pj(choice: Choice, spiking: bool) -> float:
    """Energy of one synaptic operation of a layer with `choice` weights. A layer reading
    spikes (or spike counts) accumulates (AC): one add of the weight, as wide as its code
    (a PoT weight's code is shifted into place first: a shift-add, counted as two adds). A
    layer reading real values multiply-accumulates (MAC): a k x 8-bit multiply and an add;
    for a PoT weight the multiply is a shift (an add's cost): a shift-add, far below a MAC."""
    if choice.scheme == "float":
        return 0.9 if spiking else 4.6
    add = ADD_PJ_PER_BIT * choice.bits
    if choice.scheme == "pot":
        return 2 * add
    return add if spiking else MUL_PJ_PER_BIT2 * choice.bits * INPUT_BITS + add


@dataclass
class Layer:
    name: str
    module: torch.nn.Module
    parameters: int
    ops: float = 0.0  # synaptic operations per sample: SOPs (spike input) or MACs
    spiking: bool = True  # input is spikes or spike counts (nonnegative integers)


def quantizable(model: torch.nn.Module) -> list[Layer]:
    layers = [Layer(n, m, m.weight.numel()) for n, m in model.named_modules()
              if isinstance(m, quantize.QUANTIZABLE)]
    if not layers:
        raise BadInputError("the model has no conv or linear layer with weights: there is "
                            "nothing to quantize")
    return layers


def average_bits(layers: list[Layer], config: dict[str, str]) -> float:
    total = sum(l.parameters for l in layers)
    return sum(choice_of(config[l.name]).bits * l.parameters for l in layers) / total


def energy_nj(layers: list[Layer], config: dict[str, str]) -> float:
    return sum(l.ops * energy_pj(choice_of(config[l.name]), l.spiking) for l in layers) / 1e3


def to_rules(config: dict[str, str]) -> dict:
    return {name: choice_of(label).rule() for name, label in config.items()}


class Weights:
    """Each layer's float weights and, per candidate, its quantized weights (MSE scales)."""

    def __init__(self, layers: list[Layer]):
        self.layers = {l.name: l for l in layers}
        self.original = {l.name: l.module.weight.detach().clone() for l in layers}
        self.cache: dict[tuple[str, str], torch.Tensor] = {}

    def quantized(self, name: str, label: str) -> torch.Tensor:
        if label == "float":
            return self.original[name]
        if (name, label) not in self.cache:
            c = choice_of(label)
            w = self.original[name]
            self.cache[name, label] = quantize.fake_quant(
                w, quantize.mse_scale(w, c.scheme, c.bits), c.scheme, c.bits)
        return self.cache[name, label]

    def apply(self, config: dict[str, str]) -> None:
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.module.weight.copy_(self.quantized(name, config.get(name, "float")))

    def restore(self) -> None:
        self.apply({})
