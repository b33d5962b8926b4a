"""The search engine every method shares: its options and results, the budget and the ranking
of configurations, evaluating a configuration on the validation data (a point of the search),
committing finished work to the state file, and quantization-aware fine-tuning of the result.

A method (sensitivity.py, gumbel.py) is a function `run(engine) -> (config, details, point)`
that explores configurations through `engine.score` / `engine.evaluate` and commits its own
progress in `engine.state.data`; api.py runs it and fine-tunes what it returns.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from snnc.errors import SnncError
from snnc.progress import Bar
from snnc.quant import quantize
from snnc.quant.distributed import Context
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
        self.points: list[Point] = [Point(**p) for p in state.data.get("points", [])]

    # -- budget
    def within(self, point: Point) -> bool:
        if self.opts.max_bits is not None:
            return point.bits <= self.opts.max_bits + 1e-9
        return 100 * (self.float_accuracy - point.accuracy) <= self.opts.max_drop + 1e-9

    def rank(self, point: Point) -> tuple:
        """Larger is better among configurations within the budget: under --max-bits the
        most accurate (then the fewest bits), under --max-drop the fewest bits (then the most
        accurate)."""
        if self.opts.max_bits is not None:
            return (point.accuracy, -point.bits)
        return (-point.bits, point.accuracy)

    def best(self) -> Point | None:
        ok = [p for p in self.points if self.within(p)]
        return max(ok, key=self.rank) if ok else None

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

    def finetune(self, config: dict[str, str], start: dict) -> torch.nn.Module:
        """Quantization-aware fine-tuning of `config` from the weights `start`, with scales
        chosen on the weights and refined on 256 training inputs (snnc.quantize)."""
        model = self.model
        model.load_state_dict(start)
        calibration = self.runner.inputs(self.train.x[:256])
        quantize.quantize(model, to_rules(config), calibration=calibration)
        epochs = self.opts.finetune_epochs
        steps = epochs * math.ceil(len(self.train.y) / self.opts.batch_size)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.opts.finetune_lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
        saved = self.state.data.get("finetune")
        first = 0
        if saved:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            first = saved["epoch"]
        self.progress.begin("fine-tune (QAT)", steps)
        self.progress.tick(first * math.ceil(len(self.train.y) / self.opts.batch_size))
        for epoch in range(first, epochs):
            torch.manual_seed(self.opts.seed + 10 ** 6 + epoch)  # dropout, if any, per epoch
            self.runner.train_epoch(self.train, trainable, optimizer, schedule,
                                    self.opts.seed + 10 ** 6 + epoch, tick=self.progress.tick)
            # copies: state_dict() tensors are the live ones, which the next epoch changes
            self.state.data["finetune"] = copy.deepcopy(
                {"epoch": epoch + 1, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})
            self.commit()
        self.progress.end()
        return model
