"""The drift search (after AQ4SViT's proxy; docs/search.md): each layer's sensitivity to each
candidate from how far its quantization moves the network's membrane potentials and spikes
away from the float network's on a few validation samples, without evaluating accuracy;
then a beam search over the per-layer choices under the budget on those drifts; only the
beam's final configurations are evaluated on the whole validation data.

Drift of one layer at one candidate (the rest float; under --max-bits only the candidates
some configuration within the budget can give the layer), on the first --drift-samples
validation samples: over every spiking neuron of the model (SpikingJelly's, a NIR graph's:
snnc.frontend.neuron_regions.is_neuron_class, or a BaseNode subclass; its membrane potential
after each step where the module keeps one, and its spikes) and over the model's output,

    sum over neurons of  |V_q - V_f|^2 / |V_f|^2  +  |S_q - S_f|_1 / |S_f|_1,
    plus  |out_q - out_f|^2 / |out_f|^2

(each norm over every element, step and sample: the relative error of the membranes, the
spikes that moved relative to how many fire, the relative error of the output). Everything
downstream of a layer drifts, so an early layer's drift counts at every neuron after it.

The beam search takes the layers from the most parameters to the fewest (the budget's
largest terms first) and keeps the --beam-width partial configurations of least drift +
lambda x bits, lambda being the price of a bit at which each layer's cheapest choice alone
meets the budget (the Lagrangian relaxation of this additive problem); a partial
configuration that cannot meet the budget with every later layer at its fewest bits is
dropped. Under --max-bits the beam's final configurations are evaluated, least drift first;
under --max-drop the bit budget is bisected (PROBES times) and each probe's least-drift
configuration evaluated, to find the fewest bits within the accuracy budget. The result is
the best evaluated point (engine.Search.best), as for the other methods.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from snnc.quant.search import schema as s
from snnc.quant.search.engine import Point, Search

STAGES = r"drift beam( [0-9.]+ bits)?"
PROBES = 8  # --max-drop: bisection steps of the bit budget, after the widest configuration


def run(engine: Search) -> tuple[dict[str, str] | None, dict, Point | None]:
    drift = sweep(engine)
    engine.progress.begin("beam: evaluations", most_points(engine))
    engine.progress.tick(len(engine.points))
    while (probe := next_probe(engine, drift, engine.points)) is not None:
        config, stage = probe
        earlier = next((p for p in engine.points if p.config == config), None)
        if earlier is None:
            point = engine.evaluate(config, stage)
        else:  # a bisection probe that lands on an evaluated configuration: the same point
            point = Point(**{**vars(earlier), "stage": stage})
            engine.points.append(point)
        engine.commit()
        engine.progress.tick(note=f"{point.bits:.2f} bits, val {100 * point.accuracy:.1f} %")
    engine.progress.end()
    chosen = engine.best()
    if chosen is None:
        return None, {}, None
    details = {name: {"drift": drift[name][label]} for name, label in chosen.config.items()}
    return chosen.config, details, chosen


# -- the drift sweep

def _bits(engine: Search) -> dict[str, float]:
    """Each candidate's bits per weight, as the budget counts them."""
    return {c.label: c.bits for c in engine.choices}


def feasible(engine: Search, layer) -> list[str]:
    """The candidates some configuration within --max-bits can give `layer` (every other
    layer at the fewest bits); under --max-drop every one. The others are never measured:
    no configuration the beam may keep holds them."""
    if engine.opts.max_bits is None:
        return list(engine.labels)
    total, bits = sum(l.parameters for l in engine.layers), _bits(engine)
    rest = min(bits.values()) * (total - layer.parameters)
    return [c for c in engine.labels
            if (bits[c] * layer.parameters + rest) / total <= engine.opts.max_bits + 1e-9]


def sweep(engine: Search) -> dict[str, dict[str, float]]:
    """Every layer's drift at every candidate it can take within the budget (committed per
    group of layers: a resumed search redoes only the unfinished group). Under torchrun,
    the layers of a group are dealt one per process and each drift is computed whole by one
    process, so one process and N give the same figures."""
    table: dict = engine.state.data.setdefault("drift", {})
    rows = {l.name: feasible(engine, l) for l in engine.layers}
    engine.progress.begin("drift sweep", sum(map(len, rows.values())))
    engine.progress.tick(sum(len(rows[name]) for name in table))
    todo = [l for l in engine.layers if l.name not in table]
    if not todo:
        return table
    probes = Probes(engine.model)
    samples = engine.val.x[:engine.opts.drift_samples]
    probes.reference(engine.runner, samples)
    world, rank = engine.ctx.world, engine.ctx.rank
    for start in range(0, len(todo), world):
        group = todo[start:start + world]
        offsets = [0]
        for layer in group:
            offsets.append(offsets[-1] + len(rows[layer.name]))
        values = [0.0] * offsets[-1]
        if rank < len(group):
            layer = group[rank]
            for j, label in enumerate(rows[layer.name]):
                if label != "float":  # float weights: the reference itself, no drift
                    engine.weights.apply({layer.name: label})
                    try:
                        values[offsets[rank] + j] = probes.drift(engine.runner, samples)
                    finally:
                        engine.weights.restore()
                engine.progress.tick(note=layer.name)
        values = engine.ctx.sum(values)
        engine.progress.tick(offsets[-1] - (offsets[rank + 1] - offsets[rank]
                                            if rank < len(group) else 0))
        for i, layer in enumerate(group):
            table[layer.name] = dict(zip(rows[layer.name], values[offsets[i]:offsets[i + 1]]))
        engine.commit()
    return table


class Probes:
    """Forward hooks on the model's spiking neurons (membrane potential after each step, and
    spikes) and its output: the float model's recorded once, then each quantized run
    compared with it call by call."""

    def __init__(self, model: torch.nn.Module):
        from spikingjelly.activation_based.neuron import BaseNode

        from snnc.frontend.neuron_regions import is_neuron_class

        # the neurons the compiler re-rolls (SpikingJelly's and a NIR graph's), and any
        # subclass of SpikingJelly's BaseNode a model defines itself; the outermost only, as
        # the compiler takes them (a NIR recurrent block and its member are one neuron)
        self.neurons = []
        for name, module in model.named_modules():  # parents before their children
            if any(name.startswith(f"{outer}.") for outer, _ in self.neurons):
                continue
            if isinstance(module, BaseNode) or is_neuron_class(
                    f"{type(module).__module__}.{type(module).__qualname__}"):
                self.neurons.append((name, module))
        self.ref: dict[str, list] = {}  # neuron -> per call (membrane or None, spikes)
        self.out: list[torch.Tensor] = []
        self.norms: dict[str, tuple[float, float]] = {}

    def _run(self, runner, x: np.ndarray, each) -> list[torch.Tensor]:
        """The model on `x` in batches, `each(name, call, membrane, spikes)` after every
        neuron call; the outputs per batch."""
        calls = {name: 0 for name, _ in self.neurons}
        hooks, saved = [], {}
        for name, module in self.neurons:
            if getattr(module, "step_mode", "s") == "m" and hasattr(module, "store_v_seq"):
                saved[name] = module.store_v_seq
                module.store_v_seq = True  # the membrane of every step, not only the last

            def hook(module, args, output, name=name):
                spikes = output[0] if isinstance(output, (tuple, list)) else output
                v = getattr(module, "v_seq", None) if name in saved else None
                v = v if isinstance(v, torch.Tensor) else getattr(module, "v", None)
                each(name, calls[name], v.detach() if isinstance(v, torch.Tensor) else None,
                     spikes.detach())
                calls[name] += 1
            hooks.append(module.register_forward_hook(hook))
        outs = []
        try:
            runner.model.eval()
            with torch.no_grad():
                for i in range(0, len(x), runner.batch_size):
                    out = runner.forward(x[i:i + runner.batch_size])
                    outs.append((out[0] if isinstance(out, (tuple, list)) else out).double())
        finally:
            for h in hooks:
                h.remove()
            for name, module in self.neurons:
                if name in saved:
                    module.store_v_seq = saved[name]
        return outs

    def reference(self, runner, x: np.ndarray) -> None:
        self.ref = {name: [] for name, _ in self.neurons}

        def keep(name, call, v, spikes):
            self.ref[name].append((None if v is None else v.clone(), spikes.clone()))
        self.out = self._run(runner, x, keep)
        for name, calls in self.ref.items():
            v2 = math.fsum(float(v.square().sum(dtype=torch.float64)) for v, _ in calls
                           if v is not None)
            s1 = math.fsum(float(sp.abs().sum(dtype=torch.float64)) for _, sp in calls)
            self.norms[name] = (max(v2, 1e-12), max(s1, 1.0))  # a silent neuron: per spike
        self.out_norm = max(math.fsum(float(o.square().sum()) for o in self.out), 1e-12)

    def drift(self, runner, x: np.ndarray) -> float:
        """The drift of the model as it is now (one layer quantized) from the reference."""
        dv = {name: [] for name, _ in self.neurons}
        ds = {name: [] for name, _ in self.neurons}

        def compare(name, call, v, spikes):
            ref = self.ref[name]
            if call >= len(ref) or ref[call][1].shape != spikes.shape:
                return  # another call pattern than the float model's: counted by the output
            rv, rs = ref[call]
            if v is not None and rv is not None and rv.shape == v.shape:
                dv[name].append(float((v - rv).square().sum(dtype=torch.float64)))
            ds[name].append(float((spikes - rs).abs().sum(dtype=torch.float64)))
        outs = self._run(runner, x, compare)
        total = [math.fsum(dv[name]) / self.norms[name][0]
                 + math.fsum(ds[name]) / self.norms[name][1] for name, _ in self.neurons]
        out = math.fsum(float((o - r).square().sum()) for o, r in zip(outs, self.out))
        return math.fsum(total) + out / self.out_norm


# -- the beam search

def beam(engine: Search, drift: dict, budget: float) -> list[dict[str, str]]:
    """The beam's complete configurations within `budget` average bits, least drift first."""
    layers = sorted(engine.layers, key=lambda l: -l.parameters)  # stable: model order in ties
    total, bits = sum(l.parameters for l in engine.layers), _bits(engine)
    fewest = min(bits.values())
    price = _price(engine, drift, budget, bits, total)
    rest = total
    beams = [(0.0, 0.0, ())]  # (drift, bits x parameters, labels in `layers` order)
    for layer in layers:
        rest -= layer.parameters
        grown = []
        for d, b, labels in beams:
            for label in drift[layer.name]:
                nb = b + bits[label] * layer.parameters
                if (nb + fewest * rest) / total > budget + 1e-9:
                    continue  # the later layers cannot bring it within the budget
                nd = d + drift[layer.name][label]
                grown.append((nd + price * nb / total, nb, labels + (label,), nd))
        grown.sort(key=lambda g: g[:3])
        beams = [(nd, nb, labels) for _, nb, labels, nd in grown[:engine.opts.beam_width]]
    beams.sort()
    position = {l.name: i for i, l in enumerate(layers)}
    return [{l.name: labels[position[l.name]] for l in engine.layers} for _, _, labels in beams]


def _price(engine: Search, drift: dict, budget: float, bits: dict, total: int) -> float:
    """The least price of a bit (drift per average bit) at which each layer's cheapest
    choice, drift + price x its bits' share of the average, meets `budget`."""
    def average(price):
        def cheapest(layer):
            return min(drift[layer.name], key=lambda c: (drift[layer.name][c] + price * bits[c]
                                                     * layer.parameters / total, bits[c]))
        return sum(bits[cheapest(l)] * l.parameters for l in engine.layers) / total

    if average(0.0) <= budget + 1e-9:
        return 0.0
    low, high = 0.0, 1.0
    while average(high) > budget + 1e-9 and high < 1e12:
        low, high = high, high * 4
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (low, mid) if average(mid) <= budget + 1e-9 else (mid, high)
    return high


def next_probe(engine: Search, drift: dict, points: list[Point]) -> tuple | None:
    """The next configuration to evaluate and its stage, given the points evaluated so far
    (one function for the search and for checking a resumed state), or None when done."""
    if engine.opts.max_bits is not None:
        configs = beam(engine, drift, engine.opts.max_bits)
        return (configs[len(points)], "drift beam") if len(points) < len(configs) else None
    widths = _bits(engine).values()
    low, high = min(widths), max(widths)
    if points and not engine.within(points[0]):
        return None  # even the widest configuration misses the accuracy budget
    for point in points[1:]:
        mid = (low + high) / 2
        low, high = (low, mid) if engine.within(point) else (mid, high)
    if len(points) > PROBES:
        return None
    budget = high if not points else (low + high) / 2
    return beam(engine, drift, budget)[0], f"drift beam {budget:.6f} bits"


def most_points(engine: Search) -> int:
    return engine.opts.beam_width if engine.opts.max_bits is not None else PROBES + 1


def schema(engine: Search) -> s.MethodState:
    """This method's fields of the state: the drift sweep (per finished layer, every
    candidate's drift); its points are exactly the beam's (or the bisection's) evaluations
    in order, which the sweep and the points before each determine."""
    names = [l.name for l in engine.layers]
    rows = {l.name: s.mapping(feasible(engine, l), s.real(0.0), "a candidate within the budget")
            for l in engine.layers}

    def table(data, where):  # some layers (those measured), each with its feasible candidates
        s.mapping(names, lambda row, at: None, "a conv/linear layer", complete=False)(data, where)
        for name, row in data.items():
            rows[name](row, s.at(where, name))

    def order(data, where):
        table, points = data.get("drift", {}), [Point(**p) for p in data.get("points", [])]
        if points and len(table) < len(names):
            raise s.Damaged("points", "are there before the drift of every layer was measured")
        for i, point in enumerate(points):
            probe = next_probe(engine, table, points[:i])
            if probe is None or probe != (point.config, point.stage):
                raise s.Damaged(f"points[{i}]", "is not the configuration the beam search "
                                                "evaluates next")
        result = data.get("result")
        if result is None:
            return
        if next_probe(engine, table, points) is not None:
            raise s.Damaged("result", "is there before the beam's evaluations finished")
        for name, label in result["config"].items():
            if result["details"][name]["drift"] != table[name][label]:
                raise s.Damaged(s.at(s.at("result.details", name), "drift"), "is not the drift "
                                f"the sweep measured for {label}")

    most = most_points(engine)
    why = (f"--beam-width {most}" if engine.opts.max_bits is not None
           else f"the widest configuration and {PROBES} bisection probes")
    return s.MethodState(
        fields={"drift": table},
        details=s.mapping(names, s.record({"drift": s.real(0.0)}), "a conv/linear layer"),
        stages=STAGES, points=(most, why), rules=[order])
