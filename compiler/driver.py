"""The whole pipeline top to bottom: `compile_model` (a module or program in memory, the
Python API `snnc.compile`), `compile_file` (a model file -> ONNX file, the CLI)."""

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
import torch

from snnc.backend import coreml, mobile, onnx_emit, onnx_qnn, pack
from snnc.errors import BadInputError
from snnc.files import loader, outputs, paths, tensors
from snnc.frontend import budget
from snnc.frontend.lift import lift
from snnc.ir.graph import Graph
from snnc.ir.islands import by_layer
from snnc.options import DEFAULT, Options
from snnc.pipeline import run_passes
from snnc.quant.weights import stored_bits


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

    def pack_bytes(self) -> bytes | None:
        """The packed-weight file (docs/binary_format.md), or None without quantized weights."""
        return pack.encode(self.packed) if self.packed else None

    def summary(self) -> str:
        g = self.graph
        neurons = sum(1 for n in g.nodes if n.op == "neuron")
        ir_ops = Counter(n.op for n in g.nodes)
        onnx_ops = Counter(n.op_type for n in self.model.graph.node)
        top = ", ".join(f"{k} {v}" for k, v in sorted(ir_ops.items(), key=lambda kv: -kv[1]))
        quantized = ""
        if self.packed:
            weights = sum(layer.codes.size for layer in self.packed)
            bits = sum(layer.codes.size * stored_bits(layer.scheme, layer.bits)
                       for layer in self.packed) / weights
            quantized = (f"\nquantized     {len(self.packed)} layers, {weights:,} weights, "
                         f"average {bits:.2f} bits")
        lowered = self.lowered.nodes
        folded = {n.source for n in lowered if n.op == "neuron" and n.attrs["threshold"] is None}
        shifts = {n.source for n in lowered if n.op in ("shift_conv", "shift_linear") or
                  (n.op == "int_weights" and n.attrs["scheme"] == "pot")}
        if folded or shifts:
            quantized += (f"\nfolded        {len(folded)} neuron layers with per-channel "
                          f"thresholds, {len(shifts)} PoT layers summing integers")
        integer = sum(n.op == "int_matmul" for n in lowered)
        floating = sum(n.op in ("conv", "linear", "matmul", "shift_conv", "shift_linear")
                       for n in lowered)
        layout = (f"\nkernels       {integer} integer GEMMs (u8/i8 x int8, int32 sums), "
                  f"{floating} float layers; {sum(n.op == 'transpose' for n in lowered)} "
                  "transposes")
        if any(p.key == "snnc.target" and p.value == "qnn" for p in self.model.metadata_props):
            gemms = sum(n.op_type in ("Conv", "MatMul") for n in self.model.graph.node)
            layout = (f"\nkernels       QNN form (--target qnn): {gemms} QDQ GEMMs (uint8 x "
                      "int8 digits, int16 sums), everything else int32")
        islands = by_layer(g.nodes)
        if islands:  # ops that are not spike-driven: float in the compiled model
            layout += (f"\nfloat ops     {sum(map(len, islands.values()))} not spike-driven, in "
                       f"{len(islands)} layers: " + "; ".join(
                           f"{where}: {', '.join(ops)}" for where, ops in islands.items()))
        return "\n".join([
            f"timesteps     {g.time.steps if g.time else 1}",
            f"parameters    {self.parameters:,} ({neurons} neuron layers)",
            f"IR ops/step   {top}",
            f"ONNX nodes    {len(self.model.graph.node):,} "
            f"({', '.join(f'{k} {v}' for k, v in onnx_ops.most_common(6))})",
            f"output size   {len(self.data) / 1e6:.2f} MB",
            "time          " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()),
        ]) + quantized + layout


def compile_program(program, opts: Options = DEFAULT, dump_dir: str | None = None,
                    progress: Callable[[str], None] | None = None,
                    where: str = "the model") -> Result:
    """Compile an ExportedProgram; refuses non-finite weights (naming the layer, in `where`).
    The ONNX model records the program's fingerprint (tensors.fingerprint) in its metadata."""
    timings: dict[str, float] = {}
    budget.check(program, opts.max_neuron_steps, where, one_step=opts.timesteps == "stream")
    tensors.check_finite(tensors.program_tensors(program), where)

    def stage(name: str, fn, *args):
        if progress:
            progress(name)
        start = time.perf_counter()
        out = fn(*args)
        timings[name] = time.perf_counter() - start
        return out

    graph = stage("trace", lift, program)
    check_numbers(graph, where, "in the model")
    with np.errstate(all="ignore"):  # an overflow shows as a non-finite value, refused below
        lowered = stage("passes", lambda: run_passes(graph, opts, dump_dir))
    check_numbers(lowered, where, "after folding BatchNorm and quantization scales")
    packed: list = []
    if opts.target == "qnn":  # the integer form Qualcomm's HTP runs whole (docs/qnn.md)
        model = stage("emit", onnx_qnn.to_qnn, lowered, opts)
    else:
        model = stage("emit", onnx_emit.to_onnx, lowered, opts, packed)
    if opts.target == "coreml":  # the ops CoreML refuses in forms it takes (docs/mobile.md)
        model = stage("coreml", coreml.coreml_form, model)
    entry = model.metadata_props.add()
    entry.key, entry.value = tensors.FINGERPRINT_KEY, tensors.fingerprint(program)
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


@outputs.pinned_outputs()
def compile_model(model, example_input=None, path: str | None = None, *,
                  pack_path: str | None = None, ort: bool = False, **options) -> Result:
    """Compile a SpikingJelly model in memory, as torch.onnx.export does: `model` is an
    nn.Module (traced with torch.export on `example_input`, e.g. torch.zeros(1, 3, 32, 32)),
    a torch.export.ExportedProgram, or a nir.NIRGraph (with dt=SECONDS and steps=T or
    timesteps="stream"; readout, discretize: docs/nir.md). `options` are those of snnc.options.Options
    (timesteps="stream", weight_container="int4", ...). With `path`, writes the ONNX model
    there (and the pack to `pack_path`, and with `ort` the ORT-format model beside it),
    atomically and only where they were checked; without, returns everything in the Result
    (`model`, `data`, `pack_bytes()`, `summary()`, and `ort` when asked for)."""
    if path is None and pack_path is not None:
        raise BadInputError("pack_path needs path: the pack is written beside the model")
    nir = _nir_settings(model, options)
    opts = _external(_options(options), pack_path)
    if path is not None:
        paths.check_paths([], _output_paths(path, pack_path, ort))
    if nir is not None:
        from snnc.nir.load import program as nir_program
        program = nir_program(model, nir, "the NIR graph", opts.timesteps == "stream",
                              opts.max_neuron_steps)
    else:
        program = model if isinstance(model, torch.export.ExportedProgram) else \
            export_module(model, example_input)
    where = type(model).__name__
    result = compile_program(program, opts, where=where)
    config = _finish(result, pack_path, ort, where)
    if path is not None:
        _write(result, path, pack_path, config)
    return result


_NIR_OPTIONS = ("dt", "steps", "readout", "discretize")


def _nir_settings(model, options: dict):
    """A nir.NIRGraph's snnc.nir.load.Settings, taken out of `options` (dt, steps, readout,
    discretize: docs/nir.md); None for other models."""
    if type(model).__name__ != "NIRGraph" or not type(model).__module__.startswith("nir."):
        given = sorted(set(_NIR_OPTIONS) & set(options))
        if given:
            raise BadInputError(f"the option(s) {', '.join(given)} are for NIR graphs; the "
                                f"model is a {type(model).__name__}")
        return None
    from snnc.nir.load import Settings
    return Settings(**{k: options.pop(k) for k in _NIR_OPTIONS if k in options})


def _options(options: dict) -> Options:
    known = [f.name for f in dataclasses.fields(Options) if f.name != "pack_location"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise BadInputError(f"unknown option(s) {', '.join(unknown)}; snnc.compile takes "
                            f"{', '.join(known)}")
    return dataclasses.replace(DEFAULT, **options)


def export_module(model, example_input) -> "torch.export.ExportedProgram":
    """torch.export of a SpikingJelly module at its example input, memories reset."""
    if not isinstance(model, torch.nn.Module):
        raise BadInputError(f"snnc.compile takes a torch.nn.Module or a "
                            f"torch.export.ExportedProgram, not {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise BadInputError("snnc.compile needs an example input tensor for a module, e.g. "
                            "snnc.compile(model, torch.zeros(1, 3, 32, 32))")
    from snnc.demo import export

    model.eval()
    try:
        return export(model, example_input)
    except Exception as error:  # torch.export's own message says what failed to trace
        raise BadInputError(f"torch.export could not trace the model on an input of shape "
                            f"{list(example_input.shape)} ({type(error).__name__}: "
                            f"{str(error).splitlines()[0][:300] if str(error) else ''})") \
            from None


def _output_paths(path, pack_path, ort) -> list[tuple[str, str | None]]:
    found = [("output", path), ("pack", pack_path)]
    if ort and path is not None:
        found += list(zip(("ORT model", "operator config"), mobile.ort_paths(path)))
    return found


def _external(opts: Options, pack_path: str | None) -> Options:
    """External weights name the pack by its file name, next to the model."""
    if not opts.external_weights:
        return opts
    if pack_path is None:
        raise BadInputError("external weights need a pack: pass --pack PATH.snnpack")
    return dataclasses.replace(opts, pack_location=os.path.basename(pack_path))


def _finish(result: Result, pack_path: str | None, ort: bool, where: str,
            progress: Callable[[str], None] | None = None) -> str:
    """Checks a pack can be written and converts to ORT format when asked (result.ort);
    returns the ORT operator config ("" without ort)."""
    if pack_path is not None and not result.packed:
        raise BadInputError(f"{where} has no quantized weights to pack (quantize it first: "
                            "snnc quantize or snnc.quantize)")
    if not ort:
        return ""
    mobile.check_convertible(result.model)
    if progress:
        progress("ort")
    start = time.perf_counter()
    result.ort, config = mobile.to_ort(result.data)
    result.timings["ort"] = time.perf_counter() - start
    return config


def _write(result: Result, path: str, pack_path: str | None, config: str) -> None:
    """The model, its pack and its ORT form (when made), all or none."""
    files = [(path, result.data)]
    if pack_path is not None:
        files.append((pack_path, result.pack_bytes()))
    if result.ort is not None:
        ort_path, config_path = mobile.ort_paths(path)
        files += [(ort_path, result.ort), (config_path, config.encode())]
    outputs.write_all_atomic(files)


@outputs.pinned_outputs()
def compile_file(path: str, output: str, opts: Options = DEFAULT, dump_dir: str | None = None,
                 trust_pickle: bool = False, input_shape: list[int] | None = None,
                 progress: Callable[[str], None] | None = None,
                 pack_path: str | None = None, ort: bool = False, trust_code: bool = False,
                 check: Callable[[Result], None] | None = None, nir=None
                 ) -> Result:
    """Compile a model file to `output` (and the weight pack to `pack_path`, and with `ort`
    the ORT-format model and its required-operators config next to `output`). `check(result)`
    runs before anything is written (the CLI checks --verify data against the model there);
    every output is written atomically, all or none, and only where it was checked (a
    directory swapped or a target replaced meanwhile is refused: snnc.files.outputs). A NIR
    file needs `nir`, its snnc.nir.load.Settings (docs/nir.md)."""
    paths.check_paths([("MODEL", path)], _output_paths(output, pack_path, ort),
                      dump_dir=dump_dir)
    opts = _external(opts, pack_path)
    start = time.perf_counter()
    if progress:
        progress("load")
    program = loader.load_program(path, trust_pickle=trust_pickle, input_shape=input_shape,
                                  trust_code=trust_code, max_neuron_steps=opts.max_neuron_steps,
                                  one_step=opts.timesteps == "stream", nir=nir)
    load_time = time.perf_counter() - start
    result = compile_program(program, opts, dump_dir, progress, where=path)
    result.timings = {"load": load_time, **result.timings}
    config = _finish(result, pack_path, ort, path, progress)
    if check is not None:
        check(result)
    if progress:
        progress("write")
    _write(result, output, pack_path, config)
    return result
