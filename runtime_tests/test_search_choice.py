"""snnc search's choice (docs/search.md, "The choice"): the best configuration the search
evaluated within the budget, by validation accuracy then fewer bits (under --max-bits), never
where a divergence-guided walk happened to end; the same after a resume; the one the
--report figure marks; and the default state file removed once a search succeeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_search import blobs, snnc_cli, trained_conv_snn

import snnc
from snnc.quant import pareto
from snnc.quant.search import api
from snnc.quant.search.engine import Options, Point, Search
from snnc.quant.search.runner import Data


def bare_engine(max_bits=None, max_drop=None, n=100, float_accuracy=1.0) -> Search:
    """A Search with only what its choice reads: the options, the validation labels, the
    float accuracy (no model: the choice needs none)."""
    engine = object.__new__(Search)
    engine.opts = Options(max_bits=max_bits, max_drop=max_drop)
    engine.val = Data(np.zeros((n, 1), np.float32), np.zeros(n, np.int64))
    engine.float_accuracy = float_accuracy
    return engine


def point(bits, correct, divergence, energy=1.0, stage="greedy", n=100):
    return Point({"a": f"uniform{round(bits)}"}, bits, energy, correct / n, divergence, stage)


def dominates(a: Point, b: Point) -> bool:
    """a is better than b by the criterion under --max-bits: more accurate, or as accurate
    with fewer bits."""
    return a.accuracy > b.accuracy or a.accuracy == b.accuracy and a.bits < b.bits


def test_the_choice_is_the_best_point_not_the_least_divergent():
    """The user's case of issue 24: {u4, p3, u2} at 2.81 bits and 96.88 % against the greedy
    walk's end at 2.91 bits and 95.14 % (its divergence lower). The best point within the
    budget wins; then fewer bits; then less energy; then the first evaluated."""
    engine = bare_engine(max_bits=3.0)
    walk_end = point(2.91, 95, 0.01)
    better = point(2.81, 97, 0.05)
    over = point(3.5, 99, 0.0)  # more accurate, but over the budget
    assert engine.best([walk_end, better, over]) is better
    same_fewer = point(2.5, 97, 0.09)
    assert engine.best([walk_end, better, same_fewer, over]) is same_fewer
    cheaper = point(2.5, 97, 0.09, energy=0.5)
    assert engine.best([same_fewer, cheaper]) is cheaper
    twin = point(2.5, 97, 0.09)
    assert engine.best([same_fewer, twin]) is same_fewer and engine.best([twin, same_fewer]) is twin
    assert engine.best([over]) is None


def test_accuracies_are_compared_as_counts_of_samples():
    """Two accuracies of the same number of right samples are equal, even if they were
    computed (or stored) with a different rounding: then the fewer bits win."""
    engine = bare_engine(max_bits=3.0, n=288)
    a = Point({"a": "uniform3"}, 2.9, 1.0, 283 / 288, 0.0)
    b = Point({"a": "uniform2"}, 2.5, 1.0, 283 / 288 - 1e-15, 0.1)
    assert a.accuracy > b.accuracy and engine.best([a, b]) is b


def test_under_an_accuracy_budget_the_fewest_bits_win():
    engine = bare_engine(max_drop=2.0, float_accuracy=0.98)
    within = [point(3.0, 97, 0.0), point(2.6, 96, 0.1), point(2.6, 97, 0.2)]
    outside = point(2.0, 90, 0.5)
    assert engine.best(within + [outside]) is within[2]


@pytest.fixture(scope="module")
def model():
    """snnc.demo:conv_snn trained a little on the blobs of test_search."""
    return trained_conv_snn(*blobs(384, 0))


ARGS = dict(method="sensitivity", max_bits=2.6, finetune_epochs=0)


def test_a_sensitivity_search_chooses_the_best_point_it_visited(model, tmp_path,
                                                                monkeypatch):
    """End to end: the chosen point is one of the visited points, within the budget, and no
    visited point within the budget beats it; the report entry and the figure carry it;
    resuming the state without its result chooses it again, and a state whose result is
    another point (the greedy walk's end, which on this model is beaten) is refused."""
    data = dict(train=blobs(384, 0), val=blobs(192, 1))
    state = tmp_path / "state"
    result = snnc.search(model, **data, **ARGS, state_path=str(state))
    chosen, = {(p.bits, p.accuracy): p for p in result.points  # the visited point chosen
               if api.to_rules(p.config) == result.config
               and p.accuracy == result.searched_accuracy}.values()
    assert chosen.bits <= ARGS["max_bits"]
    within = [p for p in result.points if p.bits <= ARGS["max_bits"] + 1e-9]
    assert not [p for p in within if dominates(p, chosen)]
    assert result.chosen == chosen
    saved = torch.load(state, weights_only=True)
    walk_end = Point(**saved["trail"][-1])
    # this model's walk ends on a point the search beat (the old choice): the test bites
    assert walk_end != chosen and dominates(chosen, walk_end)

    # the report entry and the figure mark the chosen point
    entry = api.report_entry(result, Options(**ARGS))
    assert entry["chosen"] == vars(chosen)
    drawn = []
    import matplotlib.axes

    real = matplotlib.axes.Axes.scatter

    def scatter(ax, x, y, *args, **kw):
        drawn.append((list(x), list(y), kw.get("label")))
        return real(ax, x, y, *args, **kw)
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    assert pareto.png({"methods": {"sensitivity": entry}})[:4] == b"\x89PNG"
    rings = [(x, y) for x, y, label in drawn if label == "sensitivity: chosen"]
    assert rings == [([chosen.bits], [100 * chosen.accuracy]),
                     ([chosen.energy_nj], [100 * chosen.accuracy])]

    # resumed without its result (as if stopped right before it): the same choice
    for key in ("result", "finetune"):
        saved.pop(key, None)
    torch.save(saved, state)
    again = snnc.search(model, **data, **ARGS, state_path=str(state), resume=True)
    assert again.chosen == chosen and again.points == result.points
    # a result that is not the best measured point is refused
    done = torch.load(state, weights_only=True)
    done["result"].update(config=walk_end.config, point=vars(walk_end))
    done.pop("finetune", None)
    torch.save(done, state)
    with pytest.raises(snnc.BadInputError, match="result.point.*ranks first"):
        snnc.search(model, **data, **ARGS, state_path=str(state), resume=True)


def test_the_default_state_is_removed_after_success(model, tmp_path):
    """The default state file (OUTPUT.state) is for resuming an interrupted search: it is
    removed once the outputs are written; one named with --state is kept."""
    from snnc.files.loader import make_checkpoint

    torch.save(make_checkpoint("snnc.demo:conv_snn", {}, model, [1, 2, 12, 12]),
               tmp_path / "float.pt")
    for name, (x, y) in (("train", blobs(96, 0)), ("val", blobs(64, 1))):
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    args = ["search", tmp_path / "float.pt", "--train", tmp_path / "train.npz", "--val",
            tmp_path / "val.npz", "--method", "sensitivity", "--max-bits", "3",
            "--finetune-epochs", "0", "-q"]
    run = snnc_cli(*args, "-o", tmp_path / "a.json")
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "a.json").read_text())
    assert not (tmp_path / "a.json.state").exists()
    run = snnc_cli(*args, "-o", tmp_path / "b.json", "--state", tmp_path / "b.state")
    assert run.returncode == 0, run.stderr
    assert torch.load(tmp_path / "b.state", weights_only=True)["result"]
    # resuming the finished state writes the same outputs again, and keeps it
    (tmp_path / "b.json").unlink()
    run = snnc_cli(*args, "-o", tmp_path / "b.json", "--state", tmp_path / "b.state",
                   "--resume")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "b.json").read_text() == (tmp_path / "a.json").read_text()
    assert (tmp_path / "b.state").exists()
