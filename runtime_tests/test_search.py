"""snnc search (docs/search.md): both methods end to end on a small trained SNN, compiled and
verified; torchrun with 2 processes against 1; Ctrl-C and --resume; the errors."""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_cli import snnc as snnc_here

import snnc
from snnc import demo
from snnc.quant import quantize
from snnc.quant.search import space

ENV = dict(os.environ, PYTHONWARNINGS="ignore")
LAYERS = {"conv1": 144, "conv2": 1152, "head": 2880}  # conv_snn's weights per layer


def snnc_cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "snnc", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=ENV, timeout=timeout)


def blobs(n: int, seed: int):
    """Five classes: a brighter 4x4 patch at one of five places in noise."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 2, 12, 12)) * 0.6).astype(np.float32)
    y = rng.integers(0, 5, n)
    places = [(1, 1), (1, 7), (7, 1), (7, 7), (4, 4)]
    for i in range(n):
        r, c = places[y[i]]
        x[i, :, r:r + 4, c:c + 4] += 0.35
    return x, y.astype(np.int64)


def trained_conv_snn(xt: np.ndarray, yt: np.ndarray):
    """snnc.demo:conv_snn trained (float, seed 0) five epochs on (xt, yt), in eval mode."""
    from spikingjelly.activation_based import functional

    from snnc import demo

    torch.manual_seed(0)
    model = demo.conv_snn()
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(5):
        model.train()
        order = torch.randperm(len(yt))
        for i in range(0, len(yt), 32):
            index = order[i:i + 32]
            functional.reset_net(model)
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(xt[index])),
                                                     torch.from_numpy(yt[index]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    functional.reset_net(model)
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """snnc.demo:conv_snn trained (float) on the blobs; its checkpoint and the data."""
    from snnc.files.loader import make_checkpoint

    d = tmp_path_factory.mktemp("search")
    (xt, yt), (xv, yv) = blobs(384, 0), blobs(192, 1)
    np.savez(d / "train.npz", x=xt, y=yt)
    np.savez(d / "val.npz", x=xv, y=yv)
    model = trained_conv_snn(xt, yt)
    torch.save(make_checkpoint("snnc.demo:conv_snn", {}, model, [1, 2, 12, 12]),
               d / "float.pt")
    return {"dir": d, "model": model, "train": (xt, yt), "val": (xv, yv)}


STORED = {"ternary": 1.6, "binary": 1}  # bits a weight takes in the pack (five trits a byte)


def average(config: dict) -> float:
    """Average bits per weight, weighted by parameters, as the pack stores them."""
    bits = {n: STORED.get(r["scheme"]) or r["bits"] for n, r in config.items()}
    return sum(bits[n] * p for n, p in LAYERS.items()) / sum(LAYERS.values())


def search(d, method, *extra, out="cfg.json"):
    return snnc_cli("search", d / "float.pt", "--train", d / "train.npz", "--val",
                    d / "val.npz", "--method", method, "-o", d / out, *extra)


@pytest.mark.parametrize("method", ["sensitivity", "gumbel", "drift"])
def test_search_meets_the_budget_and_compiles(trained, method):
    """The configuration meets the budget, the fine-tuned checkpoint compiles and agrees
    100 % with its PyTorch source, snnc quantize reads the configuration, and the report
    keeps both methods' points."""
    d = trained["dir"]
    run = search(d, method, "--max-bits", "2.6", "--quantized", d / f"{method}.pt",
                 "--report", d / "search.png", "--finetune-epochs", "2", "--search-epochs", "1",
                 out=f"{method}.json")
    assert run.returncode == 0, run.stderr
    assert f"{method}: " in run.stdout and "average bits" in run.stdout
    config = json.loads((d / f"{method}.json").read_text())
    assert set(config) == set(LAYERS)
    assert average(config) <= 2.6
    compiled = snnc_cli("compile", d / f"{method}.pt", "-o", d / f"{method}.onnx", "--verify",
                        d / "val.npz")
    assert compiled.returncode == 0, compiled.stderr
    assert "top-1 agreement      100.00 %" in compiled.stdout
    # the searched configuration is what the compiled model holds
    assert f"average {average(config):.2f} bits" in compiled.stdout
    again = snnc_cli("quantize", d / "float.pt", "--config", d / f"{method}.json", "-o",
                     d / f"{method}_again.pt")
    assert again.returncode == 0, again.stderr
    report = json.loads((d / "search.json").read_text())
    assert method in report["methods"] and report["methods"][method]["points"]
    entry = report["methods"][method]  # the figure's energies are the printed ones
    assert (f"estimated energy {entry['final']['energy_nj']:.1f} nJ/sample vs "
            f"{entry['float_energy_nj']:.1f} nJ with float32 weights") in run.stdout
    assert entry["final"]["energy_nj"] < entry["float_energy_nj"] / 10
    assert (d / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_method_shares_one_figure(trained):
    d = trained["dir"]
    for method in ("sensitivity", "gumbel", "drift"):
        run = search(d, method, "--max-bits", "3", "--report", d / "both.png",
                     "--finetune-epochs", "0", "--search-epochs", "1", "--trials", "2",
                     "-q", out=f"both_{method}.json")
        assert run.returncode == 0, run.stderr
    report = json.loads((d / "both.json").read_text())
    assert set(report["methods"]) == {"sensitivity", "gumbel", "drift"}


@pytest.mark.parametrize("method", ["sensitivity", "gumbel", "drift"])
def test_two_processes_search_as_one(trained, method):
    """torchrun --nproc_per_node 2 (gloo): every configuration evaluated, in the same order,
    with the same accuracy and divergence, the same configuration, and the same fine-tuned
    weights bit for bit, as one process (docs/search.md: fixed chunks, summed in order)."""
    d = trained["dir"]
    args = ["search", d / "float.pt", "--train", d / "train.npz", "--val", d / "val.npz",
            "--method", method, "--max-bits", "2.6", "--finetune-epochs", "1",
            "--search-epochs", "1", "--trials", "3", "-q"]
    one = snnc_cli(*args, "-o", d / f"one_{method}.json", "--report", d / f"one_{method}_r.png",
                   "--quantized", d / f"one_{method}.pt")
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "-m", "snnc", *map(str, args), "-o", d / f"two_{method}.json",
                          "--report", d / f"two_{method}_r.png", "--quantized",
                          d / f"two_{method}.pt"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert two.returncode == 0, two.stderr
    assert (d / f"one_{method}.json").read_text() == (d / f"two_{method}.json").read_text()
    reports = [json.loads((d / f"{w}_{method}_r.json").read_text())
               ["methods"][method]["points"] for w in ("one", "two")]
    assert len(reports[0]) >= 1 and reports[0] == reports[1]
    a, b = (torch.load(d / f"{w}_{method}.pt", weights_only=True)["state_dict"]
            for w in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# `snnc ...` in a process that sends itself SIGINT (Ctrl-C) right after the search writes a
# state for which `when` (a Python expression of `data`, the state) holds: the interrupt
# lands at the same point however fast the machine is (polling the state file from outside
# raced a search that finished first).
_INTERRUPT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when
# the suite runs in a background job, whose children start with SIGINT ignored
from snnc.quant.search import state as _state
_save = _state.State.save
def save(self):
    _save(self)
    data = self.data
    if {when}:
        os.kill(os.getpid(), signal.SIGINT)
_state.State.save = save
sys.argv[0] = "snnc"
from snnc.cli import main
main(prog_name="snnc")
"""


def interrupted(when: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _INTERRUPT.format(when=when), *args],
                          capture_output=True, text=True, env=ENV, timeout=600)


def test_ctrl_c_keeps_the_best_and_resume_finishes(trained):
    """SIGINT mid-search: exit 130, the best configuration within the budget so far written
    (atomically), the state kept; --resume then finishes with the configuration an
    uninterrupted search chooses."""
    d = trained["dir"]
    args = ["--max-bits", "2.6", "--finetune-epochs", "1", "--search-epochs", "2", "--trials",
            "4", "-q"]
    whole = search(d, "gumbel", *args, out="whole.json")
    assert whole.returncode == 0, whole.stderr
    state = d / "cut.json.state"
    proc = interrupted('len(data.get("trials", [])) >= 1',  # Ctrl-C after the first trial
                       "search", str(d / "float.pt"), "--train", str(d / "train.npz"),
                       "--val", str(d / "val.npz"), "--method", "gumbel", "-o",
                       str(d / "cut.json"), *args)
    err = proc.stderr
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    done = torch.load(state, weights_only=True)
    assert 1 <= len(done["trials"]) < 4 and "result" not in done
    within = [p for p in done["points"] if p["bits"] <= 2.6]
    if within:  # the best committed configuration within the budget is what Ctrl-C writes
        assert "wrote the best configuration" in err
        best = max(within, key=lambda p: (p["accuracy"], -p["bits"]))
        cut = json.loads((d / "cut.json").read_text())
        assert cut == space.to_rules(best["config"]) and average(cut) <= 2.6
    else:
        assert "nothing was written" in err and not (d / "cut.json").exists()
    # a state from other options is refused
    other = search(d, "gumbel", "--max-bits", "2.5", "-q", "--resume", out="cut.json")
    assert other.returncode == 1 and "another search" in other.stderr
    resumed = search(d, "gumbel", *args, "--resume", out="cut.json")
    assert resumed.returncode == 0, resumed.stderr
    assert (d / "cut.json").read_text() == (d / "whole.json").read_text()
    assert not state.exists()  # the default state is removed once the search succeeded


def test_ctrl_c_in_fine_tuning_resumes_to_the_same_model(trained):
    """Interrupted between fine-tuning epochs, the resumed search ends with exactly the model
    an uninterrupted one trains (weights, optimizer and schedule restored per epoch)."""
    d = trained["dir"]
    args = ["--max-bits", "2.6", "--finetune-epochs", "12", "-q"]
    whole = search(d, "sensitivity", *args, "--quantized", d / "ft_whole.pt", out="ft_w.json")
    assert whole.returncode == 0, whole.stderr
    state = d / "ft.json.state"
    proc = interrupted('data.get("finetune", {}).get("epoch", 0) >= 2',  # mid fine-tuning
                       "search", str(d / "float.pt"), "--train", str(d / "train.npz"),
                       "--val", str(d / "val.npz"), "--method", "sensitivity", "-o",
                       str(d / "ft.json"), "--quantized", str(d / "ft.pt"), *args)
    err = proc.stderr
    assert proc.returncode == 130, err
    epoch = torch.load(state, weights_only=True)["finetune"]["epoch"]
    assert 2 <= epoch < 12 and not (d / "ft.pt").exists()
    resumed = search(d, "sensitivity", *args, "--quantized", d / "ft.pt", "--resume",
                     out="ft.json")
    assert resumed.returncode == 0, resumed.stderr
    a, b = (torch.load(d / n, weights_only=True)["state_dict"] for n in ("ft_whole.pt", "ft.pt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gumbel_under_an_accuracy_budget(trained):
    """--max-drop: the fewest bits among the trials within the drop."""
    model = snnc.demo.conv_snn()
    model.load_state_dict(trained["model"].state_dict())
    result = snnc.search(model, trained["train"], trained["val"], method="gumbel",
                         max_drop=2.0, finetune_epochs=1, search_epochs=1, trials=3)
    assert 100 * (result.float_accuracy - result.searched_accuracy) <= 2.0
    trials = [p for p in result.points if p.stage.startswith("gumbel")]
    within = [p for p in trials if 100 * (result.float_accuracy - p.accuracy) <= 2.0]
    assert result.average_bits == pytest.approx(min(p.bits for p in within))


def test_python_api(trained, tmp_path):
    """snnc.search; the sweep's "float" candidate reproduces the float model exactly (nothing
    the search does to the model, such as a training-mode check, leaks into evaluation)."""
    model = snnc.demo.conv_snn()
    model.load_state_dict(trained["model"].state_dict())
    result = snnc.search(model, trained["train"], trained["val"], method="sensitivity",
                         max_drop=1.0, finetune_epochs=1, allow_float=True,
                         state_path=str(tmp_path / "state"))
    assert 100 * (result.float_accuracy - result.searched_accuracy) <= 1.0
    sweep = torch.load(tmp_path / "state", weights_only=True)["sweep"]
    assert set(sweep) == set(LAYERS)
    for row in sweep.values():
        assert row["float"] == [result.float_accuracy, 0.0]
        assert len(row) == 14 and max(kl for _, kl in row.values()) > 0
    assert result.average_bits < 8
    assert quantize.report(result.model)[1] == pytest.approx(result.average_bits)
    assert result.model is not model and not any(  # the caller's model stays float
        "parametrizations" in name for name, _ in model.named_parameters())
    # a state is resumed only by the search that wrote it
    other = snnc.demo.conv_snn(seed=1)
    with pytest.raises(snnc.BadInputError, match="another search"):
        snnc.search(other, trained["train"], trained["val"], method="sensitivity",
                    max_drop=1.0, finetune_epochs=1, allow_float=True,
                    state_path=str(tmp_path / "state"), resume=True)


@pytest.mark.parametrize("option, value", [
    ("finetune_lr", 1e38), ("finetune_lr", 0.0), ("finetune_lr", math.nan), ("batch_size", 0),
    ("energy_weight", 1.5), ("trials", 0), ("seed", -1), ("finetune_epochs", "2")])
def test_python_api_refuses_options_out_of_range(trained, option, value):
    """snnc.search checks what the CLI's option types check, before any work (an lr of 1e38
    overflowed inside the optimizer as an internal error)."""
    with pytest.raises(snnc.BadInputError, match=f"{option} = .* out of range"):
        snnc.search(demo.conv_snn(), trained["train"], trained["val"], method="sensitivity",
                    max_bits=3, **{option: value})


def test_python_api_checks_the_state_path(trained, tmp_path):
    """The state path given to snnc.search gets the checks of every output path."""
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "stdout").symlink_to(target)
    with pytest.raises(snnc.BadInputError, match="link"):
        snnc.search(demo.conv_snn(), trained["train"], trained["val"], method="sensitivity",
                    max_bits=3, state_path=str(tmp_path / "stdout"))
    assert target.read_text() == "keep" and (tmp_path / "stdout").is_symlink()


@pytest.fixture(scope="module")
def bad(trained, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (xt, yt) = trained["train"]
    np.savez(d / "shape.npz", x=xt[:, :, :10], y=yt)
    np.savez(d / "labels.npz", x=xt, y=yt + 3)
    np.savez(d / "nolabels.npz", x=xt)
    from snnc.demo import export

    torch.export.save(export(trained["model"], torch.zeros(1, 2, 12, 12)), str(d / "export.pt"))
    (d / "frozen_model.py").write_text(
        "import torch\n"
        "class Step(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(2, 4, 3)\n"
        "        self.head = torch.nn.Linear(4 * 10 * 10, 5)\n"
        "    def forward(self, x):\n"
        "        return self.head((self.conv(x) > 0).float().flatten(1))\n")
    sys.path.insert(0, str(d))
    try:
        import frozen_model

        from snnc.files.loader import make_checkpoint

        torch.save(make_checkpoint("frozen_model:Step", {}, frozen_model.Step(), [1, 2, 12, 12]),
                   d / "step.pt")
    finally:
        sys.path.remove(str(d))
    return d


@pytest.mark.parametrize("case, args, message", [
    ("unreachable", ["--max-bits", "0.9"], "smallest average any configuration reaches is 1.00 bits (every layer binary)"),
    ("negative drop", ["--max-drop", "-1"], "must be 0 or more"),
    ("two budgets", ["--max-bits", "3", "--max-drop", "1"], "exactly one budget"),
    ("no budget", [], "exactly one budget"),
    ("nan budget", ["--max-bits", "nan"], "finite"),
    ("shape", ["--max-bits", "3", "--train", "{bad}/shape.npz", "--val", "{bad}/shape.npz"],
     "samples of shape [2, 10, 12]"),
    ("train vs val", ["--max-bits", "3", "--train", "{bad}/shape.npz"], "both must be"),
    ("labels", ["--max-bits", "3", "--val", "{bad}/labels.npz"], "outside the model's 5 classes"),
    ("no labels", ["--max-bits", "3", "--train", "{bad}/nolabels.npz"], "need labels y"),
    ("export", ["--max-bits", "3", "--model", "{bad}/export.pt"], "torch.export archive"),
    ("untrusted", ["--max-bits", "3", "--model", "{bad}/step.pt"], "--trust-code"),
    ("untrainable", ["--max-bits", "3", "--model", "{bad}/step.pt", "--trust-code"],
     "no gradient reaches"),
    ("resume nothing", ["--max-bits", "3", "--resume"], "no search state"),
])
def test_clear_errors(trained, bad, case, args, message, monkeypatch):
    d = trained["dir"]
    args = [a.replace("{bad}", str(bad)) for a in args]
    opts = {"--model": str(d / "float.pt"), "--train": str(d / "train.npz"),
            "--val": str(d / "val.npz")}
    rest = []
    it = iter(args)
    for a in it:
        if a in opts:
            opts[a] = next(it)
        else:
            rest.append(a)
    monkeypatch.syspath_prepend(str(bad))  # the factory --trust-code imports
    run = snnc_here("search", opts["--model"], "--train", opts["--train"], "--val",
                    opts["--val"], "--method", "sensitivity", "-o", str(bad / f"{case}.json"),
                    "--finetune-epochs", "0", *rest)
    assert run.returncode in (1, 2), (run.stdout, run.stderr)
    assert run.stderr.startswith("snnc: error:") and "Traceback" not in run.stderr
    assert message in run.stderr, run.stderr
    assert not (bad / f"{case}.json").exists()


def test_energy_model_prefers_shifts_to_multiplies():
    u, p = space.Choice("uniform", 4), space.Choice("pot", 4)
    assert space.energy_pj(p, spiking=False) < space.energy_pj(u, spiking=False) < 4.6
    assert space.energy_pj(space.Choice("uniform", 2), True) < space.energy_pj(u, True) < 0.9
    # Horowitz's 45 nm figures at the widths he gives (docs/verify.md, "The energy estimate")
    assert space.energy_pj(space.Choice("uniform", 8), True) == pytest.approx(0.03, abs=0.006)
    assert space.energy_pj(space.Choice("uniform", 8), False) == pytest.approx(0.2 + 0.03,
                                                                               abs=0.015)
    float32 = space.Choice("float", 32)
    assert (space.energy_pj(float32, True), space.energy_pj(float32, False)) == (0.9, 4.6)


def test_the_report_and_the_search_give_one_configuration_one_energy(trained, tmp_path):
    """snnc compile --report --verify of a quantized model gives, per layer and in total,
    the energy the search estimates for its configuration from the same activity (the same
    model on the same data), and the same float32 baseline: one energy model, not two."""
    from snnc.backend.runtime import load_session
    from snnc.check import accuracy, report
    from snnc.driver import compile_file
    from snnc.files import loader
    from snnc.quant.distributed import Context
    from snnc.quant.search.runner import Runner, measure_ops

    d = trained["dir"]
    config = {"conv1": "uniform4", "conv2": "pot3", "head": "uniform2"}
    ckpt = loader.load_checkpoint(str(d / "float.pt"))
    model = copy.deepcopy(trained["model"])
    quantize.quantize(model, space.to_rules(config))
    (tmp_path / "q.pt").write_bytes(loader.checkpoint_bytes(ckpt, model, space.to_rules(config)))
    result = compile_file(str(tmp_path / "q.pt"), str(tmp_path / "q.onnx"))
    x, y = trained["val"][0][:64], trained["val"][1][:64]
    v = accuracy.verify(result.program, load_session(str(tmp_path / "q.onnx")), x, y)
    data = report.build(result.graph, v, {"model": str(tmp_path / "q.pt")})

    quantized = loader.build_from_checkpoint(str(tmp_path / "q.pt"),
                                             loader.load_checkpoint(str(tmp_path / "q.pt")))
    layers = space.quantizable(quantized)
    measure_ops(Runner(quantized, 0, Context.single(), 64), layers, x)
    rows = {r["layer"]: r for r in data["layers"]}
    assert set(rows) == set(config)
    for layer in layers:  # the stem reads the image; the others spikes, sparsely
        assert rows[layer.name]["spike_input"] is layer.spiking is (layer.name != "conv1")
        assert rows[layer.name]["energy_pj"] == pytest.approx(
            layer.ops * space.energy_pj(space.choice_of(config[layer.name]), layer.spiking),
            rel=1e-5)
    totals = data["totals"]
    assert totals["energy_nj"] == pytest.approx(space.energy_nj(layers, config), rel=1e-5)
    floats = {l.name: "float" for l in layers}
    assert totals["float_energy_nj"] == pytest.approx(space.energy_nj(layers, floats),
                                                      rel=1e-5)
    assert totals["energy_nj"] < totals["float_energy_nj"] / 10 < totals["ann_energy_nj"]


@pytest.mark.parametrize("sample", ["digits", "digits_events"])
def test_samples_are_searchable(sample, tmp_path):
    """The samples' float.pt, train.npz and val.npz load, fit each other and the model
    (batch axis found, labels in range), and a budget below 1 bit (all binary) is refused as such."""
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "samples", sample)
    run = snnc_cli("search", os.path.join(here, "float.pt"), "--train",
                   os.path.join(here, "train.npz"), "--val", os.path.join(here, "val.npz"),
                   "--method", "gumbel", "--max-bits", "0.99", "-o", tmp_path / "c.json")
    assert run.returncode == 1 and "the smallest average any configuration reaches is 1.00" \
        in run.stderr, run.stderr
    assert not (tmp_path / "c.json").exists()


def test_a_damaged_old_report_entry_is_dropped_not_drawn(tmp_path):
    """--report merges the other method's entry from an existing JSON (a user's file): an
    entry whose points are not numbers (or whole numbers beyond a float) is dropped, and the
    figure is still drawn."""
    from snnc.quant import pareto

    good = {"points": [{"bits": 3.0, "energy_nj": 1.0, "accuracy": 0.9}], "max_bits": 3.0,
            "float_accuracy": 0.95, "final": {"bits": 3.0, "energy_nj": 1.0, "accuracy": 0.9},
            "chosen": {"bits": 3.0, "energy_nj": 1.0, "accuracy": 0.9}}
    old = tmp_path / "r.json"
    for bad in ({"points": [{"bits": "x", "energy_nj": 1, "accuracy": 0.5}]},
                {"points": [None]}, {"points": [], "final": {"bits": 1}},
                {"points": [], "max_bits": "3"}, {"points": [], "max_bits": 10 ** 400},
                {"points": [], "chosen": {"bits": 3, "energy_nj": None, "accuracy": 0.5}},
                {"points": [{"bits": 3, "energy_nj": 10 ** 400, "accuracy": 0.5}]},
                {"points": [], "float_energy_nj": "226"}):
        old.write_text(json.dumps({"key": "k", "methods": {"gumbel": bad}}))
        report = pareto.merge(str(old), "k", "sensitivity", good)
        assert set(report["methods"]) == {"sensitivity"}
        assert pareto.png(report)[:4] == b"\x89PNG"
    old.write_text(json.dumps({"key": "k", "methods": {"gumbel": good}}))
    assert set(pareto.merge(str(old), "k", "sensitivity", good)["methods"]) == \
        {"sensitivity", "gumbel"}
    assert set(pareto.merge(str(old), "other", "sensitivity", good)["methods"]) == \
        {"sensitivity"}


def test_cli_offers_every_method_of_the_table():
    """A method is one module plus its entry in api.METHODS; the CLI offers exactly those."""
    from snnc.cli import main
    from snnc.quant.search.api import METHODS

    option = next(p for p in main.commands["search"].params if p.name == "method")
    assert list(option.type.choices) == list(METHODS)


# ------------------------------------------------------------- torchrun: environment, timeouts

GOOD_ENV = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500"}
NUMBERS = {"WORLD_SIZE": (1, 2 ** 31 - 1), "RANK": (0, 1), "LOCAL_RANK": (0, 1),
           "MASTER_PORT": (1, 65535)}


def malformed_environments():
    """(variable, value) with the other torchrun variables good: each number missing (RANK,
    MASTER_PORT; an unset WORLD_SIZE is one process, LOCAL_RANK torch does not need), empty,
    text, signed, fractional, hex, padded, a non-ASCII digit, huge, one past each end of its
    range; MASTER_ADDR missing, empty, with spaces, a URL, a port, bad labels, too long, an
    IPv4 address that is not one."""
    for name, (low, high) in NUMBERS.items():
        values = ["", " ", "two", "-1", "+1", "1.0", "1e3", "0x1", " 1", "1 ", "\u0661",
                  str(10 ** 40), str(low - 1), str(high + 1)]
        values += [None] if name in ("RANK", "MASTER_PORT") else []
        yield from ((name, v) for v in values)
    for value in (None, "", " ", "node 1", "http://node1", "node1:29500", "-node", "node-",
                  "a..b", ".", "n\u00f6de", "[::1]", "x" * 64 + ".org", "a." * 127 + "org",
                  "300.1.1.1", "10.0.0"):
        yield "MASTER_ADDR", value


@pytest.fixture
def no_rendezvous(monkeypatch):
    """torch.distributed's rendezvous replaced by a recorder: a check that lets a malformed
    value through would connect (and could wait for half an hour)."""
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "get_rank", lambda: int(os.environ["RANK"]))
    monkeypatch.setattr(dist, "get_world_size", lambda: int(os.environ["WORLD_SIZE"]))
    for name in list(GOOD_ENV) + ["SNNC_DIST_TIMEOUT"]:
        monkeypatch.delenv(name, raising=False)
    return calls


@pytest.mark.parametrize("name, value", list(malformed_environments()))
def test_malformed_torchrun_variables_are_refused_before_connecting(no_rendezvous, monkeypatch,
                                                                   name, value):
    from snnc.quant.distributed import Context

    for k, v in dict(GOOD_ENV, **{name: value}).items():
        if v is not None:
            monkeypatch.setenv(k, v)
    with pytest.raises(snnc.BadInputError) as caught:
        Context.from_environment()
    message = str(caught.value)
    assert message.startswith("torchrun environment:") and f"{name} " in message, message
    assert ("is not set" if value is None else repr(value)) in message
    assert "WORLD_SIZE" in message and not no_rendezvous


@pytest.mark.parametrize("value", ["", "soon", "0", "-3", "nan", "inf", "1e9"])
def test_a_malformed_timeout_is_refused(no_rendezvous, monkeypatch, value):
    from snnc.quant.distributed import Context

    for k, v in dict(GOOD_ENV, SNNC_DIST_TIMEOUT=value).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(snnc.BadInputError, match="SNNC_DIST_TIMEOUT="):
        Context.from_environment()
    assert not no_rendezvous


@pytest.mark.parametrize("env", [
    {}, {"WORLD_SIZE": "1", "RANK": "junk"}, GOOD_ENV,
    dict(GOOD_ENV, RANK="1", LOCAL_RANK="1", MASTER_ADDR="localhost", MASTER_PORT="1"),
    dict(GOOD_ENV, MASTER_ADDR="node-1.cluster.example.org.", MASTER_PORT="65535"),
    dict(GOOD_ENV, MASTER_ADDR="::1", SNNC_DIST_TIMEOUT="2.5"),
    {k: v for k, v in GOOD_ENV.items() if k != "LOCAL_RANK"}])
def test_good_torchrun_variables_pass_with_the_timeout(no_rendezvous, monkeypatch, env):
    """The checks refuse no environment torchrun writes; the rendezvous gets the timeout."""
    from snnc.quant.distributed import DEFAULT_TIMEOUT, Context

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ctx = Context.from_environment()
    if int(env.get("WORLD_SIZE", "1")) == 1:
        assert ctx.world == 1 and not no_rendezvous
        return
    assert (ctx.rank, ctx.world) == (int(env["RANK"]), 2)
    timeout = float(env.get("SNNC_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    assert [call["timeout"].total_seconds() for call in no_rendezvous] == [timeout]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("rank, missing", [("0", "the other 1 process(es) of WORLD_SIZE=2"),
                                           ("1", "could not reach process 0")])
def test_a_torchrun_group_missing_a_process_times_out(trained, tmp_path, rank, missing):
    """WORLD_SIZE=2 with one process started (a leftover torchrun environment): the search
    ends within SNNC_DIST_TIMEOUT (here 3 s) with a message saying who is missing, instead of
    waiting torch's 30 minutes; nothing is written."""
    d = trained["dir"]
    env = dict(ENV, WORLD_SIZE="2", RANK=rank, LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), SNNC_DIST_TIMEOUT="3")
    start = time.time()
    run = subprocess.run([sys.executable, "-m", "snnc", "search", d / "float.pt", "--train",
                          d / "train.npz", "--val", d / "val.npz", "--method", "sensitivity",
                          "--max-bits", "3", "-o", tmp_path / "c.json"], capture_output=True,
                         text=True, env=env, timeout=90)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("snnc: error: torchrun: ") and missing in run.stderr
    assert "within 3 s" in run.stderr and "SNNC_DIST_TIMEOUT" in run.stderr
    assert "Traceback" not in run.stderr and "frame #" not in run.stderr, run.stderr
    assert time.time() - start < 60 and list(tmp_path.iterdir()) == []


PEER = """
import os, sys, time, torch
from snnc.quant.distributed import Context
ctx = Context.from_environment()
if ctx.rank == 1:
    if sys.argv[1] == "stall":
        time.sleep(30)
    os._exit(0)  # gone without a word
try:
    ctx.sum([1.0])
except Exception as error:
    print(type(error).__name__, error)
"""


@pytest.mark.parametrize("peer, why", [("exit", "another process stopped"),
                                       ("stall", "no answer from the other processes within 2 s")])
def test_a_lost_peer_ends_a_collective_with_a_message(tmp_path, peer, why):
    """A process that stops, or stops answering, after joining: the others' next exchange
    ends (within SNNC_DIST_TIMEOUT for a silent one) as an SnncError, not gloo's
    RuntimeError after 30 minutes."""
    env = dict(ENV, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               SNNC_DIST_TIMEOUT="2")
    (tmp_path / "peer.py").write_text(PEER)
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "peer.py"), peer],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    try:
        out, err = procs[0].communicate(timeout=60)
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert out.startswith("SnncError torchrun: process 0 of 2 lost the group while a sum: "), \
        (out, err)
    assert why in out


# ------------------------------------------------------- the search state: generated tamperings

STATE_SEARCHES = {"sensitivity": dict(max_bits=2.5), "gumbel": dict(max_bits=2.3, trials=3),
                  "drift": dict(max_bits=2.0, beam_width=4)}
STATE_OPTIONS = dict(finetune_epochs=2, search_epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """Per method, a finished tiny search's state file (every field there: the sweep or the
    trials with a repaired candidate, the result, the fine-tuning state) and its arguments."""
    d = tmp_path_factory.mktemp("states")
    model = demo.conv_snn()
    out = {}
    for method, budget in STATE_SEARCHES.items():
        args = dict(model=model, train=blobs(48, 0), val=blobs(32, 1), method=method,
                    **budget, **STATE_OPTIONS)
        snnc.search(state_path=str(d / f"{method}.state"), **args)
        out[method] = (d / f"{method}.state", args)
    return out


def _walk(value, path=()):
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, path + (key,))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, path + (i,))


def _shape(path) -> tuple:
    """A field's path with list positions and the digits of names (conv1, pot3, bn2) blurred:
    one field of each shape stands for its siblings."""
    return tuple("#" if isinstance(k, int) else re.sub("[0-9]+", "#", k) for k in path)


def _edit(state, path, change):
    """A deep copy of `state` with change(container, key) applied at `path`."""
    out = copy.deepcopy(state)
    holder = out
    for key in path[:-1]:
        holder = holder[key]
    change(holder, path[-1])
    return out


def _put(value):
    def change(holder, key):
        if isinstance(holder, tuple):
            raise TypeError  # a tuple's item: replaced through its parent below
        holder[key] = value
    return change


def tamperings(state):
    """(path, kind, tampered state): every field of `state` (one of each shape), made wrong
    in each way that applies to it: missing, renamed (an unknown field, layer, candidate
    label or parameter), an extra field, the wrong type, a list for a tuple and back, NaN,
    infinity, negative (every number in a state is >= 0), huge (but for a divergence, which
    has no upper bound), a whole number too large for a float, a string with a character
    more (an unknown label, stage or phase), a tensor of another shape or dtype, with NaN or
    infinity."""
    seen = set()
    for path, value in _walk(state):
        if _shape(path) in seen:
            continue
        seen.add(_shape(path))
        parent = None
        if path:
            parent = state
            for key in path[:-1]:
                parent = parent[key]
        edits = []
        if isinstance(parent, dict):
            renamed = path[-1] + "9" if isinstance(path[-1], str) else path[-1] + 100
            edits += [("missing", lambda h, k: h.pop(k)),
                      ("renamed", lambda h, k, r=renamed: h.__setitem__(r, h.pop(k)))]
        if isinstance(value, dict):
            edits.append(("extra field", lambda h, k: h[k].__setitem__("bonus", 0)))
        swaps = [("wrong type", 7 if isinstance(value, str) else "x")]
        if isinstance(value, (list, tuple)):
            swaps.append(("list/tuple", tuple(value) if isinstance(value, list) else list(value)))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            swaps += [("nan", math.nan), ("inf", math.inf), ("negative", -1.0 - abs(value)),
                      ("whole number beyond float", 10 ** 400)]  # float() overflows on it
            if not ("divergence" in str(path[-1]) or path[:1] == ("sweep",) and path[-1] == 1
                    or path[:1] == ("drift",)):  # no upper bound on a drift either
                swaps.append(("huge", 1e30))
        if isinstance(value, str):
            swaps.append(("unknown name", value + "9"))
        if isinstance(value, torch.Tensor):
            swaps += [("shape", value.reshape(-1) if value.dim() > 1 else value.reshape(1, -1)),
                      ("dtype", value.double() if value.is_floating_point() else value.int())]
            if value.is_floating_point() and value.numel():
                for name, bad in (("nan", math.nan), ("inf", math.inf)):
                    t = value.clone()
                    t.view(-1)[0] = bad
                    swaps.append((f"tensor {name}", t))
        edits += [(kind, _put(v)) for kind, v in swaps]
        for kind, change in edits:
            if not path:
                if kind == "wrong type":
                    yield path, kind, "x"
                continue
            if isinstance(parent, tuple):  # replace the tuple in its parent
                items = list(parent)
                try:
                    change(items, path[-1])
                except (KeyError, TypeError):
                    continue
                yield path, kind, _edit(state, path[:-1], _put(tuple(items)))
            else:
                yield path, kind, _edit(state, path, change)


# A state without its fine-tuning record is a search stopped before fine-tuning; an optimizer
# holds no state for a parameter that never had a gradient.
LEGITIMATE = {(("finetune",), "missing"), (("finetune", "optimizer", "state", "#"), "missing")}


@pytest.fixture(scope="module")
def engines(resumable):
    """Per method, the search engine snnc.search sets up to resume `resumable`'s state (its
    check passed), and that state as read: tests put states in engine.state.data and call
    engine.check_state."""
    from snnc.quant.search import api

    out = {}
    for method, (path, args) in resumable.items():
        opts = api.Options(**{k: v for k, v in args.items()
                              if k not in ("model", "train", "val")})
        engine = api.prepare(args["model"], api.Data(*args["train"]), api.Data(*args["val"]),
                             opts, state_path=str(path), resume=True)
        out[method] = engine, torch.load(path, weights_only=True)
    return out


@pytest.mark.parametrize("method", list(STATE_SEARCHES))
def test_every_tampered_field_of_a_state_is_refused(engines, method):
    """The state's schema, on generated tamperings of a real state: every field of each
    shape, every kind of wrong that applies. The state itself passes; every tampering is
    refused with the message that names the field, but the two that are legitimate states."""
    from snnc.quant.search import api

    engine, good = engines[method]
    engine.state.data = good
    engine.check_state(api.METHODS[method])  # the good state passes (again)
    accepted, count = [], 0
    for where, kind, bad in tamperings(good):
        if (_shape(where), kind) in LEGITIMATE:
            continue
        count += 1
        engine.state.data = bad
        try:
            engine.check_state(api.METHODS[method])
            accepted.append((where, kind))
        except snnc.BadInputError as error:
            assert "is damaged or was written by another version of snnc" in str(error)
            assert "Rerun without --resume" in str(error)
    assert count > 300 and not accepted, accepted


# ------------------------------------------------------- the search state: generated sizes

@contextlib.contextmanager
def deadline(seconds: float):
    """TimeoutError if the block runs longer than `seconds` (a check that takes time
    quadratic in a state's size fails here instead of hanging the suite)."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _where(path) -> str:
    """A field's name as the schema's messages give it (schema.at)."""
    from snnc.quant.search import schema

    out = ""
    for key in path:
        out = schema.at(out, key)
    return out or "the state"


def _grown(value, extra: int):
    """`value` (a list, tuple or dict) with `extra` more entries, each a repeat of one it
    holds (one shared object: a pickle stores it once, so the file stays small): a list or
    tuple repeats its last entry, a dict its first under new keys."""
    if isinstance(value, dict):
        key, item = next(iter(value.items()))
        grown = dict(value)
        grown.update(((f"{key}~{i}" if isinstance(key, str) else key + 10 ** 6 + i), item)
                     for i in range(extra))
        return grown
    items = list(value) + [value[-1] if value else 0] * extra
    return items if isinstance(value, list) else tuple(items)


def _replaced(value, path, new):
    """`value` with the field at `path` replaced by `new`, its containers copied on the way
    (only those: an entry shared with another field, as a trail's point is with the points,
    stays as it was there)."""
    if not path:
        return new
    key, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, key: _replaced(value[key], rest, new)}
    items = list(value)
    items[key] = _replaced(value[key], rest, new)
    return items if isinstance(value, list) else tuple(items)


def growths(state, sizes):
    """(path, grown state): every list, tuple and dict of `state` (one of each shape, the
    state itself too) with n more entries, for each n in `sizes`."""
    seen = set()
    for path, value in _walk(state):
        if isinstance(value, (list, tuple, dict)) and _shape(path) not in seen:
            seen.add(_shape(path))
            for n in sizes:
                yield path, _replaced(state, path, _grown(value, n))


@pytest.mark.parametrize("method", list(STATE_SEARCHES))
def test_every_collection_of_a_state_is_bounded(engines, method):
    """Every list, tuple and dict of a real state, grown by 1,000 and by 100,000 repeats of
    one of its own (valid) entries, as a pickle's shared references allow in a small file:
    refused, naming the collection, at once (within 2 s each: lengths are checked before
    entries, and no rule compares every pair of entries); and the review's quadratic case
    (F4) for sensitivity: 20,000 points that differ from the base only in their stage, with
    a trail of 20,000 base points."""
    from snnc.quant.search import api

    engine, good = engines[method]
    cases = growths(good, (1000, 100_000))
    if method == "sensitivity":
        decoy, base = dict(good["trail"][0], stage="greedy"), good["trail"][0]
        cases = itertools.chain(cases, [(("points",), dict(
            good, points=[decoy] * 20_000 + good["points"],
            trail=[base] * 20_000 + good["trail"]))])
    accepted, count = [], 0
    for path, bad in cases:
        count += 1
        engine.state.data = bad
        try:
            with deadline(2.0):
                engine.check_state(api.METHODS[method])
            accepted.append(path)
        except snnc.BadInputError as error:
            assert f"another version of snnc: {_where(path)}" in str(error), (path, str(error))
    engine.state.data = good
    assert count > 30 and not accepted, accepted


@pytest.mark.parametrize("method, field", [("sensitivity", "points"), ("sensitivity", "trail"),
                                           ("gumbel", "points"), ("gumbel", "trials"),
                                           ("drift", "points")])
def test_a_state_holds_what_a_search_makes(engines, method, field):
    """Each list of the state is bounded by what a search of these options makes, and the
    message gives the bound; sensitivity's points may repeat (a greedy step can evaluate a
    configuration measured before), up to the bound exactly."""
    from snnc.quant.search import api, sensitivity

    engine, good = engines[method]
    most = {("sensitivity", "points"): sensitivity.most_points(engine),
            ("sensitivity", "trail"): sensitivity.most_steps(engine) + 1,
            ("gumbel", "points"): 2 * engine.opts.trials,
            ("gumbel", "trials"): engine.opts.trials,
            ("drift", "points"): engine.opts.beam_width}[method, field]
    assert len(good[field]) <= most < 1000  # far below what a small pickle can hold
    if (method, field) == ("sensitivity", "points"):
        engine.state.data = dict(good, points=good["points"]
                                 + [good["points"][0]] * (most - len(good["points"])))
        engine.check_state(api.METHODS[method])
    engine.state.data = dict(good, **{field: good[field] + [good[field][-1]]
                                      * (most + 1 - len(good[field]))})
    try:
        with pytest.raises(snnc.BadInputError, match=re.escape(
                f"{field} has {most + 1:,} entries, more than a search of these options "
                f"makes: at most {most:,} (")):
            engine.check_state(api.METHODS[method])
    finally:
        engine.state.data = good


def _first(mapping):
    return next(iter(mapping))


def _measured_over_budget(state, args):
    """A point the search really measures (a search engine set up as snnc.search sets it
    up), of a configuration over the bit budget (every layer at 8 bits), made the result:
    only the budget is wrong."""
    from snnc.progress import Bar
    from snnc.quant.distributed import Context
    from snnc.quant.search.engine import Options, Search
    from snnc.quant.search.runner import Data, batch_axis
    from snnc.quant.search.state import State

    opts = Options(**{k: v for k, v in args.items() if k not in ("model", "train", "val")})
    model = copy.deepcopy(args["model"])
    axis, _ = batch_axis(model, None, args["train"][0], "--train")
    engine = Search(model, axis, Data(*args["train"]), Data(*args["val"]), opts,
                    Context.single(), State(None, "", Context.single(), False), Bar(False))
    point = vars(engine.evaluate({name: "uniform8" for name in state["result"]["config"]},
                                 state["result"]["point"]["stage"]))
    state["points"].append(point)
    state["result"].update(config=dict(point["config"]), point=point)


def _set_tensor(path, change):
    def edit(state, args):
        holder = state
        for key in path[:-1]:
            holder = holder[key] if key != 0 else holder[_first(holder)]
        key = path[-1] if path[-1] != 0 else _first(holder)
        holder[key] = change(holder[key])
    return edit


def _nan(t):
    t = t.clone()
    t.view(-1)[0] = math.nan
    return t


RESUME_TAMPERINGS = {  # kind -> edit(state, search arguments): each kind of wrong, resumed
    "NaN weight": _set_tensor(("finetune", "model", 0), _nan),
    "over the budget": _measured_over_budget,
    "unknown field": lambda st, e: st["points"][0].update(bonus=1),
    "missing field": lambda st, e: st["result"]["point"].pop("bits"),
    "wrong type": lambda st, e: st["result"].update(details="x"),
    "unknown label": lambda st, e: st["result"]["config"].update(
        {_first(st["result"]["config"]): "pot9"}),
    "unknown layer": lambda st, e: st["result"]["config"].update(
        conv9=st["result"]["config"].pop(_first(st["result"]["config"]))),
    "wrong tensor shape": _set_tensor(("finetune", "model", 0), lambda t: t.reshape(-1)),
    "negative moment": _set_tensor(("finetune", "optimizer", "state", 0, "exp_avg_sq"),
                                   lambda t: -1.0 - t),
    "epoch out of range": lambda st, e: st["finetune"].update(epoch=99),
    "infinite accuracy": lambda st, e: st["points"][-1].update(accuracy=math.inf),
}


@pytest.mark.parametrize("kind", list(RESUME_TAMPERINGS))
@pytest.mark.parametrize("method", list(STATE_SEARCHES))
def test_a_tampered_state_is_refused_on_resume(resumable, tmp_path, method, kind):
    """snnc.search(resume=True) on a state with a matching key and one field made wrong:
    refused, naming the state, before anything is trained or written; the file unchanged."""
    path, args = resumable[method]
    state = torch.load(path, weights_only=True)
    RESUME_TAMPERINGS[kind](state, args)
    bad = tmp_path / "tampered.state"
    torch.save(state, bad)
    before = bad.read_bytes()
    with pytest.raises(snnc.BadInputError) as caught:
        snnc.search(state_path=str(bad), resume=True, **args)
    assert str(caught.value).startswith(f"--resume: the search state {bad} is damaged or was "
                                        "written by another version of snnc: ")
    assert "Rerun without --resume" in str(caught.value)
    assert bad.read_bytes() == before


def test_fine_tuning_that_diverges_is_an_error(tmp_path, monkeypatch):
    """Weights that fine-tuning made NaN or infinite are refused, not written with exit 0.
    (The options' range keeps the learning rate from overflowing, so an optimizer whose
    steps blow the weights up stands for any other cause of divergence.)"""
    class Diverging(torch.optim.AdamW):
        def step(self, closure=None):
            loss = super().step(closure)
            with torch.no_grad():
                self.param_groups[0]["params"][0].mul_(float("inf"))
            return loss
    monkeypatch.setattr(torch.optim, "AdamW", Diverging)
    with pytest.raises(snnc.BadInputError, match="fine-tuning diverged: after epoch 1, "):
        snnc.search(demo.conv_snn(), blobs(48, 0), blobs(32, 1), method="gumbel",
                    max_bits=2.3, trials=1, search_epochs=1, finetune_epochs=1, batch_size=16,
                    state_path=str(tmp_path / "s"))
