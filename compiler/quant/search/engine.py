"""The search engine every method shares: its options and results, the budget and the ranking
of configurations, evaluating a configuration on the validation data (a point of the search),
committing finished work to the state file, the schema a state of this search fits (checked
before a resumed search uses any of it: schema.py), and quantization-aware fine-tuning of the
result.

A method (sensitivity.py, gumbel.py, drift.py) is a function `run(engine) -> (config, details, point)`
that explores configurations through `engine.score` / `engine.evaluate` and commits its own
progress in `engine.state.data`; api.py runs it and fine-tunes what it returns.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import torch

from snnc.errors import BadInputError, SnncError
from snnc.progress import Bar
from snnc.quant import quantize
from snnc.quant.distributed import Context
from snnc.quant.search import schema as s
from snnc.quant.search.runner import Data, Runner, measure_ops
from snnc.quant.search.space import (Weights, average_bits, candidates, energy_nj, quantizable,
                                     to_rules)
from snnc.quant.search.state import State


@dataclass
class Options:
    method: str = "sensitivity"
    max_bits: float | None = None
    max_drop: float | None = None  # accuracy points on the validation data
    allow_float: bool = False
    seed: int = 0
    batch_size: int = 64
    finetune_epochs: int = 8
    finetune_lr: float = 5e-4
    search_epochs: int = 3  # gumbel: epochs per lambda trial
    trials: int = 6  # gumbel: lambda trials at most
    energy_weight: float = 0.25  # gumbel: energy's share of the hardware cost
    shortlist: int = 3  # sensitivity: whole-model evaluations per greedy step
    beam_width: int = 8  # drift: configurations the beam keeps (and evaluates, --max-bits)
    drift_samples: int = 32  # drift: validation samples the drifts are measured on

    def key(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Point:
    """One configuration the search evaluated on the validation data."""
    config: dict[str, str]  # layer -> choice label
    bits: float
    energy_nj: float
    accuracy: float  # validation accuracy, 0..1
    divergence: float = math.nan
    stage: str = ""


@dataclass
class Result:
    method: str
    config: dict  # the snnc quantize configuration: layer -> rule
    rows: list  # quant.LayerQuant of the final model
    average_bits: float
    energy_nj: float
    float_energy_nj: float
    float_accuracy: float  # validation
    searched_accuracy: float  # validation, before fine-tuning
    accuracy: float  # validation, after fine-tuning
    seconds: float
    model: torch.nn.Module | None = None  # the fine-tuned quantized model
    points: list[Point] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # per layer: the method's own figures
    chosen: Point | None = None  # the point chosen among `points`, before fine-tuning
    search_seconds: float = 0.0  # of `seconds`, choosing the configuration (the rest: QAT)


class SearchInterrupted(SnncError):
    """Ctrl-C: carries the best configuration within the budget found so far, if any."""

    def __init__(self, best: Point | None, state_path: str | None):
        self.best, self.state_path = best, state_path
        super().__init__("interrupted")


class Search:
    def __init__(self, model: torch.nn.Module, axis: int, train: Data, val: Data,
                 opts: Options, ctx: Context, state: State, progress: Bar):
        self.model, self.train, self.val, self.opts = model, train, val, opts
        self.ctx, self.state, self.progress = ctx, state, progress
        self.runner = Runner(model, axis, ctx, opts.batch_size)
        self.layers = quantizable(model)
        self.choices = candidates(opts.allow_float)
        self.labels = [c.label for c in self.choices]
        self.initial = copy.deepcopy(model.state_dict())
        self.weights = Weights(self.layers)
        measure_ops(self.runner, self.layers, val.x[:64])
        self.reference = self.runner.logits(val.x)
        self.float_accuracy = self.runner.accuracy(self.reference, val)
        self.points: list[Point] = []  # a resumed state's, once check_state() passed
        self._finetune_specs: dict = {}

    def check_state(self, method) -> None:
        """Check the whole state (a resumed one: anyone can write a file with a matching
        key) against this search's schema and `method`'s part of it before any of it is
        used; then take its points. BadInputError names the first field that does not fit."""
        s.check(self.state.data, self.state_schema(method.schema(self)), self.state.path)
        self.points = [Point(**p) for p in self.state.data.get("points", [])]

    # -- budget
    def within(self, point: Point) -> bool:
        if self.opts.max_bits is not None:
            return point.bits <= self.opts.max_bits + 1e-9
        return 100 * (self.float_accuracy - point.accuracy) <= self.opts.max_drop + 1e-9

    def rank(self, point: Point) -> tuple:
        """Larger is better among configurations within the budget: under --max-bits the
        most accurate (then the fewest bits), under --max-drop the fewest bits (then the most
        accurate); then the lower energy estimate. Accuracy is compared exactly, as the
        number of validation samples classified right; average bits are exact too (whole
        bits x parameters, summed in one order, over one total)."""
        correct = round(point.accuracy * len(self.val.y))
        if self.opts.max_bits is not None:
            return (correct, -point.bits, -point.energy_nj)
        return (-point.bits, correct, -point.energy_nj)

    def best(self, points: list[Point] | None = None) -> Point | None:
        """The search's choice: the point (of `points`, by default every point evaluated)
        within the budget that rank() puts first; among equals the first evaluated."""
        ok = [p for p in (self.points if points is None else points) if self.within(p)]
        return max(ok, key=self.rank) if ok else None  # max keeps the first of equals

    def score(self, config: dict[str, str]) -> tuple[float, float]:
        """The configuration's validation accuracy and divergence, on quantized copies of
        the weights (no fine-tuning); layers not in `config` stay float."""
        self.weights.apply(config)
        try:
            return self.runner.score(self.val, self.reference)
        finally:
            self.weights.restore()

    def evaluate(self, config: dict[str, str], stage: str) -> Point:
        """score(config), recorded as a point of the search."""
        accuracy, kl = self.score(config)
        point = Point(dict(config), average_bits(self.layers, config),
                      energy_nj(self.layers, config), accuracy, kl, stage)
        self.points.append(point)
        return point

    def commit(self) -> None:
        """Record the finished unit of work, with the points evaluated so far, in the state
        file. Ctrl-C between commits loses only the unfinished unit: a resumed search redoes
        it (and its points) exactly."""
        self.state.data["points"] = [vars(p) for p in self.points]
        self.state.save()

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train.y) / self.opts.batch_size)

    def start_finetune(self, model: torch.nn.Module, config: dict[str, str], start: dict):
        """`model` with the weights `start`, quantized as `config` with scales chosen on the
        weights and refined on 256 training inputs (snnc.quantize); its trainable
        parameters, their optimizer and its schedule: where fine-tuning starts."""
        model.load_state_dict(start)
        calibration = self.runner.inputs(self.train.x[:256])
        quantize.quantize(model, to_rules(config), calibration=calibration)
        steps = self.opts.finetune_epochs * self.steps_per_epoch()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.opts.finetune_lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
        return trainable, optimizer, schedule

    def finetune(self, config: dict[str, str], start: dict) -> torch.nn.Module:
        """Quantization-aware fine-tuning of `config` from the weights `start`."""
        model = self.model
        trainable, optimizer, schedule = self.start_finetune(model, config, start)
        epochs = self.opts.finetune_epochs
        steps = epochs * self.steps_per_epoch()
        saved = self.state.data.get("finetune")
        first = 0
        if saved:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            first = saved["epoch"]
        self.progress.begin("fine-tune (QAT)", steps)
        self.progress.tick(first * self.steps_per_epoch())
        for epoch in range(first, epochs):
            torch.manual_seed(self.opts.seed + 10 ** 6 + epoch)  # dropout, if any, per epoch
            self.runner.train_epoch(self.train, trainable, optimizer, schedule,
                                    self.opts.seed + 10 ** 6 + epoch, tick=self.progress.tick)
            _check_finite(model, epoch + 1, self.opts.finetune_lr)
            # copies: state_dict() tensors are the live ones, which the next epoch changes
            self.state.data["finetune"] = copy.deepcopy(
                {"epoch": epoch + 1, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})
            self.commit()
        self.progress.end()
        return model

    # -- the state's schema (schema.py): what a state of this search may hold

    def accuracy_spec(self) -> s.Spec:
        """A validation accuracy: a share of the validation samples."""
        n, share = len(self.val.y), s.real(0.0, 1.0)

        def spec(value, where):
            share(value, where)
            if abs(value * n - round(value * n)) > 1e-6:
                raise s.Damaged(where, f"is {value!r}, not a share of the {n} validation "
                                       "samples")
        return spec

    def config_spec(self) -> s.Spec:
        return s.mapping([l.name for l in self.layers], s.one_of(self.labels, "a candidate"),
                         "a conv/linear layer")

    def point_spec(self, stages: str) -> s.Spec:
        """A Point of the search: its average bits and energy are what its configuration
        gives (the budget and the figure use them)."""
        def figures(point, where):
            bits = average_bits(self.layers, point["config"])
            if abs(point["bits"] - bits) > 1e-9:
                raise s.Damaged(s.at(where, "bits"), f"is {point['bits']!r}, but its "
                                                     f"configuration averages {bits!r} bits")
            energy = energy_nj(self.layers, point["config"])
            if not math.isclose(point["energy_nj"], energy, rel_tol=s.RTOL, abs_tol=1e-9):
                raise s.Damaged(s.at(where, "energy_nj"), f"is {point['energy_nj']!r}, but "
                                f"its configuration's estimate is {energy!r} nJ")
        return s.record({"config": self.config_spec(), "bits": s.real(0.0),
                         "energy_nj": s.real(0.0), "accuracy": self.accuracy_spec(),
                         "divergence": s.real(-KL_ROUNDING), "stage": s.text(stages)},
                        rules=[figures])

    def state_schema(self, method: s.MethodState) -> s.Spec:
        """The whole state: snnc's header, the points, the method's fields, the result (the
        method's configuration, within the budget) and the fine-tuning state."""
        point = self.point_spec(method.stages)

        def within(result, where):
            if result["point"]["config"] != result["config"]:
                raise s.Damaged(s.at(where, "point"), "is not the result's configuration")
            if not self.within(Point(**result["point"])):
                budget = (f"--max-bits {self.opts.max_bits:g}" if self.opts.max_bits is not None
                          else f"--max-drop {self.opts.max_drop:g}")
                raise s.Damaged(s.at(where, "point"), f"is outside the budget {budget}")

        def measured(data, where):
            result = data.get("result")
            if result is None:
                return
            if result["point"] not in data.get("points", []):
                raise s.Damaged("result.point", "is not one of the points the search measured")
            best = self.best([Point(**p) for p in data["points"]])
            if result["point"] != vars(best):
                raise s.Damaged("result.point", "is not the measured point within the budget "
                                                "that ranks first (docs/search.md)")

        fields = {"format": s.const("snnc-search-state"), "version": s.const(1),
                  "key": s.const(self.state.key), "points": s.items(point, *method.points),
                  **method.fields,
                  "result": s.record({"config": self.config_spec(), "details": method.details,
                                      "point": point}, rules=[within]),
                  "finetune": lambda value, where: None}  # the last rule: it needs the result
        return s.record(fields, optional=set(fields) - {"format", "version", "key"},
                        rules=[measured, *method.rules, self._finetune_rule])

    def _finetune_rule(self, data: dict, where: str) -> None:
        saved = data.get("finetune")
        if saved is None:
            return
        if "result" not in data:
            raise s.Damaged("finetune", "is there without the result it fine-tunes")
        config = data["result"]["config"]
        key = tuple(sorted(config.items()))
        if key not in self._finetune_specs:  # built once per configuration
            self._finetune_specs = {key: self._finetune_spec(config)}
        self._finetune_specs[key](saved, "finetune")

    def _finetune_spec(self, config: dict[str, str]) -> s.Spec:
        """The fine-tuning state of `config` against the model, optimizer and schedule that
        fine-tuning builds: the same tensors (names, shapes, dtypes; finite; the buffers,
        which fine-tuning does not train, equal to the search's own), the optimizer's
        per-parameter state (second moments >= 0, step counts within the epochs done) and the
        schedule and learning rate where `epoch` finished epochs leave them."""
        model = copy.deepcopy(self.model)
        trainable, optimizer, schedule = self.start_finetune(model, config, self.initial)
        buffers = {name for name, _ in model.named_buffers()}
        weights = s.record({name: s.same_as(t) if name in buffers else s.tensor(t)
                            for name, t in model.state_dict().items()})
        for p in trainable:  # one step: torch's own per-parameter state, for its structure
            p.grad = torch.zeros_like(p)
        optimizer.step()
        per = optimizer.state_dict()["state"]
        moments = s.record({i: s.record({k: s.tensor(t, 0.0 if k == "exp_avg_sq" else None)
                                         for k, t in entry.items()})
                            for i, entry in per.items()}, optional=per)
        after = {}  # epoch -> (schedule, param groups) once it is done
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for epoch in range(1, self.opts.finetune_epochs + 1):
                for _ in range(self.steps_per_epoch()):
                    schedule.step()
                after[epoch] = (s.same_as(copy.deepcopy(schedule.state_dict())),
                                s.same_as(copy.deepcopy(optimizer.state_dict()["param_groups"])))

        def progress(ft, where):
            done = ft["epoch"] * self.steps_per_epoch()
            for i, entry in ft["optimizer"]["state"].items():
                step = entry.get("step")
                count = None if step is None else float(step)
                if count is not None and not (count.is_integer() and 1 <= count <= done):
                    raise s.Damaged(f"{where}.optimizer.state[{i}].step",
                                    f"is {count!r}, not a count of the {done} steps of "
                                    f"{ft['epoch']} epoch(s)")
            schedule_spec, groups_spec = after[ft["epoch"]]
            schedule_spec(ft["schedule"], f"{where}.schedule")
            groups_spec(ft["optimizer"]["param_groups"], f"{where}.optimizer.param_groups")

        anything = lambda value, where: None  # noqa: E731  (checked by `progress`)
        return s.record({"epoch": s.whole(1, self.opts.finetune_epochs), "model": weights,
                         "optimizer": s.record({"state": moments, "param_groups": anything}),
                         "schedule": anything}, rules=[progress])


KL_ROUNDING = 1e-9  # a mean divergence of zero may round to just below it in float64


def _check_finite(model: torch.nn.Module, epoch: int, lr: float) -> None:
    """Fine-tuning that diverged (NaN or infinite weights) is an error, not a result."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            layer = name.replace(".parametrizations.weight.original", ".weight")
            raise BadInputError(f"fine-tuning diverged: after epoch {epoch}, {layer} holds NaN "
                                f"or infinity; nothing was written. Lower --lr (now {lr:g})")
