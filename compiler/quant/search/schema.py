"""What a search state may hold, checked as a whole before a resumed search uses any of it.

A state file's key binds it to the model, the data and the options, but it is no signature:
anyone can write a state with a matching key. So every field is checked against a schema
built for this search (engine.Search.state_schema, with each method's own fields from its
`schema(engine)`): types, finite numbers in their ranges, the search's layers and candidate
labels, figures the search can recompute (a configuration's average bits), a result within
the budget, and the fine-tuning state's tensors against the model and optimizer it is loaded
into. The first field that does not fit is named in one BadInputError.

A spec is a function `spec(value, where)` that returns nothing or raises Damaged; the
builders below make them, and `record` joins fields and cross-field rules.

A state is small on disk however long its lists are (a pickle stores a repeated entry once:
400,000 points fit in 850 KB), so its size says nothing about the work it asks for. Every
list therefore has a bound, what a search of these options makes (`items`), checked before
any entry; dicts have the keys the search writes, the first other key ending the walk; and
no rule compares every pair of entries (`frozen` makes entries hashable, for sets).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from snnc.errors import BadInputError

Spec = Callable[[Any, str], None]
Rule = Callable[[Any, str], None]
RTOL = 1e-5  # what the search recomputes (scales, energies, the schedule) must agree to this
_NONE = object()


class Damaged(Exception):
    """A field of the state that does not fit its schema: where, and what is wrong."""

    def __init__(self, where: str, what: str):
        self.where, self.what = where, what
        super().__init__(f"{where or 'the state'} {what}")


@dataclass
class MethodState:
    """A method's part of the schema: its own top-level fields (each optional), the spec of
    its per-layer `details` in the result, the stages its points carry, the most points a
    search of these options evaluates (with the reason, said when a state holds more), and
    rules that tie its fields to each other and to the result (rule(state, "") raising
    Damaged)."""
    fields: dict[str, Spec]
    details: Spec
    stages: str  # a regular expression
    points: tuple[int, str]  # the most points the method evaluates, and why (for the message)
    rules: list[Rule] = field(default_factory=list)


def check(data: Any, spec: Spec, path: str | None) -> None:
    """BadInputError naming the first field of the state at `path` that does not fit."""
    try:
        spec(data, "")
    except Damaged as damage:
        raise BadInputError(
            f"--resume: the search state {path} is damaged or was written by another version "
            f"of snnc: {damage}. Rerun without --resume to start the search over (that "
            "rewrites the state file)") from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return "a tensor" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def at(where: str, key: Any) -> str:
    """The path of a field: .name for an identifier, [key] for anything else."""
    if isinstance(key, str) and key.isidentifier():
        return f"{where}.{key}" if where else key
    return f"{where}[{key!r}]"


# ----------------------------------------------------------------------------- scalars

def const(expected: Any) -> Spec:
    def spec(value, where):
        if type(value) is not type(expected) or value != expected:
            raise Damaged(where, f"is {_show(value)}, not {expected!r}")
    return spec


def real(low: float = -math.inf, high: float = math.inf) -> Spec:
    """A finite int or float (not a bool) in [low, high]."""
    def spec(value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Damaged(where, f"is {_kind(value)}, not a number")
        try:
            float(value)  # a whole number beyond float's range: later arithmetic overflows
        except OverflowError:
            raise Damaged(where, f"is a whole number of {value.bit_length()} bits, beyond "
                                 "any float") from None
        if not math.isfinite(value):
            raise Damaged(where, f"is {value!r}, not a finite number")
        if not low <= value <= high:
            raise Damaged(where, f"is {value!r}, outside {low:g}..{high:g}")
    return spec


def whole(low: int, high: int) -> Spec:
    def spec(value, where):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Damaged(where, f"is {_kind(value)}, not a whole number")
        if not low <= value <= high:
            raise Damaged(where, f"is {value}, outside {low}..{high}")
    return spec


def text(pattern: str) -> Spec:
    """A str matching the regular expression `pattern` in full."""
    def spec(value, where):
        if not isinstance(value, str):
            raise Damaged(where, f"is {_kind(value)}, not a string")
        if not re.fullmatch(pattern, value):
            raise Damaged(where, f"is {_show(value)}, not one this search writes")
    return spec


def one_of(choices: Iterable[str], what: str) -> Spec:
    choices = list(choices)

    def spec(value, where):
        if not isinstance(value, str) or value not in choices:
            raise Damaged(where, f"is {_show(value)}, not {what} of this search "
                                 f"({', '.join(choices)})")
    return spec


# ---------------------------------------------------------------------------- containers

def record(fields: dict[Any, Spec], optional: Iterable[Any] = (), rules: Iterable[Rule] = ()
           ) -> Spec:
    """A dict with exactly these keys (those in `optional` may be absent), each fitting its
    spec; then each rule(value, where) on the whole."""
    optional, rules = set(optional), list(rules)

    def spec(value, where):
        if not isinstance(value, dict):
            raise Damaged(where, f"is {_kind(value)}, not a record")
        extra = next((k for k in value if k not in fields), _NONE)
        if extra is not _NONE:
            raise Damaged(where, f"has an unexpected field {_show(extra)}")
        for key, sub in fields.items():
            if key in value:
                sub(value[key], at(where, key))
            elif key not in optional:
                raise Damaged(at(where, key), "is missing")
        for rule in rules:
            rule(value, where)
    return spec


def mapping(keys: Iterable[str], value: Spec, what: str, complete: bool = True) -> Spec:
    """A dict from `keys` (every one if `complete`, else some) to values fitting `value`."""
    keys = list(keys)
    known = set(keys)

    def spec(data, where):
        if not isinstance(data, dict):
            raise Damaged(where, f"is {_kind(data)}, not a record")
        for key in data:  # at most len(keys) pass: the first unknown one ends the walk
            if key not in known:
                raise Damaged(where, f"names {_show(key)}, not {what} of this search "
                                     f"({', '.join(keys)})")
        missing = [k for k in keys if k not in data]
        if complete and missing:
            raise Damaged(at(where, missing[0]), "is missing")
        for key, item in data.items():
            value(item, at(where, key))
    return spec


def items(item: Spec, most: int, why: str = "") -> Spec:
    """A list of at most `most` entries (what the search can make: `why`), each fitting
    `item`; the length is checked before any entry."""
    def spec(value, where):
        if not isinstance(value, list):
            raise Damaged(where, f"is {_kind(value)}, not a list")
        if len(value) > most:
            raise Damaged(where, f"has {len(value):,} entries, more than a search of these "
                                 f"options makes: at most {most:,}" + (f" ({why})" if why else ""))
        for i, entry in enumerate(value):
            item(entry, f"{where}[{i}]")
    return spec


def frozen(value: Any) -> Any:
    """A hashable stand-in for a checked field (dicts, lists, strings, numbers), equal for
    equal fields: membership among many entries through a set, in linear time, where `in` on
    a list would compare every pair."""
    if isinstance(value, dict):
        return ("dict", frozenset((k, frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(frozen(v) for v in value))
    return value


def pair(first: Spec, second: Spec) -> Spec:
    def spec(value, where):
        if not isinstance(value, list) or len(value) != 2:
            raise Damaged(where, f"is {_show(value)}, not a list of two numbers")
        first(value[0], f"{where}[0]")
        second(value[1], f"{where}[1]")
    return spec


# ------------------------------------------------------------------------------- tensors

def tensor(like: torch.Tensor, low: float | None = None) -> Spec:
    """A tensor of `like`'s dtype and shape, finite if floating, every element >= low."""
    def spec(value, where):
        if not isinstance(value, torch.Tensor):
            raise Damaged(where, f"is {_kind(value)}, not a tensor")
        if value.dtype != like.dtype or value.shape != like.shape:
            raise Damaged(where, f"is a {value.dtype} tensor of shape {list(value.shape)}, "
                                 f"where the search has {like.dtype} {list(like.shape)}")
        if value.layout != torch.strided or value.is_quantized:
            raise Damaged(where, f"is a {value.layout} tensor, not a dense one")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise Damaged(where, "holds NaN or infinity")
        if low is not None and value.numel() and float(value.min()) < low:
            raise Damaged(where, f"holds {float(value.min())!r}, below {low:g}")
    return spec


def close(a: Any, b: Any) -> bool:
    """Equal, numbers to RTOL (different arithmetic may round differently), tensors too."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape
                and bool(torch.isclose(a, b, rtol=RTOL, atol=0).all()))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-12)
    return type(a) is type(b) and a == b


def same_as(reference: Any) -> Spec:
    """The structure of `reference` (what the search builds itself) with the same values
    (close); every tensor finite."""
    def spec(value, where):
        if isinstance(reference, dict):
            record({k: same_as(v) for k, v in reference.items()})(value, where)
        elif isinstance(reference, (list, tuple)):
            if type(value) is not type(reference) or len(value) != len(reference):
                raise Damaged(where, f"is {_show(value)}, where the search has "
                                     f"{_show(reference)}")
            for i, (v, r) in enumerate(zip(value, reference)):
                same_as(r)(v, f"{where}[{i}]")
        else:
            if isinstance(reference, torch.Tensor):
                tensor(reference)(value, where)
            if not close(value, reference):
                raise Damaged(where, f"is {_show(value)}, where the search computes "
                                     f"{_show(reference)}")
    return spec
