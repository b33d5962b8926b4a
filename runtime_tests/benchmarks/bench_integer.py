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
from common import (cpu_line, dynamo_export, interleaved_latency, kernel_times, median_time,
                    quantize_static, session)

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def predictions(outputs: np.ndarray) -> np.ndarray:
    """Top-1 from [B, classes] or per-step [T, B, classes] outputs (the mean over time)."""
    return (outputs.mean(0) if outputs.ndim == 3 else outputs).argmax(-1)


def eager(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    from spikingjelly.activation_based import functional

    functional.reset_net(module)
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def bench(name: str, float_model, quant_model, data: np.ndarray, sequence: bool, work: str,
          runs: int) -> list[dict]:
    """data: [samples, *sample_shape] (sequences [samples, T, ...], fed as [T, B, ...])."""
    from snnc.demo import export
    from snnc.driver import compile_file
    from snnc.options import Options

    def path(suffix):
        return os.path.join(work, f"{name}{suffix}")

    def feed(x):
        return np.ascontiguousarray(np.moveaxis(x, 0, 1) if sequence else x)

    def save(model, batch, suffix):
        torch.export.save(export(model.eval(), torch.from_numpy(feed(data[:batch]))),
                          path(suffix))
        return path(suffix)

    quant_pt = save(quant_model, 1, "_q.pt2")
    compile_file(quant_pt, path("_int.onnx"))
    compile_file(quant_pt, path("_float_kernels.onnx"), Options(integer_kernels=False))
    rows = []
    for batch in (1, 8):
        exported = path(f"_export_b{batch}.onnx")
        program = save(float_model, batch, f"_float_b{batch}.pt2")
        dynamo_export(program, exported, batch, data.shape[1:], sequence)
        calibration = [feed(data[i:i + batch]) for i in range(0, 8 * batch, batch)]
        quantize_static(exported, path(f"_static_b{batch}.onnx"), calibration)
        sessions = {k: session(path(f"_{k}.onnx")) for k in ("int", "float_kernels")}
        sessions["export"] = session(exported)
        sessions["static"] = session(path(f"_static_b{batch}.onnx"))
        x = feed(data[:batch])
        t = interleaved_latency(sessions, x, runs, blocks=12)  # short blocks: bursts of load
        # from other tenants of this machine then hit every session alike
        eager(quant_model, x)
        t["eager"] = median_time(lambda: eager(quant_model, x), max(6, runs // 2))
        # spikes kept: outputs against the float-kernel lowering and the quantized source
        same, changed, static_changed, count = True, 0, 0, 0
        for i in range(0, min(len(data), 64) - batch + 1, batch):
            xi = feed(data[i:i + batch])
            outs = {k: s.run(None, {s.get_inputs()[0].name: xi})[0] for k, s in sessions.items()}
            same &= bool(np.array_equal(outs["int"], outs["float_kernels"]))
            changed += int((predictions(outs["int"]) != predictions(eager(quant_model, xi))).sum())
            static_changed += int((predictions(outs["static"]) !=
                                   predictions(eager(float_model, xi))).sum())
            count += batch
        rows.append({"model": name, "batch": batch, "t": t, "same": same, "changed": changed,
                     "static_changed": static_changed, "count": count})
    return rows


def digits_models(sample: str):
    """The sample's float and quantized models, rebuilt with its archives' weights (the
    archives are exported at batch 1; the batch-8 baselines need the modules)."""
    import json

    sys.path.insert(0, os.path.join(ROOT, "samples"))
    import digits_common as common

    from snnc.files import loader
    from snnc.quant import quantize as quant

    here = os.path.join(ROOT, "samples", sample)
    args = (4, 1, 16) if sample == "digits" else (8, 2, 16)
    with open(os.path.join(here, "results.json")) as f:
        config = json.load(f)["config"]
    models = []
    for kind in ("float", "quantized"):
        program = loader.load_program(os.path.join(here, f"{kind}.pt"))
        model = common.make_model(*args)
        if kind == "quantized":
            quant.quantize(model, config)
        state = dict(program.state_dict)
        state.update({k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)})
        model.load_state_dict(state, strict=True)
        models.append(model.eval())
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from snnc.demo import SPIKFORMER_HETEROGENEOUS, firing_spikformer
    from snnc.files.data import load_data

    rows = []
    with tempfile.TemporaryDirectory() as work:
        data = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
        models = (firing_spikformer(steps=4),
                  firing_spikformer(steps=4, quantization=SPIKFORMER_HETEROGENEOUS))
        rows += bench("spikformer_cifar10", *models, data, False, work, args.runs)
        int_model = os.path.join(work, "spikformer_cifar10_int.onnx")
        profiles = {b: kernel_times(int_model, data[:b]) for b in (1, 8)}
        for sample in ("digits", "digits_events"):
            x, _ = load_data(os.path.join(ROOT, "samples", sample, "test.npz"))
            rows += bench(sample, *digits_models(sample), x, x.ndim == 5, work, args.runs)
    print(cpu_line())
    print(f"ONNX Runtime 2 threads; latency in ms, medians of {args.runs} runs in interleaved "
          "blocks of 3; ratios against (a) the float torch.onnx.export(dynamo=True) export at the "
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
