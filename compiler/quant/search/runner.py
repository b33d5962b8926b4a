"""Running the model on the search's data: evaluation, and data-parallel training that gives
the same bits in one process as in N (Runner.train_epoch), plus the checks made before a
search starts (the input's batch axis, that the model trains) and the per-layer synaptic
operations the energy model needs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from snnc.errors import BadInputError, SnncError, first_line
from snnc.quant.distributed import Context
from snnc.quant.search.space import Layer


@dataclass
class Data:
    x: np.ndarray  # samples first, float32
    y: np.ndarray  # int64 labels


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


def batches(x: np.ndarray, axis: int, size: int):
    """Samples-first `x` as model inputs of at most `size` samples, each with its batch at
    `axis`; one at a time (a generator), so memory is one batch's."""
    for start in range(0, len(x), size):
        yield torch.from_numpy(np.ascontiguousarray(np.moveaxis(x[start:start + size], 0, axis)))


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


def sample_axes(input_shape: list[int] | None, x: np.ndarray, where: str) -> list[int]:
    """The axes where inserting the samples-first data's batch gives the model's input
    shape (a checkpoint's input_shape); BadInputError if none does. Needs no model: callers
    check data with it before building one."""
    sample = list(x.shape[1:])
    axes = [a for a in range(len(sample) + 1)
            if input_shape is None or input_shape[:a] + input_shape[a + 1:] == sample]
    if not axes:
        fits = [f"{input_shape[1:]} (batch first)"]
        if len(input_shape) >= 3 and input_shape[:1] + input_shape[2:] != input_shape[1:]:
            fits.append(f"{input_shape[:1] + input_shape[2:]} (a sequence [T, N, ...])")
        raise BadInputError(f"{where}: x has samples of shape {sample}, but the model takes "
                            f"{input_shape} (its checkpoint's input_shape); x must hold samples "
                            "first, each shaped as the model's input without its batch axis: "
                            + " or ".join(fits))
    return axes


def batch_axis(model: torch.nn.Module, input_shape: list[int] | None, x: np.ndarray,
               where: str, per_step: bool = False) -> tuple[int, int]:
    """(the model input's batch axis, the number of classes): the axis where inserting the
    samples-first data's batch gives a shape the model runs on, with one output row of
    logits per sample ([n, classes]; with `per_step` also per-step logits [T, n, classes] or
    a tuple whose first output is such, as verify takes them)."""
    sample = list(x.shape[1:])
    axes = sample_axes(input_shape, x, where)
    errors = []
    for axis in axes:
        try:
            with torch.no_grad():
                model.eval()
                out = run(model, x[:3], axis)
            if per_step and isinstance(out, (tuple, list)) and out:
                out = out[0]
            if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == len(x[:3]) \
                    or per_step and isinstance(out, torch.Tensor) and out.dim() == 3 \
                    and out.shape[1] == len(x[:3]):
                return axis, int(out.shape[-1])
            errors.append(f"batch at axis {axis}: output shape "
                          f"{list(out.shape) if isinstance(out, torch.Tensor) else type(out)}")
        except Exception as error:  # the model refuses the shape: try the next axis
            errors.append(f"batch at axis {axis}: {type(error).__name__}: {first_line(error)}")
    rows = "[n, classes] or [T, n, classes]" if per_step else "[n, classes]"
    raise BadInputError(f"{where}: the model does not run on x's samples {sample} as a batch "
                        f"with one row of logits {rows} per sample ("
                        + "; ".join(errors[:3]) + ")")


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, axis: int,
             size: int = 64) -> float:
    """Top-1 accuracy of `model` (eval mode, on one thread: small batches run op by op) on
    samples-first x, y; per-step logits [T, n, classes] count by their mean over time, as
    verify counts them."""
    model.eval()
    correct = 0
    with torch.no_grad(), _threads(1):
        for start in range(0, len(x), size):
            out = run(model, x[start:start + size], axis)
            out = out[0] if isinstance(out, (tuple, list)) else out
            logits = out.mean(0) if out.dim() == 3 else out
            correct += int((logits.argmax(-1).numpy() == y[start:start + size]).sum())
    return correct / len(x)


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
