"""The samples on Qualcomm's HTP: ONNX Runtime's QNN execution provider with the HTP
emulator that onnxruntime-qnn ships (x86-64 Linux), against the same file on the CPU.

    pip install -c .ci/constraints.txt -e '.[htp]'
    python runtime_tests/qnn_check.py [--samples N] [--dir DIR]

Not in the default suite (docs/testing.md, docs/qnn.md). Each sample is compiled with
`--target qnn --batch 1 --debug-outputs`; the session has CPU fallback disabled (creating it
fails if any node would run on the CPU) and writes its compiled context
(`ep.context_enable`): the EPContext nodes in that model are the QNN partitions. Every test
sample then runs on HTP and on ONNX Runtime's CPU provider: every spike of every layer and
step must be identical, and top-1 must equal the PyTorch source's. The logits are reported
(HTP computes the last Cast and Mul in its reduced float). The symbolic-batch QNN form is
checked against PyTorch under the rounding rule by runtime_tests/test_qnn.py.
Exits 1 unless all of that holds.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(os.path.dirname(HERE), "samples")
# input codes: pixels k/256 in [0, 1]; event counts
INPUTS = {"digits": (1 / 256, 256), "digits_events": (1.0, 255)}
HTP = {"htp_arch": "75", "soc_model": "57"}  # v68, the default, cannot finalize these graphs


def htp_session(path: str, context: str):
    import onnxruntime as ort
    import onnxruntime_qnn as qnn

    if not any(d.ep_name == "QNNExecutionProvider" for d in ort.get_ep_devices()):
        ort.register_execution_provider_library(qnn.get_ep_name(), qnn.get_library_path())
    options = ort.SessionOptions()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    options.add_provider_for_devices(devices, {"backend_path": qnn.get_qnn_htp_path(), **HTP})
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.add_session_config_entry("ep.context_enable", "1")
    options.add_session_config_entry("ep.context_file_path", context)
    options.add_session_config_entry("ep.context_embed_mode", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(path, options)


def source_top1(program, x: np.ndarray) -> np.ndarray:
    import torch

    module = program.module()
    with torch.no_grad():
        return np.array([int(module(torch.from_numpy(_one(x, i))).argmax(1).item())
                         for i in range(len(x))])


def _one(x: np.ndarray, i: int) -> np.ndarray:
    """Sample i as the model takes it: [1, ...], or [T, 1, ...] for event sequences."""
    return np.ascontiguousarray(x[i:i + 1].swapaxes(0, 1)) if x.ndim == 5 else x[i:i + 1]


def _spikes_as_one_output(path: str) -> str:
    """The model with its spike/<layer>/t<k> outputs (--debug-outputs) replaced by one
    int32 output, `spikes`, joining the integer spikes they are cast from: HTP's float
    would read a spike as 1.0000001 (measured), which says nothing about the spike."""
    import onnx
    from onnx import helper

    model = onnx.load(path)
    g = model.graph
    cast = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Cast"}
    spikes = [cast[o.name] for o in g.output if o.name.startswith("spike/")]  # int32 0/1
    kept = [o for o in g.output if not o.name.startswith("spike/")]
    flat = helper.make_tensor("spikes/flat", onnx.TensorProto.INT64, [2], [1, -1])
    g.initializer.append(flat)
    for k, name in enumerate(spikes):
        g.node.append(helper.make_node("Reshape", [name, "spikes/flat"], [f"spikes/{k}"]))
    g.node.append(helper.make_node("Concat", [f"spikes/{k}" for k in range(len(spikes))],
                                   ["spikes"], axis=1))
    del g.output[:]
    g.output.extend(kept + [helper.make_tensor_value_info("spikes", onnx.TensorProto.INT32,
                                                          None)])
    out = path.replace(".onnx", "_spikes.onnx")
    onnx.save(model, out)
    return out


def check(name: str, n: int | None, out_dir: str) -> bool:
    import onnx

    from snnc.check.parity import onnx_session
    from snnc.driver import compile_file
    from snnc.files import loader
    from snnc.files.data import load_data
    from snnc.options import Options

    here = os.path.join(SAMPLES, name)
    scale, top = INPUTS[name]
    path = os.path.join(out_dir, f"{name}_qnn.onnx")
    compile_file(os.path.join(here, "quantized.pt"), path,
                 Options(target="qnn", batch=1, input_scale=scale, input_max=top,
                         debug_outputs=True))
    nodes = collections.Counter(node.op_type for node in onnx.load(path).graph.node)
    path = _spikes_as_one_output(path)
    x, y = load_data(os.path.join(here, "test.npz"))
    x, y = (x, y) if n is None else (x[:n], y[:n])
    start = time.perf_counter()
    context = os.path.join(out_dir, f"{name}_ctx.onnx")
    for stale in (context, context.replace(".onnx", "_qnn.bin")):  # ORT will not overwrite
        if os.path.exists(stale):
            os.remove(stale)
    htp = htp_session(path, context)
    partitions = collections.Counter(node.op_type for node in
                                     onnx.load(context, load_external_data=False).graph.node)
    setup = time.perf_counter() - start
    cpu = onnx_session(path)
    flips, spikes, logit_diff, top_htp = 0, 0, 0.0, []
    start = time.perf_counter()
    for i in range(len(x)):
        feed = {cpu.get_inputs()[0].name: _one(x, i)}
        a, b = cpu.run(None, feed), htp.run(None, feed)
        flips += int((a[-1] != b[-1]).sum())
        spikes += int(a[-1].sum())
        logit_diff = max(logit_diff, float(np.abs(a[0] - b[0]).max()))
        top_htp.append(int(b[0].reshape(-1, b[0].shape[-1]).mean(axis=0).argmax()))
    run = time.perf_counter() - start
    top_src = source_top1(loader.load_program(os.path.join(here, "quantized.pt")), x)
    agree = float(np.mean(np.array(top_htp) == top_src))
    whole = dict(partitions) == {"EPContext": 1}
    print(f"{name}: {sum(nodes.values())} ONNX nodes; on HTP: {dict(partitions)} "
          f"(one partition, nothing on the CPU: {whole}); session {setup:.1f} s, "
          f"{1000 * run / len(x):.0f} ms per sample")
    print(f"  {len(x)} test samples: spikes HTP vs CPU differ {flips} of {spikes} fired; "
          f"top-1 HTP vs PyTorch {100 * agree:.2f} %; accuracy HTP "
          f"{100 * np.mean(np.array(top_htp) == y):.2f} %, PyTorch "
          f"{100 * np.mean(top_src == y):.2f} %; max |logit HTP - CPU| {logit_diff:.4f}")
    return whole and flips == 0 and agree == 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=None,
                        help="test samples per model (default: the whole test split)")
    parser.add_argument("--dir", default=None, help="keep the compiled files here")
    args = parser.parse_args()
    if importlib.util.find_spec("onnxruntime_qnn") is None:
        print("onnxruntime-qnn is not installed: pip install -c .ci/constraints.txt -e '.[htp]'",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = args.dir or scratch
        os.makedirs(out_dir, exist_ok=True)
        ok = [check(name, args.samples, out_dir) for name in sorted(INPUTS)]
    print("all exact" if all(ok) else "MISMATCH")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
