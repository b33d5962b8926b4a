"""Benchmark for the samples: the two digits samples (trained on real data) and
spikformer_cifar10 (random weights, firing), each float and heterogeneous quantized.

Prints, all measured in this run (medians; ONNX Runtime at 2 threads, batch 1, interleaved
blocks):
- snnc compile time of the quantized model (load, trace, passes, emit, .ort conversion);
- latency of snnc's .onnx and .ort against the float torch.onnx.export(dynamo=True) export
  and PyTorch eager (the exported program, float and quantized);
- file sizes: snnc .onnx, .ort and .snnpack against the float export and float32 weights;
  compression (float32 weight bytes / .snnpack bytes) and average bits.

    python3 runtime_tests/benchmarks/bench_samples.py [--runs 60]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from common import (dynamo_export, file_size, interleaved_latency, median_time, save_spikformer,
                    session)

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spikformer_files(work: str) -> tuple[str, str]:
    from snnc.demo import SPIKFORMER_HETEROGENEOUS, firing_spikformer

    return tuple(save_spikformer(firing_spikformer(steps=4, quantization=config),
                                 os.path.join(work, f"spikformer_{name}.pt"))
                 for name, config in (("float", None), ("quantized", SPIKFORMER_HETEROGENEOUS)))


def bench(name: str, float_pt: str, quant_pt: str, x: np.ndarray, work: str, runs: int) -> dict:
    from snnc.driver import compile_file
    from snnc.files import loader

    def path(suffix):
        return os.path.join(work, f"{name}{suffix}")

    compile_times = []
    for _ in range(3):
        start = time.perf_counter()
        result = compile_file(quant_pt, path(".onnx"), pack_path=path(".snnpack"), ort=True)
        compile_times.append(time.perf_counter() - start)
    sequence = x.ndim == 5
    sample_shape = x.shape[1:]
    dynamo_export(float_pt, path("_float_export.onnx"), 1, sample_shape, sequence)
    feed = np.ascontiguousarray(np.moveaxis(x[:1], 0, 1) if sequence else x[:1])
    sessions = {"onnx": session(path(".onnx")), "ort": session(path(".ort")),
                "float_export": session(path("_float_export.onnx"))}
    latency = interleaved_latency(sessions, feed, runs)
    eager = {}
    for kind, pt in (("float", float_pt), ("quantized", quant_pt)):
        module = loader.load_program(pt).module()
        with torch.no_grad():
            tensor = torch.from_numpy(feed)
            module(tensor)
            eager[kind] = median_time(lambda: module(tensor), max(10, runs // 3))
    weights = sum(layer.codes.size for layer in result.packed)
    bits = sum(layer.codes.size * layer.bits for layer in result.packed) / weights
    float32 = 4 * weights
    return {"compile": sorted(compile_times)[1], "latency": latency, "eager": eager,
            "onnx": file_size(path(".onnx")), "ort": file_size(path(".ort")),
            "pack": file_size(path(".snnpack")), "float_export": file_size(path("_float_export.onnx")),
            "float32": float32, "bits": bits, "weights": weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from snnc.files.data import load_data

    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for name in ("digits", "digits_events"):
            here = os.path.join(ROOT, "samples", name)
            x, _ = load_data(os.path.join(here, "test.npz"))
            rows[name] = bench(name, os.path.join(here, "float.pt"),
                               os.path.join(here, "quantized.pt"), x, work, args.runs)
        float_pt, quant_pt = spikformer_files(work)
        x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
        rows["spikformer_cifar10"] = bench("spikformer_cifar10", float_pt, quant_pt, x, work,
                                           args.runs)
    print(f"batch 1, ONNX Runtime 2 threads; latency medians of {args.runs} runs in interleaved "
          "blocks; ratios against the float torch.onnx.export(dynamo=True) export measured in "
          "this run")
    print(f"\n{'sample':<19} {'compile s':>9} {'snnc .onnx ms':>13} {'.ort ms':>8} "
          f"{'float export ms':>15} {'eager float ms':>14} {'eager quant ms':>14} "
          f"{'.onnx/export':>12} {'.ort/export':>11} {'.onnx/eager q':>13}")
    for name, r in rows.items():
        lat, f = r["latency"], r["latency"]["float_export"]
        print(f"{name:<19} {r['compile']:>9.2f} {lat['onnx'] * 1e3:>13.2f} {lat['ort'] * 1e3:>8.2f} "
              f"{f * 1e3:>15.2f} {r['eager']['float'] * 1e3:>14.2f} "
              f"{r['eager']['quantized'] * 1e3:>14.2f} {lat['onnx'] / f:>11.2f}x "
              f"{lat['ort'] / f:>10.2f}x {lat['onnx'] / r['eager']['quantized']:>12.2f}x")
    print(f"\n{'sample':<19} {'weights':>9} {'avg bits':>8} {'float32 B':>10} {'float export B':>14} "
          f"{'.onnx B':>9} {'.ort B':>9} {'.snnpack B':>10} {'compression':>11} "
          f"{'.onnx/export':>12}")
    for name, r in rows.items():
        print(f"{name:<19} {r['weights']:>9,} {r['bits']:>8.2f} {r['float32']:>10,} "
              f"{r['float_export']:>14,} {r['onnx']:>9,} {r['ort']:>9,} {r['pack']:>10,} "
              f"{r['float32'] / r['pack']:>10.2f}x {r['onnx'] / r['float_export']:>11.2f}x")
    print("\ncompression = float32 weight bytes / .snnpack bytes (codes at their bit width, "
          "scales, header)")


if __name__ == "__main__":
    sys.exit(main())
