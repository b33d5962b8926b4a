"""Benchmark for the spine: snnc compile vs torch.onnx.export(dynamo=True) on Spikformer.

Both start from the same model.pt (a torch.export archive of spikformer_cifar10 with firing
neurons). Prints, measured in this run: compile wall time at T = 4, 8, 16 for both (median
of --repeats), ONNX Runtime latency at batch 1 and 8 with 2 threads (medians, interleaved),
a diagnostic conv floor, time by op type, and file sizes. Ratios are snnc / dynamo;
targets: compile <= 0.5x at T=4 and growing no faster than linearly in T; latency <= 0.8x.
The dynamo export at T=16 takes minutes: the default run takes about 20 minutes.

    python3 runtime_tests/benchmarks/bench_spine.py [--repeats 3] [--runs 48] [--steps 4,8,16]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings

import numpy as np
import torch
from common import (dynamo_export, file_size, interleaved_latency, kernel_times, median_time,
                    save_spikformer, session)

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)


def conv_floor_model(program_path: str, out: str) -> None:
    """DIAGNOSTIC ONLY, not equivalent: each neuron step cut to Add, GreaterOrEqual, Cast.

    Shows how much of the run time is the convolutions and matmuls, which both exports
    compute in float32 the same way."""
    from snnc.backend import onnx_emit
    from snnc.driver import compile_file

    def minimal(e, node, ins, outs, module):
        h, fired = e.temp(module, "h"), e.temp(module, "fired")
        e.add("Add", [ins[0], ins[1]], [h], module)
        e.add("GreaterOrEqual", [h, onnx_emit._f32(e, node.attrs["threshold"])], [fired],
              module)
        e.add("Cast", [fired], [outs[0]], module, to=1)
        if node.outputs[1] in e.used:
            e.add("Identity", [h], [outs[1]], module)

    real = onnx_emit.LOWER["neuron"]
    onnx_emit.LOWER["neuron"] = minimal
    try:
        compile_file(program_path, out)
    finally:
        onnx_emit.LOWER["neuron"] = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=48)
    parser.add_argument("--steps", default="4,8,16")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from snnc.demo import firing_spikformer
    from snnc.driver import compile_file

    work = tempfile.mkdtemp(prefix="snnc-bench-")
    steps_list = [int(s) for s in args.steps.split(",")]
    print(f"spikformer_cifar10 with firing neurons; compile: median of {args.repeats}; "
          f"latency: median of {args.runs} runs in interleaved blocks; 2 threads")
    paths = {}
    for steps in steps_list:
        paths[steps] = save_spikformer(firing_spikformer(steps=steps),
                                       os.path.join(work, f"model_T{steps}.pt"))
    compile_file(paths[steps_list[0]], os.path.join(work, "warmup.onnx"))  # imports, caches
    dynamo_export(paths[steps_list[0]], os.path.join(work, "warmup_dynamo.onnx"), 1)

    print("\ncompile wall time, from the same model.pt (s)")
    print(f"{'T':>3} {'snnc':>8} {'dynamo':>9} {'ratio':>7}")
    compile_times = {}
    for steps in steps_list:
        ours = median_time(lambda: compile_file(paths[steps],
                                                os.path.join(work, f"snnc_T{steps}.onnx")),
                           args.repeats)
        theirs = median_time(
            lambda: dynamo_export(paths[steps], os.path.join(work, f"dynamo_T{steps}.onnx"), 1),
            args.repeats)
        compile_times[steps] = (ours, theirs)
        print(f"{steps:>3} {ours:>8.2f} {theirs:>9.2f} {ours / theirs:>6.2f}x")
    first, last = steps_list[0], steps_list[-1]
    print(f"growth T={first} -> T={last} (T grows {last / first:.1f}x): snnc "
          f"{compile_times[last][0] / compile_times[first][0]:.2f}x, dynamo "
          f"{compile_times[last][1] / compile_times[first][1]:.2f}x")

    steps = 4 if 4 in steps_list else first
    path8 = save_spikformer(firing_spikformer(steps=steps), os.path.join(work, "model_b8.pt"), 8)
    dynamo_export(path8, os.path.join(work, "dynamo_b8.onnx"), 8)
    floor = os.path.join(work, "floor.onnx")
    conv_floor_model(paths[steps], floor)
    ours_path = os.path.join(work, f"snnc_T{steps}.onnx")
    dynamo = {1: os.path.join(work, f"dynamo_T{steps}.onnx"),
              8: os.path.join(work, "dynamo_b8.onnx")}
    print(f"\nONNX Runtime latency, T={steps} (ms)")
    print(f"{'batch':>5} {'snnc':>8} {'dynamo':>8} {'ratio':>7} {'floor*':>8} "
          f"{'floor/dynamo':>12}  top-1 agree")
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        sessions = {"snnc": session(ours_path), "dynamo": session(dynamo[batch]),
                    "floor": session(floor)}
        x = rng.random((batch, 3, 32, 32), dtype=np.float32)
        t = interleaved_latency(sessions, x, args.runs)
        a = sessions["snnc"].run(None, {"x": x})[0].mean(0).argmax(-1)
        b = sessions["dynamo"].run(None, {sessions["dynamo"].get_inputs()[0].name: x})[0]
        agree = int((a == b.mean(0).argmax(-1)).sum())
        print(f"{batch:>5} {t['snnc'] * 1e3:>8.2f} {t['dynamo'] * 1e3:>8.2f} "
              f"{t['snnc'] / t['dynamo']:>6.2f}x {t['floor'] * 1e3:>8.2f} "
              f"{t['floor'] / t['dynamo']:>11.2f}x  {agree}/{batch}")
    print("* floor: snnc's graph with each neuron step cut to 3 nodes (NOT equivalent): the "
          "time spent in convolutions and matmuls")
    x = rng.random((1, 3, 32, 32), dtype=np.float32)
    shares = ", ".join(f"{op} {share:.0%}" for op, _, share in kernel_times(ours_path, x)[1][:7])
    print(f"snnc batch-1 time by op type (ORT profiler): {shares}")

    print("\nfile sizes (MB, external data included)")
    ours_size, their_size = file_size(ours_path), file_size(dynamo[1])
    print(f"  snnc    {ours_size / 1e6:8.2f}")
    print(f"  dynamo  {their_size / 1e6:8.2f}  (snnc/dynamo {ours_size / their_size:.2f}x)")


if __name__ == "__main__":
    main()
