"""Each pass four ways: it fires (golden text), a near miss leaves the graph unchanged (the
same object back), meaning is preserved (interpreter before vs after), the verifier passes.
A real SpikingJelly model goes through the whole pipeline at the end."""

from __future__ import annotations

import numpy as np
import torch

from snnc.ir.builder import Builder
from snnc.ir.graph import TimeSpec
from snnc.ir.interp import run
from snnc.ir.verify import verify
from snnc.passes import (expose_state, fold_batchnorm, merge_reshapes, remove_dead_nodes,
                         unroll_timesteps)

LIF = {"leak": "div", "leak_value": 2.0, "decay_input": True, "threshold": 1.0, "v_reset": 0.0}
RNG = np.random.default_rng(0)
CONV = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}


def conv_bn_graph(extra_user: bool = False):
    b = Builder()
    x = b.input(("N", 3, 6, 6))
    w = b.const(RNG.normal(size=(4, 3, 3, 3)), "conv.weight")
    bn = [b.const(RNG.uniform(0.5, 2, 4), "bn.weight"), b.const(RNG.normal(size=4), "bn.bias"),
          b.const(RNG.normal(size=4), "bn.mean"), b.const(RNG.uniform(0.5, 2, 4), "bn.var")]
    y, = b.add("conv", [x, w], CONV, "conv", "y")
    z, = b.add("batch_norm", [y, *bn], {"eps": 1e-5}, "bn", "z")
    outputs = [z, y] if extra_user else [z]
    return b.build(outputs, None)


def test_fold_batchnorm_fires():
    before = conv_bn_graph()
    after = fold_batchnorm.run(before)
    verify(after, "fold_batchnorm")
    assert [n.op for n in after.nodes] == ["conv"]
    assert str(after).splitlines()[-2] == (
        "  %z: f32[N,4,6,6] = conv(%x, %conv.weight, %conv.bias) stride=[1,1] padding=[1,1] "
        "dilation=[1,1] groups=1  # conv")
    x = RNG.random((2, 3, 6, 6), dtype=np.float32)
    np.testing.assert_allclose(run(after, [x])[0], run(before, [x])[0], rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_near_miss():
    g = conv_bn_graph(extra_user=True)  # the conv output is also a graph output
    assert fold_batchnorm.run(g) is g


def one_step_net(init: float = 0.0, out_mode: str = "stack", in_mode: str = "repeat"):
    b = Builder()
    x = b.input(("N", 4))
    w = b.const(RNG.normal(size=(4, 4)) + 1.0, "fc.weight")
    y, = b.add("linear", [x, w], source="fc", hint="y")
    v = b.state(("N", 4), "lif", init)
    spike, v_next = b.add("neuron", [y, v], LIF, source="lif", hint="s")
    b.write(v, v_next)
    b.add("relu", [spike], source="dead", hint="unused")  # per step, read by nobody
    return b.build([spike], TimeSpec(3, (in_mode,), (out_mode,)))


def test_unroll_fires():
    after = unroll_timesteps.run(one_step_net())
    verify(after, "unroll_timesteps")
    text = str(after)
    assert "time" not in text.splitlines()[1] and after.states == ()
    # the linear layer reads only the repeated input and a constant: computed once
    assert text.count("= linear(") == 1
    assert text.count("= neuron(") == 3
    assert "neuron(%y, %v_init0)" in text and "neuron(%y, %s.1.t0)" in text
    # the dead relu runs once, on all three steps at once
    assert "%unused: f32[3N,4] = relu(%s.0)" in text
    assert "%s.0: f32[3N,4] = concat(%s.0.t0, %s.0.t1, %s.0.t2) axis=0" in text
    assert text.splitlines()[-2] == (
        "  %s.0_2: f32[3,N,4] = reshape(%s.0) shape=[3,'N',4]  # output (over time)")


def test_unroll_near_miss():
    g = unroll_timesteps.run(one_step_net())
    assert unroll_timesteps.run(g) is g  # already unrolled: nothing to do


def test_unroll_preserves_meaning_exactly():
    for init, out_mode, in_mode in [(0.0, "stack", "repeat"), (-0.3, "mean", "repeat"),
                                    (0.0, "sum", "seq")]:
        g = one_step_net(init, out_mode, in_mode)
        x = RNG.random((3, 5, 4) if in_mode == "seq" else (5, 4), dtype=np.float32) * 3
        after = unroll_timesteps.run(g)
        verify(after, "unroll_timesteps")
        expected, got = run(g, [x])[0], run(after, [x])[0]
        assert got.shape == expected.shape
        assert np.array_equal(got, expected)
        assert 0 < expected.mean() < 3


def test_remove_dead_nodes_fires_and_near_miss():
    g = unroll_timesteps.run(one_step_net())
    after = remove_dead_nodes.run(g)
    verify(after, "remove_dead_nodes")
    assert "relu" not in str(after) and "relu" in str(g)
    assert len(after.nodes) == len(g.nodes) - 1
    x = RNG.random((2, 4), dtype=np.float32)
    assert np.array_equal(run(after, [x])[0], run(g, [x])[0])
    assert remove_dead_nodes.run(after) is after


def test_pipeline_on_a_real_model_preserves_meaning(tmp_path):
    from snnc.demo import conv_snn, export
    from snnc.frontend.lift import lift
    from snnc.pipeline import run_passes

    program = export(conv_snn(), torch.zeros(1, 2, 12, 12))
    graph = lift(program)
    lowered = run_passes(graph, dump_dir=str(tmp_path))
    assert "batch_norm" not in {n.op for n in lowered.nodes}
    x = RNG.random((3, 2, 12, 12), dtype=np.float32)
    np.testing.assert_allclose(run(lowered, [x])[0], run(graph, [x])[0], atol=1e-4)
    from snnc.pipeline import PASSES

    assert len(list(tmp_path.iterdir())) == len(PASSES) + 1  # the frontend, then each pass


def reshape_chain(extra_user: bool = False):
    b = Builder()
    x = b.input(("N", 4, 6))
    a, = b.add("reshape", [x], {"shape": ["N", 4, 2, 3]}, "blk", "a")
    c, = b.add("reshape", [a], {"shape": ["N", 24]}, "blk", "c")
    back, = b.add("reshape", [c], {"shape": ["N", 4, 6]}, "blk", "back")
    y, = b.add("add", [back, x], {}, "blk", "y")
    return b.build([y, a] if extra_user else [y, c], None)


def test_merge_reshapes_fires():
    g = reshape_chain()
    after = merge_reshapes.run(g)
    verify(after, "merge_reshapes")
    lines = str(after).splitlines()
    assert lines[1:] == [
        "  %c: f32[N,24] = reshape(%x) shape=['N',24]  # blk",
        "  %y: f32[N,4,6] = add(%x, %x)  # blk",
        "  return %y, %c"]
    x = RNG.random((2, 4, 6), dtype=np.float32)
    for want, got in zip(run(g, [x]), run(after, [x])):
        assert np.array_equal(want, got)


def test_merge_reshapes_near_miss():
    b = Builder()
    x = b.input(("N", 4, 6))
    a, = b.add("reshape", [x], {"shape": ["N", 24]}, "blk", "a")
    y, = b.add("relu", [a], {}, "blk", "y")
    g = b.build([y], None)
    assert merge_reshapes.run(g) is g  # one reshape that changes the shape: nothing to do
    with_reader = reshape_chain(extra_user=True)  # the inner reshape is also an output
    after = merge_reshapes.run(with_reader)
    assert "%a: f32[N,4,2,3] = reshape(%x)" in str(after)


def test_expose_state_fires():
    import json

    after = expose_state.run(one_step_net(init=-0.25))
    verify(after, "expose_state")
    text = str(after)
    assert text.splitlines()[0] == "graph(%x: f32[N,4], %lif.v: f32[N,4])"
    assert text.splitlines()[-1] == "  return %s.0, %s.1"
    assert after.input_names[1] == "state_in/lif" and after.output_names[1] == "state_out/lif"
    contract = json.loads(after.metadata["snnc.stream"])
    assert contract["steps"] == 3 and contract["states"][0]["init"] == -0.25


def test_expose_state_near_miss():
    g = unroll_timesteps.run(one_step_net())
    assert expose_state.run(g) is g  # no time spec: nothing to expose


def test_expose_state_steps_equal_the_time_loop():
    g = one_step_net(init=-0.25)
    after = expose_state.run(g)
    x = RNG.random((5, 4), dtype=np.float32) * 3
    v = np.full((5, 4), -0.25, np.float32)
    steps = []
    for _ in range(3):
        spike, v = run(after, [x, v])
        steps.append(spike)
    assert np.array_equal(np.stack(steps), run(g, [x])[0])
