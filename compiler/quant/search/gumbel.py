"""SpikeHQ's Gumbel-softmax search: per-layer logits over the candidates, a Gumbel-softmax
mixture of the candidates' quantized weights with an annealed temperature, trained
(straight-through quantizers) on the task loss + lambda x hardware cost (expected bits and
the estimated energy, snnc.check.energy); lambda bisected until the argmax configuration lands
on the bit budget (an argmax over it is repaired into it).
"""

from __future__ import annotations

import math

import torch

from snnc.quant import quantize
from snnc.quant.search import schema as s
from snnc.quant.search.engine import Options, Point, Search
from snnc.quant.search.space import Choice, Layer, Weights, average_bits, choice_of, energy_pj


def run(engine: Search) -> tuple[dict[str, str] | None, dict, Point | None]:
    trials: list = engine.state.data.setdefault("trials", [])
    while len(trials) < engine.opts.trials:
        lam = _next_lambda(engine, trials)
        if lam is None:
            break
        trials.append(_trial(engine, lam, len(trials)))
        engine.commit()
    ok = [t for t in trials if engine.within(Point(**t["candidate"]))]
    if not ok:
        return None, {}, None
    chosen = max(ok, key=lambda t: engine.rank(Point(**t["candidate"])))
    engine.state.data["chosen_trial"] = trials.index(chosen)
    details = {name: {"probability": chosen["probabilities"][name],
                      "lambda": chosen["lambda"]} for name in chosen["candidate"]["config"]}
    return chosen["candidate"]["config"], details, Point(**chosen["candidate"])


STAGES = r"gumbel lambda [^,\s]+(, repaired)?"


def schema(engine: Search) -> s.MethodState:
    """This method's fields of the state: the lambda trials (lambda, the argmax point, the
    candidate: the argmax or its repair into the bit budget, the candidate's probabilities),
    which are exactly the measured points, and the chosen trial, whose candidate is the
    result."""
    names = [l.name for l in engine.layers]
    most = engine.opts.trials
    # lambda starts at 1 and moves by 4x or to a geometric mean: trial i is within 4^(+-i)
    lam = s.real(4.0 ** -(most - 1), 4.0 ** (most - 1))
    point = engine.point_spec(STAGES)

    def candidate(trial, where):
        stage = f"gumbel lambda {trial['lambda']:.3g}"
        if trial["point"]["stage"] != stage:
            raise s.Damaged(f"{where}.point.stage", f"is not {stage!r}, its lambda's")
        repair = engine.opts.max_bits is not None and not engine.within(Point(**trial["point"]))
        if not repair and trial["candidate"] != trial["point"]:
            raise s.Damaged(f"{where}.candidate", "differs from the point, which needs no "
                                                  "repair")
        if repair and (trial["candidate"]["stage"] != stage + ", repaired"
                       or not engine.within(Point(**trial["candidate"]))):
            raise s.Damaged(f"{where}.candidate", "is not a repair of the point into the "
                                                  "budget")

    def chosen(data, where):
        trials = data.get("trials", [])
        measured = [p for t in trials for p in ([t["point"]] if t["candidate"] == t["point"]
                                                 else [t["point"], t["candidate"]])]
        if data.get("points", []) != measured:
            raise s.Damaged("points", "are not the points of the trials (each trial's point, "
                                      "then its repaired candidate)")
        index = data.get("chosen_trial")
        if ("result" in data) != (index is not None):
            raise s.Damaged("chosen_trial", "must be there exactly when the result is")
        if index is None:
            return
        ok = [t for t in trials if engine.within(Point(**t["candidate"]))]
        best = trials.index(max(ok, key=lambda t: engine.rank(Point(**t["candidate"])))) \
            if ok else None
        if index != best or data["result"]["point"] != trials[index]["candidate"]:
            raise s.Damaged("chosen_trial", f"is {index}, not the trial whose candidate ranks "
                                            "best within the budget, with the result")

    trial = s.record({"lambda": lam, "point": point, "candidate": point,
                      "probabilities": s.mapping(names, s.real(0.0, 1.0),
                                                 "a conv/linear layer")}, rules=[candidate])
    details = s.record({"probability": s.real(0.0, 1.0), "lambda": lam})
    return s.MethodState(
        fields={"trials": s.items(trial, most, f"--trials {most}"),
                "chosen_trial": s.whole(0, most - 1)},
        details=s.mapping(names, details, "a conv/linear layer"), stages=STAGES,
        points=(2 * most, f"each of --trials {most} trials' point and its repair"),
        rules=[chosen])


def _repair(engine: Search, config: dict[str, str], logp: torch.Tensor) -> dict[str, str]:
    """An argmax configuration over the bit budget, brought within it: repeatedly the
    move to fewer bits that costs the least log-probability (under the trial's logits)
    per bit saved."""
    config = dict(config)
    index = {label: i for i, label in enumerate(engine.labels)}
    while average_bits(engine.layers, config) > engine.opts.max_bits + 1e-9:
        moves = []
        for i, layer in enumerate(engine.layers):
            now = config[layer.name]
            for label in engine.labels:
                saved = choice_of(now).bits - choice_of(label).bits
                if saved > 0:
                    cost = float(logp[i, index[now]] - logp[i, index[label]])
                    moves.append((cost / (saved * layer.parameters), layer.name, label))
        _, name, label = min(moves)
        config[name] = label
    return config

def _next_lambda(engine: Search, trials: list) -> float | None:
    """Geometric bisection of lambda: more weight on the hardware cost while the argmax
    configuration is over the bit budget (or, with --max-drop, while it is within the
    accuracy budget), less otherwise; stop once the bracket is narrow or the argmax sits
    just under the bit budget."""
    if not trials:
        return 1.0
    # "up": trials after which lambda must grow
    bit_mode = engine.opts.max_bits is not None
    up = [t["lambda"] for t in trials if engine.within(Point(**t["point"])) != bit_mode]
    down = [t["lambda"] for t in trials if engine.within(Point(**t["point"])) == bit_mode]
    if not down:
        return max(up) * 4
    if not up:
        if bit_mode and any(Point(**t["point"]).bits >= engine.opts.max_bits - 0.1
                            for t in trials):
            return None
        return min(down) / 4
    low, high = max(up), min(down)
    if high <= low or high / low < 1.5:
        return None
    if bit_mode and any(Point(**t["point"]).bits >= engine.opts.max_bits - 0.05
                        and engine.within(Point(**t["point"])) for t in trials):
        return None
    return math.sqrt(low * high)

def _trial(engine: Search, lam: float, index: int) -> dict:
    from torch.nn.utils import parametrize

    engine.model.load_state_dict(engine.initial)
    mixer = Mixer(engine.layers, engine.choices, engine.opts)
    for i, layer in enumerate(engine.layers):
        parametrize.register_parametrization(layer.module, "weight", MixedWeight(mixer, i),
                                             unsafe=True)
    torch.manual_seed(engine.opts.seed * 7919 + index)  # dropout, if any, per trial
    weights = [p for p in engine.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": weights, "lr": engine.opts.finetune_lr},
                                   {"params": [mixer.logits], "lr": 0.1,
                                    "weight_decay": 0.0}])
    steps_per_epoch = math.ceil(len(engine.train.y) / engine.opts.batch_size)
    total = engine.opts.search_epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(engine.opts.seed * 7919 + index)
    engine.progress.begin(f"gumbel trial {index + 1} (lambda {lam:.3g})", total)
    done = [0]

    def before(step: int) -> None:
        mixer.sample(generator, 2.0 * (0.1 ** (done[0] / max(total - 1, 1))))
        done[0] += 1

    try:
        for epoch in range(engine.opts.search_epochs):
            engine.runner.train_epoch(engine.train, weights + [mixer.logits], optimizer, None,
                                      engine.opts.seed + 1000 * index + epoch,
                                      extra=lambda: lam * mixer.cost(), before_step=before,
                                      tick=engine.progress.tick)
    finally:
        for layer in engine.layers:
            parametrize.remove_parametrizations(layer.module, "weight",
                                                leave_parametrized=False)
    logp = torch.log_softmax(mixer.logits.detach(), 1)
    config = {l.name: engine.labels[int(logp[i].argmax())] for i, l in enumerate(engine.layers)}
    engine.weights = Weights(engine.layers)  # quantize the weights this trial trained
    point = engine.evaluate(config, f"gumbel lambda {lam:.3g}")
    candidate = point
    if engine.opts.max_bits is not None and not engine.within(point):
        candidate = engine.evaluate(_repair(engine, config, logp),
                                    f"gumbel lambda {lam:.3g}, repaired")
    engine.model.load_state_dict(engine.initial)
    engine.weights = Weights(engine.layers)
    probabilities = {l.name: float(logp[i, engine.labels.index(candidate.config[l.name])]
                                   .exp()) for i, l in enumerate(engine.layers)}
    engine.progress.tick(0, f"{point.bits:.2f} bits, val {100 * point.accuracy:.1f} %")
    return {"lambda": lam, "point": vars(point), "candidate": vars(candidate),
            "probabilities": probabilities}


class Mixer(torch.nn.Module):
    """SpikeHQ's relaxation: per layer, logits over the candidates; each step draws Gumbel
    noise and mixes the candidates' quantized weights with softmax((logits + noise) / tau)."""

    def __init__(self, layers: list[Layer], choices: list[Choice], opts: Options):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(len(layers), len(choices)))
        self.choices = choices
        self.scales = [[quantize.mse_scale(l.module.weight.detach(), c.scheme, c.code_bits)
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
            q = weight if scale is None else quantize.fake_quant(weight, scale, choice.scheme,
                                                                 choice.code_bits)
            out = out + p[c] * q
        return out
