"""Networks built in snnTorch and Norse, exported to NIR with each framework's own exporter,
with each framework's own forward over the steps as the reference (test_nir_frameworks.py;
`python runtime_tests/nir_frameworks.py` prints the closing table of docs/nir.md's cases).

Each case returns (nir graph, input sequence [T, B, ...], the framework's outputs [T, B, ...],
the dt to compile with). The frameworks' settings that match NIR's documented semantics:
- snnTorch: reset_mechanism="zero" and reset_delay=False (NIR resets to v_reset at the
  spike's own step), per-neuron parameter tensors (its exporter infers shapes from them),
  dt = 1e-4 (what its exporter assumes);
- Norse 1.1.0: its exporter writes tau = dt / tau_mem_inv (NIR: tau = 1 / tau_mem_inv), so a
  Norse graph exported at dt compiles with --dt dt**2; and it writes the example's shape as
  the Input type: export one sample, without its batch axis.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

T, B = 24, 4


def _full(shape, value):
    return torch.full(shape if isinstance(shape, tuple) else (shape,), value)


def _snntorch_run(net, x):
    import snntorch.utils
    snntorch.utils.reset(net)
    with torch.no_grad():
        return torch.stack([net(x[t]) for t in range(x.shape[0])]).numpy()


def _snntorch_export(net, x):
    from snntorch.export_nir import export_to_nir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_to_nir(net, x[0], ignore_dims=[0])


class _SnnTorch(nn.Module):
    """Linear (or conv) -> neuron -> Linear -> Leaky, returning the last layer's spikes."""

    def __init__(self, kind: str, reset: str = "zero"):
        super().__init__()
        import snntorch as snn
        kw = dict(reset_mechanism=reset, reset_delay=False, init_hidden=True)
        self.kind = kind
        if kind == "conv":
            self.front = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1))
            self.n1 = snn.Leaky(beta=_full((4, 8, 8), 0.8), threshold=_full((4, 8, 8), 0.5),
                                **kw)
            self.mid = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 5))
        else:
            self.front, self.mid = nn.Linear(6, 10), nn.Linear(10, 5)
            if kind == "synaptic":
                self.n1 = snn.Synaptic(alpha=_full(10, 0.7), beta=_full(10, 0.8),
                                       threshold=_full(10, 0.5), **kw)
            elif kind == "recurrent":
                self.n1 = snn.RLeaky(beta=_full(10, 0.8), threshold=_full(10, 0.5),
                                     linear_features=10, **kw)
            else:
                self.n1 = snn.Leaky(beta=_full(10, 0.8), threshold=_full(10, 0.5), **kw)
        self.n2 = snn.Leaky(beta=_full(5, 0.9), threshold=_full(5, 0.4), output=True, **kw)

    def forward(self, x):
        spikes, _ = self.n2(self.mid(self.n1(self.front(x))))
        return spikes


def snntorch_case(kind: str, seed: int = 0, reset: str = "zero"):
    torch.manual_seed(seed)
    net = _SnnTorch(kind, reset).eval()
    shape = (2, 8, 8) if kind == "conv" else (6,)
    x = torch.rand(T, B, *shape) * 2
    return _snntorch_export(net, x), x.numpy(), _snntorch_run(net, x), 1e-4


def snntorch_as_nir_means(kind: str, seed: int = 0):
    """A subtract-reset snnTorch network as exported, and the same network with the zero
    reset its NIR file says (snnTorch writes v_reset = 0 for either)."""
    graph, x, _, dt = snntorch_case(kind, seed, reset="subtract")
    _, _, zero, _ = snntorch_case(kind, seed, reset="zero")
    return graph, x, zero, dt


def _norse_run(net, x: torch.Tensor, dt: float):
    """(the graph Norse exports from one sample, x, Norse's own outputs over the steps, the
    dt to compile with: dt squared, see the module docstring)."""
    from norse.torch.utils.export_nir import to_nir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = to_nir(net, x[0, 0], dt=dt)
    state, out = None, []
    with torch.no_grad():
        for t in range(x.shape[0]):
            y, state = net(x[t], state)
            out.append(y)
    return graph, x.numpy(), torch.stack(out).numpy(), dt * dt


def norse_case(kind: str, seed: int = 0, dt: float = 1e-3):
    """Linear -> LIFBoxCell (kind "box") or LIFCell ("cell") -> Linear -> LIBoxCell."""
    import norse.torch as nt
    torch.manual_seed(seed)
    zeros = torch.zeros(10)
    if kind == "box":
        cell = nt.LIFBoxCell(nt.LIFBoxParameters(tau_mem_inv=_full(10, 100.0), v_th=_full(10, 0.3),
                                                 v_leak=zeros, v_reset=zeros), dt=dt)
    else:
        cell = nt.LIFCell(nt.LIFParameters(tau_mem_inv=_full(10, 100.0), tau_syn_inv=_full(
            10, 200.0), v_th=_full(10, 0.3), v_leak=zeros, v_reset=zeros), dt=dt)
    net = nt.SequentialState(nn.Linear(6, 10), cell, nn.Linear(10, 4), nt.LIBoxCell(
        nt.LIBoxParameters(tau_mem_inv=_full(4, 50.0), v_leak=torch.zeros(4)), dt=dt)).eval()
    x = torch.rand(T, B, 6) * 2
    return _norse_run(net, x, dt)


def norse_conv(seed: int = 0, dt: float = 1e-3):
    """Conv2d -> LIFBoxCell -> Conv2d (stride 2) -> LIFBoxCell. Norse's exporter leaves the
    convs' input_shape unset, which nir.write cannot store: compiled from the graph in
    memory (snnc.compile(graph, dt=..., steps=...)). Norse cannot export a Flatten."""
    import norse.torch as nt
    torch.manual_seed(seed)

    def cell(shape):
        return nt.LIFBoxCell(nt.LIFBoxParameters(
            tau_mem_inv=_full(shape, 100.0), v_th=_full(shape, 0.1), v_leak=torch.zeros(shape),
            v_reset=torch.zeros(shape)), dt=dt)
    net = nt.SequentialState(nn.Conv2d(2, 4, 3, padding=1), cell((4, 8, 8)),
                             nn.Conv2d(4, 3, 3, stride=2, padding=1), cell((3, 4, 4))).eval()
    with torch.no_grad():
        net[2].weight.abs_()  # an excitatory second layer: it fires
    x = torch.rand(T, B, 2, 8, 8) * 3
    return _norse_run(net, x, dt)


CASES = {  # name: (framework, network kind, builder, NIR's semantics match the framework's)
    "snntorch_mlp": ("snnTorch 1.0.0", "MLP, Leaky", lambda: snntorch_case("mlp"), True),
    "snntorch_conv": ("snnTorch 1.0.0", "conv, Leaky, AvgPool, Flatten",
                      lambda: snntorch_case("conv"), True),
    "snntorch_synaptic": ("snnTorch 1.0.0", "MLP, Synaptic (CUBA)",
                          lambda: snntorch_case("synaptic"), True),
    "snntorch_recurrent": ("snnTorch 1.0.0", "recurrent, RLeaky (Linear feedback)",
                           lambda: snntorch_case("recurrent"), True),
    "snntorch_subtract": ("snnTorch 1.0.0", "MLP, Leaky, subtract reset (its default)",
                          lambda: snntorch_case("mlp", reset="subtract"), False),
    "norse_box": ("Norse 1.1.0", "MLP, LIFBoxCell, LIBoxCell", lambda: norse_case("box"), True),
    "norse_conv": ("Norse 1.1.0", "conv, LIFBoxCell (graph in memory)", norse_conv, True),
    "norse_cell": ("Norse 1.1.0", "MLP, LIFCell (CUBA), LIBoxCell", lambda: norse_case("cell"),
                   False),
}


def compiled_outputs(graph, x, dt, tmp):
    """ONNX Runtime's outputs of `graph` compiled by `snnc compile` through a NIR file, or by
    snnc.compile from memory when the framework's graph cannot be written (norse_conv)."""
    import os

    import nir

    from snnc.check import parity as H
    from snnc.driver import compile_file
    from snnc.nir.load import Settings
    from snnc.options import Options
    path = os.path.join(tmp, "model.nir")
    try:
        nir.write(path, graph)
    except TypeError:  # Norse's convs without an input_shape: h5py cannot store None
        import snnc
        result = snnc.compile(graph, dt=dt, steps=x.shape[0])
    else:
        result = compile_file(path, path + ".onnx", Options(), nir=Settings(dt, x.shape[0]))
    session = H.onnx_session(result.data)
    return session.run(None, {session.get_inputs()[0].name: x})[0], result


def main() -> None:
    import tempfile
    print("| framework | network | NIR nodes | compiles | max abs diff | spikes differing | "
          "NIR means the framework's semantics |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (framework, kind, build, same) in CASES.items():
        graph, x, want, dt = build()
        types = sorted({type(n).__name__ for n in graph.nodes.values()} - {"Input", "Output"})
        with tempfile.TemporaryDirectory() as tmp:
            try:
                got, _ = compiled_outputs(graph, x, dt, tmp)
            except Exception as error:  # noqa: BLE001 - a row of the table
                print(f"| {framework} | {kind} | {', '.join(types)} | no: {error} | | | |")
                continue
        spikes = np.isin(want, (0.0, 1.0)).all()
        differ = f"{np.mean(got != want) * 100:.1f} %" if spikes else "(membranes)"
        print(f"| {framework} | {kind} | {', '.join(types)} | yes | "
              f"{np.abs(got - want).max():.2g} | {differ} | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
