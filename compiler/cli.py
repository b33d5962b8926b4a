"""The `snnc` command line."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import warnings

import click

from snnc import __version__
from snnc.errors import SnncError, Terminated, UsageError, first_line, interrupt_code
from snnc.options import QNN_INPUT_MAX, Options, check_compile
from snnc.progress import Bar, Stages


def _shape(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        raise SnncError(f"--input-shape {text!r} is not a list of sizes such as 1,3,32,32") \
            from None


class _Group(click.Group):
    """Usage errors (a missing option, a bad choice) as one paragraph like every other error."""

    def main(self, args=None, prog_name=None, **extra):
        from snnc.files.outputs import pinned_outputs

        extra.pop("standalone_mode", None)
        # PyTorch logs "Triton not available" (a GPU compiler snnc never uses) on stderr
        # when a program is exported or loaded: noise next to snnc's own lines
        logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
        try:
            with pinned_outputs(), _sigterm_as_interrupt():
                code = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx else "snnc"
            _fail(f"{error.format_message()} (see {where} --help)", code=2)
        except click.ClickException as error:
            _fail(error.format_message(), code=error.exit_code)
        except (click.Abort, KeyboardInterrupt) as error:
            _fail("interrupted", code=interrupt_code(error))
        sys.exit(code if isinstance(code, int) else 0)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread, so that it ends a
    command as Ctrl-C does: cleanup runs (no temporary file is left) and a search saves its
    state. Python's default for SIGTERM ends the process without running any of that."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield  # someone else (an embedding program, a test runner) handles it
        return

    def terminate(signum, frame):
        raise Terminated()
    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="snnc")
def main() -> None:
    """snnc: compile spiking neural networks (SpikingJelly) to ONNX for ONNX Runtime."""


def _trust_options(fn):
    """--trust-pickle, --trust-code and --input-shape: the consent to run a model file's code."""
    fn = click.option("--input-shape",
                      help="Example input shape for a pickled module, e.g. 1,3,32,32.")(fn)
    fn = click.option("--trust-code", is_flag=True,
                      help="Allow an snnc checkpoint whose factory is not on snnc's allowlist "
                           "(SpikingJelly's model zoo, snnc's own): snnc imports it, from "
                           "the current directory or the installed packages, and calls it "
                           "(docs/model_files.md).")(fn)
    return click.option("--trust-pickle", is_flag=True,
                        help="Allow pickled Python objects, e.g. a whole nn.Module (unpickling "
                             "runs code from the file).")(fn)


def _steps_option(fn):
    """--max-neuron-steps: how much work per sample a model file may ask for."""
    from snnc.options import DEFAULT

    return click.option(
        "--max-neuron-steps", type=click.IntRange(1), default=DEFAULT.max_neuron_steps,
        show_default=True,
        help="Refuse a model of more neuron steps per sample (timesteps x neuron layers): a "
             "small file can ask for T=10**7 (docs/model_files.md, size limits).")(fn)


@contextlib.contextmanager
def _errors(progress: Stages | None = None, what: str = "no output was written"):
    """Every failure as one paragraph: SnncError (exit 1), Ctrl-C (130), or a bug in snnc
    (exit 3). Library warnings stay off stderr: snnc says what matters itself."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except UsageError as error:  # options that cannot go together: as click's own, status 2
        _finish(progress)
        _fail(str(error), code=2)
    except SnncError as error:
        _finish(progress)
        _fail(str(error))
    except KeyboardInterrupt as error:
        _finish(progress)
        _fail(f"interrupted; {what}", code=interrupt_code(error))
    except Exception as error:  # a bug in snnc: short message, full traceback on request
        _finish(progress)
        _internal_error(error)


def _not_nan(value: float) -> float:
    if not math.isnan(value):
        return value
    raise click.BadParameter("must be a number from 0 to 100, not nan")


def _finish(progress: Stages | None) -> None:
    if progress is not None:
        progress.finish()


_DISCRETIZE = click.option("--discretize", type=click.Choice(["euler", "exp"]),
                           help="NIR graphs: forward Euler [default] or each equation's exact "
                                "step for its input held over the step (docs/nir.md).")


def _nir_options(fn):
    """--dt, --timesteps T, --readout, --discretize: what a NIR graph does not say."""
    for option in (_DISCRETIZE, click.option("--readout", type=click.Choice(
            ["mean", "sum", "last"]), help="NIR graphs: the output over the steps that is the "
                                           "logits (a classifier's, as snnc search needs)."),
                   click.option("--timesteps", "nir_steps", type=click.IntRange(1, 10 ** 6),
                                help="NIR graphs: the number of steps of the input sequences."),
                   click.option("--dt", type=click.FloatRange(min=0, min_open=True),
                                help="NIR graphs: the time step in seconds (docs/nir.md).")):
        fn = option(fn)
    return fn


def _nir(dt=None, steps=None, readout=None, discretize=None):
    """snnc.nir.load.Settings if any NIR option is given, else None."""
    from snnc.nir.load import Settings
    given = (dt, steps, readout, discretize) != (None, None, None, None)
    return Settings(dt, steps, readout, discretize or "euler") if given else None


def _timesteps(ctx, param, value):
    """--timesteps: unroll, stream, or a number of steps (NIR graphs)."""
    if value in ("unroll", "stream") or (value.isdigit() and 1 <= int(value) <= 10 ** 6):
        return value if not value.isdigit() else int(value)
    raise click.BadParameter(f"{value!r} is not unroll, stream or a number of steps from 1 to "
                             "1000000")


@main.command("compile")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Where to write the ONNX model.")
@click.option("--dump-ir", "dump_ir", type=click.Path(),
              help="Write the IR after the frontend and after each pass into this directory.")
@click.option("--debug-outputs", is_flag=True,
              help="Add every neuron layer's spikes per timestep as extra outputs.")
@_trust_options
@click.option("--weight-container", type=click.Choice(["int8", "int4"]), default="int8",
              show_default=True,
              help="Integer type holding quantized weights of float-kernel layers in the ONNX "
                   "file; int4 keeps <= 4-bit layers in native int4 (full ORT packages only: "
                   "the .ort format cannot hold int4). Integer-kernel layers always hold int8 "
                   "GEMM matrices.")
@click.option("--pack", "pack_path", type=click.Path(),
              help="Also write the quantized weights at their true bit width to this .snnpack.")
@click.option("--weights", type=click.Choice(["embedded", "external"]), default="embedded",
              show_default=True,
              help="external: the ONNX file holds references instead of the quantized weights; "
                   "load it with snnc.runtime.load_session(onnx, pack) (needs --pack).")
@click.option("--timesteps", default="unroll", show_default=True, callback=_timesteps,
              metavar="unroll|stream|T",
              help="unroll: all T steps in one graph. stream: one step per run, membranes as "
                   "extra inputs and outputs (docs/streaming.md). A number T: a NIR graph "
                   "unrolled over T steps (it carries none; docs/nir.md).")
@click.option("--dt", type=click.FloatRange(min=0, min_open=True), default=None,
              help="A NIR graph's time step in seconds (NIR neurons are continuous-time; "
                   "docs/nir.md gives the discretization).")
@_DISCRETIZE
@click.option("--batch", type=click.IntRange(1, 65536), default=None,
              help="Fix the batch dimension: static shapes everywhere (inputs, outputs, every "
                   "intermediate), as CoreML, NNAPI and Qualcomm QNN need (docs/mobile.md).")
@click.option("--pot-lowering", type=click.Choice(["int8", "shift"]), default="int8",
              show_default=True,
              help="How power-of-two layers reach ONNX: int8 containers (ONNX Runtime's fast "
                   "path) or their sign and exponent codes decoded in the graph with BitShift "
                   "(docs/onnx.md). Both compute the same numbers.")
@click.option("--kernels", type=click.Choice(["integer", "float"]), default="integer",
              show_default=True,
              help="integer: spike-input layers run as exact uint8 x int8 GEMMs (ONNX Runtime's "
                   "integer kernels); float: every layer on float kernels, as snnc emitted "
                   "before its integer lowering (docs/onnx.md). Both compute the same numbers.")
@click.option("--target", type=click.Choice(["cpu", "qnn", "coreml"]), default="cpu",
              show_default=True,
              help="qnn: the integer form Qualcomm's HTP (ONNX Runtime's QNN execution "
                   "provider) runs whole and exactly; needs --input-scale, and --batch 1 for "
                   "HTP (docs/qnn.md). coreml: with --batch, the ops CoreML refuses "
                   "(DequantizeLinear, Pad) in equivalent forms (docs/mobile.md).")
@click.option("--input-scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--target qnn: the input holds integer multiples q * S of this scale.")
@click.option("--input-max", type=click.IntRange(1, QNN_INPUT_MAX), default=255,
              show_default=True,
              help="--target qnn: the largest q (larger inputs saturate).")
@click.option("--ort", is_flag=True,
              help="Also write OUT.ort (ORT format, for ONNX Runtime Mobile) and "
                   "OUT.required_operators.config (for a reduced ORT build); docs/mobile.md.")
@click.option("--verify", "verify_data", type=click.Path(),
              help="After compiling, run snnc verify on this .npz (x, y): accuracy of the "
                   "source and the compiled model, top-1 agreement.")
@click.option("--min-agreement", type=click.FloatRange(0, 100), default=100.0,
              callback=lambda ctx, param, value: _not_nan(value),
              show_default=True, help="With --verify: the top-1 agreement (%) below which "
                                      "snnc exits with status 4.")
@click.option("--report", "report_path", type=click.Path(),
              help="Write a per-layer report (JSON) here, its table to stdout and a PNG figure "
                   "next to it (REPORT.png); firing rates and energy need --verify.")
@_steps_option
@click.option("-q", "--quiet", is_flag=True,
              help="No stage lines, progress or tables: the results only (the files written, "
                   "the verification).")
def compile_cmd(model, output, dump_ir, debug_outputs, trust_pickle, trust_code, input_shape,
                weight_container, pack_path, weights, timesteps, dt, discretize, batch,
                pot_lowering, kernels, target, input_scale, input_max, ort, verify_data,
                min_agreement, report_path, max_neuron_steps, quiet):
    """Compile MODEL (torch.export archive, snnc checkpoint or NIR graph) to an ONNX file."""
    from snnc.driver import compile_file

    progress = Stages(quiet)
    verification = None
    if not quiet:
        click.echo(f"snnc compile {model} -> {output}", err=True)
    with _errors(progress):
        external = weights == "external"
        steps = timesteps if isinstance(timesteps, int) else None  # a NIR graph's T
        timesteps, nir = "unroll" if steps else timesteps, _nir(dt, steps, None, discretize)
        opts = Options(debug_outputs=debug_outputs, weight_container=weight_container,
                       external_weights=external, timesteps=timesteps,
                       pot_lowering=pot_lowering, integer_kernels=kernels == "integer",
                       max_neuron_steps=max_neuron_steps, batch=batch, target=target,
                       input_scale=input_scale, input_max=input_max)
        check_compile(opts, ort, bool(verify_data), report_path, pack_path is not None)
        _check_compile_paths(model, output, pack_path, ort, report_path, verify_data, dump_ir)
        data = _load_data(verify_data) if verify_data else None
        check = None if data is None else _checker(data)
        result = compile_file(model, output, opts, dump_dir=dump_ir, trust_pickle=trust_pickle,
                              input_shape=_shape(input_shape), progress=progress,
                              pack_path=pack_path, ort=ort, trust_code=trust_code, check=check,
                              nir=nir)
        progress.finish()
        if not quiet:
            click.echo(result.summary())
        click.echo("wrote " + ", ".join(_model_outputs(output, pack_path, ort)))
    with _errors(progress, "the compiled model was written; verification and report are not"):
        if data is not None:
            from snnc.backend.mobile import ort_paths
            verification = _verify(result.program, output, pack_path if external else None,
                                   data, quiet, ort_file=ort and ort_paths(output)[0])
        if report_path is not None:
            _write_report(report_path, result, verification, model, output, quiet)
    if verification is not None:
        _judge(verification, min_agreement)


def _checker(data):
    """A compile_file `check` that runs the compiled model on `data` against its labels."""
    from snnc.check.accuracy import check_data

    def check(result):
        check_data(result.model, *data)
    return check


def _check_compile_paths(model, output, pack_path, ort, report_path, verify_data,
                         dump_ir) -> None:
    """Every file compile reads and writes, before any work (snnc.files.paths.check_paths)."""
    from snnc.backend.mobile import ort_paths
    from snnc.files.paths import check_paths

    outputs = [("-o", output), ("--pack", pack_path)]
    if ort and output:
        outputs += list(zip((".ort output", "operator config output"), ort_paths(output)))
    if report_path is not None:
        outputs += [("--report", report_path),
                    ("report figure", os.path.splitext(report_path)[0] + ".png")]
    check_paths([("MODEL", model), ("--verify", verify_data)], outputs, dump_dir=dump_ir)


@main.command("verify")
@click.argument("source", type=click.Path())
@click.argument("compiled", type=click.Path())
@click.option("--data", required=True, type=click.Path(),
              help="An .npz with x (inputs, samples on axis 0) and y (labels, optional).")
@click.option("--pack", "pack_path", type=click.Path(),
              help="The .snnpack compiled with COMPILED: its weights, for a model compiled "
                   "with --weights external; checked to hold exactly the weights of a model "
                   "that holds its own.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--min-agreement", type=click.FloatRange(0, 100), default=100.0,
              callback=lambda ctx, param, value: _not_nan(value),
              show_default=True, help="Top-1 agreement (%) below which snnc exits with status 4.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--allow-other-source", is_flag=True,
              help="Compare even if SOURCE is not the model COMPILED was compiled from (its "
                   "weights or graph differ from the fingerprint compile recorded).")
@_trust_options
@_steps_option
def verify_cmd(source, compiled, data, pack_path, as_json, min_agreement, batch_size,
               allow_other_source, trust_pickle, trust_code, input_shape, max_neuron_steps):
    """Run SOURCE in PyTorch and COMPILED in ONNX Runtime on DATA; compare accuracy.

    Reports both accuracies, top-1 agreement, the largest logit difference and, if COMPILED
    has --debug-outputs, the spike agreement per neuron layer. Exit status: 0 when top-1
    agreement reaches --min-agreement, 4 when it does not, 1 on bad input.
    """
    from snnc.backend.runtime import load_session
    from snnc.check import accuracy
    from snnc.files import loader
    from snnc.files.paths import check_paths, sniff, wrong_kind
    from snnc.frontend.lift import lift

    with _errors(what="nothing was verified"):
        check_paths([("SOURCE", source), ("COMPILED", compiled), ("--data", data),
                     ("--pack", pack_path)], [])
        if sniff(source) in ("onnx", "ort"):
            raise SnncError(f"SOURCE {source} is a compiled model: the order is "
                            "snnc verify SOURCE.pt COMPILED.onnx --data DATA.npz")
        kind = sniff(compiled)
        if kind not in ("onnx", "ort"):
            raise wrong_kind("COMPILED", compiled, kind, "a compiled model (.onnx or .ort)",
                             doc="docs/verify.md")
        if pack_path and sniff(pack_path) != "snnpack":
            raise wrong_kind("--pack", pack_path, sniff(pack_path), "an snnc weight pack",
                             doc="docs/binary_format.md")
        x = _load_data(data)
        # COMPILED and its pack first: a pack that fails its checks is refused before SOURCE
        # is loaded (load_session checks every pack it is given, docs/verify.md)
        session = load_session(compiled, pack_path, intra_op_num_threads=2)
        accuracy.model_input(session, x[0])  # the data's shape, before SOURCE loads
        program = loader.load_program(source, trust_pickle=trust_pickle,
                                      input_shape=_shape(input_shape), trust_code=trust_code,
                                      max_neuron_steps=max_neuron_steps)
        lift(program)  # SOURCE runs in PyTorch only if its ops are ones snnc knows
        verification = _verify(program, compiled, pack_path, x, quiet=False,
                               batch_size=batch_size, allow_other_source=allow_other_source,
                               session=session, text=not as_json)
    if as_json:
        from snnc.check.accuracy import write_json
        click.echo(write_json(verification))
    _judge(verification, min_agreement, quiet=as_json)


def _model_outputs(output, pack_path, ort) -> list[str]:
    """The model files compile writes (with compile_file)."""
    from snnc.backend.mobile import ort_paths

    return [output] + ([pack_path] if pack_path else []) + (list(ort_paths(output)) if ort
                                                          else [])


def _load_data(path):
    from snnc.files.data import load_data
    from snnc.files.paths import check_input, sniff, wrong_kind

    check_input("--data", path)
    kind = sniff(path)
    if kind != "npz":
        raise wrong_kind("data file", path, kind, "an .npz of arrays x and y (numpy.savez)",
                         doc="docs/verify.md")
    return load_data(path)


def _verify(program, onnx_path, pack_path, data, quiet, batch_size=64, ort_file=None,
            allow_other_source=True, session=None, text=True):
    """Verify `onnx_path` against `program` on data = (x, y), printing the result (unless
    not `text`: --json) with a progress bar on stderr unless `quiet`; `session`: onnx_path
    (with pack_path) already loaded."""
    from snnc.backend.runtime import load_session
    from snnc.check import accuracy

    x, y = data
    if session is None:
        session = load_session(onnx_path, pack_path, intra_op_num_threads=2)
    accuracy.check_source(program, session, allow_other_source)
    accuracy.check_inputs(program, session, x, y, batch_size)
    bar = Bar(not quiet)
    bar.begin("verify", len(x))
    try:
        verification = accuracy.verify(program, session, x, y, batch_size, progress=bar.tick)
    finally:
        bar.end()
    if ort_file:
        verification.ort_max_abs_diff = accuracy.session_difference(
            session, load_session(ort_file, intra_op_num_threads=2), x, batch_size)
    if text:
        click.echo(verification.format())  # a result: shown even with -q
    return verification


def _judge(verification, min_agreement: float, quiet: bool = False) -> None:
    agreement = 100 * verification.top1_agreement
    if agreement < min_agreement:
        click.echo(f"snnc: verification failed: top-1 agreement {agreement:.2f} % is below "
                   f"{min_agreement:g} % (samples {verification.disagreements[:10]} differ); "
                   "with --debug-outputs the per-layer spike agreement shows where the "
                   "compiled model departs from the source", err=True)
        sys.exit(4)


def _write_report(path, result, verification, model, output, quiet) -> None:
    from snnc.check import report
    from snnc.files.outputs import write_all_atomic

    extra = {"model": model, "onnx": output, "timesteps": result.graph.time.steps
             if result.graph.time else 1}
    data = report.build(result.graph, verification, extra)
    png = os.path.splitext(path)[0] + ".png"
    write_all_atomic([(path, report.to_json(data)), (png, report.figure_png(data))])
    if not quiet:
        click.echo(report.format_table(data))
    click.echo(f"wrote {path} and {png}")


@main.command("quantize")
@click.argument("model", type=click.Path())
@click.option("--config", "config_path", required=True, type=click.Path(),
              help='JSON: module-name globs -> {"scheme": "uniform"|"pot", "bits": k}, '
                   '{"scheme": "ternary"|"binary"} or "float"; first match wins.')
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Where to write the quantized snnc checkpoint.")
@click.option("--method", type=click.Choice(["mse", "minmax"]), default="mse", show_default=True,
              help="How scales are chosen from the weights.")
@click.option("--calibration", type=click.Path(),
              help="An .npz whose array x holds inputs, samples first as verify's --data, "
                   "used to refine the scales (run in batches of 64).")
@click.option("--data", "data_path", type=click.Path(),
              help="An .npz with x and y (as verify's --data): print the float and the "
                   "quantized model's accuracy on it (PyTorch).")
@click.option("--trust-code", is_flag=True,
              help="Allow a checkpoint factory that is not on snnc's allowlist (snnc imports "
                   "and calls it, from the current directory or the installed packages; "
                   "docs/model_files.md).")
@_steps_option
@_nir_options
def quantize_cmd(model, config_path, output, method, calibration, data_path, trust_code,
                 max_neuron_steps, dt, nir_steps, readout, discretize):
    """Quantize an snnc checkpoint's (or a NIR graph's) conv/linear weights per layer
    (docs/quantization.md)."""
    from snnc.files.data import read_config
    from snnc.files.paths import check_paths
    from snnc.quant import quantize as quant
    from snnc.quant.checkpoint import quantize_checkpoint

    with _errors():
        check_paths([("MODEL", model), ("--config", config_path),
                     ("--calibration", calibration), ("--data", data_path)], [("-o", output)])
        config = read_config(config_path)
        cal = _load_data(calibration)[0] if calibration else None
        data = _load_data(data_path) if data_path else None
        done = quantize_checkpoint(model, config, output, method, cal, data, trust_code,
                                   max_neuron_steps, _nir(dt, nir_steps, readout, discretize),
                                   (f"--calibration {calibration}", f"--data {data_path}"))
    click.echo(quant.format_report(done.rows, done.average_bits))
    if done.accuracy is not None:
        click.echo(f"accuracy on {data_path} ({done.samples} samples, PyTorch): float "
                   f"{100 * done.float_accuracy:.2f} %, quantized {100 * done.accuracy:.2f} % "
                   f"({100 * (done.accuracy - done.float_accuracy):+.2f} points)")
    click.echo(f"wrote {output}")


@main.command("search")
@click.argument("model", type=click.Path())
@click.option("--train", "train_path", required=True, type=click.Path(),
              help="An .npz with x (inputs, samples first) and y (labels) to fine-tune on.")
@click.option("--val", "val_path", required=True, type=click.Path(),
              help="An .npz with x and y on which the search measures accuracy.")
@click.option("--method", required=True,
              type=click.Choice(["sensitivity", "gumbel", "drift"]),
              help="sensitivity: QSViT's sweep + guided greedy; gumbel: SpikeHQ's "
                   "Gumbel-softmax search; drift: membrane-drift proxy + beam search "
                   "(docs/search.md).")
@click.option("--max-bits", type=float, help="Budget: average bits per weight, weighted by "
                                              "parameters (float layers count 32).")
@click.option("--max-drop", type=float, help="Budget: validation accuracy points below float "
                                              "(before fine-tuning).")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Where to write the configuration JSON (snnc quantize --config reads it).")
@click.option("--quantized", "quantized_path", type=click.Path(),
              help="Also write the fine-tuned quantized model (an snnc checkpoint).")
@click.option("--report", "report_path", type=click.Path(),
              help="A PNG of accuracy vs bits and vs energy of every configuration visited "
                   "(its points also go to the same name with .json).")
@click.option("--allow-float", is_flag=True, help="Let layers stay float (32 bits).")
@click.option("--seed", type=click.IntRange(0, 2 ** 31 - 1), default=0, show_default=True)
@click.option("--finetune-epochs", type=click.IntRange(0), default=8, show_default=True)
@click.option("--search-epochs", type=click.IntRange(1), default=3, show_default=True,
              help="gumbel: training epochs per lambda trial.")
@click.option("--trials", type=click.IntRange(1), default=6, show_default=True,
              help="gumbel: lambda trials at most.")
@click.option("--energy-weight", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="gumbel: the energy's share of the hardware cost (the rest is bits).")
@click.option("--beam-width", type=click.IntRange(1), default=8, show_default=True,
              help="drift: configurations the beam search keeps.")
@click.option("--drift-samples", type=click.IntRange(1), default=32, show_default=True,
              help="drift: validation samples the drifts are measured on.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True,
              help="Global batch size (split across torchrun processes).")
@click.option("--lr", type=click.FloatRange(0, 1, min_open=True), default=5e-4,
              show_default=True, help="Learning rate of the weights (QAT), above 0, at most 1.")
@click.option("--state", "state_path", type=click.Path(),
              help="The search state file, kept after the search [default: OUTPUT.state, "
                   "removed once the search succeeds].")
@click.option("--resume", is_flag=True, help="Continue the search recorded in the state file.")
@click.option("--trust-code", is_flag=True,
              help="Allow a checkpoint factory that is not on snnc's allowlist (snnc imports "
                   "and calls it; docs/model_files.md).")
@_steps_option
@_nir_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or table: the result only.")
def search_cmd(model, train_path, val_path, method, max_bits, max_drop, output, quantized_path,
               report_path, allow_float, seed, finetune_epochs, batch_size, lr, state_path,
               resume, trust_code, max_neuron_steps, dt, nir_steps, readout, discretize, quiet,
               **tuning):
    """Search each layer's quantization (uniform, PoT, ternary, binary) under a budget, then
    fine-tune (docs/search.md). Data-parallel under torchrun."""

    keep_state = state_path is not None  # a state named with --state outlives the search
    state_path = state_path or f"{output}.state"
    with _errors():
        _search(model, train_path, val_path, method, max_bits, max_drop, output,
                quantized_path, report_path, allow_float, seed, finetune_epochs, tuning,
                batch_size, lr, state_path, resume, trust_code, max_neuron_steps, quiet,
                _nir(dt, nir_steps, readout, discretize), keep_state=keep_state)


def _search(model, train_path, val_path, method, max_bits, max_drop, output, quantized_path,
            report_path, allow_float, seed, finetune_epochs, tuning, batch_size, lr,
            state_path, resume, trust_code, max_neuron_steps, quiet, nir=None,
            keep_state=True):
    """`tuning`: the methods' own options (search_epochs, trials, energy_weight, beam_width,
    drift_samples), by their Options names."""
    import hashlib
    import json

    from snnc.files import loader
    from snnc.files.data import load_data
    from snnc.files.outputs import write_all_atomic
    from snnc.files.paths import check_paths
    from snnc.quant import pareto
    from snnc.quant.distributed import Context
    from snnc.quant.search import api
    from snnc.quant.search.api import Data, Options, SearchInterrupted, search
    from snnc.quant.search.state import digest

    for name, value in (("--max-bits", max_bits), ("--max-drop", max_drop), ("--lr", lr),
                        ("--energy-weight", tuning["energy_weight"])):
        if value is not None and not math.isfinite(value):
            raise SnncError(f"{name} must be a finite number, not {value}")
    report_json = os.path.splitext(report_path)[0] + ".json" if report_path else None
    check_paths([("MODEL", model), ("--train", train_path), ("--val", val_path)],
                [("-o", output), ("--quantized", quantized_path), ("--report", report_path),
                 ("--report's JSON", report_json), ("--state", state_path)])
    if (max_bits is None) == (max_drop is None):
        raise UsageError("give exactly one budget: --max-bits B (average bits per weight) or "
                         "--max-drop POINTS (validation accuracy points below float)")
    ckpt = loader.load_checkpoint(model, "snnc search", nir=nir)
    train, val = (Data(*load_data(p)) for p in (train_path, val_path))
    api.check_data(train, val, ckpt["input_shape"])  # before the model is built
    net = loader.build_from_checkpoint(model, ckpt, trust_code=trust_code,
                                       max_neuron_steps=max_neuron_steps)
    ctx = Context.from_environment()
    opts = Options(method=method, max_bits=max_bits, max_drop=max_drop,
                   allow_float=allow_float, seed=seed, batch_size=batch_size,
                   finetune_epochs=finetune_epochs, finetune_lr=lr, **tuning)
    with open(model, "rb") as f:
        model_digest = hashlib.sha256(f.read()).hexdigest()
    data_key = digest(val.x, *([val.y] if val.y is not None else []))
    try:
        result = search(net, train, val, opts, input_shape=ckpt["input_shape"], ctx=ctx,
                        state_path=state_path, resume=resume, progress=not quiet)
    except SearchInterrupted as stop:
        ctx.close(wait=False)
        if ctx.main:
            _fail(api.interrupted(stop, output, state_path), code=130)
        sys.exit(interrupt_code(stop.__context__) if stop.__context__ else 130)
    except BaseException:
        ctx.close(wait=False)  # the other processes may never reach a barrier
        raise
    try:
        if not ctx.main:
            return
        files = [(output, (json.dumps(result.config, indent=2) + "\n").encode())]
        if quantized_path:
            files.append((quantized_path,
                          loader.checkpoint_bytes(ckpt, result.model, result.config)))
        if report_path:
            entry = api.report_entry(result, opts)
            report = pareto.merge(report_json, hashlib.sha256(
                (model_digest + data_key).encode()).hexdigest(), method, entry)
            files += [(report_path, pareto.png(report)), (report_json, pareto.dumps(report))]
        write_all_atomic(files)
        if not keep_state:  # the default state is for resuming an interrupted search only
            try:
                os.remove(state_path)
            except FileNotFoundError:
                pass
            except OSError as error:
                click.echo(f"snnc: warning: could not remove the search state {state_path} "
                           f"({error.strerror})", err=True)
    finally:
        ctx.close()
    if not quiet:  # -q silences the progress and the table, never the result
        click.echo(api.table(result))
    t = sum(r.parameters for r in result.rows)
    click.echo(f"{method}: {result.average_bits:.2f} average bits ({32 / result.average_bits:.1f}x "
               f"smaller than float32; {t:,} weights), estimated energy "
               f"{result.energy_nj:.1f} nJ/sample vs {result.float_energy_nj:.1f} nJ with "
               "float32 weights (docs/verify.md)")
    click.echo(f"validation accuracy: float {100 * result.float_accuracy:.2f} %, searched "
               f"{100 * result.searched_accuracy:.2f} % before fine-tuning, "
               f"{100 * result.accuracy:.2f} % after; {result.seconds:.0f} s "
               f"({result.search_seconds:.0f} s to choose, then fine-tuning)")
    written = [output] + [p for p in (quantized_path, report_path, report_json) if p]
    click.echo("wrote " + ", ".join(written))


@main.command("inspect")
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the layer table as one JSON object.")
@click.option("--trust-code", is_flag=True,
              help="Allow a checkpoint factory off snnc's allowlist (docs/model_files.md).")
@click.option("--trust-pickle", is_flag=True,
              help="Allow pickled objects in a torch.export archive (docs/model_files.md).")
def inspect_cmd(file, as_json, trust_code, trust_pickle):
    """List FILE's layers: a model file's (checkpoint, torch.export archive, NIR graph)
    quantizable layers with parameters, scheme and bits, by the names --config matches; or
    an .snnpack weight pack's layer table."""
    from snnc.check.inspect import inspect_file

    with _errors(what="nothing was printed"):
        text = inspect_file(file, as_json, trust_code=trust_code, trust_pickle=trust_pickle)
    click.echo(text)


@main.command("decoder")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(),
              help="The directory to write snnpack.h, snnpack.c and snnpack_decode.c into.")
def decoder_cmd(out_dir):
    """Write the C99 reader of .snnpack packs, for apps (docs/deployment.md)."""
    from snnc.backend.decoder import BUILD, SOURCES, source
    from snnc.files.outputs import write_all_atomic
    from snnc.files.paths import check_paths

    with _errors():
        files = [(os.path.join(out_dir, name), source(name)) for name in SOURCES]
        os.makedirs(out_dir, exist_ok=True)
        check_paths([], [("-o", path) for path, _ in files])
        write_all_atomic(files)
    click.echo(f"wrote {', '.join(p for p, _ in files)}; build in {out_dir}: {BUILD}")


def _internal_error(error: Exception) -> None:
    """A bug in snnc: a short message, or the traceback with SNNC_DEBUG set."""
    if os.environ.get("SNNC_DEBUG"):
        raise error
    _fail(f"internal error ({type(error).__name__}: {first_line(error)}). This is a bug in "
          "snnc; rerun with SNNC_DEBUG=1 for the traceback and please report it.", code=3)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"snnc: error: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
