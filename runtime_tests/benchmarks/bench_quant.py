"""Benchmark for quantized Spikformer: ONNX Runtime latency and file sizes.

The heterogeneous configuration of the tests (stem uniform 8, q/k/v PoT 4, projection
uniform 3, MLP fc1 PoT 3, fc2 uniform 2, head uniform 8) on spikformer_cifar10(T=4) with
firing neurons. Prints, measured in this run: latency (batch 1 and 8, 2 threads, medians
in interleaved blocks) of snnc's quantized ONNX against the float torch.onnx.export
(dynamo=True) of the same architecture; sizes of the .onnx (int8 containers), the int4
.onnx and the .snnpack against the float32 file; average bits and compression.

    python3 runtime_tests/benchmarks/bench_quant.py [--runs 48]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings

import numpy as np
import torch
from common import dynamo_export, file_size, interleaved_latency, save_spikformer, session

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(2)

    from snnc.backend import pack
    from snnc.demo import SPIKFORMER_HETEROGENEOUS, firing_spikformer
    from snnc.driver import compile_file
    from snnc.options import Options
    from snnc.quant import quantize as quant

    work = tempfile.mkdtemp(prefix="snnc-bench-quant-")
    path = lambda name: os.path.join(work, name)  # noqa: E731
    model = firing_spikformer(steps=4, quantization=SPIKFORMER_HETEROGENEOUS)
    rows, average = quant.report(model)
    save_spikformer(model, path("q.pt"))
    compile_file(path("q.pt"), path("q_int8.onnx"), pack_path=path("q.snnpack"))
    compile_file(path("q.pt"), path("q_int4.onnx"), Options(weight_container="int4"))
    float_model = firing_spikformer(steps=4)
    for batch in (1, 8):
        save_spikformer(float_model, path(f"float_b{batch}.pt"), batch)
        dynamo_export(path(f"float_b{batch}.pt"), path(f"float_dynamo_b{batch}.onnx"), batch)

    print(f"spikformer_cifar10 T=4, heterogeneous config, average {average:.2f} bits over "
          f"{sum(r.parameters for r in rows):,} weights")
    print(f"\nONNX Runtime latency (ms, median of {args.runs}, 2 threads)")
    print(f"{'batch':>5} {'snnc q int8':>12} {'snnc q int4':>12} {'float dynamo':>13} "
          f"{'int8/float':>11} {'int4/float':>11}")
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        sessions = {"int8": session(path("q_int8.onnx")), "int4": session(path("q_int4.onnx")),
                    "float": session(path(f"float_dynamo_b{batch}.onnx"))}
        x = rng.random((batch, 3, 32, 32), dtype=np.float32)
        t = interleaved_latency(sessions, x, args.runs)
        print(f"{batch:>5} {t['int8'] * 1e3:>12.2f} {t['int4'] * 1e3:>12.2f} "
              f"{t['float'] * 1e3:>13.2f} {t['int8'] / t['float']:>10.2f}x "
              f"{t['int4'] / t['float']:>10.2f}x")

    float_bytes = 4 * sum(r.parameters for r in rows)
    float_file = file_size(path("float_dynamo_b1.onnx"))
    with open(path("q.snnpack"), "rb") as f:
        blob = f.read()
    layers = pack.decode(blob)
    code_bytes = sum(layer.codes.size * layer.bits for layer in layers) / 8
    scale_bytes = sum(4 * layer.scales.size for layer in layers)
    print(f"\nsizes (float32 weights of the quantized layers: {float_bytes / 1e6:.2f} MB; "
          f"float dynamo file with external data: {float_file / 1e6:.2f} MB)")
    for name in ("q_int8.onnx", "q_int4.onnx", "q.snnpack"):
        size = file_size(path(name))
        print(f"  {name:<12} {size / 1e6:8.2f} MB   {float_file / size:6.2f}x smaller than the "
              f"float file")
    print(f"  pack: codes {code_bytes:,.0f} B + scales {scale_bytes:,} B + header/table/"
          f"alignment {pack.overhead(blob):,} B; size / (codes + scales) = "
          f"{len(blob) / (code_bytes + scale_bytes):.4f}; weight compression against float32 "
          f"{float_bytes / len(blob):.2f}x (ceiling 32 / {average:.2f} bits = "
          f"{32 / average:.2f}x)")


if __name__ == "__main__":
    main()
