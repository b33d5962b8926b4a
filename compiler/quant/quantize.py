"""Per-layer weight quantization: uniform or power-of-two (PoT), 2-8 bits, or ternary or
binary, per output channel.

Code tables (docs/quantization.md):
- uniform k-bit, k = 2..8: integer code q in [-2^(k-1), 2^(k-1) - 1]; weight = q * scale.
- PoT k-bit, k = 2..5: a sign and an exponent code c in [0, 2^(k-1) - 1]; c = 0 is zero,
  c >= 1 is the magnitude scale * 2^-(c - 1). Codes are stored as the signed integer
  sign * c, so the largest magnitude is `scale` and the smallest nonzero one is
  scale * 2^-(2^(k-1) - 2).
- ternary: q in {-1, 0, 1}, binary: q in {-1, 1}; weight = q * scale (a, per channel). A
  config gives them no bits: their code width is fixed (weights.FIXED_BITS: 2 and 1).

`fake_quant(weight, scale, scheme, bits)` is a registered custom op (`snnc::fake_quant`):
torch.export shows each quantized weight as ONE node, and the snnc frontend reads its
scheme, bits, codes and scales from it. Its gradient is the straight-through estimator,
so a quantized model can be fine-tuned (QAT).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from snnc.errors import BadInputError, first_line
from snnc.files.tensors import check_finite
from snnc.files.trust import short_repr
from snnc.quant.weights import FIXED_BITS, pot_shift, stored_bits

SCHEMES = {"uniform": range(2, 9), "pot": range(2, 6), "ternary": range(2, 3),
           "binary": range(1, 2)}
QUANTIZABLE = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)


def _channel_view(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return scale.reshape((-1,) + (1,) * (weight.dim() - 1))


def codes(weight: torch.Tensor, scale: torch.Tensor, scheme: str, bits: int) -> torch.Tensor:
    """Integer codes (int32) of `weight` with per-output-channel `scale` (see module doc)."""
    w = weight.detach().float()
    s = _channel_view(scale.detach().float(), w)
    if scheme == "uniform":
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return torch.clamp(torch.round(w / s), low, high).to(torch.int32)
    if scheme == "pot":
        e_max = pot_shift(bits)
        ratio = (w.abs() / s).clamp(max=1.0)
        # The nearest level in the linear domain: between 2^-e and 2^-(e+1) the midpoint is
        # 0.75 * 2^-e; between the smallest level 2^-e_max and zero it is 0.5 * 2^-e_max.
        e = torch.floor(-torch.log2(ratio.clamp(min=2.0 ** -(e_max + 2)))).clamp(0, e_max)
        upper = torch.exp2(-e)
        midpoint = torch.where(e >= e_max, 0.5 * upper, 0.75 * upper)
        e = torch.where(ratio < midpoint, e + 1, e)
        code = torch.where(e > e_max, torch.zeros_like(e), e + 1)
        return (torch.sign(w) * code).to(torch.int32)
    if scheme == "ternary":
        return torch.clamp(torch.round(w / s), -1, 1).to(torch.int32)
    if scheme == "binary":  # the sign; a zero weight is +scale
        return torch.where(w < 0, -1, 1).to(torch.int32)
    raise ValueError(f"unknown scheme {scheme!r}")


def dequantize(code: torch.Tensor, scale: torch.Tensor, scheme: str, bits: int) -> torch.Tensor:
    """float32 weights from codes, rounded exactly as snnc's IR and ONNX do it."""
    s = _channel_view(scale.float(), code)
    if scheme != "pot":
        return code.float() * s
    magnitude = torch.exp2(1.0 - code.abs().float()) * s  # exact: a power of two times s
    return torch.where(code == 0, torch.zeros_like(magnitude), torch.sign(code.float()) * magnitude)


@torch.library.custom_op("snnc::fake_quant", mutates_args=())
def fake_quant(weight: torch.Tensor, scale: torch.Tensor, scheme: str, bits: int) -> torch.Tensor:
    return dequantize(codes(weight, scale, scheme, bits), scale, scheme, bits).to(weight.dtype)


@fake_quant.register_fake
def _fake_quant_meta(weight, scale, scheme, bits):
    return torch.empty_like(weight)


def _fake_quant_setup(ctx, inputs, output):
    pass


def _fake_quant_backward(ctx, grad):
    return grad, None, None, None  # straight-through: d(quantized)/d(weight) = 1


fake_quant.register_autograd(_fake_quant_backward, setup_context=_fake_quant_setup)


class WeightQuantizer(torch.nn.Module):
    """A parametrization: module.weight becomes fake_quant(original weight)."""

    def __init__(self, scheme: str, bits: int, out_channels: int):
        super().__init__()
        self.scheme, self.bits = scheme, bits
        self.register_buffer("scale", torch.ones(out_channels))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quant(weight, self.scale, self.scheme, self.bits)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, bits={self.bits}"


def minmax_scale(weight: torch.Tensor, scheme: str, bits: int) -> torch.Tensor:
    peak = weight.detach().float().abs().reshape(weight.shape[0], -1).amax(dim=1)
    if scheme == "binary":
        return peak  # no division by it: a zero channel keeps 0 (see _sign_scale)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    return peak / (2 ** (bits - 1) - 1) if scheme == "uniform" else peak


def mse_scale(weight: torch.Tensor, scheme: str, bits: int, grid: int = 40) -> torch.Tensor:
    """Per channel, the clipping ratio of the min-max scale that minimizes the weight error;
    for ternary and binary, the scale that minimizes it exactly (`_sign_scale`)."""
    if scheme in FIXED_BITS:
        return _sign_scale(weight, scheme)
    base = minmax_scale(weight, scheme, bits)
    w = weight.detach().float()
    best, best_err = base.clone(), torch.full_like(base, math.inf)
    for ratio in torch.linspace(0.3, 1.0, grid):
        s = base * ratio
        err = ((dequantize(codes(w, s, scheme, bits), s, scheme, bits) - w) ** 2) \
            .reshape(w.shape[0], -1).sum(dim=1)
        better = err < best_err
        best, best_err = torch.where(better, s, best), torch.where(better, err, best_err)
    return best


def _sign_scale(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """The per-channel a minimizing sum (w - q a)^2. Binary: mean |w|. Ternary: with the
    magnitudes sorted down, the k largest become +-a and the rest 0, the error is
    sum w^2 - S_k^2 / k at a = S_k / k (S_k their sum); the k maximizing S_k^2 / k is the
    exact optimum, and its a rounds exactly those k weights to +-1 (|w| > a / 2)."""
    magnitude = weight.detach().double().abs().reshape(weight.shape[0], -1)
    if scheme == "binary":
        a = magnitude.mean(dim=1)
    else:
        sums = magnitude.sort(dim=1, descending=True).values.cumsum(dim=1)
        k = torch.arange(1, sums.shape[1] + 1, dtype=sums.dtype)
        best = (sums ** 2 / k).argmax(dim=1, keepdim=True)
        a = (sums.gather(1, best) / (best + 1)).squeeze(1)
    a = a.float()
    if scheme == "binary":
        return a  # a zero channel keeps a = 0: its codes are +1, its weights 0
    return torch.where(a > 0, a, torch.ones_like(a))  # a zero channel: codes 0 at any a


@dataclass(frozen=True)
class LayerQuant:
    name: str
    scheme: str  # "uniform", "pot", "ternary", "binary" or "float"
    bits: float  # stored bits per weight (weights.stored_bits: ternary 1.6); 32 for float
    parameters: int


def _bits_text(scheme: str) -> str:
    bits = stored_bits(scheme, FIXED_BITS[scheme])
    return f"{bits:g} bit" + ("s" if bits != 1 else "")


def parse_config(config: Mapping[str, object]) -> list[tuple[str, dict | None]]:
    """Validate a config: glob -> {"scheme", "bits"}, {"scheme": "ternary" | "binary"} or
    "float". Raises BadInputError. A rule gets the fixed bits of ternary and binary."""
    if not isinstance(config, Mapping) or not config:
        raise BadInputError("the quantization config must be a non-empty JSON object mapping "
                            'module-name globs to {"scheme": ..., "bits": ...} or "float"')
    rules = []
    for glob, rule in config.items():
        if not isinstance(glob, str):
            raise BadInputError(f"config key {short_repr(glob)} must be a module-name glob "
                                "(a string)")
        if isinstance(rule, str) and rule == "float":
            rules.append((glob, None))
            continue
        scheme = rule.get("scheme") if isinstance(rule, Mapping) else None
        if isinstance(scheme, str) and scheme in FIXED_BITS and set(rule) >= {"scheme", "bits"}:
            raise BadInputError(
                f"config entry {glob!r}: {scheme} weights take no bits (got "
                f'"bits": {short_repr(rule["bits"])}): their levels are fixed, '
                f"{'{-a, +a}' if scheme == 'binary' else '{-a, 0, +a}'} with one a per output "
                f"channel, stored at {_bits_text(scheme)} a weight; write "
                f'{{"scheme": "{scheme}"}}, or another scheme with its bits')
        if isinstance(rule, Mapping) and "scheme" in rule and \
                not (isinstance(scheme, str) and scheme in SCHEMES):
            raise BadInputError(f"config entry {glob!r}: unknown scheme {short_repr(scheme)}; use "
                                f"{', '.join(map(repr, SCHEMES))}")
        keys = {"scheme"} if scheme in FIXED_BITS else {"scheme", "bits"}
        if not isinstance(rule, Mapping) or set(rule) != keys:
            raise BadInputError(f'config entry {glob!r}: expected {{"scheme": ..., "bits": ...}}, '
                                f'{{"scheme": "ternary"|"binary"}} or "float", got '
                                f"{short_repr(rule)}")
        bits = FIXED_BITS.get(scheme, rule.get("bits"))
        allowed = SCHEMES[scheme]
        if not isinstance(bits, int) or isinstance(bits, bool) or bits not in allowed:
            raise BadInputError(f"config entry {glob!r}: {scheme} quantization takes bits "
                                f"{allowed.start}..{allowed.stop - 1}, got {short_repr(bits)}")
        rules.append((glob, {"scheme": scheme, "bits": bits}))
    return rules


def plan(model: torch.nn.Module, config: Mapping[str, object]) -> list[tuple[str, dict | None]]:
    """(module name, rule) for every layer with weights; first matching glob wins."""
    rules = parse_config(config)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    used = {glob: False for glob, _ in rules}
    result = []
    for name, _ in layers:
        matching = [(glob, rule) for glob, rule in rules if fnmatch.fnmatchcase(name, glob)]
        for glob, _ in matching:
            used[glob] = True
        result.append((name, matching[0][1] if matching else None))
    unused = [g for g, hit in used.items() if not hit]
    if unused:
        names = ", ".join(n for n, _ in layers[:6]) + (", ..." if len(layers) > 6 else "")
        raise BadInputError(f"config glob(s) {unused} match no conv/linear layer of the model "
                            f"(its layers: {names})")
    return result


def quantize(model: torch.nn.Module, config: Mapping[str, object],
             calibration: Iterable[torch.Tensor] | torch.Tensor | None = None,
             method: str = "mse") -> torch.nn.Module:
    """Quantize `model`'s conv/linear weights in place, per `config`; returns the model.

    config maps module-name globs (fnmatch) to {"scheme": "uniform"|"pot", "bits": k},
    {"scheme": "ternary"|"binary"} or "float"; the first matching glob wins and unmatched layers stay float. Scales come from
    the weights ("minmax": the largest magnitude; "mse": the clipping that minimizes the
    weight error) and, with `calibration` inputs, are refined per layer to minimize the
    error of the layer's output on them. `calibration` is one batch of inputs (a tensor
    shaped as the model's input) or an iterable of such batches, run one at a time: give
    many samples as batches (a generator), and memory is one batch's.
    """
    from torch.nn.utils import parametrize

    if method not in ("minmax", "mse"):
        raise BadInputError(f"unknown scale method {method!r}; use 'minmax' or 'mse'")
    modules = dict(model.named_modules())
    chosen = [(name, rule) for name, rule in plan(model, config) if rule is not None]
    check_finite(list(model.named_parameters()) + list(model.named_buffers()), "the model")
    for name, rule in chosen:
        module = modules[name]
        if parametrize.is_parametrized(module, "weight"):
            raise BadInputError(f"layer {name} is already quantized")
        weight = module.weight.detach()
        quantizer = WeightQuantizer(rule["scheme"], rule["bits"], weight.shape[0])
        pick = minmax_scale if method == "minmax" else mse_scale
        quantizer.scale.copy_(pick(weight, rule["scheme"], rule["bits"]))
        parametrize.register_parametrization(module, "weight", quantizer, unsafe=True)
    if calibration is not None:
        _refine_on_calibration(model, [modules[n] for n, _ in chosen], calibration)
    return model


def _refine_on_calibration(model, layers, calibration, grid: int = 24) -> None:
    """Per layer and output channel, pick the scale (a ratio of the current one) that
    minimizes the squared error of the layer's output on the calibration inputs.

    The inputs come one batch at a time (`calibration` is one tensor or an iterable of
    them): each quantized layer's inputs are recorded on the batch, every candidate scale's
    error on them is added to the layer's sums (float64), and the recording is dropped, so
    memory is one batch's whatever the number of samples. One batch gives exactly the
    float32 sums of the whole; more batches the same sums to rounding. A layer the inputs
    never reach keeps its scale."""
    from spikingjelly.activation_based import functional

    batches = [calibration] if isinstance(calibration, torch.Tensor) else calibration
    ratios = torch.linspace(0.6, 1.15, grid)
    base = {m: m.parametrizations.weight[0].scale.clone() for m in layers}
    sums = {m: torch.zeros(grid, len(base[m]), dtype=torch.float64) for m in layers}
    captured: dict[torch.nn.Module, list[torch.Tensor]] = {m: [] for m in layers}
    hooks = [m.register_forward_pre_hook(lambda mod, args: captured[mod].append(args[0].detach()))
             for m in layers]
    reached, count = set(), 0
    try:
        with torch.no_grad():
            for x in batches:
                _run_calibration(model, x, count, functional)
                count += 1
                for module in layers:
                    if captured[module]:
                        _add_errors(module, captured[module], base[module], ratios, sums[module])
                        reached.add(module)
                        captured[module].clear()
    finally:
        for hook in hooks:
            hook.remove()
    if not count:
        raise BadInputError("the calibration holds no inputs: give a tensor of inputs (or "
                            "batches of them), or calibration=None to keep the weights' scales")
    with torch.no_grad():
        for module in layers:
            if module not in reached:
                continue
            best, best_err = base[module].clone(), torch.full_like(sums[module][0], math.inf)
            for ratio, err in zip(ratios, sums[module]):
                better = err < best_err
                best = torch.where(better, base[module] * ratio, best)
                best_err = torch.where(better, err, best_err)
            module.parametrizations.weight[0].scale.copy_(best)


def _run_calibration(model, x, index: int, functional) -> None:
    """The model on one calibration batch, its neurons reset before and after; a batch the
    model cannot take is the caller's error (BadInputError), not snnc's."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else \
            f"a {type(x).__module__}.{type(x).__name__}"
        raise BadInputError(f"calibration batch {index} is {what}, not a float tensor of "
                            "inputs shaped as the model's input (torch.from_numpy(x).float())")
    functional.reset_net(model)
    try:
        model(x)
    except MemoryError:
        raise
    except Exception as error:  # the model refuses the shape or the values
        raise BadInputError(f"the model does not run on calibration batch {index} of shape "
                            f"{list(x.shape)} ({type(error).__name__}: {first_line(error)}); "
                            "give inputs shaped as the model's input, batch included") from None
    finally:
        functional.reset_net(model)


def _add_errors(module, captured: list[torch.Tensor], base: torch.Tensor,
                ratios: torch.Tensor, sums: torch.Tensor) -> None:
    """Add, per candidate scale base x ratio and output channel, the squared error of
    `module`'s output on the recorded inputs to `sums` [ratios, channels]."""
    quantizer = module.parametrizations.weight[0]
    original = module.parametrizations.weight.original
    linear = isinstance(module, torch.nn.Linear)
    inputs = torch.cat([x.reshape(-1, x.shape[-1]) if linear
                        else x.reshape(-1, *x.shape[-(original.dim() - 1):]) for x in captured])
    reference = _apply(module, inputs, original)
    for i, ratio in enumerate(ratios):
        s = base * ratio
        w = dequantize(codes(original, s, quantizer.scheme, quantizer.bits), s,
                       quantizer.scheme, quantizer.bits)
        err = (_apply(module, inputs, w) - reference) ** 2
        sums[i] += err.sum(dim=0) if linear else \
            err.transpose(0, 1).reshape(base.shape[0], -1).sum(dim=1)


def _apply(module, x, weight):
    if isinstance(module, torch.nn.Linear):
        return torch.nn.functional.linear(x, weight)
    conv = torch.nn.functional.conv1d if isinstance(module, torch.nn.Conv1d) \
        else torch.nn.functional.conv2d
    return conv(x, weight, None, module.stride, module.padding, module.dilation, module.groups)


def report(model: torch.nn.Module) -> tuple[list[LayerQuant], float]:
    """Per layer with weights: scheme, bits, parameters; and the parameter-weighted average
    bits over those layers (float layers count as 32)."""
    from torch.nn.utils import parametrize

    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, QUANTIZABLE):
            continue
        if parametrize.is_parametrized(module, "weight"):
            quantizer = module.parametrizations.weight[0]
            count = module.parametrizations.weight.original.numel()
            rows.append(LayerQuant(name, quantizer.scheme,
                                   stored_bits(quantizer.scheme, quantizer.bits), count))
        else:
            rows.append(LayerQuant(name, "float", 32, module.weight.numel()))
    total = sum(r.parameters for r in rows)
    average = sum(r.bits * r.parameters for r in rows) / total if total else 0.0
    return rows, average


def format_report(rows: list[LayerQuant], average: float) -> str:
    width = max([len(r.name) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'scheme':<7}  {'bits':>4}  {'parameters':>11}"]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {r.scheme:<7}  {r.bits:>4g}  {r.parameters:>11,}")
    total = sum(r.parameters for r in rows)
    lines.append(f"{'total':<{width}}  {'':<7}  {average:>4.2f}  {total:>11,}   "
                 "(average bits weighted by parameters)")
    return "\n".join(lines)
