"""The IR: stable text form, the verifier's checks, the interpreter on a tiny graph."""

from __future__ import annotations

import numpy as np
import pytest

from snnc.errors import VerificationError
from snnc.ir.builder import Builder
from snnc.ir.graph import Graph, Node, TimeSpec, Value
from snnc.ir.interp import run
from snnc.ir.verify import verify

LIF = {"leak": "div", "leak_value": 2.0, "decay_input": True, "threshold": 1.0, "v_reset": 0.0}


def one_step_lif(lif: dict = LIF, bias=None) -> Graph:
    b = Builder()
    x = b.input(("N", 4))
    w = b.const(np.eye(4) * 1.5, "w")
    inputs = [x, w] if bias is None else [x, w, b.const(bias, "b")]
    y, = b.add("linear", inputs, source="fc", hint="y")
    v = b.state(("N", 4), "lif")
    spike, v_next = b.add("neuron", [y, v], lif, source="lif", hint="s")
    b.write(v, v_next)
    return b.build([spike], TimeSpec(3, ("repeat",), ("stack",)))


def test_text_form_is_stable():
    expected = """graph(%x: f32[N,4])
  time steps=3 inputs=['repeat'] outputs=['stack']
  state %lif.v: f32[N,4] init=0.0
  %w: f32[4,4] = const
  %y: f32[N,4] = linear(%x, %w)  # fc
  %s.0: f32[N,4], %s.1: f32[N,4] = neuron(%y, %lif.v) leak='div' leak_value=2.0 \
decay_input=True threshold=1.0 v_reset=0.0  # lif
  next %lif.v = %s.1
  return %s.0"""
    assert str(one_step_lif()) == expected


def test_text_form_ignores_construction_details():
    """Equal graphs print equally: the order an attribute dict was built in, a constant's
    memory layout and numpy's global print options do not show in the text."""
    bias = [0.5, 1e-7, 3.0, -2.25]
    plain = one_step_lif(bias=bias)
    text = str(plain)
    assert "  %b: f32[4] = const [ 5.00e-01, 1.00e-07, 3.00e+00,-2.25e+00]\n" in text
    assert "neuron(%y, %lif.v) leak='div' leak_value=2.0 decay_input=True threshold=1.0 " \
           "v_reset=0.0  # lif" in text
    shuffled = one_step_lif(lif=dict(reversed(LIF.items())), bias=bias)
    strided = np.array([0.5, 9, 1e-7, 9, 3.0, 9, -2.25, 9], np.float32)[::2]  # not contiguous
    relaid = shuffled.replace(constants={
        v: strided if v.hint == "b" else np.asfortranarray(a)
        for v, a in shuffled.constants.items()})
    with np.printoptions(precision=2, suppress=True, floatmode="fixed", sign="+",
                         legacy="1.13"):
        assert str(relaid) == text


def test_graphs_are_immutable():
    """Frozen dataclasses, read-only attrs/constants/metadata, read-only constant arrays;
    what a caller passed in is copied, so changing it later changes nothing."""
    g = one_step_lif()
    lif, (w, array) = g.nodes[1], next(iter(g.constants.items()))
    with pytest.raises(TypeError):
        lif.attrs["threshold"] = 2.0
    with pytest.raises(TypeError):
        g.constants[w] = np.zeros((4, 4), np.float32)
    with pytest.raises(TypeError):
        g.metadata["k"] = "v"
    with pytest.raises(ValueError, match="read-only"):
        array[0, 0] = 7.0
    with pytest.raises(AttributeError):
        g.nodes = ()
    assert isinstance(g.replace(nodes=list(g.nodes)).nodes, tuple)
    attrs = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1}
    mine = np.ones((2, 1, 1, 1), np.float32)
    x, k, y = Value("f32", ("N", 1, 2, 2)), Value("f32", (2, 1, 1, 1), "k"), \
        Value("f32", ("N", 2, 2, 2))
    conv = Node("conv", (x, k), (y,), attrs)
    graph = Graph((x,), (conv,), (y,), {k: mine})
    attrs["groups"] = 2
    mine[0] = 5.0
    assert conv.attrs["groups"] == 1 and conv.attrs["stride"] == (1, 1)
    assert graph.constants[k].max() == 1.0
    verify(graph, "immutability test")
    # a pass's copies are writable and build a new graph
    changed = g.replace(constants={w: array * 2})
    assert changed.constants[w][0, 0] == 3.0 and array[0, 0] == 1.5
    assert changed.replace().constants[w] is changed.constants[w]  # no copy of a frozen array


def test_interpreter_runs_time():
    out, = run(one_step_lif(), [np.ones((2, 4), np.float32)])
    # y = 1.5: h = 0.75 (no spike), then 0.75 + (1.5 - 0.75)/2 = 1.125 (spike, reset to 0), ...
    assert out.shape == (3, 2, 4)
    assert out[:, 0, 0].tolist() == [0.0, 1.0, 0.0]


def test_unknown_op_fails_when_built():
    with pytest.raises(ValueError, match="unknown IR op"):
        Node("frobnicate", (), ())


def test_verifier_catches_use_before_definition():
    g = one_step_lif()
    swapped = g.replace(nodes=(g.nodes[1], g.nodes[0]))
    with pytest.raises(VerificationError, match="used before it is defined") as info:
        verify(swapped, "pass test_swap")
    assert "after pass test_swap" in str(info.value)
    assert "<-- here" in str(info.value)


def test_verifier_catches_wrong_stored_shape():
    g = one_step_lif()
    fc = g.nodes[0]
    bad_out = Value("f32", ("N", 5), "y")
    bad = Node(fc.op, fc.inputs, (bad_out,), fc.attrs, fc.source)
    with pytest.raises(VerificationError, match="infers"):
        verify(g.replace(nodes=(bad, g.nodes[1])), "pass shape")


def test_verifier_catches_bad_attributes_and_double_definition():
    g = one_step_lif()
    lif = g.nodes[1]
    bad = Node("neuron", lif.inputs, lif.outputs, {**lif.attrs, "threshold": "high"}, "")
    with pytest.raises(VerificationError, match="threshold"):
        verify(g.replace(nodes=(g.nodes[0], bad)), "pass attrs")
    with pytest.raises(VerificationError, match="defined twice"):
        verify(g.replace(nodes=(g.nodes[0], g.nodes[0], g.nodes[1])), "pass twice")


def test_verifier_catches_state_without_time():
    with pytest.raises(VerificationError, match="cannot carry state"):
        verify(one_step_lif().replace(time=None), "pass time")


def test_negative_axes_infer_like_positive_ones():
    """concat, split and chunk along axis -1 infer the shapes of axis rank-1 (found by a
    review: concat's inferred shape repeated the tail)."""
    from snnc.ir.ops import OPS

    t = ("f32", ("N", 8, 5))
    assert OPS["concat"].infer([t, t], {"axis": -1}) == [("f32", ("N", 8, 10))]
    assert OPS["split"].infer([t], {"axis": -1, "sizes": [2, 3]}) == [
        ("f32", ("N", 8, 2)), ("f32", ("N", 8, 3))]
    assert OPS["chunk"].infer([("f32", ("N", 8, 6))], {"axis": -1, "count": 2}) == [
        ("f32", ("N", 8, 3))] * 2
