"""snnc search --method drift (docs/search.md, "drift"): the drift sweep measures what it says
on a trained SNN whose neurons fire, the beam search solves the additive problem it is given
(exactly, when the beam is wide enough to hold every partial configuration), a --max-drop
search bisects to the fewest bits within the drop, and Ctrl-C mid-sweep resumes to the
configuration an uninterrupted search chooses."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from test_search import blobs, interrupted, snnc_cli, trained_conv_snn

import snnc
from snnc.quant.search import api, drift
from snnc.quant.search.space import average_bits


@pytest.fixture(scope="module")
def engine():
    """A drift search set up as snnc.search sets it up, on snnc.demo:conv_snn trained on the
    blobs, with its drift sweep done (under --max-drop: every candidate of every layer)."""
    (xt, yt), (xv, yv) = blobs(256, 0), blobs(96, 1)
    model = trained_conv_snn(xt, yt)
    opts = api.Options(method="drift", max_drop=5.0, finetune_epochs=0, drift_samples=48)
    eng = api.prepare(model, api.Data(xt, yt), api.Data(xv, yv), opts)
    eng.table = drift.sweep(eng)
    return eng


def test_the_sweep_measures_firing_neurons(engine):
    """Every candidate of every layer measured; the float model's neurons fire on the drift
    samples (a drift of silent neurons would measure nothing); a layer at 2-bit codes drifts
    more than at 8 bits, and binary more than uniform 8 bits, for every layer."""
    probes = drift.Probes(engine.model)
    assert len(probes.neurons) >= 2
    probes.reference(engine.runner, engine.val.x[:48])
    fired = [sum(float(s.sum()) for _, s in calls) for calls in probes.ref.values()]
    assert all(f > 0 for f in fired), fired
    assert all(v is not None for calls in probes.ref.values() for v, _ in calls)  # membranes
    table = engine.table
    assert set(table) == {l.name for l in engine.layers}
    for name, row in table.items():
        assert set(row) == set(engine.labels)
        assert all(math.isfinite(d) and d >= 0 for d in row.values())
        assert row["uniform2"] > row["uniform8"] > 0 and row["binary"] > row["uniform8"]


@pytest.mark.parametrize("budget", [1.0, 1.5, 2.5, 8.0])
def test_under_max_bits_only_reachable_candidates_are_measured(engine, budget):
    """Under --max-bits a layer's row holds exactly the candidates some configuration within
    the budget gives it (checked against every configuration); the others are not run."""
    names = [l.name for l in engine.layers]
    reachable = {n: set() for n in names}
    for labels in itertools.product(engine.labels, repeat=len(names)):
        config = dict(zip(names, labels))
        if average_bits(engine.layers, config) <= budget + 1e-9:
            for n, c in config.items():
                reachable[n].add(c)
    engine.opts.max_bits, engine.opts.max_drop = budget, None
    try:
        rows = {l.name: drift.feasible(engine, l) for l in engine.layers}
    finally:
        engine.opts.max_bits, engine.opts.max_drop = None, 5.0
    assert {n: set(r) for n, r in rows.items()} == reachable
    if budget == 1.0:
        assert all(r == ["binary"] for r in rows.values())
    if budget == 8.0:
        assert all(r == engine.labels for r in rows.values())


@pytest.mark.parametrize("graph", ["feed_forward", "recurrent"])
def test_a_nir_graphs_neurons_are_probed(tmp_path, graph):
    """A NIR graph's neurons (snnc.nir.neurons: no SpikingJelly class) are probed as the
    compiler takes them, the outermost only (a recurrent block and its member are one):
    each fires on the samples, and quantizing the first affine layer moves their spikes."""
    import nir
    import nir_graphs as G
    from test_nir import DT, STEPS

    from snnc.nir.module import NIRModule
    from snnc.quant.distributed import Context
    from snnc.quant.search.runner import Runner
    from snnc.quant.search.space import Weights, quantizable

    path = tmp_path / "g.nir"
    nir.write(str(path), G.GRAPHS[graph](seed=3))
    model = NIRModule(nir.read(str(path)), DT)
    probes = drift.Probes(model)
    names = [name for name, _ in probes.neurons]
    assert names and not any(b.startswith(f"{a}.") for a in names for b in names)
    x = np.random.default_rng(0).random((16, STEPS, 6), dtype=np.float32) * 2
    runner = Runner(model, 1, Context.single(), 8)
    probes.reference(runner, x)
    assert all(sum(float(s.abs().sum()) for _, s in probes.ref[n]) > 0 for n in names)
    layers = quantizable(model)
    weights = Weights(layers)
    weights.apply({layers[0].name: "binary"})
    try:
        assert probes.drift(runner, x) > 0
    finally:
        weights.restore()
    assert probes.drift(runner, x) == 0  # the float weights again: no drift


def test_a_drift_is_measured_again_the_same(engine):
    """The drift of one layer at one candidate is a function of the weights and the samples:
    measured twice, the same number."""
    probes = drift.Probes(engine.model)
    x = engine.val.x[:48]
    probes.reference(engine.runner, x)
    layer = engine.layers[1].name
    engine.weights.apply({layer: "ternary"})
    try:
        first, second = probes.drift(engine.runner, x), probes.drift(engine.runner, x)
    finally:
        engine.weights.restore()
    assert first == second == engine.table[layer]["ternary"]


def _exact(engine, budget):
    """The least total drift of any configuration within `budget` (every one enumerated)."""
    names = [l.name for l in engine.layers]
    best = math.inf
    for labels in itertools.product(engine.labels, repeat=len(names)):
        config = dict(zip(names, labels))
        if average_bits(engine.layers, config) <= budget + 1e-9:
            best = min(best, sum(engine.table[n][c] for n, c in config.items()))
    return best


@pytest.mark.parametrize("budget", [1.0, 1.7, 2.5, 4.0])
def test_the_beam_solves_the_additive_problem(engine, budget):
    """A beam as wide as every partial configuration finds the least-drift configuration
    within the budget (checked against all of them); the default beam's configurations are
    within the budget, distinct, least drift first; at the fewest bits, every layer binary."""
    width = len(engine.labels) ** (len(engine.layers) - 1)
    engine.opts.beam_width = width
    try:
        wide = drift.beam(engine, engine.table, budget)
    finally:
        engine.opts.beam_width = 8
    total = lambda c: sum(engine.table[n][l] for n, l in c.items())  # noqa: E731
    assert total(wide[0]) == pytest.approx(_exact(engine, budget), rel=1e-12)
    configs = drift.beam(engine, engine.table, budget)
    assert 1 <= len(configs) <= 8 and len({json.dumps(c, sort_keys=True) for c in configs}) \
        == len(configs)
    assert all(average_bits(engine.layers, c) <= budget + 1e-9 for c in configs)
    assert [total(c) for c in configs] == sorted(total(c) for c in configs)
    if budget == 1.0:
        assert configs == [{l.name: "binary" for l in engine.layers}]


def test_a_drift_search_under_an_accuracy_budget(engine):
    """--max-drop: the widest configuration first, then 8 bisection probes; the result the
    fewest bits among the probes within the drop."""
    (xt, yt), (xv, yv) = (engine.train.x, engine.train.y), (engine.val.x, engine.val.y)
    model = trained_conv_snn(xt, yt)
    result = snnc.search(model, (xt, yt), (xv, yv), method="drift", max_drop=5.0,
                         finetune_epochs=0, drift_samples=48)
    stages = [p.stage for p in result.points]
    assert len(stages) == drift.PROBES + 1 and all(s.startswith("drift beam ") for s in stages)
    assert stages[0] == "drift beam 8.000000 bits"  # the least drift at any width first
    within = [p for p in result.points if 100 * (result.float_accuracy - p.accuracy) <= 5.0]
    assert result.chosen.bits == min(p.bits for p in within)
    assert result.average_bits == pytest.approx(result.chosen.bits)


def test_ctrl_c_mid_sweep_resumes_to_the_same_configuration(tmp_path):
    """SIGINT after the first layer's drifts: exit 130, nothing written (no configuration
    evaluated yet); --resume measures the rest and ends where an uninterrupted search does."""
    from snnc.files.loader import make_checkpoint

    (xt, yt), (xv, yv) = blobs(256, 0), blobs(96, 1)
    np.savez(tmp_path / "train.npz", x=xt, y=yt)
    np.savez(tmp_path / "val.npz", x=xv, y=yv)
    torch.save(make_checkpoint("snnc.demo:conv_snn", {}, trained_conv_snn(xt, yt),
                               [1, 2, 12, 12]), tmp_path / "float.pt")
    args = ["search", str(tmp_path / "float.pt"), "--train", str(tmp_path / "train.npz"),
            "--val", str(tmp_path / "val.npz"), "--method", "drift", "--max-bits", "2.0",
            "--finetune-epochs", "1", "-q"]
    whole = snnc_cli(*args, "-o", tmp_path / "whole.json")
    assert whole.returncode == 0, whole.stderr
    proc = interrupted('len(data.get("drift", {})) == 1', *args, "-o", str(tmp_path / "cut.json"))
    assert proc.returncode == 130, proc.stderr
    assert "nothing was written" in proc.stderr and not (tmp_path / "cut.json").exists()
    state = torch.load(tmp_path / "cut.json.state", weights_only=True)
    assert len(state["drift"]) == 1 and not state.get("points")
    resumed = snnc_cli(*args, "-o", tmp_path / "cut.json", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "cut.json").read_text() == (tmp_path / "whole.json").read_text()
