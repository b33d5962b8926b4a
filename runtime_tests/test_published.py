"""Published spiking transformers as their authors wrote them (runtime_tests/published/, each
file naming its repository, commit and licence): each is built small and firing (T = 2),
compiled from a batch-1 export, run in ONNX Runtime on 4 samples and on each sample alone,
and compared with PyTorch layer by layer under the rounding rule (docs/testing.md). Every
neuron layer must fire on the random input: a silent layer would make the comparison
vacuous.

A fixture snnc does not compile yet is marked xfail(strict=True) with the refusal it gives
on main (raises=SnncError: a crash is not an expected failure). When the compiler learns
it, the test XPASSes, fails, and the marker has to be removed; coverage.py measures them all.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import zoo

import snnc
from snnc.check import parity as H
from snnc.driver import compile_program
from snnc.options import Options

# runtime_tests/coverage.py, loaded by path: the name `coverage` is also coverage.py's (PyPI)
_spec = importlib.util.spec_from_file_location(
    "snnc_coverage_harness", os.path.join(os.path.dirname(__file__), "coverage.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
FIXTURES = harness.published_fixtures(extra=False)
BATCH = 4

# what snnc does not compile yet (main at f339a5a; coverage.py's table): name -> why
NOT_YET = {
    "sglformer": "window partition into the batch axis ([T, B*4, C, H/2, W/2]), then "
                 "flatten(0, 1): the axis tracker has no batch axis carrying feature factors",
    "tp_sdt": "TP-Spikformer's token pruning: each block picks its k*k most informative "
              "tokens by a score over all T steps (that part compiles: whole-run time slices "
              "and means), runs attention on them and writes them back: topk, gather and "
              "scatter of data-dependent indices, and cosine_similarity, have no lowering",
    "statten_chunk1": "view [T, B, h, N, d] -> [T, 1, B, h, N, d] at a batch-1 export reads "
                      "as [T, B, F, ...] (a unit axis right after time is taken for the "
                      "batch), so after permute(0, 2, 3, 1, 4, 5) the later reshape merges "
                      "the axis it took for the batch; exported at batch 2 it is unambiguous",
}


def _params():
    for name in sorted(FIXTURES):
        marks = [pytest.mark.xfail(strict=True, raises=snnc.SnncError, reason=NOT_YET[name])] \
            if name in NOT_YET else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_params()))
def test_published_matches_pytorch(name):
    model, shape = FIXTURES[name][1](T=2, seed=0)
    result = compile_program(zoo.export(model, shape), Options(debug_outputs=True))
    x = np.random.default_rng(7).random((BATCH, *shape[1:]), dtype=np.float32)
    reference = H.torch_trace(zoo.export(model, (BATCH, *shape[1:])), x)
    session = H.onnx_session(result.data)
    got = H.onnx_trace(session, x)
    axis = 1 if result.graph.time.outputs[0] == "stack" else 0
    comparison = zoo.compared(reference, got, batch_axis=axis)
    assert comparison.samples == BATCH, comparison.report()
    assert set(comparison.top1_changed) <= set(comparison.perturbed_samples)
    silent = [layer for layer, rate in comparison.layers_firing.items() if rate == 0]
    assert comparison.layers_firing and not silent, f"silent neuron layers: {silent}"
    assert np.ptp(reference.outputs[0], axis=axis).max() > 0, "the same output for every sample"
    for i in range(BATCH):  # batch 1 and batch 4 from the one file
        alone = H.onnx_trace(session, x[i:i + 1])
        for layer, spikes in alone.spikes.items():
            assert np.array_equal(np.take(got.spikes[layer], [i], axis=1), spikes), layer
