"""QSViT's sensitivity-guided search: every layer alone at every candidate, the rest float, on
the validation data (accuracy, and the divergence of the logits from the float model's);
base settings from that sweep (per layer the fewest bits that alone lose no validation
sample); then guided greedy steps on the whole configuration (the move that costs the least
divergence per bit saved or, under the budget, gains the most per bit spent; the sweep
shortlists the moves and each is evaluated on the whole model) until the budget is met.
The divergence only guides which configurations are evaluated: the result is the best one
evaluated within the budget (engine.Search.best: validation accuracy, then fewer bits).
"""

from __future__ import annotations

import math

from snnc.quant.search import schema as s
from snnc.quant.search.engine import KL_ROUNDING, Point, Search
from snnc.quant.search.space import choice_of

PHASES = ("lower", "raise", "done")


def run(engine: Search) -> tuple[dict[str, str], dict, Point]:
    sweep: dict = engine.state.data.setdefault("sweep", {})
    engine.progress.begin("sensitivity sweep", len(engine.layers) * len(engine.labels))
    engine.progress.tick(len(sweep) * len(engine.labels))
    for layer in engine.layers:
        if layer.name in sweep:
            continue
        row = {}
        for label in engine.labels:
            row[label] = list(engine.score({layer.name: label}))
            engine.progress.tick(note=layer.name)
        sweep[layer.name] = row
        engine.commit()
    # Base settings: per layer the fewest bits that alone lose no validation sample.
    base = {}
    for layer in engine.layers:
        row = sweep[layer.name]
        lossless = [l for l in engine.labels if row[l][0] >= engine.float_accuracy - 1e-12]
        pool = lossless or engine.labels
        base[layer.name] = min(pool, key=lambda l: (choice_of(l).bits, row[l][1])
                               if lossless else (row[l][1], choice_of(l).bits))
    trail: list = engine.state.data.setdefault("trail", [])
    if not trail:
        point = engine.evaluate(base, "base")
        trail.append(vars(point))
        engine.commit()
    current = Point(**trail[-1])
    engine.progress.begin("guided greedy", len(engine.layers) * 4)
    engine.progress.tick(len(trail) - 1)
    bit_mode = engine.opts.max_bits is not None
    phase = engine.state.data.get("phase") or (
        "lower" if bit_mode or engine.within(current) else "raise")
    while phase != "done":
        move = _greedy_step(engine, current, sweep, phase)
        if move is None:
            if bit_mode:
                phase = "raise" if phase == "lower" else "done"
            else:
                phase = "lower" if phase == "raise" and engine.within(current) else "done"
        else:
            current = move
            trail.append(vars(current))
            engine.progress.tick(note=f"{current.bits:.2f} bits, "
                                 f"val {100 * current.accuracy:.1f} %")
        engine.state.data["phase"] = phase
        engine.commit()
    # The divergence only chose what to evaluate: the result is the best point evaluated
    # (engine.rank), wherever the greedy walk ended. The points are the state's too, so a
    # resumed search chooses among the same ones.
    chosen = engine.best()
    if chosen is None:
        return None, {}, None
    details = {layer.name: {"base": base[layer.name],
                            "solo_accuracy": sweep[layer.name][chosen.config[layer.name]][0],
                            "solo_divergence": sweep[layer.name][chosen.config[layer.name]][1]}
               for layer in engine.layers}
    return chosen.config, details, chosen


def most_steps(engine: Search) -> int:
    """The most greedy steps a search takes: it has at most two phases (lower then raise
    under --max-bits, raise then lower under --max-drop), and each step of a phase moves
    one layer to strictly fewer (or more) bits, so a layer moves at most once per bit width
    but one in a phase."""
    widths = len({c.bits for c in engine.choices})
    return 2 * len(engine.layers) * (widths - 1)


def most_points(engine: Search) -> int:
    """The most points a search evaluates: the base, then per call of _greedy_step (each
    step, and the one per phase that finds no move) at most `shortlist` moves (4x when
    lowering under --max-drop), and never more than the moves there are."""
    per_call = engine.opts.shortlist * (4 if engine.opts.max_drop is not None else 1)
    moves = len(engine.layers) * (len(engine.labels) - 1)
    return 1 + (most_steps(engine) + 2) * min(per_call, moves)


def schema(engine: Search) -> s.MethodState:
    """This method's fields of the state: the sweep (per finished layer, every candidate's
    [accuracy, divergence]), the trail of greedy steps from the base (each one of the
    measured points) and the phase; its result is the best measured point (engine.best), once
    the phase is done."""
    names = [l.name for l in engine.layers]
    accuracy, divergence = engine.accuracy_spec(), s.real(-KL_ROUNDING)
    row = s.mapping(engine.labels, s.pair(accuracy, divergence), "a candidate")
    layers, widths = len(names), len({c.bits for c in engine.choices})
    steps = (most_steps(engine), f"the base and at most {most_steps(engine)} greedy steps: "
             f"2 phases x {layers} layers x {widths - 1} moves between {widths} bit widths")
    points = (most_points(engine), f"the base and at most {most_steps(engine) + 2} greedy "
              f"steps of at most {(most_points(engine) - 1) // (most_steps(engine) + 2)} "
              "evaluations each")

    def order(data, where):
        trail, sweep = data.get("trail", []), data.get("sweep", {})
        if trail and len(sweep) < len(names):
            raise s.Damaged("trail", "is there before the sweep of every layer finished")
        if trail and trail[0]["stage"] != "base":
            raise s.Damaged("trail[0].stage", "is not the base settings")
        measured = {s.frozen(p) for p in data.get("points", [])}  # a set: linear, not n x m
        for i, point in enumerate(trail):
            if s.frozen(point) not in measured:
                raise s.Damaged(f"trail[{i}]", "is not one of the points the search measured")
            before = trail[i - 1]["config"] if i else None
            moved = [n for n in names if before and point["config"][n] != before[n]]
            if i and (len(moved) != 1 or choice_of(point["config"][moved[0]]).bits
                      == choice_of(before[moved[0]]).bits):
                raise s.Damaged(f"trail[{i}]", "is not one greedy step from the point before "
                                             "it (one layer moved to other bits)")
        if "phase" in data and not trail:
            raise s.Damaged("phase", "is there without a trail of greedy steps")
        if "result" in data and data.get("phase") != "done":
            raise s.Damaged("result", "is there before the greedy search finished")

    details = s.record({"base": s.one_of(engine.labels, "a candidate"),
                        "solo_accuracy": accuracy, "solo_divergence": divergence})
    return s.MethodState(
        fields={"sweep": s.mapping(names, row, "a conv/linear layer", complete=False),
                "trail": s.items(engine.point_spec("base|greedy"), steps[0] + 1, steps[1]),
                "phase": s.one_of(PHASES, "a phase")},
        details=s.mapping(names, details, "a conv/linear layer"), stages="base|greedy",
        points=points, rules=[order])


def _greedy_step(engine: Search, current: Point, sweep: dict, phase: str) -> Point | None:
    """One step of the guided greedy search, or None when `phase` has no step left.

    "lower" (while over the bit budget, or while within the accuracy budget): the move
    to fewer bits that adds the least divergence per bit saved. "raise" (while the bit
    budget has room, or outside the accuracy budget): the move to more bits that removes
    the most divergence per bit spent. The sweep's solo divergences shortlist the moves;
    the shortlist is evaluated on the whole model."""
    bit_mode, lower = engine.opts.max_bits is not None, phase == "lower"
    if engine.within(current) and (lower if bit_mode else not lower):
        return None
    total = sum(l.parameters for l in engine.layers)
    moves = []
    for layer in engine.layers:
        now = current.config[layer.name]
        row = sweep[layer.name]
        for label in engine.labels:
            delta = choice_of(label).bits - choice_of(now).bits
            if delta == 0 or (delta < 0) != lower:
                continue
            if bit_mode and not lower and \
                    current.bits + delta * layer.parameters / total > engine.opts.max_bits + 1e-9:
                continue
            per_bit = (row[label][1] - row[now][1]) / (abs(delta) * layer.parameters)
            moves.append((per_bit, layer.name, label))
    moves.sort()
    best, best_score, fitting = None, math.inf, 0
    # the best `shortlist` moves; lowering under --max-drop goes further down the list
    # (up to 4x) for moves that keep the accuracy budget
    for _, name, label in moves[:engine.opts.shortlist * (4 if lower and not bit_mode else 1)]:
        if fitting == engine.opts.shortlist:
            break
        point = engine.evaluate(dict(current.config, **{name: label}), "greedy")
        if not bit_mode and lower and not engine.within(point):
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
