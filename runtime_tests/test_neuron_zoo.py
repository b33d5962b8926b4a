"""SpikingJelly's neuron zoo (runtime_tests/neuron_zoo.py): every neuron class snnc compiles,
in a small firing conv net, multi-step and single-step, plain and heterogeneous-quantized,
ONNX Runtime against PyTorch under the rounding rule (docs/testing.md), batch 3 and batch 1
from one file (its batch is symbolic); integer-valued spikes reach integer GEMMs."""

from __future__ import annotations

import numpy as np
import pytest

import neuron_zoo as NZ
import snnc
import zoo
from snnc.check import parity as H
from snnc.driver import compile_program
from snnc.options import Options

CASES = [(name, mode, q) for name, (_, _, modes) in NZ.NEURONS.items() for mode in modes
         for q in ("plain", "quant")]


@pytest.mark.parametrize("name,mode,q", CASES, ids=["-".join(c) for c in CASES])
def test_neuron_class_matches_pytorch(name, mode, q):
    model = NZ.build(name, mode)
    if q == "quant":
        model = snnc.quantize(model, zoo.heterogeneous(model))
    program = zoo.export(model, (3, *NZ.SHAPE[1:]))
    result = compile_program(program, Options(debug_outputs=True))
    x = np.random.default_rng(5).random((3, *NZ.SHAPE[1:]), dtype=np.float32)
    reference = H.torch_trace(program, x)
    session = H.onnx_session(result.data)
    onnx = H.onnx_trace(session, x)
    for ref, other in ((reference, onnx), (reference, H.interp_trace(result.graph, x)),
                       (H.interp_trace(result.lowered, x), onnx)):
        comparison = H.compare(ref, other, H.Comparison(), batch_axis=0, max_flips=2)
        assert not comparison.problems, comparison.problems
        assert comparison.samples == 3 and comparison.perturbed <= 1
    rates = {layer: float((s != 0).mean()) for layer, s in reference.spikes.items()}
    assert len(rates) == 3 and all(0.01 <= r <= 0.9 for r in rates.values()), rates
    one = H.onnx_trace(session, x[:1])  # batch 1 from the same file: the same spikes
    for layer, spikes in one.spikes.items():
        np.testing.assert_array_equal(spikes[:, 0], onnx.spikes[layer][:, 0])
    np.testing.assert_allclose(one.outputs[0][0], onnx.outputs[0][0], atol=1e-5)
    kind = NZ.NEURONS[name][1]
    casts = {n.attrs["to"] for n in result.lowered.nodes if n.op == "cast"}
    gemms = sum(n.op == "int_matmul" for n in result.lowered.nodes)
    if q == "quant" and kind is not None:  # conv2, fc1 and fc2 read spikes: integer GEMMs
        assert kind in casts and gemms >= 3, (casts, gemms)
    elif q == "quant":
        assert gemms == 0
