"""Helpers shared by the benchmark scripts: medians, interleaved ORT latency, sizes, and the
torch.onnx.export(dynamo=True) baseline."""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch


def cpu_line() -> str:
    """The CPU's model and the flags that decide whether int8 GEMMs beat float ones: on an
    AVX2-only host (no VNNI) they measure no faster (../shared/design/runtime_facts.md)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        return "CPU: /proc/cpuinfo unreadable"
    flags = set(info.get("flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
    have = [f for f in wanted if f in flags] or ["none of " + ", ".join(wanted)]
    return f"CPU: {info.get('model name', '?')}, {os.cpu_count()} cores; flags {' '.join(have)}"


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


def interleaved_latency(sessions: dict, x: np.ndarray, runs: int, blocks: int = 6) -> dict:
    """Median latency per session, measured in alternating blocks so drift hits all alike.

    A pause before each block lets the previous session's spinning threads go idle."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    per_block = max(1, runs // blocks)
    for _ in range(blocks):
        for name, sess in sessions.items():
            feed = {sess.get_inputs()[0].name: x}
            time.sleep(0.2)
            sess.run(None, feed)
            for _ in range(per_block):
                start = time.perf_counter()
                sess.run(None, feed)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def file_size(path: str) -> int:
    """The model's bytes, external weight data (torch.onnx.export's .data file) included."""
    extra = path + ".data"
    return os.path.getsize(path) + (os.path.getsize(extra) if os.path.exists(extra) else 0)


def save_spikformer(model: torch.nn.Module, path: str, batch: int = 1) -> str:
    """Save a spikformer_cifar10 (32x32 RGB input) as a torch.export archive at `batch`."""
    from snnc.demo import export

    torch.export.save(export(model, torch.zeros(batch, 3, 32, 32)), path)
    return path


def dynamo_export(program_path: str, out: str, batch: int, sample_shape=(3, 32, 32),
                  sequence: bool = False) -> None:
    """What a user has today: torch.onnx.export(dynamo=True) of the same saved program
    (input [batch, *sample_shape]; a sequence model's sample_shape [T, ...]: input
    [T, batch, ...])."""
    from snnc.files.loader import load_program

    program = load_program(program_path)  # an archive or a checkpoint (the digits samples)
    shape = (sample_shape[0], batch, *sample_shape[1:]) if sequence else (batch, *sample_shape)
    torch.onnx.export(program, (torch.zeros(*shape),), out, dynamo=True, verbose=False)


class _Feeds:
    """quantize_static's calibration reader over a list of input batches."""

    def __init__(self, name: str, batches: list[np.ndarray]):
        self.items = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self.items, None)


def quantize_static(float_path: str, out: str, calibration: list[np.ndarray]) -> None:
    """ONNX Runtime's static int8 QDQ quantization (per-channel int8 weights, uint8
    activations, calibrated on these batches) of a float export."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    embedded = out + ".float.onnx"  # the export may keep its weights in a .data file
    onnx.save(onnx.load(float_path), embedded)
    name = session(embedded).get_inputs()[0].name
    ort_quantize_static(embedded, out, _Feeds(name, calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)


def kernel_times(path: str, x: np.ndarray, runs: int = 10) -> tuple[float, list]:
    """ONNX Runtime's profiler (2 threads): (kernel ms per run, [(op type, ms per run,
    share)] largest first). The profile file goes next to the model, not into the cwd."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(os.path.dirname(path), "profile")
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        sess.run(None, {sess.get_inputs()[0].name: x})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + e["dur"]
    total = sum(per_op.values())
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])
    return total / runs / 1e3, [(op, t / runs / 1e3, t / total) for op, t in ranked]
