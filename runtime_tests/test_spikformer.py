"""Acceptance: spikformer_cifar10 with firing neurons, compiled from a torch.export file,
matches PyTorch in ONNX Runtime and in the IR interpreter, spike for spike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snnc import parity as H
from snnc import loader
from snnc.compile import compile_file, compile_program
from snnc.options import Options

SAMPLES, BATCH = 32, 8


@pytest.fixture(scope="module")
def compiled(spikformer, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "model.onnx"
    result = compile_file(spikformer["path"], str(out), Options(debug_outputs=True))
    return {"result": result, "path": str(out), "session": H.onnx_session(str(out))}


@pytest.fixture(scope="module")
def traces(spikformer, compiled):
    """PyTorch, ONNX Runtime and interpreter traces on 32 random images, 8 at a time."""
    rng = np.random.default_rng(1234)
    batches = []
    for _ in range(SAMPLES // BATCH):
        x = rng.random((BATCH, 3, 32, 32), dtype=np.float32)
        batches.append((H.torch_trace(spikformer["program_b8"], x),
                        H.onnx_trace(compiled["session"], x),
                        H.interp_trace(compiled["result"].graph, x)))
    return batches


def test_neurons_really_fire(traces):
    rates = {}
    for ref, _, _ in traces:
        for layer, spikes in ref.spikes.items():
            rates.setdefault(layer, []).append(float(spikes.mean()))
    rates = {k: float(np.mean(v)) for k, v in rates.items()}
    assert len(rates) == 25
    in_range = [k for k, r in rates.items() if 0.01 <= r <= 0.5]
    assert len(in_range) >= 20, rates
    assert all(r > 0 for r in rates.values()), rates
    assert np.abs(traces[0][0].outputs[0]).max() > 0.1  # the logits are not all zero


def _check(pairs, label):
    result = H.Comparison()
    for ref, got in pairs:
        H.compare(ref, got, result)
    print(f"{label}: {result.report()}")
    assert result.samples == SAMPLES
    assert not result.problems, result.problems[:5]
    assert result.max_flip_distance <= 1e-5
    assert result.max_logit_diff <= 1e-4
    assert result.perturbed <= SAMPLES // 2, "rounding flips should be rare"
    return result


def test_onnx_runtime_matches_pytorch(traces):
    _check([(ref, onnx) for ref, onnx, _ in traces], "ORT vs PyTorch")


def test_interpreter_matches_pytorch(traces):
    _check([(ref, it) for ref, _, it in traces], "interpreter vs PyTorch")


def test_onnx_runtime_matches_interpreter(traces):
    _check([(it, onnx) for _, onnx, it in traces], "ORT vs interpreter")


def test_batch_1_and_8_from_one_file(spikformer, compiled):
    session = compiled["session"]
    assert session.get_inputs()[0].shape[0] == "N"
    rng = np.random.default_rng(7)
    x8 = rng.random((8, 3, 32, 32), dtype=np.float32)
    out8 = H.onnx_trace(session, x8).outputs[0]
    assert out8.shape == (4, 8, 10)
    ref1 = H.torch_trace(spikformer["program"], x8[:1]).outputs[0]
    out1 = H.onnx_trace(session, x8[:1]).outputs[0]
    assert out1.shape == (4, 1, 10)
    assert np.abs(out1 - ref1).max() <= 1e-4
    # the same sample alone and inside a batch of 8 gives the same logits
    assert np.abs(out8[:, :1] - out1).max() <= 1e-4


def test_compiling_twice_is_byte_identical(spikformer, compiled, tmp_path):
    again = tmp_path / "again.onnx"
    compile_file(spikformer["path"], str(again), Options(debug_outputs=True))
    with open(compiled["path"], "rb") as f:
        assert f.read() == again.read_bytes()


def test_no_zero_state_tensors_and_compact_lif(compiled):
    model = compiled["result"].model
    from onnx import numpy_helper

    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        assert not (array.size > 16 and not array.any()), f"all-zero tensor {init.name}"
    ops = [n.op_type for n in model.graph.node]
    # 25 LIF layers x 4 steps: one threshold comparison each, no more
    assert ops.count("GreaterOrEqual") == 100
    names = [n.name for n in model.graph.node]
    assert any(n.startswith("blocks.0.attn.qkv_lif/") for n in names)
    assert any(i.name.startswith("blocks.0.attn.qkv_conv_bn.0.weight")
               for i in model.graph.initializer)


@pytest.mark.parametrize("steps", [1, 2, 8])
def test_other_timesteps(steps):
    """T = 1, 2, 8 (T = 4 is the fixture above): ORT matches PyTorch."""
    from snnc.demo import export, firing_spikformer

    model = firing_spikformer(steps=steps, seed=steps)
    result = compile_program(export(model, torch.zeros(1, 3, 32, 32)),
                             Options(debug_outputs=True))
    session = H.onnx_session(result.data)
    x = np.random.default_rng(steps).random((4, 3, 32, 32), dtype=np.float32)
    ref = H.torch_trace(export(model, torch.zeros(4, 3, 32, 32)), x)
    got = H.onnx_trace(session, x)
    assert got.outputs[0].shape == (steps, 4, 10)
    comparison = H.compare(ref, got, H.Comparison())
    assert not comparison.problems, comparison.problems[:3]
    assert comparison.max_logit_diff <= 1e-4
    assert sum(r > 0.01 for r in comparison.layers_firing.values()) >= 10


def test_loaded_program_keeps_source_paths(spikformer):
    program = loader.load_program(spikformer["path"])
    from snnc.frontend import lift

    graph = lift(program)
    sources = {n.source.split(" ")[0] for n in graph.nodes if n.op == "neuron"}
    assert "blocks.3.mlp.neuron2" in sources
