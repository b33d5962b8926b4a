"""snnc search: choose each layer's quantization (uniform 2-8 bits, power-of-two 2-5 bits,
ternary or binary) under a budget, by one of the two methods of ../shared/design/seeds.md or
a third (docs/search.md):

- "sensitivity" (QSViT): every layer alone at every candidate, the rest float, on the
  validation data (accuracy and the divergence of the logits from the float model's); base
  settings from that sweep; guided greedy steps on the whole configuration (the step that
  costs the least divergence per bit saved, or, under the budget, gains the most per bit
  spent) until the budget is met; the best configuration evaluated within the budget
  (validation accuracy, then fewer bits: engine.Search.rank) is the result; then
  quantization-aware fine-tuning.
- "gumbel" (SpikeHQ): per-layer logits over the candidates, a Gumbel-softmax mixture of the
  candidates' quantized weights with an annealed temperature, trained (straight-through
  quantizers) on the task loss + lambda x hardware cost (expected bits and the estimated
  energy, snnc.check.energy); lambda bisected until the argmax configuration lands on the
  bit budget; then quantization-aware fine-tuning of the argmax configuration.
- "drift" (after AQ4SViT): every layer alone at every candidate, measured by the drift of
  the membrane potentials, spikes and output from the float model's on a few validation
  samples (no accuracy evaluations); a beam search over the per-layer choices under the
  budget on those drifts; the beam's final configurations evaluated on the validation data,
  the best is the result; then quantization-aware fine-tuning.

Data-parallel under torchrun (`snnc.quant.distributed`): every process reads the same files and
computes its share of each batch (fixed 16-sample chunks) and of the validation samples;
the parts are gathered and added in one fixed order, so one process and N give the same
result bit for bit (runner.Runner.train_epoch).

Every unit of work (a sweep layer, a greedy step, a lambda trial, a fine-tuning epoch) is
recorded in a state file; a search resumes from it, and Ctrl-C writes the best configuration
within the budget found so far.

The parts: space.py (candidates, hardware cost), runner.py (evaluation, training), state.py
(the state file), schema.py (what a resumed state may hold), engine.py (what every method
shares, the state's schema, fine-tuning), one module per method (sensitivity.py, gumbel.py,
drift.py, each with run() and schema(): a third method is one more module and one entry in METHODS),
and this entry point.
"""

from __future__ import annotations

import copy
import math
import time

import torch

from snnc.check.accuracy import check_labels
from snnc.errors import BadInputError
from snnc.files.paths import check_paths
from snnc.progress import Bar
from snnc.quant import quantize
from snnc.quant.distributed import Context
from snnc.quant.search import drift, gumbel, sensitivity
from snnc.quant.search.engine import Options, Point, Result, Search, SearchInterrupted
from snnc.quant.search.runner import (Data, batch_axis, check_trains, sample_axes,
                                      strip_quantization)
from snnc.quant.search.space import candidates, energy_nj, quantizable, to_rules
from snnc.quant.search.state import State, default_key

# A method is a module: run(engine) explores configurations through the engine and returns
# (config, details, point); schema(engine) says what its fields of the state file may hold.
METHODS = {"sensitivity": sensitivity, "gumbel": gumbel, "drift": drift}


def search(model: torch.nn.Module, train: Data, val: Data, opts: Options, *,
           input_shape: list[int] | None = None, ctx: Context | None = None,
           state_path: str | None = None, resume: bool = False, key: str = "",
           progress: bool = False) -> Result:
    """Search `model`'s per-layer quantization (docs/search.md). `model` is a float model (a
    quantized one is searched from its float weights); train/val hold samples-first x and
    labels y. Raises BadInputError for a budget no configuration meets, data that do not fit
    the model, a model that cannot be trained, or a state to resume that does not fit this
    search; SearchInterrupted on Ctrl-C."""
    start = time.time()
    engine = prepare(model, train, val, opts, input_shape=input_shape, ctx=ctx,
                     state_path=state_path, resume=resume, key=key, progress=progress)
    state, bar, val = engine.state, engine.progress, engine.val
    try:
        if "result" not in state.data:
            config, details, point = METHODS[opts.method].run(engine)
            if point is None or not engine.within(point):
                raise _unreachable(engine)
            state.data["result"] = {"config": config, "details": details, "point": vars(point)}
            engine.commit()
        config, details = state.data["result"]["config"], state.data["result"]["details"]
        searched = Point(**state.data["result"]["point"])
        choosing = time.time() - start  # the search proper: fine-tuning is every method's
        tuned = engine.finetune(config, engine.initial)  # from the float weights
    except KeyboardInterrupt:  # everything finished is already in the state file
        bar.end()
        raise SearchInterrupted(engine.best(), state_path) from None
    accuracy, _ = engine.runner.score(val)
    rows, average = quantize.report(tuned)
    float_config = {l.name: "float" for l in engine.layers}
    return Result(opts.method, to_rules(config), rows, average,
                  energy_nj(engine.layers, config), energy_nj(engine.layers, float_config),
                  engine.float_accuracy, searched.accuracy, accuracy, time.time() - start,
                  tuned, engine.points, details, searched, choosing)


# Option ranges (the CLI's click types say the same); an Adam step beyond lr 1 overflows.
RANGES = {"batch_size": (1, None), "finetune_epochs": (0, None), "search_epochs": (1, None),
          "trials": (1, None), "shortlist": (1, None), "seed": (0, 2 ** 31 - 1),
          "beam_width": (1, None), "drift_samples": (1, None),
          "energy_weight": (0, 1), "finetune_lr": (0, 1)}


def _check_options(opts: Options) -> None:
    """BadInputError for an unknown method or an option outside its range."""
    if opts.method not in METHODS:
        raise BadInputError(f"unknown search method {opts.method!r}: use "
                            + " or ".join(METHODS))
    for name, (low, high) in RANGES.items():
        value = getattr(opts, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < low \
                or (high is not None and value > high) or (name == "finetune_lr" and value == 0):
            span = f"{low} to {high}" if high is not None else f"{low} or more"
            raise BadInputError(f"search option {name} = {value!r} is out of range ({span}"
                                + (", above 0" if name == "finetune_lr" else "") + ")")


def check_data(train: Data, val: Data, input_shape: list[int] | None) -> None:
    """The data without the model: labels present, --train and --val samples shaped alike
    and as the model's input (a checkpoint's input_shape, when known)."""
    for name, data in (("--train", train), ("--val", val)):
        if data.y is None or len(data.y) == 0:
            raise BadInputError(f"{name}: the data need labels y (one integer class per sample "
                                "of x) to train and to measure accuracy")
    if train.x.shape[1:] != val.x.shape[1:]:
        raise BadInputError(f"--train samples are shaped {list(train.x.shape[1:])} but --val "
                            f"samples {list(val.x.shape[1:])}; both must be the model's input")
    sample_axes(input_shape, train.x, "--train")


def prepare(model: torch.nn.Module, train: Data, val: Data, opts: Options, *,
            input_shape: list[int] | None = None, ctx: Context | None = None,
            state_path: str | None = None, resume: bool = False, key: str = "",
            progress: bool = False) -> Search:
    """Everything before a method runs: the options, data and model checked, the search
    engine on a copy of the model, and its state (a resumed one checked as a whole)."""
    ctx = ctx or Context.single()
    _check_options(opts)
    if state_path is not None:
        check_paths([], [("the search state", state_path)])
    if (opts.max_bits is None) == (opts.max_drop is None):
        raise BadInputError("give exactly one budget: --max-bits B (average bits per weight) "
                            "or --max-drop POINTS (validation accuracy points below float)")
    check_data(train, val, input_shape)
    torch.manual_seed(opts.seed)
    model = strip_quantization(copy.deepcopy(model)).float()  # the caller's model is left alone
    quantizable(model)  # refuses a model with nothing to quantize before any work
    axis, classes = batch_axis(model, input_shape, train.x, "--train")  # val: same shape
    check_labels(train.y, classes, "--train's y")
    check_labels(val.y, classes, "--val's y")
    if opts.max_bits is not None:
        low = min(candidates(opts.allow_float), key=lambda c: c.bits)
        if not (opts.max_bits >= low.bits):
            raise BadInputError(f"--max-bits {opts.max_bits:g} cannot be met: the smallest "
                                f"average any configuration reaches is {low.bits:.2f} bits "
                                f"(every layer {low.label})")
    elif not opts.max_drop >= 0:
        raise BadInputError(f"--max-drop {opts.max_drop:g} must be 0 or more accuracy points")
    ctx.broadcast(model)
    key = key or default_key(model, train, val, opts)
    state = State(state_path, key, ctx, resume)
    bar = Bar(progress and ctx.main)
    engine = Search(model, axis, train, val, opts, ctx, state, bar)
    engine.check_state(METHODS[opts.method])  # the whole state, before any of it is used
    check_trains(engine.runner, train, engine.layers)
    return engine


def _unreachable(engine: Search) -> BadInputError:
    opts = engine.opts
    closest = min(engine.points, key=lambda p: 100 * (engine.float_accuracy - p.accuracy)) \
        if engine.points else None
    if opts.max_drop is not None and closest is not None:
        return BadInputError(
            f"no configuration kept validation accuracy within --max-drop {opts.max_drop:g} "
            f"points of float ({100 * engine.float_accuracy:.2f} %): the closest reached "
            f"{100 * closest.accuracy:.2f} % at {closest.bits:.2f} bits (before fine-tuning). "
            "Allow a larger drop, or --allow-float for the most sensitive layers")
    lowest = min((p.bits for p in engine.points), default=math.nan)
    return BadInputError(
        f"the {opts.method} search found no configuration within --max-bits "
        f"{opts.max_bits:g}; the fewest bits it reached were {lowest:.2f}. Give more lambda "
        "trials (--trials) or a larger budget")


def report_entry(result, opts) -> dict:
    """The search's entry in its --report JSON."""
    return {"points": [vars(p) for p in result.points], "max_bits": opts.max_bits,
            "max_drop": opts.max_drop, "float_accuracy": result.float_accuracy,
            "float_energy_nj": result.float_energy_nj,
            "chosen": vars(result.chosen) if result.chosen else None,
            "final": {"bits": result.average_bits, "energy_nj": result.energy_nj,
                      "accuracy": result.accuracy, "config": result.config},
            "seconds": round(result.seconds, 1),
            "search_seconds": round(result.search_seconds, 1)}


def table(result) -> str:
    """The per-layer table `snnc search` prints, with each method's per-layer figures."""
    from snnc.quant.quantize import format_report

    lines = [format_report(result.rows, result.average_bits)]
    extra = []
    for row in result.rows:
        d = result.details.get(row.name, {})
        if "solo_divergence" in d:
            extra.append(f"  {row.name}: alone {100 * d['solo_accuracy']:.2f} % "
                         f"(KL {d['solo_divergence']:.2g}), base {d['base']}")
        elif "probability" in d:
            extra.append(f"  {row.name}: probability {d['probability']:.2f}")
    if extra:
        lines.append(f"{result.method} per layer:")
        lines += extra
    return "\n".join(lines)


def interrupted(stop: SearchInterrupted, output: str, state_path: str) -> str:
    """After Ctrl-C or SIGTERM: the best configuration within the budget found so far
    written to `output` (if any), and the message that says so."""
    import json

    from snnc.files.outputs import write_atomic

    if stop.best is None:
        return (f"interrupted before any configuration within the budget was found; nothing "
                f"was written to {output}. The search state is in {state_path}: rerun with "
                "--resume to continue")
    write_atomic(output, (json.dumps(to_rules(stop.best.config), indent=2) + "\n").encode())
    return (f"interrupted; wrote the best configuration within the budget found so far to "
            f"{output} ({stop.best.bits:.2f} bits, validation accuracy "
            f"{100 * stop.best.accuracy:.2f} % before fine-tuning); the search state is in "
            f"{state_path}: rerun with --resume to continue")
