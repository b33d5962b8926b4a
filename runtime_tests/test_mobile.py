"""--ort: the .ort and its operator config are byte-identical from one compile to the next, also
across processes (ONNX Runtime writes part of the file in hash-map order; mobile.canonical_ort
rewrites it sorted), and the .ort gives exactly the .onnx's outputs."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import pytest
import torch

import snnc
from snnc.backend import mobile
from snnc.check.parity import onnx_session
from snnc.demo import conv_snn, export
from snnc.errors import SnncError


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """A small quantized conv SNN compiled with --ort by two processes running at once."""
    root = tmp_path_factory.mktemp("mobile")
    model = conv_snn()
    snnc.quantize(model, {"conv1": {"scheme": "uniform", "bits": 4},
                          "conv2": {"scheme": "pot", "bits": 3},
                          "head": {"scheme": "pot", "bits": 5}})
    source = root / "small.pt"
    torch.export.save(export(model, torch.zeros(1, 2, 12, 12)), str(source))
    runs = []
    for name in ("a", "b"):
        (root / name).mkdir()
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "snnc", "compile", str(source), "-o",
             str(root / name / "m.onnx"), "--ort"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    return root


def test_ort_is_byte_identical_across_processes(compiled):
    for name in ("m.onnx", "m.ort", "m.required_operators.config"):
        a, b = (compiled / "a" / name).read_bytes(), (compiled / "b" / name).read_bytes()
        assert a == b, name


def test_ort_outputs_equal_onnx_exactly(compiled):
    reference = onnx_session(str(compiled / "a" / "m.onnx"))
    mobile_session = onnx_session(str(compiled / "a" / "m.ort"))
    name = reference.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((4, 2, 12, 12)).astype(np.float32)
    expected = reference.run(None, {name: x})
    got = mobile_session.run(None, {name: x})
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype and e.shape == g.shape
        assert np.array_equal(e, g)


def test_config_lists_the_integer_kernels(compiled):
    """conv2 (PoT-3 on spikes, a 3x3 conv) runs as an im2col and an integer GEMM on 4-D
    rows (MatMulIntegerToFloat); the head (PoT-5 digits on the flattened spikes, rank 2) as
    MatMulInteger; a reduced build needs both, and the uint8 data movement of the im2col."""
    config = (compiled / "a" / "m.required_operators.config").read_text()
    ops = {(line.split(";")[0], op) for line in config.splitlines()
           if line and not line.startswith("#") for op in line.split(";")[2].split(",")}
    assert {("com.microsoft", "MatMulIntegerToFloat"), ("ai.onnx", "MatMulInteger"),
            ("ai.onnx", "Pad"), ("ai.onnx", "Slice"), ("ai.onnx", "Cast")} <= ops
    assert ("ai.onnx", "DequantizeLinear") not in ops  # every one fused into its GEMM


def onnx_runtime_ort(onnx_path: pathlib.Path) -> bytes:
    """What ONNX Runtime itself writes for the .onnx, before canonical_ort (as in to_ort)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = pathlib.Path(tmp, "m.ort")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(target)
        options.add_session_config_entry("session.save_model_format", "ORT")
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=mobile.DISABLED_OPTIMIZERS)
        return target.read_bytes()


def test_canonical_ort_only_reorders_the_resolver(compiled):
    written = (compiled / "a" / "m.ort").read_bytes()
    raw = onnx_runtime_ort(compiled / "a" / "m.onnx")
    assert mobile.canonical_ort(raw) == written
    assert mobile.canonical_ort(written) == written  # a fixed point
    # the model (the buffer from the Model table on) keeps ONNX Runtime's own bytes; only the
    # resolver and the root table in front of it are rewritten
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import \
        InferenceSession
    model_at = InferenceSession.GetRootAs(raw, 0).Model()._tab.Pos
    assert len(raw) - model_at > 0.9 * len(raw)  # the model is nearly all of the file
    assert written.endswith(raw[model_at:])
    with pytest.raises(SnncError):
        mobile.canonical_ort((compiled / "a" / "m.onnx").read_bytes())


def _static(model) -> tuple[int, int]:
    """(values with a dimension that is not a number, values) after ONNX's strict shape
    inference with data propagation: inputs, outputs and every intermediate."""
    import onnx
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    dynamic = [v for v in values if any(d.dim_param or not d.HasField("dim_value")
                                         for d in v.type.tensor_type.shape.dim)]
    return len(dynamic), len(values)


@pytest.mark.parametrize("sample", ["digits", "digits_events"])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_static_batch_fixes_every_shape_and_changes_no_number(sample, batch):
    """--batch N: every input, output and intermediate has a static shape (what CoreML,
    NNAPI and QNN need), and the outputs equal the symbolic-batch model's on N test samples;
    the stream form's states are static too."""
    from snnc.driver import compile_program
    from snnc.files import loader
    from snnc.options import Options
    root = pathlib.Path(__file__).resolve().parents[1] / "samples" / sample
    program = loader.load_program(str(root / "quantized.pt"))
    free, fixed = (compile_program(program, Options(batch=b)) for b in (None, batch))
    dynamic, values = _static(fixed.model)
    assert dynamic == 0 and values > 500
    assert _static(free.model)[0] > 0  # the default keeps the batch free
    x = np.load(root / "test.npz")["x"][:batch]
    a, b = onnx_session(free.data), onnx_session(fixed.data)
    if isinstance(a.get_inputs()[0].shape[0], int):  # [T, N, ...]
        x = np.ascontiguousarray(np.moveaxis(x, 0, 1))
    feed = {a.get_inputs()[0].name: x}
    for u, v in zip(a.run(None, feed), b.run(None, feed)):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(Exception):  # another batch is refused by ONNX Runtime
        b.run(None, {a.get_inputs()[0].name: np.concatenate([x, x], axis=1 if isinstance(
            a.get_inputs()[0].shape[0], int) else 0)})
    stream = compile_program(program, Options(batch=batch, timesteps="stream"))
    assert _static(stream.model)[0] == 0


def test_batch_from_the_command_line(tmp_path):
    """`snnc compile --batch 1` writes a model whose input has a static batch of 1;
    `--batch` with `--verify` is refused before any work, saying what to do."""
    from test_cli import snnc as cli
    model = pathlib.Path(__file__).resolve().parents[1] / "samples" / "digits" / "quantized.pt"
    out = tmp_path / "b1.onnx"
    assert cli("compile", model, "-o", out, "--batch", 1, "-q").returncode == 0
    assert onnx_session(out.read_bytes()).get_inputs()[0].shape[0] == 1
    refused = cli("compile", model, "-o", tmp_path / "v.onnx", "--batch", 1, "--verify",
                  model.parent / "test.npz")
    assert refused.returncode == 2 and "without --batch" in refused.stderr
    assert not (tmp_path / "v.onnx").exists()


@pytest.mark.parametrize("sample", ["digits", "digits_events"])
def test_a_static_batch_runs_whole_on_nnapi_and_coreml_and_equals_the_default(sample,
                                                                              tmp_path):
    """--batch 1 writes the threshold test as arithmetic NNAPI and CoreML take (they refuse
    every comparison), and --target coreml also writes the DequantizeLinear and Pad CoreML
    refuses as constants, Casts and Concats: ONNX Runtime's mobile checker then puts every
    node of the model in one NNAPI partition (and, for --target coreml, in one CoreML
    MLProgram partition), and the outputs equal the default model's on every test sample,
    one at a time."""
    import re

    from snnc.driver import compile_program
    from snnc.files import loader
    from snnc.options import Options
    root = pathlib.Path(__file__).resolve().parents[1] / "samples" / sample
    program = loader.load_program(str(root / "quantized.pt"))
    free, fixed, coreml = (compile_program(program, o) for o in (
        Options(), Options(batch=1), Options(batch=1, target="coreml")))
    assert not any(n.op_type == "GreaterOrEqual" for n in fixed.model.graph.node)
    assert not any(n.op_type in ("DequantizeLinear", "Pad") for n in coreml.model.graph.node)
    sessions = [onnx_session(r.data) for r in (free, fixed, coreml)]
    x = np.load(root / "test.npz")["x"]
    time_first = isinstance(sessions[0].get_inputs()[0].shape[0], int)
    name = sessions[0].get_inputs()[0].name
    for i in range(len(x)):
        xi = x[i:i + 1] if not time_first else np.ascontiguousarray(np.moveaxis(x[i:i + 1], 0, 1))
        want = sessions[0].run(None, {name: xi})[0]
        for s in sessions[1:]:
            np.testing.assert_array_equal(want, s.run(None, {name: xi})[0])
    for result, eps in ((fixed, ["NNAPI"]), (coreml, ["NNAPI", "CoreML MLProgram"])):
        path = tmp_path / "b1.onnx"
        path.write_bytes(result.data)
        done = subprocess.run([sys.executable, "-m",
                               "onnxruntime.tools.check_onnx_model_mobile_usability",
                               str(path)], capture_output=True, text=True)
        for ep in eps:
            lines = [line for line in (done.stdout + done.stderr).splitlines()
                     if f"can be handled by the {ep} EP" in line]
            found = re.search(r"(\d+) partitions with a total of (\d+)/(\d+) nodes",
                              lines[0]) if lines else None
            assert found and found[1] == "1" and found[2] == found[3], (ep, lines)


def test_target_coreml_needs_a_static_batch(tmp_path):
    from test_cli import assert_clean_failure
    from test_cli import snnc as cli
    model = pathlib.Path(__file__).resolve().parents[1] / "samples" / "digits" / "quantized.pt"
    out = tmp_path / "c.onnx"
    assert_clean_failure(cli("compile", model, "-o", out, "--target", "coreml"), str(out),
                         "--target coreml needs --batch N")


def test_a_static_batch_writes_the_models_own_comparisons_as_arithmetic(tmp_path):
    """Comparisons written in the model (x > c, c >= x, x < c, c <= x: an input binarized)
    become arithmetic with --batch like the neurons' thresholds: NNAPI takes every node in
    one partition, and the outputs equal the default model's, also for inputs at and next
    to each constant."""
    import re

    import torch
    from spikingjelly.activation_based import functional, layer, neuron
    from torch import nn

    from snnc.driver import compile_program
    from snnc.options import Options

    class Binarized(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = layer.Linear(64, 32, step_mode="m")
            self.sn = neuron.LIFNode(step_mode="m")
            self.fc2 = layer.Linear(32, 4, step_mode="m")

        def forward(self, x):
            parts = [(x > 0.3).float(), (0.6 >= x).float(), (x < 0.8).float(),
                     (0.1 <= x).float()]
            y = torch.cat(parts, dim=1).unsqueeze(0).repeat(4, 1, 1)
            return self.fc2(self.sn(self.fc1(y))).mean(0)

    torch.manual_seed(0)
    model = Binarized().eval()
    functional.reset_net(model)
    program = torch.export.export(model, (torch.rand(1, 16),))
    free, fixed = (compile_program(program, Options(batch=b)) for b in (None, 1))
    assert not {n.op_type for n in fixed.model.graph.node} & {
        "Greater", "GreaterOrEqual", "Less", "LessOrEqual"}
    a, b = onnx_session(free.data), onnx_session(fixed.data)
    rng = np.random.default_rng(0)
    at = np.array([0.1, 0.3, 0.6, 0.8], np.float32)
    near = np.concatenate([at, np.nextafter(at, np.float32(0)), np.nextafter(at, np.float32(1))])
    for _ in range(200):
        x = rng.random((1, 16), dtype=np.float32)
        x[0, :8] = rng.choice(near, 8)
        np.testing.assert_array_equal(a.run(None, {"x": x})[0], b.run(None, {"x": x})[0])
    path = tmp_path / "b1.onnx"
    path.write_bytes(fixed.data)
    done = subprocess.run([sys.executable, "-m",
                           "onnxruntime.tools.check_onnx_model_mobile_usability", str(path)],
                          capture_output=True, text=True)
    line = [s for s in (done.stdout + done.stderr).splitlines() if "by the NNAPI EP" in s]
    found = re.search(r"(\d+) partitions with a total of (\d+)/(\d+) nodes", line[0])
    assert found[1] == "1" and found[2] == found[3], line


def test_target_coreml_writes_batchnorm_as_the_kernels_own_mul_and_add(tmp_path):
    """A BatchNorm that no conv absorbs (here after each residual add of a spiking ResNet,
    quantized heterogeneously) is the one op CoreML's MLProgram refuses in such models:
    --target coreml writes it as the Mul and Add ONNX Runtime's kernel computes, so the
    outputs equal the default model's bit for bit and the checker puts every node in one
    MLProgram partition."""
    import re

    import zoo
    from snnc.driver import compile_program
    from snnc.options import Options
    model, shape = zoo.MODELS["resnet_basic"](T=4)
    snnc.quantize(model, zoo.heterogeneous(model))
    zoo.check_firing(model.eval(), shape)  # the spikes the comparison below needs
    program = export(model.eval(), torch.rand(1, *shape[1:]))
    default, coreml = (compile_program(program, o)
                       for o in (Options(), Options(batch=1, target="coreml")))
    ops = [n.op_type for n in default.model.graph.node]
    assert "BatchNormalization" in ops  # the case under test
    assert "BatchNormalization" not in [n.op_type for n in coreml.model.graph.node]
    sessions = [onnx_session(r.data) for r in (default, coreml)]
    name = sessions[0].get_inputs()[0].name
    rng = np.random.default_rng(0)
    for _ in range(8):
        x = rng.random((1, *shape[1:]), dtype=np.float32)
        want, got = (s.run(None, {name: x})[0] for s in sessions)
        np.testing.assert_array_equal(want, got)
    path = tmp_path / "coreml.onnx"
    path.write_bytes(coreml.data)
    done = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability",
                           str(path)], capture_output=True, text=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if "can be handled by the CoreML MLProgram EP" in line]
    found = re.search(r"(\d+) partitions with a total of (\d+)/(\d+) nodes", lines[0]) \
        if lines else None
    assert found and found[1] == "1" and found[2] == found[3], lines


@pytest.mark.parametrize("shape", [(3, 16, 8, 8), (5, 64, 17), (7, 33)])
def test_batchnorm_as_mul_and_add_equals_the_kernel(shape):
    """coreml_form's BatchNormalization -> Mul, Add against ONNX Runtime's own kernel, on
    random statistics and inputs of rank 2, 3 and 4: every element equal."""
    from onnx import TensorProto, helper, numpy_helper

    from snnc.backend.coreml import coreml_form
    rng = np.random.default_rng(1)
    c = shape[1]
    stats = [rng.normal(size=c), rng.normal(size=c), rng.normal(size=c), rng.random(c) * 3]
    inits = [numpy_helper.from_array(a.astype(np.float32), n)
             for a, n in zip(stats, ("s", "b", "m", "v"))]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                          name="bn", epsilon=1e-5)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    rewritten = coreml_form(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Mul", "Add"]
    x = (rng.normal(size=shape) * 10).astype(np.float32)
    want, got = (onnx_session(m.SerializeToString()).run(None, {"x": x})[0]
                 for m in (model, rewritten))
    np.testing.assert_array_equal(want, got)
