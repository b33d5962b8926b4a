"""Benchmark for the integer lowering: spike layers on ONNX Runtime's exact integer GEMMs.

For the heterogeneous quantized spikformer_cifar10 (T = 4, firing) and the two digits
samples (trained, quantized), at batch 1 and 8, all measured in this run (ONNX Runtime at 2
threads, medians in interleaved blocks):
- snnc's default compile (integer kernels) against (a) the float
  torch.onnx.export(dynamo=True) export (one export per batch size: it fixes the batch of its
  example), (b) ONNX Runtime's quantize_static int8 QDQ model of that export (calibrated on
  random or the sample's own inputs; inexact: its changed predictions are counted against
  the float source), (c) PyTorch eager on the quantized source, (d) snnc's float-kernel
  lowering (`--kernels float`, what snnc emitted before the integer lowering);
- whether the integer model keeps the spikes: its outputs against (d)'s, bit for bit, and
  its top-1 against the quantized source;
- targets: integer <= 0.4x (a) at batch 1 and 8, and faster than (b);
- ONNX Runtime's profile of the integer model by op type.

    python3 runtime_tests/benchmarks/bench_integer.py [--runs 24]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings

import numpy as np
import torch
from common import dynamo_export, interleaved_latency, kernel_times, median_time, session

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Feeds:
    def __init__(self, name: str, batches: list[np.ndarray]):
        self.items = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self.items, None)


def quantize_static(float_path: str, out: str, calibration: list[np.ndarray]) -> None:
    """ONNX Runtime's static int8 QDQ quantization of the float export (per-channel int8
    weights, uint8 activations)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    embedded = out + ".float.onnx"  # the export may keep its weights in a .data file
    onnx.save(onnx.load(float_path), embedded)
    name = session(embedded).get_inputs()[0].name
    ort_quantize_static(embedded, out, _Feeds(name, calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)


def export_float(program_path: str, out: str, batch: int, sample_shape, sequence: bool):
    if not sequence:
        dynamo_export(program_path, out, batch, sample_shape)
        return
    from snnc.loader import register_spikingjelly_ops

    register_spikingjelly_ops()
    with open(program_path, "rb") as f:
        program = torch.export.load(f)
    steps, rest = sample_shape[0], sample_shape[1:]
    torch.onnx.export(program, (torch.zeros(steps, batch, *rest),), out, dynamo=True,
                      verbose=False)


def predictions(outputs: np.ndarray, sequence_out: bool) -> np.ndarray:
    return (outputs.mean(0) if sequence_out else outputs).argmax(-1)


def bench(name: str, float_pt: str, quant_pt: str, data: np.ndarray, sequence: bool,
          work: str, runs: int) -> list[dict]:
    """data: [samples, *sample_shape] (sequences: [samples, T, ...], fed as [T, B, ...])."""
    from snnc import loader
    from snnc.driver import compile_file
    from snnc.options import Options

    def path(suffix):
        return os.path.join(work, f"{name}{suffix}")

    def feed(x):
        return np.ascontiguousarray(np.moveaxis(x, 0, 1) if sequence else x)

    compile_file(quant_pt, path("_int.onnx"))
    compile_file(quant_pt, path("_float_kernels.onnx"), Options(integer_kernels=False))
    float_program = path("_float.pt2")
    with open(float_program, "wb") as f:
        f.write(loader.save_program_bytes(loader.load_program(float_pt)))
    quant_module = loader.load_program(quant_pt).module()
    float_module = loader.load_program(float_pt).module()
    rows = []
    for batch in (1, 8):
        export_float(float_program, path(f"_export_b{batch}.onnx"), batch, data.shape[1:],
                     sequence)
        calibration = [feed(data[i:i + batch]) for i in range(0, 8 * batch, batch)]
        quantize_static(path(f"_export_b{batch}.onnx"), path(f"_static_b{batch}.onnx"),
                        calibration)
        sessions = {k: session(path(f"_{k}.onnx")) for k in ("int", "float_kernels")}
        sessions["export"] = session(path(f"_export_b{batch}.onnx"))
        sessions["static"] = session(path(f"_static_b{batch}.onnx"))
        x = feed(data[:batch])
        t = interleaved_latency(sessions, x, runs)
        tensor = torch.from_numpy(x)
        with torch.no_grad():
            quant_module(tensor)
            t["eager"] = median_time(lambda: quant_module(tensor), max(6, runs // 2))
        # spikes kept: outputs against the float-kernel lowering and the quantized source
        same, changed, static_changed, count = True, 0, 0, 0
        for i in range(0, min(len(data), 64) - batch + 1, batch):
            xi = feed(data[i:i + batch])
            outs = {k: s.run(None, {s.get_inputs()[0].name: xi})[0] for k, s in sessions.items()}
            same &= bool(np.array_equal(outs["int"], outs["float_kernels"]))
            with torch.no_grad():
                q = quant_module(torch.from_numpy(xi)).numpy()
                f = float_module(torch.from_numpy(xi)).numpy()
            seq = q.ndim == 3
            changed += int((predictions(outs["int"], seq) != predictions(q, seq)).sum())
            static_changed += int((predictions(outs["static"], seq) != predictions(f, seq)).sum())
            count += batch
        rows.append({"model": name, "batch": batch, "t": t, "same": same, "changed": changed,
                     "static_changed": static_changed, "count": count})
    return rows


def spikformer(work: str) -> tuple[str, str, np.ndarray]:
    from common import save_spikformer

    from snnc.demo import SPIKFORMER_HETEROGENEOUS, firing_spikformer

    paths = tuple(save_spikformer(firing_spikformer(steps=4, quantization=config),
                                  os.path.join(work, f"spikformer_{kind}.pt2"))
                  for kind, config in (("float", None), ("quantized", SPIKFORMER_HETEROGENEOUS)))
    data = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
    return paths[0], paths[1], data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from snnc.accuracy import load_data

    rows = []
    with tempfile.TemporaryDirectory() as work:
        float_pt, quant_pt, data = spikformer(work)
        rows += bench("spikformer_cifar10", float_pt, quant_pt, data, False, work, args.runs)
        int_model = os.path.join(work, "spikformer_cifar10_int.onnx")
        profiles = {b: kernel_times(int_model, data[:b]) for b in (1, 8)}
        for sample in ("digits", "digits_events"):
            here = os.path.join(ROOT, "samples", sample)
            x, _ = load_data(os.path.join(here, "test.npz"))
            rows += bench(sample, os.path.join(here, "float.pt"),
                          os.path.join(here, "quantized.pt"), x, x.ndim == 5, work, args.runs)
    print(f"ONNX Runtime 2 threads; latency in ms, medians of {args.runs} runs in interleaved "
          "blocks; ratios against (a) the float torch.onnx.export(dynamo=True) export at the "
          "same batch, measured in this run")
    print(f"\n{'model':<19} {'batch':>5} {'snnc int':>9} {'(a) export':>10} {'(b) static':>10} "
          f"{'(c) eager q':>11} {'(d) float k':>11}   {'int/(a)':>7} {'int/(b)':>7} "
          f"{'int/(c)':>7} {'int/(d)':>7}  {'target':>6}")
    for r in rows:
        t = r["t"]
        a = t["export"]
        ok = t["int"] <= 0.4 * a and t["int"] < t["static"]
        print(f"{r['model']:<19} {r['batch']:>5} {t['int'] * 1e3:>9.2f} {a * 1e3:>10.2f} "
              f"{t['static'] * 1e3:>10.2f} {t['eager'] * 1e3:>11.2f} "
              f"{t['float_kernels'] * 1e3:>11.2f}   {t['int'] / a:>6.2f}x "
              f"{t['int'] / t['static']:>6.2f}x {t['int'] / t['eager']:>6.2f}x "
              f"{t['int'] / t['float_kernels']:>6.2f}x  {'met' if ok else 'MISSED':>6}")
    print(f"\n{'model':<19} {'batch':>5} {'inputs':>6} {'int == float kernels':>20} "
          f"{'int top-1 vs quantized source':>29} {'static top-1 vs float source':>28}")
    for r in rows:
        print(f"{r['model']:<19} {r['batch']:>5} {r['count']:>6} "
              f"{'bit for bit' if r['same'] else 'DIFFER':>20} "
              f"{r['changed']:>22} changed {r['static_changed']:>21} changed")
    for batch, (total, ops) in profiles.items():
        print(f"\nspikformer_cifar10 integer model, batch {batch}: ONNX Runtime profile, "
              f"{total:.2f} ms of kernel time per run")
        for op, ms, share in ops[:12]:
            print(f"  {op:<28} {ms:>8.2f} ms {share * 100:>5.1f} %")


if __name__ == "__main__":
    sys.exit(main())
