"""snnTorch and Norse networks through their own NIR exporters, compiled by snnc and run in
ONNX Runtime, against the frameworks' own forward (nir_frameworks.py): identical spikes
(membranes to 1e-6) where the framework's semantics are NIR's, plain and quantized; where
they are not, what NIR says is what snnc compiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nir_frameworks as FW
import nir_graphs as G
import snnc
from snnc.check import parity as H
from snnc.nir.load import export_module
from snnc.nir.module import NIRModule

SAME = [name for name, case in FW.CASES.items() if case[3]]


@pytest.mark.parametrize("name", SAME)
def test_framework_network_matches_the_framework(tmp_path, name):
    graph, x, want, dt = FW.CASES[name][2]()
    got, result = FW.compiled_outputs(graph, x, dt, str(tmp_path))
    assert got.shape == want.shape
    if np.isin(want, (0.0, 1.0)).all():
        assert 0 < want.mean() < 1, want.mean()  # it fires, not everywhere
        np.testing.assert_array_equal(got, want)
    else:
        assert np.abs(want).max() > 0.01
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert result.graph.states  # neurons re-rolled into states, not unrolled


def test_snntorch_subtract_reset_compiles_as_nir_says(tmp_path):
    """snnTorch writes its subtract reset as v_reset = 0: the file means a zero reset, and
    the compiled model equals snnTorch with reset_mechanism="zero" (and differs from the
    subtract-reset network it was exported from, which fires differently)."""
    graph, x, zero, dt = FW.snntorch_as_nir_means("mlp")
    got, _ = FW.compiled_outputs(graph, x, dt, str(tmp_path))
    _, _, subtract, _ = FW.snntorch_case("mlp", reset="subtract")
    np.testing.assert_array_equal(got, zero)
    assert np.mean(got != subtract) > 0.01


def test_norse_cuba_cell_compiles_as_nir_says(tmp_path):
    """Norse's LIFCell (current-based) integrates its membrane with the previous step's
    current and adds the input to the current after; NIR's CubaLIF (forward Euler) uses the
    new current: the compiled model follows NIR (the NumPy reference of docs/nir.md)."""
    graph, x, _, dt = FW.norse_case("cell")
    got, _ = FW.compiled_outputs(graph, x, dt, str(tmp_path))
    reference = G.simulate(graph, dt, x)[0]
    np.testing.assert_allclose(got, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,gemms", [("snntorch_mlp", 1), ("snntorch_recurrent", 2),
                                        ("snntorch_conv", 0)])
def test_quantized_framework_network_matches_its_quantized_source(name, gemms):
    """A framework's network quantized (its NIRModule through snnc.quantize, mixed bits and
    schemes) compiles with integer GEMMs on the layers reading spikes (the second Linear;
    the recurrent one; none in the conv net, whose Linear reads averages of spikes), and
    ONNX Runtime matches the quantized source under the rounding rule."""
    graph, x, _, dt = FW.CASES[name][2]()
    module = NIRModule(graph, dt).eval()
    layers = [n for n, m in module.named_modules() if isinstance(m, (torch.nn.Linear,
                                                                     torch.nn.Conv2d))]
    schemes = [(8, "uniform"), (4, "pot"), (3, "uniform"), (5, "uniform")]
    quantized = snnc.quantize(module, {n: {"bits": b, "scheme": s}
                                       for n, (b, s) in zip(layers, schemes)})
    result = snnc.compile(export_module(quantized, x.shape[0], graph))
    reference = H.torch_trace(export_module(quantized, x.shape[0], graph, batch=x.shape[1]), x)
    session = H.onnx_session(result.data)
    comparison = H.compare(reference, H.onnx_trace(session, x), H.Comparison(), batch_axis=1,
                           max_flips=4, perturbed_tol=0.5)
    assert not comparison.problems, comparison.problems
    layers = {n.source for n in result.lowered.nodes if n.op == "int_matmul"}  # per step
    assert len(layers) == gemms, layers  # in the unrolled graph: the layers, once each
