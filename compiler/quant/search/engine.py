"""snnc search: choose each layer's quantization (uniform or power-of-two, 2-8 bits) under a
budget, by one of the two methods of ../shared/design/seeds.md (docs/search.md):

- "sensitivity" (QSViT): every layer alone at every candidate, the rest float, on the
  validation data (accuracy and the divergence of the logits from the float model's); base
  settings from that sweep; guided greedy steps on the whole configuration (the step that
  costs the least divergence per bit saved, or, under the budget, gains the most per bit
  spent) until the budget is met; then quantization-aware fine-tuning.
- "gumbel" (SpikeHQ): per-layer logits over the candidates, a Gumbel-softmax mixture of the
  candidates' quantized weights with an annealed temperature, trained (straight-through
  quantizers) on the task loss + lambda x hardware cost (expected bits and the estimated
  energy, `energy_pj`); lambda bisected until the argmax configuration lands on the bit
  budget; then quantization-aware fine-tuning of the argmax configuration.

Data-parallel under torchrun (`snnc.quant.distributed`): every process reads the same files and
computes its share of each batch (fixed 16-sample chunks) and of the validation samples;
the parts are gathered and added in one fixed order, so one process and N give the same
result bit for bit (Runner.train_epoch).

Every unit of work (a sweep layer, a greedy step, a lambda trial, a fine-tuning epoch) is
recorded in a state file; a search resumes from it, and Ctrl-C writes the best configuration
within the budget found so far.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from snnc.errors import BadInputError, SnncError, first_line
from snnc.progress import Bar
from snnc.quant import quantize as quant
from snnc.quant.distributed import Context

# ------------------------------------------------------------------------------------------
# Candidates and the hardware cost


@dataclass(frozen=True)
class Choice:
    scheme: str  # "uniform", "pot" or "float"
    bits: int  # 32 for float

    @property
    def label(self) -> str:
        return "float" if self.scheme == "float" else f"{self.scheme}{self.bits}"

    def rule(self):
        return "float" if self.scheme == "float" else {"scheme": self.scheme, "bits": self.bits}


def candidates(allow_float: bool = False) -> list[Choice]:
    """Uniform 2..8 and PoT 2..5 bits (docs/quantization.md), and float if allowed."""
    out = [Choice(s, b) for s, bits in quant.SCHEMES.items() for b in bits]
    return out + [Choice("float", 32)] if allow_float else out


def choice_of(label: str) -> Choice:
    if label == "float":
        return Choice("float", 32)
    scheme = "uniform" if label.startswith("uniform") else "pot"
    return Choice(scheme, int(label[len(scheme):]))


# Energy per synaptic operation, 45 nm, from Horowitz, "Computing's energy problem (and what
# we can do about it)", ISSCC 2014: integer add 0.03 pJ (8 bits) to 0.1 pJ (32 bits), about
# linear in the width; integer multiply 0.2 pJ (8 bits) to 3.1 pJ (32 bits), about quadratic;
# float32 add 0.9 pJ and multiply 3.7 pJ (the report's AC and MAC: snnc.check.report).
ADD_PJ_PER_BIT = 0.1 / 32
MUL_PJ_PER_BIT2 = 3.1 / 32 ** 2
INPUT_BITS = 8  # a real-valued input (the image) as 8-bit activations for the integer MAC


def energy_pj(choice: Choice, spiking: bool) -> float:
    """Energy of one synaptic operation of a layer with `choice` weights. A layer reading
    spikes (or spike counts) accumulates (AC): one add of the weight, as wide as its code
    (a PoT weight's code is shifted into place first: a shift-add, counted as two adds). A
    layer reading real values multiply-accumulates (MAC): a k x 8-bit multiply and an add;
    for a PoT weight the multiply is a shift (an add's cost): a shift-add, far below a MAC."""
    if choice.scheme == "float":
        return 0.9 if spiking else 4.6
    add = ADD_PJ_PER_BIT * choice.bits
    if choice.scheme == "pot":
        return 2 * add
    return add if spiking else MUL_PJ_PER_BIT2 * choice.bits * INPUT_BITS + add


# ------------------------------------------------------------------------------------------
# The problem: a model, its layers, and the data


@dataclass
class Layer:
    name: str
    module: torch.nn.Module
    parameters: int
    ops: float = 0.0  # synaptic operations per sample: SOPs (spike input) or MACs
    spiking: bool = True  # input is spikes or spike counts (nonnegative integers)


@dataclass
class Data:
    x: np.ndarray  # samples first, float32
    y: np.ndarray  # int64 labels


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


def quantizable(model: torch.nn.Module) -> list[Layer]:
    layers = [Layer(n, m, m.weight.numel()) for n, m in model.named_modules()
              if isinstance(m, quant.QUANTIZABLE)]
    if not layers:
        raise BadInputError("the model has no conv or linear layer with weights: there is "
                            "nothing to quantize")
    return layers


def average_bits(layers: list[Layer], config: dict[str, str]) -> float:
    total = sum(l.parameters for l in layers)
    return sum(choice_of(config[l.name]).bits * l.parameters for l in layers) / total


def energy_nj(layers: list[Layer], config: dict[str, str]) -> float:
    return sum(l.ops * energy_pj(choice_of(config[l.name]), l.spiking) for l in layers) / 1e3


def to_rules(config: dict[str, str]) -> dict:
    return {name: choice_of(label).rule() for name, label in config.items()}


# ------------------------------------------------------------------------------------------
# Running the model


def strip_quantization(model: torch.nn.Module) -> torch.nn.Module:
    """A quantized model back to its float (trainable) weights."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return model


def run(model: torch.nn.Module, x: np.ndarray, axis: int) -> torch.Tensor:
    """The model on samples-first `x`, its batch moved to `axis`, neuron memories reset
    before and after."""
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
    out = model(torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, 0, axis))))
    functional.reset_net(model)
    return out


class Runner:
    """Evaluation and data-parallel training of one model on samples-first data."""

    def __init__(self, model: torch.nn.Module, axis: int, ctx: Context, batch_size: int):
        self.model, self.axis, self.ctx, self.batch_size = model, axis, ctx, batch_size

    def inputs(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, 0, self.axis)))

    def forward(self, x: np.ndarray) -> torch.Tensor:
        return run(self.model, x, self.axis)

    def logits(self, x: np.ndarray) -> torch.Tensor:
        """This process's share of the data (every world-th sample), eval mode, float64."""
        self.model.eval()
        mine = x[self.ctx.rank::self.ctx.world]
        outs = []
        with torch.no_grad():
            for i in range(0, len(mine), 128):
                outs.append(self.forward(mine[i:i + 128]).double())
        return torch.cat(outs) if outs else torch.zeros(0, 0, dtype=torch.float64)

    def accuracy(self, logits: torch.Tensor, data: Data) -> float:
        """Accuracy over all processes of this process's `logits` (from `logits`)."""
        y = torch.from_numpy(data.y[self.ctx.rank::self.ctx.world])
        correct = float((logits.argmax(1) == y).sum()) if len(y) else 0.0
        return self.ctx.sum([correct])[0] / len(data.y)

    def score(self, data: Data, reference: torch.Tensor | None = None) -> tuple[float, float]:
        """(accuracy, mean KL divergence from `reference` logits) over all processes."""
        logits = self.logits(data.x)
        kl = torch.zeros(len(logits), dtype=torch.float64)
        if reference is not None and len(logits):
            p = torch.log_softmax(reference, 1)
            q = torch.log_softmax(logits, 1)
            kl = (p.exp() * (p - q)).sum(1)
        # math.fsum of every sample's divergence: exactly rounded, so the same whichever
        # process computed which sample (a sample's logits do not depend on its batch)
        return (self.accuracy(logits, data),
                math.fsum(self.ctx.gather(kl).tolist()) / len(data.y))

    def train_epoch(self, data: Data, params: list[torch.nn.Parameter], optimizer, schedule,
                    seed: int, extra: Callable[[], torch.Tensor] | None = None,
                    before_step: Callable[[int], None] | None = None, tick=None) -> float:
        """One epoch over `data` in global batches (the same order in every process, from
        `seed`). BatchNorm keeps its statistics (eval mode): the quantized model folds them.

        A batch is cut into chunks of CHUNK samples whatever the number of processes; the
        chunks go round-robin to the processes, each chunk's gradient is computed alone
        (backward on one thread: a weight gradient's reduction order depends on the thread
        count), and every process adds all chunks' gradients in chunk order, then the
        hardware cost's. So the update is the same bits in 1 process as in N, and so is the
        search's outcome (a sample's forward pass does not depend on its batch)."""
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(data.y), generator=generator).numpy()
        train_mode(self.model)
        params = [p for p in params if p.requires_grad]
        total = 0.0
        for step, start in enumerate(range(0, len(order), self.batch_size)):
            batch = order[start:start + self.batch_size]
            chunks = [batch[i:i + CHUNK] for i in range(0, len(batch), CHUNK)]
            if before_step is not None:
                before_step(step)
            mine, losses = [], []
            for chunk in chunks[self.ctx.rank::self.ctx.world]:
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(
                    self.forward(data.x[chunk]), torch.from_numpy(data.y[chunk]),
                    reduction="sum") / len(batch)
                with _threads(1):
                    loss.backward()
                mine.append(_flat_grads(params))
                losses.append(float(loss.detach()))
            grads = self.ctx.gather_rows(mine, len(chunks), _numel(params) + len(params))
            gradient = grads[0].clone()
            for row in grads[1:]:  # in chunk order
                gradient += row
            optimizer.zero_grad(set_to_none=True)
            if extra is not None:  # the same on every process, added once
                with _threads(1):
                    extra().backward()
                gradient += _flat_grads(params)
            _set_grads(params, gradient)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            total += math.fsum(self.ctx.gather(torch.tensor(losses, dtype=torch.float64))
                               .tolist()) * len(batch)
            if tick is not None:
                tick()
        self.model.eval()
        return total / len(order)


CHUNK = 16  # samples per gradient computation: fixed, so N processes add the same terms as 1


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(min(n, old))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _numel(params) -> int:
    return sum(p.numel() for p in params)


def _flat_grads(params) -> torch.Tensor:
    """Every gradient in one row, then one flag per parameter: has it a gradient at all?"""
    return torch.cat([torch.zeros(p.numel()) if p.grad is None else
                      p.grad.detach().reshape(-1).float() for p in params]
                     + [torch.tensor([0.0 if p.grad is None else 1.0 for p in params])])


def _set_grads(params, flat: torch.Tensor) -> None:
    """Gradients from a summed row; a parameter no chunk reached keeps none (the optimizer
    leaves it alone, weight decay included)."""
    offset, flags = 0, flat[-len(params):]
    for p, flag in zip(params, flags.tolist()):
        p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype).clone() if flag else None
        offset += p.numel()


def train_mode(model: torch.nn.Module) -> None:
    """Training mode (SpikingJelly's neurons pass surrogate gradients only in it) with
    BatchNorm statistics frozen: the quantized model folds them into its thresholds, and a
    sample's output must not depend on the batch (or the process) it is in."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def check_trains(runner: Runner, data: Data, layers: list[Layer]) -> None:
    """A model whose loss sends no gradient to its weights cannot be fine-tuned: say so."""
    train_mode(runner.model)
    x = data.x[:2]
    try:
        out = runner.forward(x)
        loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(data.y[:2]))
    except SnncError:
        raise
    except Exception as error:
        raise BadInputError(f"the model does not run in training mode on the data "
                            f"({type(error).__name__}: {first_line(error)})") from None
    if not loss.requires_grad:
        raise BadInputError("the model cannot be trained: its output does not depend on any "
                            "trainable weight (are its parameters frozen?)")
    frozen = [l.name for l in layers if not l.module.weight.requires_grad]
    if frozen:
        raise BadInputError(f"the model cannot be fine-tuned: the weights of {frozen[:4]} are "
                            "frozen (requires_grad False)")
    params = [l.module.weight for l in layers]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    runner.model.zero_grad(set_to_none=True)
    runner.model.eval()
    cut = [l.name for l, g in zip(layers, grads) if g is None]
    if cut:
        raise BadInputError(f"the model cannot be trained: no gradient reaches the weights of "
                            f"{len(cut)} of its {len(layers)} conv/linear layers ({cut[:4]}); "
                            "its spiking neurons need a surrogate gradient, as SpikingJelly's "
                            "neurons have in training mode")


def batch_axis(model: torch.nn.Module, input_shape: list[int] | None, x: np.ndarray,
               where: str) -> tuple[int, int]:
    """(the model input's batch axis, the number of classes): the axis where inserting the
    samples-first data's batch gives a shape the model runs on, with one output row of
    logits per sample."""
    sample = list(x.shape[1:])
    axes = [a for a in range(len(sample) + 1)
            if input_shape is None or input_shape[:a] + input_shape[a + 1:] == sample]
    if not axes:
        raise BadInputError(f"{where}: x has samples of shape {sample}, but the model takes "
                            f"{input_shape} (its checkpoint's input_shape); x must hold samples "
                            "first, each shaped as the model's input without its batch axis")
    errors = []
    for axis in axes:
        try:
            with torch.no_grad():
                model.eval()
                out = run(model, x[:3], axis)
            if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == len(x[:3]):
                return axis, int(out.shape[1])
            errors.append(f"batch at axis {axis}: output shape "
                          f"{list(out.shape) if isinstance(out, torch.Tensor) else type(out)}")
        except Exception as error:  # the model refuses the shape: try the next axis
            errors.append(f"batch at axis {axis}: {type(error).__name__}: {first_line(error)}")
    raise BadInputError(f"{where}: the model does not run on x's samples {sample} as a batch "
                        f"with one row of logits [n, classes] per sample ("
                        + "; ".join(errors[:3]) + ")")


def measure_ops(runner: Runner, layers: list[Layer], x: np.ndarray) -> None:
    """Per layer: synaptic operations per sample (MACs x mean input for spike inputs, all MACs
    for real inputs), from the float model on `x` (snnc.check.report's SOP model)."""
    seen: dict[str, list] = {l.name: [] for l in layers}
    hooks = []
    for l in layers:
        def hook(module, args, output, name=l.name):
            inp = args[0].detach()
            per_out = module.weight[0].numel()  # in_channels / groups x kernel
            spiking = bool(((inp >= 0) & (inp == inp.round())).all())
            seen[name].append((output.numel() * per_out, float(inp.float().mean()), spiking))
        hooks.append(l.module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            runner.model.eval()
            runner.forward(x)
    finally:
        for h in hooks:
            h.remove()
    for l in layers:
        macs = sum(m for m, _, _ in seen[l.name]) / len(x)
        rate = float(np.mean([r for _, r, _ in seen[l.name]])) if seen[l.name] else 0.0
        l.spiking = all(s for _, _, s in seen[l.name])
        l.ops = macs * rate if l.spiking else macs


# ------------------------------------------------------------------------------------------
# Quantized weights


class Weights:
    """Each layer's float weights and, per candidate, its quantized weights (MSE scales)."""

    def __init__(self, layers: list[Layer]):
        self.layers = {l.name: l for l in layers}
        self.original = {l.name: l.module.weight.detach().clone() for l in layers}
        self.cache: dict[tuple[str, str], torch.Tensor] = {}

    def quantized(self, name: str, label: str) -> torch.Tensor:
        if label == "float":
            return self.original[name]
        if (name, label) not in self.cache:
            c = choice_of(label)
            w = self.original[name]
            self.cache[name, label] = quant.fake_quant(
                w, quant.mse_scale(w, c.scheme, c.bits), c.scheme, c.bits)
        return self.cache[name, label]

    def apply(self, config: dict[str, str]) -> None:
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.module.weight.copy_(self.quantized(name, config.get(name, "float")))

    def restore(self) -> None:
        self.apply({})


# ------------------------------------------------------------------------------------------
# State, progress


class State:
    """The search's record: written atomically after every unit of work, by process 0."""

    def __init__(self, path: str | None, key: str, ctx: Context, resume: bool):
        self.path, self.key, self.ctx = path, key, ctx
        self.data: dict = {"format": "snnc-search-state", "version": 1, "key": key}
        if resume:
            self.data = load_state(path, key)

    def save(self) -> None:
        """Process 0 writes the state; every process learns whether that failed (a full disk
        on process 0 must stop all of them, not leave the others waiting in a collective)."""
        failed: Exception | None = None
        if self.path is not None and self.ctx.main:
            from snnc.files.paths import write_atomic

            try:
                buffer = io.BytesIO()
                torch.save(self.data, buffer)
                write_atomic(self.path, buffer.getvalue())
            except (SnncError, OSError) as error:
                failed = error
        if self.ctx.sum([1.0 if failed else 0.0])[0]:
            raise failed if failed else BadInputError(
                "process 0 could not write the search state; see its error")


def load_state(path: str | None, key: str) -> dict:
    from snnc.files import loader

    if path is None or not os.path.isfile(path):
        raise BadInputError(f"--resume: there is no search state {path} to resume from; run "
                            "the search without --resume first")
    try:
        data = loader._torch_load(path, "torch", trust_pickle=False)
    except SnncError as error:
        raise BadInputError(f"--resume: {path} is not a search state snnc wrote ({error})") \
            from None
    if not (isinstance(data, dict) and data.get("format") == "snnc-search-state"):
        raise BadInputError(f"--resume: {path} is not a search state snnc wrote")
    if data.get("key") != key:
        raise BadInputError(f"--resume: {path} is the state of another search (another model, "
                            "data, method or options); rerun with the same arguments, or "
                            "without --resume to start over")
    return data


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype} {a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------
# The search


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

    # -- sensitivity (QSViT)
    def sensitivity(self) -> tuple[dict[str, str], dict, Point]:
        sweep: dict = self.state.data.setdefault("sweep", {})
        self.progress.begin("sensitivity sweep", len(self.layers) * len(self.labels))
        self.progress.tick(len(sweep) * len(self.labels))
        for layer in self.layers:
            if layer.name in sweep:
                continue
            row = {}
            for label in self.labels:
                row[label] = list(self.score({layer.name: label}))
                self.progress.tick(note=layer.name)
            sweep[layer.name] = row
            self.commit()
        # Base settings: per layer the fewest bits that alone lose no validation sample.
        base = {}
        for layer in self.layers:
            row = sweep[layer.name]
            lossless = [l for l in self.labels if row[l][0] >= self.float_accuracy - 1e-12]
            pool = lossless or self.labels
            base[layer.name] = min(pool, key=lambda l: (choice_of(l).bits, row[l][1])
                                   if lossless else (row[l][1], choice_of(l).bits))
        trail: list = self.state.data.setdefault("trail", [])
        if not trail:
            point = self.evaluate(base, "base")
            trail.append(vars(point))
            self.commit()
        current = Point(**trail[-1])
        self.progress.begin("guided greedy", len(self.layers) * 4)
        self.progress.tick(len(trail) - 1)
        bit_mode = self.opts.max_bits is not None
        phase = self.state.data.get("phase") or (
            "lower" if bit_mode or self.within(current) else "raise")
        while phase != "done":
            move = self._greedy_step(current, sweep, phase)
            if move is None:
                if bit_mode:
                    phase = "raise" if phase == "lower" else "done"
                else:
                    phase = "lower" if phase == "raise" and self.within(current) else "done"
            else:
                current = move
                trail.append(vars(current))
                self.progress.tick(note=f"{current.bits:.2f} bits, "
                                        f"val {100 * current.accuracy:.1f} %")
            self.state.data["phase"] = phase
            self.commit()
        details = {layer.name: {"base": base[layer.name],
                                "solo_accuracy": sweep[layer.name][current.config[layer.name]][0],
                                "solo_divergence": sweep[layer.name][current.config[layer.name]][1]}
                   for layer in self.layers}
        return current.config, details, current

    def _greedy_step(self, current: Point, sweep: dict, phase: str) -> Point | None:
        """One step of the guided greedy search, or None when `phase` has no step left.

        "lower" (while over the bit budget, or while within the accuracy budget): the move
        to fewer bits that adds the least divergence per bit saved. "raise" (while the bit
        budget has room, or outside the accuracy budget): the move to more bits that removes
        the most divergence per bit spent. The sweep's solo divergences shortlist the moves;
        the shortlist is evaluated on the whole model."""
        bit_mode, lower = self.opts.max_bits is not None, phase == "lower"
        if self.within(current) and (lower if bit_mode else not lower):
            return None
        total = sum(l.parameters for l in self.layers)
        moves = []
        for layer in self.layers:
            now = current.config[layer.name]
            row = sweep[layer.name]
            for label in self.labels:
                delta = choice_of(label).bits - choice_of(now).bits
                if delta == 0 or (delta < 0) != lower:
                    continue
                if bit_mode and not lower and \
                        current.bits + delta * layer.parameters / total > self.opts.max_bits + 1e-9:
                    continue
                per_bit = (row[label][1] - row[now][1]) / (abs(delta) * layer.parameters)
                moves.append((per_bit, layer.name, label))
        moves.sort()
        best, best_score, fitting = None, math.inf, 0
        # the best `shortlist` moves; lowering under --max-drop goes further down the list
        # (up to 4x) for moves that keep the accuracy budget
        for _, name, label in moves[:self.opts.shortlist * (4 if lower and not bit_mode else 1)]:
            if fitting == self.opts.shortlist:
                break
            point = self.evaluate(dict(current.config, **{name: label}), "greedy")
            if not bit_mode and lower and not self.within(point):
                continue
            fitting += 1
            # divergence added per bit saved (lower), or removed per bit spent (raise: < 0)
            score = (point.divergence - current.divergence) / (abs(point.bits - current.bits)
                                                                * total)
            if score < best_score:
                best, best_score = point, score
        if best is None or (bit_mode and not lower and best_score >= 0):
            return None
        return best

    # -- Gumbel-softmax (SpikeHQ)
    def gumbel(self) -> tuple[dict[str, str] | None, dict, Point | None]:
        trials: list = self.state.data.setdefault("trials", [])
        while len(trials) < self.opts.trials:
            lam = self._next_lambda(trials)
            if lam is None:
                break
            trials.append(self._trial(lam, len(trials)))
            self.commit()
        ok = [t for t in trials if self.within(Point(**t["candidate"]))]
        if not ok:
            return None, {}, None
        chosen = max(ok, key=lambda t: self.rank(Point(**t["candidate"])))
        self.state.data["chosen_trial"] = trials.index(chosen)
        details = {name: {"probability": chosen["probabilities"][name],
                          "lambda": chosen["lambda"]} for name in chosen["candidate"]["config"]}
        return chosen["candidate"]["config"], details, Point(**chosen["candidate"])

    def _repair(self, config: dict[str, str], logp: torch.Tensor) -> dict[str, str]:
        """An argmax configuration over the bit budget, brought within it: repeatedly the
        move to fewer bits that costs the least log-probability (under the trial's logits)
        per bit saved."""
        config = dict(config)
        index = {label: i for i, label in enumerate(self.labels)}
        while average_bits(self.layers, config) > self.opts.max_bits + 1e-9:
            moves = []
            for i, layer in enumerate(self.layers):
                now = config[layer.name]
                for label in self.labels:
                    saved = choice_of(now).bits - choice_of(label).bits
                    if saved > 0:
                        cost = float(logp[i, index[now]] - logp[i, index[label]])
                        moves.append((cost / (saved * layer.parameters), layer.name, label))
            _, name, label = min(moves)
            config[name] = label
        return config

    def _next_lambda(self, trials: list) -> float | None:
        """Geometric bisection of lambda: more weight on the hardware cost while the argmax
        configuration is over the bit budget (or, with --max-drop, while it is within the
        accuracy budget), less otherwise; stop once the bracket is narrow or the argmax sits
        just under the bit budget."""
        if not trials:
            return 1.0
        # "up": trials after which lambda must grow
        bit_mode = self.opts.max_bits is not None
        up = [t["lambda"] for t in trials if self.within(Point(**t["point"])) != bit_mode]
        down = [t["lambda"] for t in trials if self.within(Point(**t["point"])) == bit_mode]
        if not down:
            return max(up) * 4
        if not up:
            if bit_mode and any(Point(**t["point"]).bits >= self.opts.max_bits - 0.1
                                for t in trials):
                return None
            return min(down) / 4
        low, high = max(up), min(down)
        if high <= low or high / low < 1.5:
            return None
        if bit_mode and any(Point(**t["point"]).bits >= self.opts.max_bits - 0.05
                            and self.within(Point(**t["point"])) for t in trials):
            return None
        return math.sqrt(low * high)

    def _trial(self, lam: float, index: int) -> dict:
        from torch.nn.utils import parametrize

        self.model.load_state_dict(self.initial)
        mixer = Mixer(self.layers, self.choices, self.opts)
        for i, layer in enumerate(self.layers):
            parametrize.register_parametrization(layer.module, "weight", MixedWeight(mixer, i),
                                                 unsafe=True)
        torch.manual_seed(self.opts.seed * 7919 + index)  # dropout, if any, per trial
        weights = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW([{"params": weights, "lr": self.opts.finetune_lr},
                                       {"params": [mixer.logits], "lr": 0.1,
                                        "weight_decay": 0.0}])
        steps_per_epoch = math.ceil(len(self.train.y) / self.opts.batch_size)
        total = self.opts.search_epochs * steps_per_epoch
        generator = torch.Generator().manual_seed(self.opts.seed * 7919 + index)
        self.progress.begin(f"gumbel trial {index + 1} (lambda {lam:.3g})", total)
        done = [0]

        def before(step: int) -> None:
            mixer.sample(generator, 2.0 * (0.1 ** (done[0] / max(total - 1, 1))))
            done[0] += 1

        try:
            for epoch in range(self.opts.search_epochs):
                self.runner.train_epoch(self.train, weights + [mixer.logits], optimizer, None,
                                        self.opts.seed + 1000 * index + epoch,
                                        extra=lambda: lam * mixer.cost(), before_step=before,
                                        tick=self.progress.tick)
        finally:
            for layer in self.layers:
                parametrize.remove_parametrizations(layer.module, "weight",
                                                    leave_parametrized=False)
        logp = torch.log_softmax(mixer.logits.detach(), 1)
        config = {l.name: self.labels[int(logp[i].argmax())] for i, l in enumerate(self.layers)}
        self.weights = Weights(self.layers)  # quantize the weights this trial trained
        point = self.evaluate(config, f"gumbel lambda {lam:.3g}")
        candidate = point
        if self.opts.max_bits is not None and not self.within(point):
            candidate = self.evaluate(self._repair(config, logp),
                                      f"gumbel lambda {lam:.3g}, repaired")
        self.model.load_state_dict(self.initial)
        self.weights = Weights(self.layers)
        probabilities = {l.name: float(logp[i, self.labels.index(candidate.config[l.name])]
                                       .exp()) for i, l in enumerate(self.layers)}
        self.progress.tick(0, f"{point.bits:.2f} bits, val {100 * point.accuracy:.1f} %")
        return {"lambda": lam, "point": vars(point), "candidate": vars(candidate),
                "probabilities": probabilities}

    # -- fine-tuning
    def finetune(self, config: dict[str, str], start: dict) -> torch.nn.Module:
        """Quantization-aware fine-tuning of `config` from the weights `start`, with scales
        chosen on the weights and refined on 256 training inputs (snnc.quantize)."""
        model = self.model
        model.load_state_dict(start)
        calibration = self.runner.inputs(self.train.x[:256])
        quant.quantize(model, to_rules(config), calibration=calibration)
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


class Mixer(torch.nn.Module):
    """SpikeHQ's relaxation: per layer, logits over the candidates; each step draws Gumbel
    noise and mixes the candidates' quantized weights with softmax((logits + noise) / tau)."""

    def __init__(self, layers: list[Layer], choices: list[Choice], opts: Options):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(len(layers), len(choices)))
        self.choices = choices
        self.scales = [[quant.mse_scale(l.module.weight.detach(), c.scheme, c.bits)
                        if c.scheme != "float" else None for c in choices] for l in layers]
        self.bits = torch.tensor([float(c.bits) for c in choices])
        params = torch.tensor([float(l.parameters) for l in layers])
        self.share = params / params.sum()
        eight = Choice("uniform", 8)
        self.energy = torch.tensor([[l.ops * energy_pj(c, l.spiking) for c in choices]
                                    for l in layers], dtype=torch.float32)
        self.energy_8 = max(sum(l.ops * energy_pj(eight, l.spiking) for l in layers), 1e-12)
        self.energy_weight = opts.energy_weight
        self.noise, self.tau = torch.zeros(self.logits.shape), 1.0

    def sample(self, generator: torch.Generator, tau: float) -> None:
        """This step's Gumbel noise and temperature (every chunk of the step uses them)."""
        u = torch.rand(self.logits.shape, generator=generator).clamp(1e-10, 1 - 1e-10)
        self.noise, self.tau = -torch.log(-torch.log(u)), tau

    @property
    def current(self) -> torch.Tensor:
        """The mixture weights, a fresh autograd graph on each use (each chunk's backward
        frees its own)."""
        return torch.softmax((self.logits + self.noise) / self.tau, dim=1)

    def cost(self) -> torch.Tensor:
        """Hardware cost of the current mixture: (1 - w) x expected bits / 8 + w x expected
        energy / the energy at uniform 8 bits, w = --energy-weight."""
        p = self.current
        bits = (self.share[:, None] * p * self.bits).sum() / 8
        energy = (p * self.energy).sum() / self.energy_8
        return (1 - self.energy_weight) * bits + self.energy_weight * energy


class MixedWeight(torch.nn.Module):
    """A parametrization: the Gumbel-softmax mixture of one layer's quantized weights."""

    def __init__(self, mixer: Mixer, index: int):
        super().__init__()
        self.__dict__["mixer"] = mixer  # shared, not a submodule of each layer
        self.index = index

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        p = self.mixer.current[self.index]
        out = torch.zeros_like(weight)
        for c, (choice, scale) in enumerate(zip(self.mixer.choices,
                                                self.mixer.scales[self.index])):
            q = weight if scale is None else quant.fake_quant(weight, scale, choice.scheme,
                                                              choice.bits)
            out = out + p[c] * q
        return out


# ------------------------------------------------------------------------------------------
# Entry point


def search(model: torch.nn.Module, train: Data, val: Data, opts: Options, *,
           input_shape: list[int] | None = None, ctx: Context | None = None,
           state_path: str | None = None, resume: bool = False, key: str = "",
           progress: bool = False) -> Result:
    """Search `model`'s per-layer quantization (docs/search.md). `model` is a float model (a
    quantized one is searched from its float weights); train/val hold samples-first x and
    labels y. Raises BadInputError for a budget no configuration meets, data that do not fit
    the model, or a model that cannot be trained; SearchInterrupted on Ctrl-C."""
    ctx = ctx or Context.single()
    start = time.time()
    if opts.method not in ("sensitivity", "gumbel"):
        raise BadInputError(f"unknown search method {opts.method!r}: use sensitivity or gumbel")
    if (opts.max_bits is None) == (opts.max_drop is None):
        raise BadInputError("give exactly one budget: --max-bits B (average bits per weight) "
                            "or --max-drop POINTS (validation accuracy points below float)")
    for name, data in (("--train", train), ("--val", val)):
        if data.y is None or len(data.y) == 0:
            raise BadInputError(f"{name}: the data need labels y (one integer class per sample "
                                "of x) to train and to measure accuracy")
    if train.x.shape[1:] != val.x.shape[1:]:
        raise BadInputError(f"--train samples are shaped {list(train.x.shape[1:])} but --val "
                            f"samples {list(val.x.shape[1:])}; both must be the model's input")
    torch.manual_seed(opts.seed)
    model = strip_quantization(copy.deepcopy(model)).float()  # the caller's model is left alone
    quantizable(model)  # refuses a model with nothing to quantize before any work
    axis, classes = batch_axis(model, input_shape, train.x, "--train")  # val: same shape
    from snnc.check.accuracy import check_labels

    check_labels(train.y, classes, "--train's y")
    check_labels(val.y, classes, "--val's y")
    if opts.max_bits is not None:
        low = float(min(c.bits for c in candidates(opts.allow_float)))
        if not (opts.max_bits >= low):
            raise BadInputError(f"--max-bits {opts.max_bits:g} cannot be met: the smallest "
                                f"average any configuration reaches is {low:.2f} bits (every "
                                "layer at 2 bits: uniform 2-bit or ternary PoT-2)")
    elif not opts.max_drop >= 0:
        raise BadInputError(f"--max-drop {opts.max_drop:g} must be 0 or more accuracy points")
    ctx.broadcast(model)
    key = key or default_key(model, train, val, opts)
    state = State(state_path, key, ctx, resume)
    bar = Bar(progress and ctx.main)
    engine = Search(model, axis, train, val, opts, ctx, state, bar)
    check_trains(engine.runner, train, engine.layers)
    try:
        if "result" not in state.data:
            config, details, point = (engine.sensitivity() if opts.method == "sensitivity"
                                      else engine.gumbel())
            if point is None or not engine.within(point):
                raise _unreachable(engine)
            state.data["result"] = {"config": config, "details": details, "point": vars(point)}
            engine.commit()
        config, details = state.data["result"]["config"], state.data["result"]["details"]
        searched = Point(**state.data["result"]["point"])
        tuned = engine.finetune(config, engine.initial)  # from the float weights
    except KeyboardInterrupt:  # everything finished is already in the state file
        bar.end()
        raise SearchInterrupted(engine.best(), state_path) from None
    accuracy, _ = engine.runner.score(val)
    rows, average = quant.report(tuned)
    float_config = {l.name: "float" for l in engine.layers}
    return Result(opts.method, to_rules(config), rows, average,
                  energy_nj(engine.layers, config), energy_nj(engine.layers, float_config),
                  engine.float_accuracy, searched.accuracy, accuracy, time.time() - start,
                  tuned, engine.points, details)


def default_key(model: torch.nn.Module, train: Data, val: Data, opts: Options) -> str:
    """What a state file must match to be resumed: the model's weights, the data, options."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(digest(t.detach().cpu().contiguous().numpy()).encode())
    h.update(digest(train.x, train.y, val.x, val.y).encode())
    h.update(repr(sorted(opts.key().items())).encode())
    return h.hexdigest()


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
