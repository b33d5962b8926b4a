"""Coverage of snnc over SpikingJelly's model zoo and published spiking transformers.

    python runtime_tests/coverage.py [--only NAME[,NAME...]] [--quick] [--T 2]
                                     [--json PATH] [--md PATH] [--timeout SECONDS]

For every public constructor of `spikingjelly.activation_based.model` (published/_sj_zoo.py)
and every published fixture (runtime_tests/published/<name>.py, each with make(T, seed) or
MAKES {name: make}; more from the directories in $SNNC_EXTRA_FIXTURES):
build it small and firing, export it with torch.export at batch 1, compile it with snnc
plain and heterogeneous-quantized (snnc.quantize(model, zoo.heterogeneous(model))), run the
one file in ONNX Runtime on a batch of 4 and on each sample alone (dynamic batch), and
compare with PyTorch (the batch-4 export) layer by layer under the rounding rule
(snnc.check.parity, docs/testing.md). Prints a markdown table; --json and --md write it too
(the markdown after every model, so a long run can be read while it goes).

Each model runs in its own process with a time limit: one failing, hanging or crashing does
not stop the rest. A row's status per compile:
    ok          compiled; parity holds under the rounding rule ("fires" says how many
                neuron layers spiked on the compared input; "output constant" that every
                sample got the same output, so the logits compared nothing). A model whose
                neurons are written in PyTorch has no recorded spikes: a sample whose
                output differs is counted as rounding-perturbed only if PyTorch in float64
                agrees with ONNX Runtime on every sample (float64_decided in the JSON)
    MISMATCH    compiled, but the parity check found a problem (the first is shown)
    REFUSED     snnc refused with its own error (UnsupportedOpError, BadInputError,
                PassError): the first line, and the full message in the JSON
    BUG         anything else raised inside snnc (or by ONNX Runtime on snnc's file), and
                snnc errors that call themselves a bug in snnc
    EXPORT      torch.export failed (the model, not snnc); BUILD: the fixture failed
    TIMEOUT     over the per-model limit
--quick takes one constructor per zoo family and every published fixture.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISHED = os.path.join(HERE, "published")
MARK = "@@COVERAGE@@"
BATCH = 4

INTEGER_KERNELS = ("MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeMatMul",
                   "QLinearMatMul", "QLinearConv", "ConvInteger")
FLOAT_KERNELS = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "NchwcConv")


# ---------------------------------------------------------------- what there is to run

def _fixture_modules(extra: bool = True):
    """The published fixture modules: runtime_tests/published/<name>.py (not _*.py), then
    those of the directories in $SNNC_EXTRA_FIXTURES (os.pathsep-separated; fixtures kept
    out of the repository, e.g. code whose licence does not allow copying it here)."""
    import importlib
    import importlib.util

    sys.path.insert(0, HERE)
    dirs = [PUBLISHED] + [d for d in os.environ.get("SNNC_EXTRA_FIXTURES", "").split(os.pathsep)
                          if d and extra]
    for directory in dirs:
        for file in sorted(os.listdir(directory)):
            if not file.endswith(".py") or file.startswith("_"):
                continue
            try:
                if directory == PUBLISHED:
                    yield importlib.import_module(f"published.{file[:-3]}")
                    continue
                spec = importlib.util.spec_from_file_location(f"published.{file[:-3]}",
                                                              os.path.join(directory, file))
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
                yield module
            except Exception as error:  # noqa: BLE001 - a fixture that does not import
                yield _broken(file[:-3], error)


def _broken(name: str, error: BaseException):
    """A stand-in module for a fixture whose import failed: its make() raises the error."""
    import types

    def make(T=2, seed=0):
        raise RuntimeError(f"import failed: {type(error).__name__}: {error}")

    return types.SimpleNamespace(__name__=f"published.{name}", make=make, SOURCE="?")


def published_fixtures(extra: bool = True) -> dict:
    """name -> (source, make) of every published fixture: a module's MAKES (name -> make)
    or its make() under the module's name; extra=False: only runtime_tests/published/."""
    out = {}
    for module in _fixture_modules(extra):
        name = module.__name__.rsplit(".", 1)[-1]
        makes = getattr(module, "MAKES", None) or {name: module.make}
        for key, make in makes.items():
            out[key] = (getattr(module, "SOURCE", "?"), make)
    return out


def catalogue(quick: bool) -> list[tuple[str, str]]:
    """[(name, source)] in run order: the zoo constructors, then the published fixtures."""
    sys.path.insert(0, HERE)
    from published import _sj_zoo

    zoo_names = _sj_zoo.QUICK if quick else _sj_zoo.ALL
    return ([(n, "spikingjelly 2.0.0 zoo") for n in zoo_names]
            + [(n, src) for n, (src, _) in published_fixtures().items()])


def builder(name: str):
    sys.path.insert(0, HERE)
    from published import _sj_zoo

    if name in _sj_zoo.BUILDERS:
        return _sj_zoo.BUILDERS[name]
    return published_fixtures()[name][1]


# ---------------------------------------------------------------- one model (in a worker)

def _first(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def _refusal(error: BaseException) -> str:
    """One snnc message as the table shows it: an UnsupportedOpError's distinct operations
    (with counts and the first reason), else the message's first two lines."""
    items = getattr(error, "items", None)
    if items:
        counts: dict[str, int] = {}
        for op, _where in items:
            counts[op.split(":")[0]] = counts.get(op.split(":")[0], 0) + 1
        first = items[0][0].split(":", 1)[-1].strip()
        ops = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in counts.items())
        return f"unsupported: {ops} ({first})"[:300]
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(error).__name__


def classify(error: BaseException) -> str:
    import snnc.errors as E

    if isinstance(error, E.SnncError) and not isinstance(error, E.VerificationError) \
            and "bug in snnc" not in str(error):  # snnc's own words for an internal error
        return "REFUSED"
    return "BUG"


def kernels(data: bytes) -> dict[str, int]:
    """Integer and float GEMM kernels in ONNX Runtime's optimized graph of `data`."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.intra_op_num_threads = 1
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
    return {"int": sum(n.op_type in INTEGER_KERNELS for n in nodes),
            "float": sum(n.op_type in FLOAT_KERNELS for n in nodes)}


def compile_and_compare(model, shape, mode: str) -> dict:
    """Compile the batch-1 export, run batch 4 and each sample alone in ONNX Runtime, compare
    with PyTorch's batch-4 export under the rounding rule."""
    import numpy as np
    import zoo

    from snnc.check import parity as H
    from snnc.driver import compile_program
    from snnc.options import Options

    row: dict = {"status": "?"}
    try:
        program = zoo.export(model, shape)
    except Exception as error:  # noqa: BLE001 - torch.export's failure is the model's
        return {"status": "EXPORT", "line": f"{type(error).__name__}: {_first(error)}",
                "message": traceback.format_exc()}
    start = time.perf_counter()
    try:
        result = compile_program(program, Options(debug_outputs=True))
    except Exception as error:  # noqa: BLE001
        row["status"] = classify(error)
        row["message"] = str(error) if row["status"] == "REFUSED" else traceback.format_exc()
        row["line"] = _refusal(error) if row["status"] == "REFUSED" else \
            f"{type(error).__name__}: {_first(error)}"
        return row
    row["compile_s"] = round(time.perf_counter() - start, 1)
    try:
        reference_program = zoo.export(model, (BATCH, *shape[1:]))
    except Exception as error:  # noqa: BLE001 - exported at batch 1 but not at batch 4
        return {"status": "EXPORT", "line": f"batch {BATCH}: {type(error).__name__}: "
                f"{_first(error)}", "message": traceback.format_exc()}
    try:
        row["kernels"] = kernels(result.data)
        x = np.random.default_rng(7).random((BATCH, *shape[1:]), dtype=np.float32)
        reference = H.torch_trace(reference_program, x)
        session = H.onnx_session(result.data)
        got = H.onnx_trace(session, x)
        alone = [H.onnx_trace(session, x[i:i + 1]) for i in range(BATCH)]
    except Exception as error:  # noqa: BLE001 - snnc's file failed in ONNX Runtime
        row.update(status="BUG", line=f"{type(error).__name__}: {_first(error)}",
                   message=traceback.format_exc())
        return row
    axis = 1 if result.graph.time.outputs[0] == "stack" else 0
    comparison = H.compare(reference, got, H.Comparison(), batch_axis=axis, max_flips=4,
                           perturbed_tol=0.5)
    same = all(np.array_equal(np.take(got.spikes[layer], [i], axis=1), spikes)
               for i, one in enumerate(alone) for layer, spikes in one.spikes.items())
    same = same and all(np.allclose(np.take(got.outputs[0], [i], axis=axis), one.outputs[0],
                                    rtol=1e-5, atol=1e-6) for i, one in enumerate(alone))
    diffs = [H._output_diff(reference, got, b, axis) for b in range(BATCH)]
    tops = [H._prediction(reference.outputs[0], b, axis) == H._prediction(got.outputs[0], b, axis)
            for b in range(BATCH)]
    rates = comparison.layers_firing
    problems, perturbed = comparison.problems, comparison.perturbed
    if problems and not reference.spikes:  # neurons written in PyTorch: no spikes recorded
        decided = float64_decides(model, x, got.outputs[0], reference.outputs[0], axis)
        if decided is not None:
            problems, perturbed = [], perturbed + decided
            row["float64_decided"] = decided
    row.update(
        status="ok" if not problems else "MISMATCH",
        line=problems[0][:300] if problems else "",
        message="\n".join(problems),
        top1=sum(tops) / BATCH, median_max_diff=float(statistics.median(diffs)),
        perturbed=perturbed, batch1_eq_batch4=bool(same),
        layers=len(rates), layers_firing=sum(r > 0 for r in rates.values()),
        # the same output for every sample: the head saw no spikes, the logits are biases
        output_constant=bool(np.ptp(reference.outputs[0], axis=axis).max() == 0),
        report=comparison.report())
    return row


def float64_decides(model, x, onnx_out, torch_out, axis: int, tol: float = 1e-4):
    """For a model whose spikes are not recorded (neurons written in PyTorch): the number of
    samples where PyTorch in float32 differs from ONNX Runtime while PyTorch in float64
    agrees with ONNX Runtime (a spike PyTorch's own float32 rounding decided: counted as
    rounding-perturbed, as the rounding rule counts them), or None if float64 disagrees
    too on any sample (a real mismatch) or the model cannot run in float64."""
    import copy

    import numpy as np
    import torch
    import zoo

    try:
        model64 = copy.deepcopy(model).double()
        with torch.no_grad():
            zoo.functional.reset_net(model64)
            out64 = model64(torch.from_numpy(x).double())
            zoo.functional.reset_net(model64)
        out64 = (out64[0] if isinstance(out64, (tuple, list)) else out64).numpy()
    except Exception:  # noqa: BLE001 - a custom op without float64: no verdict
        return None
    samples = onnx_out.shape[axis]
    far = lambda a, b, i: float(np.abs(np.take(a, i, axis) - np.take(b, i, axis)).max())  # noqa: E731
    if any(far(onnx_out, out64, i) > tol for i in range(samples)):
        return None
    return sum(far(onnx_out, torch_out, i) > tol for i in range(samples))


def run_one(name: str, T: int) -> dict:
    sys.path.insert(0, HERE)
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    import zoo

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    import snnc

    row: dict = {"name": name}
    try:
        model, shape = builder(name)(T=T, seed=0)
    except Exception as error:  # noqa: BLE001
        row["build"] = f"{type(error).__name__}: {_first(error)}"
        row["build_trace"] = traceback.format_exc()
        return row
    row["params"] = sum(p.numel() for p in model.parameters())
    row["shape"] = list(shape)
    try:
        x = np.random.default_rng(7).random((BATCH, *shape[1:]), dtype=np.float32)
        rates = zoo.firing_rates(model, torch.from_numpy(x))  # the input compared below
        row["neuron_layers"] = len(rates)
        row["firing_layers"] = sum(r > 0 for r in rates.values())
    except Exception as error:  # noqa: BLE001
        row["build"] = f"forward: {type(error).__name__}: {_first(error)}"
        return row
    row["plain"] = compile_and_compare(model, shape, "plain")
    try:
        snnc.quantize(model, zoo.heterogeneous(model))
    except Exception as error:  # noqa: BLE001
        status = classify(error)
        row["quantized"] = {"status": status, "line": f"quantize: {_refusal(error)}"
                            if status == "REFUSED" else f"quantize: {type(error).__name__}: "
                            f"{_first(error)}", "message": traceback.format_exc()}
        return row
    row["quantized"] = compile_and_compare(model, shape, "quantized")
    return row


# ---------------------------------------------------------------- the table

def _cell(r: dict | None) -> str:
    if not r:
        return "-"
    text = r["status"]
    if r["status"] != "ok" and r.get("line"):
        text += ": " + r["line"].replace("|", "\\|")[:160]
    return text


def _pair(row: dict, key: str, fmt: str) -> str:
    vals = [row.get(m, {}).get(key) for m in ("plain", "quantized")]
    return " / ".join("-" if v is None else format(v, fmt) for v in vals)


def table(rows: list[dict]) -> str:
    head = ("| model | source | params | fires | plain | quantized | top-1 agree (p / q) "
            "| median max\\|diff\\| (p / q) | perturbed (p / q) | b1 = b4 | int / float GEMMs "
            "(p; q) | s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for row in rows:
        if "build" in row or "timeout" in row:
            what = ("TIMEOUT" if "timeout" in row else "BUILD: " + row["build"])
            what = what.replace("|", "\\|")[:200]
            lines.append(f"| {row['name']} | {row['source']} | - | - | {what} | - | - | - | - "
                         f"| - | - | {row.get('seconds', '-')} |")
            continue
        k = [row.get(m, {}).get("kernels") for m in ("plain", "quantized")]
        gemms = "; ".join("-" if not c else f"{c['int']} / {c['float']}" for c in k)
        b14 = _pair(row, "batch1_eq_batch4", "").replace("True", "yes").replace("False", "NO")
        constant = any(row.get(m, {}).get("output_constant") for m in ("plain", "quantized"))
        lines.append(
            f"| {row['name']} | {row['source']} | {row['params'] / 1e6:.2f} M "
            f"| {row.get('firing_layers', '?')}/{row.get('neuron_layers', '?')}"
            f"{', output constant' if constant else ''} "
            f"| {_cell(row.get('plain'))} | {_cell(row.get('quantized'))} "
            f"| {_pair(row, 'top1', '.2f')} | {_pair(row, 'median_max_diff', '.1e')} "
            f"| {_pair(row, 'perturbed', 'd')} | {b14} | {gemms} | {row.get('seconds', '-')} |")
    return "\n".join(lines)


def run_isolated(name: str, T: int, timeout: float, threads: int = 2) -> dict:
    start = time.time()
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--T", str(T)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))  # --jobs workers share the cores
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"name": name, "timeout": timeout, "seconds": round(time.time() - start)}
    out = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if not out:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"name": name, "build": f"worker died (exit {proc.returncode}): "
                f"{' '.join(tail)[:200]}", "seconds": round(time.time() - start)}
    row = json.loads(out[-1][len(MARK):])
    row["seconds"] = round(time.time() - start)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated model names")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--T", type=int, default=2)
    parser.add_argument("--json", help="write the rows (with full messages) here")
    parser.add_argument("--md", help="write the markdown table here (after every model)")
    parser.add_argument("--timeout", type=float, default=420.0, help="seconds per model")
    parser.add_argument("--jobs", type=int, default=1, help="models run at once")
    parser.add_argument("--skip", help="comma-separated model names not to run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        row = run_one(args.worker, args.T)
        print(MARK + json.dumps(row, default=str), flush=True)
        return 0
    models = catalogue(args.quick)
    if args.only:
        wanted = args.only.split(",")
        known = dict(catalogue(False))
        models = [(n, known[n]) for n in wanted if n in known]  # in the order given
        unknown = set(wanted) - {n for n, _ in models}
        if unknown:
            parser.error(f"unknown model(s): {sorted(unknown)}")
    if args.skip:
        models = [(n, s) for n, s in models if n not in args.skip.split(",")]
    rows: dict[str, dict] = {}

    def one(name: str, source: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)
        row = run_isolated(name, args.T, args.timeout, max(1, (os.cpu_count() or 2) // args.jobs))
        row["source"] = source
        with lock:
            rows[name] = row
            done = [rows[n] for n, _ in models if n in rows]  # in catalogue order
            if args.md:
                with open(args.md, "w") as f:
                    f.write(table(done) + "\n")
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(done, f, indent=1, default=str)

    import threading
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda m: one(*m), models))
    print(table([rows[n] for n, _ in models]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
