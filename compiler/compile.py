"""compile_file: model file -> ONNX file, the whole pipeline top to bottom."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from . import files, frontend, loader, mobile, onnx_emit, pack
from .errors import BadInputError
from .ir import Graph
from .options import DEFAULT, Options
from .pipeline import run_passes


@dataclass
class Result:
    graph: Graph  # the one-step graph as traced (before passes)
    parameters: int  # trainable parameters of the source model
    lowered: Graph  # after all passes
    model: onnx.ModelProto
    data: bytes
    packed: list  # pack.Layer per quantized weight
    timings: dict[str, float] = field(default_factory=dict)
    program: object = None  # the torch.export program compiled
    ort: bytes | None = None  # the ORT-format model (compile_file with ort=True)

    def summary(self) -> str:
        g = self.graph
        neurons = sum(1 for n in g.nodes if n.op == "neuron")
        ir_ops = Counter(n.op for n in g.nodes)
        onnx_ops = Counter(n.op_type for n in self.model.graph.node)
        top = ", ".join(f"{k} {v}" for k, v in sorted(ir_ops.items(), key=lambda kv: -kv[1]))
        quantized = ""
        if self.packed:
            weights = sum(layer.codes.size for layer in self.packed)
            bits = sum(layer.codes.size * layer.bits for layer in self.packed) / weights
            quantized = (f"\nquantized     {len(self.packed)} layers, {weights:,} weights, "
                         f"average {bits:.2f} bits")
        lowered = self.lowered.nodes
        folded = {n.source for n in lowered if n.op == "neuron" and n.attrs["threshold"] is None}
        shifts = {n.source for n in lowered if n.op in ("shift_conv", "shift_linear")}
        if folded or shifts:
            quantized += (f"\nfolded        {len(folded)} neuron layers with per-channel "
                          f"thresholds, {len(shifts)} PoT layers as shifts")
        return "\n".join([
            f"timesteps     {g.time.steps if g.time else 1}",
            f"parameters    {self.parameters:,} ({neurons} neuron layers)",
            f"IR ops/step   {top}",
            f"ONNX nodes    {len(self.model.graph.node):,} "
            f"({', '.join(f'{k} {v}' for k, v in onnx_ops.most_common(6))})",
            f"output size   {len(self.data) / 1e6:.2f} MB",
            "time          " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()),
        ]) + quantized


FINGERPRINT_KEY = "snnc.source_fingerprint"  # ONNX metadata: loader.fingerprint(source)


def compile_program(program, opts: Options = DEFAULT, dump_dir: str | None = None,
                    progress: Callable[[str], None] | None = None,
                    where: str = "the model") -> Result:
    """Compile an ExportedProgram; refuses non-finite weights (naming the layer, in `where`).
    The ONNX model records the program's fingerprint (loader.fingerprint) in its metadata."""
    timings: dict[str, float] = {}
    loader.check_finite(loader.program_tensors(program), where)

    def stage(name: str, fn, *args):
        if progress:
            progress(name)
        start = time.perf_counter()
        out = fn(*args)
        timings[name] = time.perf_counter() - start
        return out

    graph = stage("trace", frontend.lift, program)
    check_numbers(graph, where, "in the model")
    with np.errstate(all="ignore"):  # an overflow shows as a non-finite value, refused below
        lowered = stage("passes", lambda: run_passes(graph, opts, dump_dir))
    check_numbers(lowered, where, "after folding BatchNorm and quantization scales")
    packed: list = []
    model = stage("emit", onnx_emit.to_onnx, lowered, opts, packed)
    entry = model.metadata_props.add()
    entry.key, entry.value = FINGERPRINT_KEY, loader.fingerprint(program)
    data = stage("serialize", onnx_emit.model_bytes, model)
    parameters = sum(p.numel() for p in program.parameters())
    return Result(graph, parameters, lowered, model, data, packed, timings, program)


def check_numbers(graph: Graph, where: str, when: str) -> None:
    """Every number a node or a constant holds is finite: a NaN threshold never fires, and
    folding can overflow float32 (a weight near 3e38 times a BatchNorm scale)."""
    readers = {}
    for node in graph.nodes:
        for value in node.inputs:
            readers.setdefault(value, node)
        bad = [k for k, v in node.attrs.items() if not _finite(v)]
        if bad:
            raise BadInputError(f"{where}: {node.source or node.op} has a non-finite {bad[0]} "
                                f"({node.attrs[bad[0]]}) {when}; snnc needs finite numbers")
    for state in graph.states:
        if not _finite(state.init):
            raise BadInputError(f"{where}: a neuron state starts at {state.init} {when}; snnc "
                                "needs finite numbers")
    for value, array in graph.constants.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            node = readers.get(value)
            layer = str(node.source) if node is not None and node.source else value.hint
            raise BadInputError(f"{where}: {layer} holds {int((~np.isfinite(array)).sum()):,} "
                                f"non-finite value(s) {when}; float32 cannot represent them. "
                                "Check the layer's weights and BatchNorm statistics for "
                                "extreme values.")


def _finite(value) -> bool:
    if isinstance(value, (float, np.floating)):
        return math.isfinite(value)
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    return True


def compile_file(path: str, output: str, opts: Options = DEFAULT, dump_dir: str | None = None,
                 trust_pickle: bool = False, input_shape: list[int] | None = None,
                 progress: Callable[[str], None] | None = None,
                 pack_path: str | None = None, ort: bool = False, trust_code: bool = False,
                 check: Callable[[Result], None] | None = None) -> Result:
    """Compile a model file to `output` (and the weight pack to `pack_path`, and with `ort`
    the ORT-format model and its required-operators config next to `output`). `check(result)`
    runs before anything is written (the CLI checks --verify data against the model there);
    every output is written atomically, all or none."""
    files.check_paths([("MODEL", path)], [("output", output), ("pack", pack_path)]
                + (list(zip(("ORT model", "operator config"), mobile.ort_paths(output)))
                   if ort else []), dump_dir=dump_dir)
    if opts.external_weights:
        if pack_path is None:
            raise BadInputError("external weights need a pack: pass --pack PATH.snnpack")
        # the skeleton names the pack by its file name, next to the model
        opts = dataclasses.replace(opts, pack_location=os.path.basename(pack_path))
    start = time.perf_counter()
    if progress:
        progress("load")
    program = loader.load_program(path, trust_pickle=trust_pickle, input_shape=input_shape,
                                  trust_code=trust_code)
    load_time = time.perf_counter() - start
    result = compile_program(program, opts, dump_dir, progress, where=path)
    result.timings = {"load": load_time, **result.timings}
    outputs = [(output, result.data)]
    if pack_path is not None:
        if not result.packed:
            raise BadInputError(f"{path} has no quantized weights to pack (quantize it first: "
                                "snnc quantize or snnc.quantize)")
        outputs.append((pack_path, pack.encode(result.packed)))
    if ort:
        mobile.check_convertible(result.model)
        if progress:
            progress("ort")
        start = time.perf_counter()
        result.ort, config = mobile.to_ort(result.data)
        result.timings["ort"] = time.perf_counter() - start
        ort_path, config_path = mobile.ort_paths(output)
        outputs += [(ort_path, result.ort), (config_path, config.encode())]
    if check is not None:
        check(result)
    if progress:
        progress("write")
    files.write_all_atomic(outputs)
    return result
