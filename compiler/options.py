"""Compile options shared by the pipeline, its passes and the emitters."""

from __future__ import annotations

from dataclasses import dataclass

from snnc.errors import UsageError


QNN_INPUT_MAX = 1023  # input codes HTP's float holds exactly (measured: 1024 reads as 1025)


@dataclass(frozen=True)
class Options:
    opset: int = 21
    timesteps: str = "unroll"  # or "stream": one step, membranes as inputs and outputs
    debug_outputs: bool = False  # expose every neuron's spikes as extra ONNX outputs
    weight_container: str = "int8"  # "int4": <= 4-bit weights as native int4 (opset 21)
    integer_kernels: bool = True  # spike-input layers as u8 x int8 GEMMs (lower_integer)
    pot_lowering: str = "int8"  # "shift": PoT codes decoded in the graph with BitShift
    external_weights: bool = False  # quantized weights as references into the pack file
    pack_location: str = ""  # the pack's file name in those references (set by compile_file)
    max_neuron_steps: int = 20_000  # per sample, T x neuron layers (snnc.frontend.budget)
    batch: int | None = None  # a static batch (passes/static_batch.py); None: symbolic "N"
    target: str = "cpu"  # "qnn": the integer form Qualcomm's HTP runs whole (docs/qnn.md);
    # "coreml": with --batch, DequantizeLinear and Pad in forms CoreML takes (docs/mobile.md)
    input_scale: float | None = None  # --target qnn: the input holds q * scale, q integer,
    input_max: int = 255  # 0 <= q <= input_max (codes outside saturate)


DEFAULT = Options()


def check_compile(opts: Options, ort: bool = False, verify: bool = False,
                  report_path: str | None = None, pack: bool = False) -> None:
    """Refuse compile options that cannot go together, naming them (before any work)."""
    if opts.external_weights and opts.weight_container == "int4":
        raise UsageError("--weights external keeps int8/int16 containers (ONNX Runtime's "
                        "Python API cannot hand it int4 tensors); drop --weight-container int4")
    if ort and opts.weight_container == "int4":
        raise UsageError("--ort needs --weight-container int8: the ORT format cannot hold "
                        "int4 tensors (docs/mobile.md)")
    if ort and opts.external_weights:
        raise UsageError("--ort needs --weights embedded: minimal ONNX Runtime builds, the "
                        "reason for .ort files, cannot load external weights")
    if opts.batch is not None and verify:
        raise UsageError("--verify runs batches of every size; verify the model compiled "
                        "without --batch (the same arithmetic, a symbolic batch)")
    if opts.timesteps == "stream" and verify:
        raise UsageError("--verify runs the unrolled model; compile it without --timesteps "
                        "stream to verify (docs/streaming.md tests stream mode against the "
                        "unrolled model)")
    if report_path and report_path.lower().endswith(".png"):
        raise UsageError(f"--report {report_path}: give the JSON path (report.json); the figure "
                        "goes next to it as report.png")
    if opts.target == "coreml" and (opts.batch is None or opts.external_weights or
                                    opts.weight_container == "int4"):
        raise UsageError("--target coreml needs --batch N (CoreML takes static shapes only) "
                        "and keeps its weights in the model as float32 (no --weights "
                        "external, no --weight-container int4): docs/mobile.md")
    if opts.target == "qnn":
        _check_qnn(opts, ort, pack)
    elif opts.input_scale is not None or opts.input_max != 255:
        raise UsageError("--input-scale and --input-max describe the input for --target qnn; "
                        "add --target qnn or drop them")


def _check_qnn(opts: Options, ort: bool, pack: bool) -> None:
    given = [flag for flag, on in (
        ("--pack", pack), ("--ort", ort), ("--timesteps stream", opts.timesteps == "stream"),
        ("--weight-container int4", opts.weight_container == "int4")) if on]
    if given:
        raise UsageError(f"--target qnn cannot go with {', '.join(given)}: the QNN form holds "
                        "its weights as int8 digits of each layer's integer weights, runs the "
                        "unrolled model, and is loaded as .onnx by ONNX Runtime's QNN "
                        "execution provider (docs/qnn.md)")
    check_input_codes(opts)


def check_input_codes(opts: Options) -> None:
    """--target qnn reads its input as integer codes q = x / --input-scale in
    [0, --input-max]: both must be given and in range (the CLI and the backend ask)."""
    if opts.input_scale is None:
        raise UsageError("--target qnn needs --input-scale S: the input must hold integer "
                        "multiples q * S, 0 <= q <= --input-max (default 255), for HTP to "
                        "compute the first layer exactly; e.g. --input-scale 0.00390625 "
                        "--input-max 256 for pixels k/256 in [0, 1], --input-scale 1 for "
                        "event counts up to 255 (docs/qnn.md)")
    if not 1 <= opts.input_max <= QNN_INPUT_MAX:
        raise UsageError(f"--input-max {opts.input_max} is outside 1..{QNN_INPUT_MAX}: HTP "
                        "computes the input's scaling in reduced float precision, exact for "
                        f"integers up to {QNN_INPUT_MAX}")
