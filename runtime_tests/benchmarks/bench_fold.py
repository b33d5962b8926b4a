"""Benchmark for the folded quantized Spikformer (fold_scales, pot_to_shift, stream mode).

spikformer_cifar10 with firing neurons and the heterogeneous configuration of the tests.
Prints, all measured in this run (medians; ONNX Runtime at 2 threads, in interleaved
blocks):
- latency at batch 1 and 8 of snnc's folded model against (a) the float
  torch.onnx.export(dynamo=True) export, (b) ONNX Runtime's quantize_static int8 QDQ model
  of that export, (c) PyTorch eager on the quantized source;
- top-1 changes on 64 random images: snnc against the quantized source, quantize_static
  against the float source;
- stream mode (--timesteps stream) at T = 4 and T = 64: latency per step and peak memory,
  against the unrolled model;
- where the folded model's time goes: ONNX Runtime's profiler, by op type.

    python3 runtime_tests/benchmarks/bench_fold.py [--runs 24]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch
from common import (dynamo_export, interleaved_latency, kernel_times, median_time, quantize_static,
                    save_spikformer, session)

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

MEMORY_PROBE = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
path, steps, batch, stream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).random((batch, 3, 32, 32), dtype=np.float32)
feeds = {"x": x}
if stream:
    contract = json.loads(s.get_modelmeta().custom_metadata_map["snnc.stream"])
    for st in contract["states"]:
        feeds[st["input"]] = np.zeros([batch if d == "N" else d for d in st["shape"]], np.float32)
    names = [o.name for o in s.get_outputs()]
def status(key):  # this process's memory in MB (VmHWM: the peak; not inherited via exec)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024
before = status("VmRSS")
times = []
for _ in range(3):
    if stream:
        start = time.perf_counter()
        for t in range(steps):
            out = dict(zip(names, s.run(None, feeds)))
            for st in contract["states"]:
                feeds[st["input"]] = out[st["output"]]
        times.append((time.perf_counter() - start) / steps)
    else:
        start = time.perf_counter(); s.run(None, feeds); times.append(time.perf_counter() - start)
peak = status("VmHWM")
print(json.dumps({"peak_mb": peak, "run_mb": peak - before, "seconds": sorted(times)[1]}))
"""


def random_images(batch: int, count: int = 8) -> list[np.ndarray]:
    """Calibration data for quantize_static: random images, as the tests use."""
    rng = np.random.default_rng(11)
    return [rng.random((batch, 3, 32, 32), dtype=np.float32) for _ in range(count)]


def top1(outputs: np.ndarray) -> np.ndarray:
    """Predictions from [T, B, classes] per-step outputs: the mean over time."""
    return outputs.mean(0).argmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(2)

    from spikingjelly.activation_based import functional

    from snnc.check.parity import onnx_session
    from snnc.demo import SPIKFORMER_HETEROGENEOUS, firing_spikformer
    from snnc.driver import compile_file
    from snnc.options import Options

    work = tempfile.mkdtemp(prefix="snnc-bench-fold-")
    path = lambda name: os.path.join(work, name)  # noqa: E731
    model = firing_spikformer(steps=4, quantization=SPIKFORMER_HETEROGENEOUS)
    float_model = firing_spikformer(steps=4)
    save_spikformer(model, path("q.pt2"))
    compile_file(path("q.pt2"), path("fold.onnx"))
    compile_file(path("q.pt2"), path("fold_shift.onnx"), Options(pot_lowering="shift"))
    for batch in (1, 8):
        save_spikformer(float_model, path(f"float_b{batch}.pt2"), batch)
        dynamo_export(path(f"float_b{batch}.pt2"), path(f"float_b{batch}.onnx"), batch)
        quantize_static(path(f"float_b{batch}.onnx"), path(f"static_b{batch}.onnx"),
                        random_images(batch))

    print("spikformer_cifar10 T=4, heterogeneous quantization (stem u8, qkv PoT4, proj u3, "
          "fc1 PoT3, fc2 u2, head u8), all passes")
    print(f"\nlatency (ms, median of {args.runs}; ONNX Runtime 2 threads; ratios against the "
          "float dynamo export measured in the same run)")
    print(f"{'batch':>5} {'snnc fold':>10} {'shift':>8} {'float export':>13} "
          f"{'ORT static':>11} {'eager (q)':>12} {'eager float':>12}   {'fold/float':>10} "
          f"{'static/float':>12} {'eager q/float':>13}")
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        sessions = {"fold": session(path("fold.onnx")), "shift": session(path("fold_shift.onnx")),
                    "float": session(path(f"float_b{batch}.onnx")),
                    "static": session(path(f"static_b{batch}.onnx"))}
        x = rng.random((batch, 3, 32, 32), dtype=np.float32)
        t = interleaved_latency(sessions, x, args.runs)
        xt = torch.from_numpy(x)

        for key, net in (("eager", model), ("eager_float", float_model)):
            def eager(net=net):
                functional.reset_net(net)
                with torch.no_grad():
                    net(xt)

            eager()
            t[key] = median_time(eager, max(6, args.runs // 2))
        f = t["float"]
        print(f"{batch:>5} {t['fold'] * 1e3:>10.2f} {t['shift'] * 1e3:>8.2f} {f * 1e3:>13.2f} "
              f"{t['static'] * 1e3:>11.2f} {t['eager'] * 1e3:>12.2f} "
              f"{t['eager_float'] * 1e3:>12.2f}   {t['fold'] / f:>9.2f}x "
              f"{t['static'] / f:>11.2f}x {t['eager'] / f:>10.2f}x")

    # predictions on 64 random images
    fold, static = onnx_session(path("fold.onnx")), onnx_session(path("static_b8.onnx"))
    floats = onnx_session(path("float_b8.onnx"))
    changed = {"fold": 0, "static": 0}
    for _ in range(8):
        x = rng.random((8, 3, 32, 32), dtype=np.float32)
        with torch.no_grad():
            functional.reset_net(model)
            q_ref = top1(model(torch.from_numpy(x)).numpy())
            functional.reset_net(float_model)
            f_ref = top1(float_model(torch.from_numpy(x)).numpy())
        changed["fold"] += int((top1(fold.run(None, {"x": x})[0]) != q_ref).sum())
        name = static.get_inputs()[0].name
        changed["static"] += int((top1(static.run(None, {name: x})[0]) != f_ref).sum())
        assert (top1(floats.run(None, {floats.get_inputs()[0].name: x})[0]) == f_ref).all()
    print(f"\ntop-1 changed on 64 random images: snnc fold vs quantized PyTorch "
          f"{changed['fold']}; ORT quantize_static vs float PyTorch {changed['static']}")

    # stream mode at T = 4 and T = 64
    print("\nstream mode vs unrolled, batch 1 (median of 3; peak RSS of a fresh process)")
    print(f"{'T':>3} {'stream ms/step':>15} {'unrolled ms/step':>17} {'stream peak MB':>15} "
          f"{'unrolled peak MB':>17} {'stream/unrolled memory':>23}")
    rows = {}
    for steps in (4, 64):
        m = firing_spikformer(steps=steps, quantization=SPIKFORMER_HETEROGENEOUS)
        save_spikformer(m, path(f"q{steps}.pt2"))
        compile_file(path(f"q{steps}.pt2"), path(f"unroll{steps}.onnx"))
        compile_file(path(f"q{steps}.pt2"), path(f"stream{steps}.onnx"),
                     Options(timesteps="stream"))
        for kind in ("stream", "unroll"):
            out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, path(f"{kind}{steps}.onnx"),
                                  str(steps), "1", "1" if kind == "stream" else "0"],
                                 capture_output=True, text=True, check=True)
            rows[kind, steps] = json.loads(out.stdout)
        s, u = rows["stream", steps], rows["unroll", steps]
        print(f"{steps:>3} {s['seconds'] * 1e3:>15.2f} {u['seconds'] / steps * 1e3:>17.2f} "
              f"{s['peak_mb']:>15.1f} {u['peak_mb']:>17.1f} "
              f"{s['peak_mb'] / u['peak_mb']:>22.2f}x")
    print(f"stream peak memory T=64 / T=4: "
          f"{rows['stream', 64]['peak_mb'] / rows['stream', 4]['peak_mb']:.2f}x; "
          f"unrolled: {rows['unroll', 64]['peak_mb'] / rows['unroll', 4]['peak_mb']:.2f}x")

    # where the time goes
    x = rng.random((1, 3, 32, 32), dtype=np.float32)
    for name in ("fold.onnx", "float_b1.onnx"):
        total, ops = kernel_times(path(name), x, runs=20)
        print(f"\nONNX Runtime profile of {name}, batch 1: {total:.2f} ms of kernel time per run")
        for op, ms, share in ops[:10]:
            print(f"  {op:<24} {ms:8.2f} ms {100 * share:5.1f}%")


if __name__ == "__main__":
    main()
