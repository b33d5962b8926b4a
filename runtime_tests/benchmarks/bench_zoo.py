"""Benchmark over the family snnc compiles (runtime_tests/zoo.py), plain and quantized.

Per model: parameters, T, whether snnc compiles it, parity with PyTorch on 16 inputs
(top-1 agreement, median over samples of the largest |logit difference|, samples with a
rounding-decided spike, and top-1 changes on samples without one, which must be 0), snnc compile time (median of --repeats), ONNX Runtime latency at
batch 1 (2 threads, medians, interleaved) against torch.onnx.export(dynamo=True) of the
same exported program when that export succeeds (ratio snnc / dynamo, measured in this
run), and file sizes (snnc's ONNX, its weight pack, dynamo's ONNX with its .data). The
whole family takes about 15 minutes.

    python3 runtime_tests/benchmarks/bench_zoo.py [--models a,b] [--steps 4] [--runs 30]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import warnings

import numpy as np
import torch
from common import file_size, interleaved_latency, median_time, session

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import zoo  # noqa: E402  (runtime_tests/zoo.py)

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

HEADER = ("model", "q", "params", "T", "compiles", "top-1", "med max|dlogit|", "rounding",
          "top-1 off rounding",
          "compile s", "ORT ms", "dynamo ms", "ratio", "onnx KB", "pack KB", "dynamo KB")


def parity(result, model, shape, samples: int = 16):
    """(top-1 agreement, median of per-sample max |logit diff|, rounding-decided samples,
    top-1 changes on samples without a rounding-decided spike: a bug if not 0)."""
    from snnc.check import parity as H

    x = np.random.default_rng(11).random((samples, *shape[1:]), dtype=np.float32)
    reference = H.torch_trace(zoo.export(model, (samples, *shape[1:])), x)
    got = H.onnx_trace(H.onnx_session(result.data), x)
    axis = 1 if result.graph.time.outputs[0] == "stack" else 0
    comparison = H.compare(reference, got, H.Comparison(), batch_axis=axis, max_flips=4)
    ref, out = (np.moveaxis(t.outputs[0], axis, 0) for t in (reference, got))
    top1 = np.mean([ref[i].reshape(-1, ref.shape[-1]).mean(0).argmax()
                    == out[i].reshape(-1, out.shape[-1]).mean(0).argmax()
                    for i in range(samples)])
    diff = statistics.median(float(np.abs(ref[i] - out[i]).max()) for i in range(samples))
    off = len(set(comparison.top1_changed) - set(comparison.perturbed_samples))
    return top1, diff, comparison.perturbed, off + len(comparison.problems)


def dynamo(program, shape, path: str) -> bool:
    try:
        torch.onnx.export(program, (torch.zeros(*shape),), path, dynamo=True, verbose=False)
        return True
    except Exception:  # the baseline a user has today may not exist for this model
        return False


def row(name: str, quantized: bool, steps: int, repeats: int, runs: int, tmp: str) -> tuple:
    import snnc
    from snnc.driver import compile_program
    from snnc.options import Options

    model, shape = zoo.MODELS[name](T=steps)
    if quantized:
        snnc.quantize(model, zoo.heterogeneous(model))
    program = zoo.export(model, shape)
    params = sum(p.numel() for p in program.parameters())
    try:
        seconds = median_time(lambda: compile_program(program), repeats)
        result = compile_program(program, Options(debug_outputs=True))
    except snnc.SnncError as error:
        return (name, "q" if quantized else "", f"{params:,}", steps,
                f"no: {str(error).splitlines()[0][:40]}") + ("",) * 11
    top1, diff, rounding, off = parity(result, model, shape)
    plain = compile_program(program)
    ours, theirs = os.path.join(tmp, f"{name}.onnx"), os.path.join(tmp, f"{name}.dynamo.onnx")
    with open(ours, "wb") as f:
        f.write(plain.data)
    sessions = {"snnc": session(ours)}
    if dynamo(program, shape, theirs):
        sessions["dynamo"] = session(theirs)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    latency = interleaved_latency(sessions, x, runs)
    base = latency.get("dynamo")
    pack = plain.pack_bytes()
    return (name, "q" if quantized else "", f"{params:,}", steps, "yes", f"{top1:.3f}",
            f"{diff:.1e}", rounding, off, f"{seconds:.2f}", f"{latency['snnc'] * 1e3:.2f}",
            f"{base * 1e3:.2f}" if base else "n/a",
            f"{latency['snnc'] / base:.2f}x" if base else "n/a", f"{len(plain.data) / 1e3:.0f}",
            f"{len(pack) / 1e3:.1f}" if pack else "-",
            f"{file_size(theirs) / 1e3:.0f}" if base else "n/a")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(zoo.MODELS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [HEADER]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for quantized in (False, True):
                rows.append(row(name, quantized, args.steps, args.repeats, args.runs, tmp))
                print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(HEADER))]
    for r in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    main()
