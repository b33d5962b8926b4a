"""The IR: stable text form, the verifier's checks, the interpreter on a tiny graph."""

from __future__ import annotations

import numpy as np
import pytest

from snnc.builder import Builder
from snnc.errors import VerificationError
from snnc.interp import run
from snnc.ir import Graph, Node, TimeSpec, Value
from snnc.verify import verify

LIF = {"leak": "div", "leak_value": 2.0, "decay_input": True, "threshold": 1.0, "v_reset": 0.0}


def one_step_lif() -> Graph:
    b = Builder()
    x = b.input(("N", 4))
    w = b.const(np.eye(4) * 1.5, "w")
    y, = b.add("linear", [x, w], source="fc", hint="y")
    v = b.state(("N", 4), "lif")
    spike, v_next = b.add("neuron", [y, v], LIF, source="lif", hint="s")
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
    assert str(one_step_lif()) == str(one_step_lif())


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
