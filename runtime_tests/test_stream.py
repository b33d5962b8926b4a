"""--timesteps stream: one step per run; stepping it T times equals the unrolled model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from snnc.check import parity as H
from snnc.demo import conv_snn, export, firing_spikformer
from snnc.driver import compile_program
from snnc.options import Options


def step_through(session, contract, x):
    """Run a stream model T times from its initial states; spikes and outputs per step."""
    batch = x.shape[0]
    feeds = {"x": x}
    for state in contract["states"]:
        shape = [batch if d == "N" else d for d in state["shape"]]
        feeds[state["input"]] = np.full(shape, state["init"], np.float32)
    names = [o.name for o in session.get_outputs()]
    outputs, spikes = [], {}
    for _ in range(contract["steps"]):
        result = dict(zip(names, session.run(None, feeds)))
        outputs.append(result["output"])
        for name, value in result.items():
            if name.startswith("spike/"):
                spikes.setdefault(name[len("spike/"):], []).append(value)
        for state in contract["states"]:
            feeds[state["input"]] = result[state["output"]]
    return np.stack(outputs), {k: np.stack(v) for k, v in spikes.items()}


@pytest.mark.parametrize("name", ["conv_snn_reset", "spikformer", "quantized_spikformer"])
def test_stream_stepped_equals_unrolled_exactly(name, request):
    if name == "quantized_spikformer":  # folded: the states are in per-channel units
        program, shape = request.getfixturevalue(name)["program"], (1, 3, 32, 32)
    elif name == "spikformer":
        model, shape = firing_spikformer(steps=4, seed=1), (1, 3, 32, 32)
    else:
        model, shape = conv_snn(neuron="lif_reset", seed=4), (1, 2, 12, 12)
    if name != "quantized_spikformer":
        program = export(model, torch.zeros(*shape))
    unrolled = compile_program(program, Options(debug_outputs=True))
    stream = compile_program(program, Options(debug_outputs=True, timesteps="stream"))
    contract = json.loads(dict((p.key, p.value) for p in stream.model.metadata_props)
                          ["snnc.stream"])
    assert [i.name for i in stream.model.graph.input][1:] == \
        [s["input"] for s in contract["states"]]
    x = np.random.default_rng(2).random((3, *shape[1:]), dtype=np.float32)
    want = H.onnx_trace(H.onnx_session(unrolled.data), x)
    per_step, spikes = step_through(H.onnx_session(stream.data), contract, x)
    assert set(spikes) == set(want.spikes)
    for layer, value in spikes.items():
        assert np.array_equal(value, want.spikes[layer]), layer
    assert np.mean([v.mean() for v in spikes.values()]) > 0.05
    if contract["outputs"] == ["stack"]:
        assert np.array_equal(per_step, want.outputs[0])
    else:  # the model averages over time; the stream gives each step's value
        assert contract["outputs"] == ["mean"]
        np.testing.assert_allclose(per_step.mean(axis=0), want.outputs[0], rtol=1e-6, atol=1e-7)


def test_stream_graph_does_not_grow_with_timesteps():
    sizes = {}
    for steps in (4, 16):
        program = export(conv_snn(steps=steps), torch.zeros(1, 2, 12, 12))
        result = compile_program(program, Options(timesteps="stream"))
        sizes[steps] = (len(result.model.graph.node), len(result.data))
    assert sizes[4][0] == sizes[16][0]
    assert abs(sizes[4][1] - sizes[16][1]) < 16  # only the recorded T differs
