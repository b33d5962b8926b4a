"""NIR import (docs/nir.md): NIR graphs of every node type snnc compiles, written to HDF5
with nir.write, compiled with `snnc compile MODEL.nir --dt --timesteps`, run in ONNX
Runtime on random input sequences against snnc's NIRModule (PyTorch, the compiled source)
and against an independent NumPy simulator of the documented equations (nir_graphs.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nir
import nir_graphs as G
import snnc
from snnc.check import parity as H
from snnc.driver import compile_file
from snnc.nir.load import Settings, export_module, input_shape
from snnc.nir.module import NIRModule
from snnc.options import Options

DT = 1e-3
STEPS = 6


def _write(tmp_path, graph, name="model.nir"):
    path = tmp_path / name
    nir.write(str(path), graph)
    return str(path)


def _inputs(graph, batch=5, seed=1, steps=STEPS):
    shape = input_shape(graph, "test")
    return (np.random.default_rng(seed).random((steps, batch, *shape), dtype=np.float32) * 2)


CASES = [(name, "euler") for name in G.GRAPHS] + [("feed_forward", "exp"), ("conv", "exp")]


@pytest.mark.parametrize("name,discretize", CASES, ids=["-".join(c) for c in CASES])
def test_nir_graph_compiles_and_matches(tmp_path, name, discretize):
    """Forward Euler, and the exact step (exp) on two graphs: ONNX Runtime equals NIRModule
    (spikes identical, membranes to 1e-6) at batch 5 and
    batch 1 from one file; the NumPy simulator agrees with both (its float64 GEMMs may
    decide a spike at a threshold the other way: counted, at most 1 % of spike values)."""
    graph = G.GRAPHS[name](seed=3)
    path = _write(tmp_path, graph)
    settings = Settings(DT, STEPS, discretize=discretize)
    result = compile_file(path, str(tmp_path / "m.onnx"), Options(), nir=settings)
    assert result.graph.time.steps == STEPS and result.graph.states  # re-rolled: states
    x = _inputs(graph)
    session = H.onnx_session(result.data)
    got = session.run(None, {session.get_inputs()[0].name: x})
    module = NIRModule(nir.read(path), DT, discretize=discretize).eval()
    with torch.no_grad():
        want = module(torch.from_numpy(x))
    want = [w.numpy() for w in (want if isinstance(want, tuple) else (want,))]
    reference = G.simulate(nir.read(path), DT, x, discretize)
    if discretize == "exp":  # not Euler's: dt / tau = 0.5 here, 1 - exp(-0.5) = 0.39
        assert not np.array_equal(reference[0], G.simulate(nir.read(path), DT, x)[0])
    assert len(got) == len(want) == len(reference)
    for g, w, r in zip(got, want, reference):
        assert g.shape == w.shape == r.shape == (STEPS, 5, *w.shape[2:])
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=0)
        spikes = np.isin(w, (0.0, 1.0)).all()
        if spikes:
            assert 0 < w.mean() < 1, f"{name}: outputs {w.mean()} fire never or always"
            assert np.mean(r != w) <= 0.01, np.mean(r != w)
        else:
            np.testing.assert_allclose(r, w, atol=1e-4, rtol=1e-4)
    one = session.run(None, {session.get_inputs()[0].name: x[:, 2:3]})
    for g, o in zip(got, one):
        np.testing.assert_array_equal(o[:, 0], g[:, 2])


def test_nir_stream_mode_equals_unrolled(tmp_path):
    """--timesteps stream: one step per run, states in and out, equal to the unrolled run."""
    graph = G.recurrent(seed=4)
    path = _write(tmp_path, graph)
    unrolled = compile_file(path, str(tmp_path / "u.onnx"), Options(), nir=Settings(DT, STEPS))
    stream = compile_file(path, str(tmp_path / "s.onnx"), Options(timesteps="stream"),
                          nir=Settings(DT))
    x = _inputs(graph, batch=3)
    session = H.onnx_session(unrolled.data)
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    step = H.onnx_session(stream.data)
    names = [i.name for i in step.get_inputs()]
    states = {n: np.zeros([3 if isinstance(d, str) else d for d in i.shape], np.float32)
              for n, i in zip(names[1:], step.get_inputs()[1:])}
    outs = []
    for t in range(STEPS):
        result = step.run(None, {names[0]: x[t], **states})
        outs.append(result[0])
        states = dict(zip(states, result[1:]))
    np.testing.assert_array_equal(np.stack(outs), want)


def test_nir_quantized_and_integer_kernels(tmp_path):
    """A quantized NIR model (snnc.quantize on its NIRModule) compiles with integer GEMMs
    on the layers reading spikes, and ONNX Runtime matches its source under the rounding
    rule."""
    graph = G.feed_forward(seed=5)
    module = NIRModule(graph, DT).eval()
    layers = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    config = {n: {"bits": b, "scheme": s} for n, (b, s) in
              zip(layers, [(8, "uniform"), (4, "pot"), (3, "uniform")])}
    quantized = snnc.quantize(module, config)
    program = export_module(quantized, STEPS, graph)
    result = snnc.compile(program)
    x = _inputs(graph, batch=4)
    reference = H.torch_trace(export_module(quantized, STEPS, graph, batch=4), x)
    session = H.onnx_session(result.data)
    comparison = H.compare(reference, H.onnx_trace(session, x), H.Comparison(), batch_axis=1,
                           max_flips=4, perturbed_tol=0.5)
    assert not comparison.problems, comparison.problems
    gemms = sum(n.op == "int_matmul" for n in result.lowered.nodes)
    assert gemms >= 2, gemms  # fc2 and fc3 read spikes


BAD = {
    "no dt": (lambda p: compile_file(p, p + ".onnx", Options(), nir=Settings(None, STEPS)),
              "carries no time step"),
    "no steps": (lambda p: compile_file(p, p + ".onnx", Options(), nir=Settings(DT)),
                 "carries no number of steps"),
    "no nir args": (lambda p: compile_file(p, p + ".onnx", Options()), "carries no time step"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_nir_missing_arguments_are_refused(tmp_path, case):
    path = _write(tmp_path, G.feed_forward())
    run, message = BAD[case]
    with pytest.raises(snnc.BadInputError, match=message):
        run(path)


def _hdf5(tmp_path, build):
    import h5py
    path = tmp_path / "bad.nir"
    with h5py.File(path, "w") as f:
        build(f)
    return str(path)


def test_nir_bad_files_are_refused(tmp_path):
    """Unknown node types (named, with their path), non-numeric data, no graph, shapes that
    do not fit (an Input holding a batch, with the hint), no neuron, a corrupt file:
    BadInputError, no traceback from h5py, nir or torch."""
    good = _write(tmp_path, G.recurrent(), "good.nir")
    data = open(good, "rb").read()
    cases = {}
    import h5py
    unknown = tmp_path / "unknown.nir"
    unknown.write_bytes(data)
    with h5py.File(unknown, "r+") as f:
        del f["node/nodes/block/nodes/lif/type"]
        f["node/nodes/block/nodes/lif/type"] = b"Izhikevich"
    cases[str(unknown)] = "'block.lif' has the unknown type 'Izhikevich'"
    truncated = tmp_path / "truncated.nir"
    truncated.write_bytes(data[:len(data) // 2])
    cases[str(truncated)] = "cannot read it as HDF5"
    cases[_hdf5(tmp_path, lambda f: f.create_dataset("x", data=[1]))] = "no 'node' group"
    objects = tmp_path / "objects.nir"
    objects.write_bytes(data)
    with h5py.File(objects, "r+") as f:
        del f["node/nodes/fc/bias"]
        f.create_dataset("node/nodes/fc/bias", data=np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]))
    cases[str(objects)] = "numbers and names only"
    shapes = tmp_path / "shapes.nir"
    shapes.write_bytes(data)
    with h5py.File(shapes, "r+") as f:
        del f["node/nodes/rec/weight"]
        f["node/nodes/rec/weight"] = np.zeros((3, 3), np.float32)
    cases[str(shapes)] = "NIR graph"
    batched = tmp_path / "batched.nir"  # Norse's to_nir on a batched example
    batched.write_bytes(data)
    with h5py.File(batched, "r+") as f:
        del f["node/nodes/input/shape"]
        f["node/nodes/input/shape"] = np.array([4, 6])
    cases[str(batched)] = "holds an example's batch"
    nowhere = tmp_path / "nowhere.nir"  # (nir adds the Output node it lacks)
    nir.write(str(nowhere), nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])), "fc": nir.Linear(np.ones((2, 3), np.float32))},
        edges=[("input", "fc")]))
    cases[str(nowhere)] = "has no neuron node"
    for path, message in cases.items():
        with pytest.raises(snnc.BadInputError, match=message):
            compile_file(path, path + ".onnx", Options(), nir=Settings(DT, STEPS))


def test_nir_from_the_command_line(tmp_path):
    """`snnc compile MODEL.nir -o OUT --dt --timesteps T`; --timesteps N or --dt on a model
    that is not NIR exit 1 with a message (as snnc's other refusals; issue 24 moves flag
    conflicts to 2), a --timesteps click cannot parse 2, nothing written."""
    from test_cli import snnc as cli
    path = _write(tmp_path, G.recurrent(seed=2))
    out = tmp_path / "m.onnx"
    ok = cli("compile", path, "-o", out, "--dt", DT, "--timesteps", STEPS, "-q")
    assert ok.returncode == 0 and out.exists(), ok.stderr
    x = _inputs(G.recurrent(seed=2), batch=2)
    session = H.onnx_session(out.read_bytes())
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape[:2] == (STEPS, 2)
    missing = cli("compile", path, "-o", tmp_path / "n.onnx", "--timesteps", STEPS)
    assert missing.returncode == 1 and "--dt SECONDS" in missing.stderr
    other = tmp_path / "other.onnx"
    not_nir = cli("compile", out, "-o", other, "--dt", DT, "--timesteps", 4)
    assert not_nir.returncode == 1 and "are for NIR files" in not_nir.stderr
    bad = cli("compile", path, "-o", other, "--dt", DT, "--timesteps", "many")
    assert bad.returncode == 2 and "unroll, stream or a number" in bad.stderr
    assert not other.exists() and not (tmp_path / "n.onnx").exists()


def test_nir_quantize_search_and_compile_from_the_command_line(tmp_path):
    """`snnc quantize` and `snnc search` take a NIR file (with --dt, --timesteps and a
    --readout making the logits) and write an snnc checkpoint of its NIRModule, which
    `snnc compile` takes: the compiled model agrees with the quantized source on every
    sample, and search's fine-tuning moves the weights in front of the first neurons (the
    spikes' surrogate gradient reaches them)."""
    import json

    from test_cli import snnc as cli
    path = _write(tmp_path, G.feed_forward(seed=3))
    rng = np.random.default_rng(0)
    x = rng.random((48, STEPS, 6), dtype=np.float32) * 2
    np.savez(tmp_path / "train.npz", x=x, y=rng.integers(0, 4, 48))
    np.savez(tmp_path / "val.npz", x=x[:24], y=rng.integers(0, 4, 24))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"*fc*": "float", "*": {"scheme": "pot", "bits": 4}}))
    nir_args = ("--dt", DT, "--timesteps", STEPS, "--readout", "mean")
    quantized = tmp_path / "q.pt"
    done = cli("quantize", path, "--config", config, "-o", quantized, *nir_args)
    assert done.returncode == 0, done.stderr
    searched = tmp_path / "s.pt"
    done = cli("search", path, "--train", tmp_path / "train.npz", "--val",
               tmp_path / "val.npz", "--method", "sensitivity", "--max-bits", 4,
               "--finetune-epochs", 1, "-o", tmp_path / "s.json", "--quantized", searched,
               "-q", *nir_args)
    assert done.returncode == 0, done.stderr
    first = "layers.fc1.layer.parametrizations.weight.original"
    before = NIRModule(nir.read(path), DT).state_dict()["layers.fc1.layer.weight"]
    after = torch.load(searched, weights_only=True)["state_dict"][first]
    assert (after - before).abs().max() > 1e-4  # AdamW's decay alone moves it by ~5e-6
    for model in (quantized, searched):
        out = tmp_path / f"{model.stem}.onnx"
        assert cli("compile", model, "-o", out, "-q").returncode == 0
        verified = cli("verify", model, out, "--data", tmp_path / "val.npz", "--json")
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)["top1_agreement"] == 1.0
    missing = cli("quantize", path, "--config", config, "-o", tmp_path / "m.pt")
    assert missing.returncode == 1 and "--dt SECONDS and --timesteps T" in missing.stderr


def test_nir_neurons_train_through_a_surrogate_with_exact_values():
    """In training mode a spike's gradient is a fast sigmoid's (the layers before the first
    neurons get gradients) and its value the step's (outputs equal to eval mode)."""
    graph = G.recurrent(seed=2)
    module = NIRModule(graph, DT, readout="mean")
    x = torch.from_numpy(_inputs(graph, batch=3))
    with torch.no_grad():
        want = module.eval()(x)
    got = module.train()(x)
    assert torch.equal(got.detach(), want)
    got.sum().backward()
    assert module.layers["fc"].layer.weight.grad.abs().sum() > 0
