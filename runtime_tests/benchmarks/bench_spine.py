"""Benchmark for the spine: snnc compile vs torch.onnx.export(dynamo=True) on Spikformer.

Both start from the same model.pt (a torch.export archive of spikformer_cifar10 with firing
neurons). Prints, measured in this run: compile wall time at T = 4, 8, 16 for both (median
of --repeats), ONNX Runtime latency at batch 1 and 8 with 2 threads (median of --runs),
and file sizes. Ratios are snnc / dynamo; targets: compile <= 0.5x at T=4 and growing no
faster than linearly in T; latency <= 0.8x.

    python3 runtime_tests/benchmarks/bench_spine.py [--repeats 3] [--runs 30]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def latency(sess: ort.InferenceSession, x: np.ndarray, runs: int) -> float:
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    return median_time(lambda: sess.run(None, {name: x}), runs)


def dynamo_export(program_path: str, out: str, batch: int) -> None:
    from snnc.loader import register_spikingjelly_ops

    register_spikingjelly_ops()
    with open(program_path, "rb") as f:
        program = torch.export.load(f)
    torch.onnx.export(program, (torch.zeros(batch, 3, 32, 32),), out, dynamo=True,
                      dynamic_shapes=None, verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", default="4,8,16")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from snnc.compile import compile_file
    from snnc.demo import export, firing_spikformer

    work = tempfile.mkdtemp(prefix="snnc-bench-")
    steps_list = [int(s) for s in args.steps.split(",")]
    print(f"spikformer_cifar10, firing neurons; medians of {args.repeats} compiles and "
          f"{args.runs} inference runs; 2 threads")
    print(f"{'T':>3} {'snnc s':>8} {'dynamo s':>9} {'ratio':>6}")
    compile_times = {}
    for steps in steps_list:
        model = firing_spikformer(steps=steps)
        path = os.path.join(work, f"model_T{steps}.pt")
        torch.export.save(export(model, torch.zeros(1, 3, 32, 32)), path)
        ours = median_time(lambda: compile_file(path, os.path.join(work, f"snnc_T{steps}.onnx")),
                           args.repeats)
        theirs = median_time(
            lambda: dynamo_export(path, os.path.join(work, f"dynamo_T{steps}.onnx"), 1),
            args.repeats)
        compile_times[steps] = (ours, theirs)
        print(f"{steps:>3} {ours:>8.2f} {theirs:>9.2f} {ours / theirs:>6.2f}x")
    first, last = steps_list[0], steps_list[-1]
    growth = compile_times[last][0] / compile_times[first][0]
    print(f"snnc compile time T={last} / T={first}: {growth:.2f} (linear would be "
          f"{last / first:.2f}); dynamo: {compile_times[last][1] / compile_times[first][1]:.2f}")

    steps = 4 if 4 in steps_list else first
    model = firing_spikformer(steps=steps)
    path8 = os.path.join(work, "model_T4_b8.pt")
    torch.export.save(export(model, torch.zeros(8, 3, 32, 32)), path8)
    dynamo_export(path8, os.path.join(work, "dynamo_T4_b8.onnx"), 8)
    ours = session(os.path.join(work, f"snnc_T{steps}.onnx"))
    theirs = {1: session(os.path.join(work, f"dynamo_T{steps}.onnx")),
              8: session(os.path.join(work, "dynamo_T4_b8.onnx"))}
    print(f"\nONNX Runtime latency, T={steps} (ms, median of {args.runs})")
    print(f"{'batch':>5} {'snnc':>8} {'dynamo':>8} {'ratio':>6}  max |logit diff|")
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        x = rng.random((batch, 3, 32, 32), dtype=np.float32)
        a, b = latency(ours, x, args.runs), latency(theirs[batch], x, args.runs)
        diff = np.abs(ours.run(None, {"x": x})[0] - theirs[batch].run(None, {"x": x})[0]).max()
        print(f"{batch:>5} {a * 1e3:>8.2f} {b * 1e3:>8.2f} {a / b:>6.2f}x  {diff:.2e}")
    print("\nfile sizes (MB)")
    for name in (f"snnc_T{steps}.onnx", f"dynamo_T{steps}.onnx"):
        print(f"  {name:<18} {os.path.getsize(os.path.join(work, name)) / 1e6:8.2f}")
    ratio = os.path.getsize(os.path.join(work, f"snnc_T{steps}.onnx")) / \
        os.path.getsize(os.path.join(work, f"dynamo_T{steps}.onnx"))
    print(f"  ratio              {ratio:8.2f}x")


if __name__ == "__main__":
    main()
