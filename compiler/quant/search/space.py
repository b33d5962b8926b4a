"""The search space: each layer's candidates (uniform 2..8 and PoT 2..5 bits, ternary and
binary, float if allowed), the hardware cost of a configuration (average bits, estimated energy), and the
candidates' quantized weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from snnc.check import energy
from snnc.errors import BadInputError
from snnc.quant import quantize
from snnc.quant.weights import FIXED_BITS, stored_bits


@dataclass(frozen=True)
class Choice:
    scheme: str  # "uniform", "pot", "ternary", "binary" or "float"
    code_bits: int  # the code width k the quantizer takes (ternary 2, binary 1); 32 for float

    @property
    def bits(self) -> float:
        """Bits per weight as the pack stores them (ternary 1.6): what the budget counts."""
        return 32 if self.scheme == "float" else stored_bits(self.scheme, self.code_bits)

    @property
    def label(self) -> str:
        if self.scheme in ("float", *FIXED_BITS):
            return self.scheme
        return f"{self.scheme}{self.code_bits}"

    def rule(self):
        if self.scheme in ("float", *FIXED_BITS):
            return "float" if self.scheme == "float" else {"scheme": self.scheme}
        return {"scheme": self.scheme, "bits": self.code_bits}


def candidates(allow_float: bool = False) -> list[Choice]:
    """Every scheme at every width snnc quantize takes (docs/quantization.md: uniform 2..8,
    PoT 2..5 bits, ternary, binary), and float if allowed."""
    out = [Choice(s, b) for s, bits in quantize.SCHEMES.items() for b in bits]
    return out + [Choice("float", 32)] if allow_float else out


def choice_of(label: str) -> Choice:
    if label == "float":
        return Choice("float", 32)
    if label in FIXED_BITS:
        return Choice(label, FIXED_BITS[label])
    scheme = "uniform" if label.startswith("uniform") else "pot"
    return Choice(scheme, int(label[len(scheme):]))


def energy_pj(choice: Choice, spiking: bool) -> float:
    """Energy of one synaptic operation of a layer with `choice` weights (snnc.check.energy,
    the model `snnc compile --report` uses too)."""
    return energy.op_pj(choice.scheme, choice.code_bits, spiking)


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
    """Estimated energy per sample of `config` (a layer's label "float": float32 weights)."""
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
                w, quantize.mse_scale(w, c.scheme, c.code_bits), c.scheme, c.code_bits)
        return self.cache[name, label]

    def apply(self, config: dict[str, str]) -> None:
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.module.weight.copy_(self.quantized(name, config.get(name, "float")))

    def restore(self) -> None:
        self.apply({})
