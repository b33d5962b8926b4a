"""NIR's neuron nodes as PyTorch modules, discretized with forward Euler at the user's dt
(docs/nir.md gives the equations). Each is multi-step: it takes the whole input sequence
`[T, B, ...]`, starts its states at 0, and loops over the steps, integrate, fire (v > v_threshold,
as NIR says), reset (v := v_reset where it fired), stacking its outputs. snnc's frontend
re-rolls such a loop into one step with explicit states (frontend/neuron_regions.py; the
classes of this module count as neurons there, as SpikingJelly's do).

Parameters are float32 buffers of the node's per-sample shape (or scalars), so that
they broadcast against `[B, ...]`: per-neuron arrays as NIR stores them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


DISCRETIZATIONS = ("euler", "exp")


def decay(dt: float, tau, discretize: str) -> np.ndarray:
    """The factor `a` of `v += a * (target - v)` over one step: dt / tau (forward Euler) or
    1 - exp(-dt / tau) (exp: exact for the step's input held over the step), in float64."""
    ratio = dt / np.asarray(tau, dtype=np.float64)
    return ratio if discretize == "euler" else -np.expm1(-ratio)


def _buffer(module: nn.Module, name: str, value) -> None:
    module.register_buffer(name, torch.as_tensor(np.asarray(value, dtype=np.float32)))


class Neuron(nn.Module):
    """A NIR neuron node: `step(x, *states) -> (output, *states)`; `states` of them."""

    states = 1

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        state = [torch.zeros_like(x_seq[0]) for _ in range(self.states)]
        out = []
        for t in range(x_seq.shape[0]):
            y, *state = self.step(x_seq[t], *state)
            out.append(y)
        return torch.stack(out)

    def fire(self, v):
        """(spikes, v reset): z = v > v_threshold, then v := v_reset where z. In training
        (QAT fine-tuning, snnc search) the spike's gradient is a fast sigmoid's, 1 / (1 +
        10 |v - v_threshold|)^2; its value is the step's, exactly (z + g - g)."""
        z = (v > self.v_threshold).to(v.dtype)
        if self.training and torch.is_grad_enabled():
            x = v - self.v_threshold
            soft = x / (1 + 10 * x.abs())
            z = z + (soft - soft.detach())
        return z, torch.where(z > 0, self.v_reset, v)


class LIF(Neuron):
    """tau dv/dt = (v_leak - v) + r I: v += dt / tau * (v_leak - v + r x)."""

    def __init__(self, node, dt: float, discretize: str = "euler"):
        super().__init__()
        _buffer(self, "a", decay(dt, node.tau, discretize))
        for name in ("r", "v_leak", "v_threshold", "v_reset"):
            _buffer(self, name, getattr(node, name))

    def step(self, x, v):
        v = v + self.a * (self.v_leak - v + self.r * x)
        return self.fire(v)


class LI(LIF):
    """LIF without firing: its output is the membrane."""

    def __init__(self, node, dt: float, discretize: str = "euler"):
        nn.Module.__init__(self)
        _buffer(self, "a", decay(dt, node.tau, discretize))
        for name in ("r", "v_leak"):
            _buffer(self, name, getattr(node, name))

    def step(self, x, v):
        v = v + self.a * (self.v_leak - v + self.r * x)
        return v, v


class IF(Neuron):
    """dv/dt = r I: v += dt * r * x."""

    def __init__(self, node, dt: float, discretize: str = "euler"):
        super().__init__()
        _buffer(self, "gain", dt * np.asarray(node.r, dtype=np.float64))
        for name in ("v_threshold", "v_reset"):
            _buffer(self, name, getattr(node, name))

    def step(self, x, v):
        return self.fire(v + self.gain * x)


class I(Neuron):  # noqa: E742 - NIR's name
    """IF without firing."""

    def __init__(self, node, dt: float, discretize: str = "euler"):
        super().__init__()
        _buffer(self, "gain", dt * np.asarray(node.r, dtype=np.float64))

    def step(self, x, v):
        v = v + self.gain * x
        return v, v


class CubaLIF(Neuron):
    """tau_syn dI/dt = -I + w_in S; tau_mem dv/dt = (v_leak - v) + r I: the current first
    (I += dt / tau_syn * (w_in x - I)), then the membrane with the new current."""

    states = 2

    def __init__(self, node, dt: float, discretize: str = "euler"):
        super().__init__()
        _buffer(self, "b", decay(dt, node.tau_syn, discretize))
        _buffer(self, "a", decay(dt, node.tau_mem, discretize))
        for name in ("w_in", "r", "v_leak", "v_threshold", "v_reset"):
            _buffer(self, name, getattr(node, name))

    def step(self, x, i, v):
        i = i + self.b * (self.w_in * x - i)
        v = v + self.a * (self.v_leak - v + self.r * i)
        z, v = self.fire(v)
        return z, i, v


class CubaLI(CubaLIF):
    """CubaLIF without firing."""

    def __init__(self, node, dt: float, discretize: str = "euler"):
        Neuron.__init__(self)
        _buffer(self, "b", decay(dt, node.tau_syn, discretize))
        _buffer(self, "a", decay(dt, node.tau_mem, discretize))
        for name in ("w_in", "r", "v_leak"):
            _buffer(self, name, getattr(node, name))

    def step(self, x, i, v):
        i = i + self.b * (self.w_in * x - i)
        v = v + self.a * (self.v_leak - v + self.r * i)
        return v, i, v


NEURONS = {"LIF": LIF, "LI": LI, "IF": IF, "I": I, "CubaLIF": CubaLIF, "CubaLI": CubaLI}


def summed(parts: list) -> torch.Tensor:
    """A node's input: the sum of its incoming edges' values, in edge order."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


class Recurrent(nn.Module):
    """A cycle of the NIR graph (module.schedule) as one loop over the steps: each step runs
    the members in `order` (module._cycle_order; neurons one step, stateless nodes on
    [B, ...]); an edge from a member not yet run in the step (or from itself) reads its
    value of the previous step (0 at step 0, shaped as a sample of the input). It reads one
    sequence from outside, `source`, and returns the sequence of one member, `exit`. Its
    states start as zeros shaped like the values they are added to."""

    def __init__(self, order: list, modules: dict, preds: dict, source: str, exit: str,
                 shape):
        super().__init__()
        # a value of the step before step 0: zeros of one sample of the input (broadcast
        # over the batch), so that what step 0 computes from it is a constant
        self.register_buffer("zero", torch.zeros(tuple(int(d) for d in shape)))
        self.order, self.source, self.exit = list(order), source, exit
        self.members = nn.ModuleDict({f"m{i}": modules[n] for i, n in enumerate(order)})
        self.preds = {n: list(preds[n]) for n in order}

    def forward(self, values: dict) -> torch.Tensor:
        x_seq = values[self.source]
        zero = self.zero
        last: dict = {}  # member -> its value at the previous step
        states: dict = {}
        out = []
        for t in range(x_seq.shape[0]):
            now: dict = {self.source: x_seq[t]}
            for i, n in enumerate(self.order):
                module = self.members[f"m{i}"]
                total = summed([now[p] if p in now else last.get(p, zero)
                                for p in self.preds[n]])
                if isinstance(module, Neuron):
                    if n not in states:
                        states[n] = [torch.zeros_like(total) for _ in range(module.states)]
                    y, *states[n] = module.step(total, *states[n])
                else:
                    y = module(total, lead=1)
                now[n] = y
            last = {n: now[n] for n in self.order}
            out.append(now[self.exit])
        return torch.stack(out)
