"""Which axis of a lifted tensor is time, batch, time x batch or a feature: by rule.

SpikingJelly code moves time around freely: a multi-step layer sees `[T, B, ...]`, a
convolution `[T*B, ...]` (time-major), a single-step layer `[B, ...]`, and a neuron called
once per step `[1, B, ...]`. The frontend gives every activation a `Layout`: one role per
torch axis,

    T   time (length T, or 1 for a unit time axis a single step adds)
    B   batch
    TB  time and batch merged, time-major (what flatten(0, 1) of [T, B, ...] gives)
    F   a feature axis (channels, tokens, heads, pixels, ...)

and each op's rule derives its output's layout from its inputs' layouts and the op's own
semantics (`flatten(0, 1)` merges T and B; `linear` keeps every axis; `mean(0)` over T
leaves time). Shapes only decide what the op's arguments leave open, `view` and `reshape`,
and there the rule is written down (`reshape`) and the batch size is never guessed from a
dimension that merely happens to equal it.

The IR value of an activation is its tensor at one timestep: the torch shape without its T
axis, with the batch axis (B or TB) as the symbolic "N". See docs/ir.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

T, B, TB, F = "T", "B", "TB", "F"
_NAMES = {T: "time", B: "batch", TB: "time x batch", F: "feature"}


class AxisError(Exception):
    """An op would mix or move the time and batch axes in a way snnc cannot lift."""


@dataclass(frozen=True)
class Layout:
    roles: tuple[str, ...]

    def __post_init__(self):
        roles = tuple(self.roles)
        object.__setattr__(self, "roles", roles)
        if sum(r in (B, TB) for r in roles) != 1:
            raise AxisError(f"a tensor with axes {self} has no single batch axis")
        if roles.count(T) + roles.count(TB) > 1:
            raise AxisError(f"a tensor with axes {self} has more than one time axis")

    def __str__(self) -> str:
        return "[" + ", ".join(self.roles) + "]"

    @property
    def rank(self) -> int:
        return len(self.roles)

    @property
    def batch_axis(self) -> int:
        return next(i for i, r in enumerate(self.roles) if r in (B, TB))

    @property
    def time_axis(self) -> int | None:
        return next((i for i, r in enumerate(self.roles) if r in (T, TB)), None)

    @property
    def step_roles(self) -> tuple[str, ...]:
        """The roles of the one-step IR value: no T axis, TB becomes B."""
        return tuple(B if r == TB else r for r in self.roles if r != T)

    def axis(self, axis: int) -> int:
        if not -self.rank <= axis < self.rank:
            raise AxisError(f"axis {axis} is out of range for a rank-{self.rank} tensor")
        return axis % self.rank

    def step_axis(self, axis: int) -> int:
        """The IR axis of feature axis `axis`; refuses the time and batch axes."""
        axis = self.axis(axis)
        if self.roles[axis] != F:
            raise AxisError(f"works on axis {axis}, the {_NAMES[self.roles[axis]]} axis of a "
                            f"tensor with axes {self}; only feature axes can be used here")
        return sum(1 for r in self.roles[:axis] if r != T)

    def drop(self, axis: int) -> "Layout":
        axis = self.axis(axis)
        return Layout(self.roles[:axis] + self.roles[axis + 1:])

    def insert(self, axis: int, role: str = F) -> "Layout":
        axis = axis % (self.rank + 1)
        return Layout(self.roles[:axis] + (role,) + self.roles[axis:])

    def step_shape(self, shape, batch_symbol: str):
        """The IR shape of a torch tensor of this layout: no T axis, N for the batch."""
        return tuple(batch_symbol if r in (B, TB) else _static(d, r)
                     for r, d in zip(self.roles, shape) if r != T)


def permute(layout: Layout, dims) -> tuple[Layout, list[int]]:
    """The permuted layout and the permutation of the IR value's axes."""
    dims = [layout.axis(d) for d in dims]
    if sorted(dims) != list(range(layout.rank)):
        raise AxisError(f"{dims} is not a permutation of {layout.rank} axes")
    step_index = {a: i for i, a in enumerate(a for a in range(layout.rank)
                                               if layout.roles[a] != T)}
    return (Layout(tuple(layout.roles[d] for d in dims)),
            [step_index[d] for d in dims if layout.roles[d] != T])


def _static(dim, role: str) -> int:
    if not isinstance(dim, int):
        raise AxisError(f"has a dynamic size ({dim}) on a {_NAMES[role]} axis; only the "
                        "batch may be dynamic (torch.export.Dim on the batch axis)")
    return dim


def flatten(layout: Layout, start: int, end: int) -> Layout:
    """torch.flatten(start, end): T then B merge into TB; feature axes merge into one."""
    start, end = layout.axis(start), layout.axis(end)
    if start == end:
        return layout
    part = layout.roles[start:end + 1]
    if part == (T, B):
        merged = TB
    elif all(r == F for r in part):
        merged = F
    else:
        raise AxisError(f"flattens axes {start}..{end} of a tensor with axes {layout}: only "
                        "time with batch (flatten(0, 1) of [T, B, ...]) or feature axes with "
                        "each other can be merged")
    return Layout(layout.roles[:start] + (merged,) + layout.roles[end + 1:])


def unflatten(layout: Layout, axis: int, sizes, steps: int, batch) -> Layout:
    """torch.unflatten(axis, sizes): TB splits into T, B; a feature axis into features."""
    axis = layout.axis(axis)
    role = layout.roles[axis]
    if role == F:
        new = (F,) * len(sizes)
    elif role == TB and len(sizes) == 2 and sizes[0] in (steps, -1) and sizes[1] in (batch, -1, None):
        new = (T, B)
    else:
        raise AxisError(f"unflattens axis {axis}, the {_NAMES[role]} axis, into {list(sizes)}: "
                        f"only [T*B, ...] -> [T={steps}, B, ...] or a feature axis can be split")
    return Layout(layout.roles[:axis] + new + layout.roles[axis + 1:])


# (roles of the leading axes, their sizes) a view/reshape may produce.
def _prefixes(time_size: int | None, batch):
    if time_size is None:  # no time axis in the input: keep it out, or add a unit one
        return [((B,), (batch,)), ((T, B), (1, batch))]
    found = [((T, B), (time_size, batch)), ((TB,), (time_size * batch,))]
    if time_size == 1:
        found.append(((B,), (batch,)))
    return found


def reshape(layout: Layout, in_shape, out_shape, batch, want: str | None = None) -> Layout:
    """view/reshape: the time and batch axes must stay leading, as T, B or TB.

    The rule: the output's leading axes are one of [T, B], [T*B] (or [B] without time),
    the rest are features holding the same number of elements as the input's features.
    Only a static batch of 1 lets two readings fit ([T, 1, C] is [T, B, F] and
    [TB, F, F]); both put the same numbers in the same order, and the batch is never
    inferred from a dimension that happens to equal it. The reading is then the one the
    op that reads the result needs (`want`: "split" for [T, B, ...] as a neuron or
    flatten(0, 1) needs it, "merged" for [T*B, ...] as a convolution needs it), else the
    one that keeps the input's feature shape (a view that only regroups time and batch),
    else [T, B, ...]: a unit axis right after time is the batch (code writes
    view(T, B, ...), hardly ever a unit feature axis after T*B)."""
    lead = layout.roles[:2] if layout.roles[:2] == (T, B) else layout.roles[:1]
    if lead not in ((T, B), (TB,), (B,)):
        raise AxisError(f"reshapes a tensor with axes {layout}; the time and batch axes must "
                        "lead ([T, B, ...], [T*B, ...] or [B, ...])")
    if lead == (TB,):
        time_size = _div(in_shape[0], batch)
    else:
        time_size = in_shape[0] if lead == (T, B) else None
    features = tuple(in_shape[len(lead):])
    if any(not isinstance(d, int) for d in features + tuple(out_shape[2:])):
        raise AxisError("reshapes with a dynamic size on a feature axis")
    wanted = {"split": (T, B), "merged": (TB,)}.get(want or "")
    fits = []
    for roles, sizes in _prefixes(time_size, batch):
        k = len(roles)
        if len(out_shape) < k or any(not _same(o, s) for o, s in zip(out_shape, sizes)):
            continue
        rest = tuple(out_shape[k:])
        if math.prod(rest) == math.prod(features):
            fits.append((roles != wanted, rest != features, roles != (T, B), roles))
    if not fits:
        raise AxisError(f"reshapes {list(in_shape)} (axes {layout}) to {list(out_shape)}, "
                        "which moves the time or batch axis; keep [T, B, ...] or [T*B, ...] "
                        "leading and reshape only the feature axes")
    roles = min(fits, key=lambda f: f[:3])[3]
    return Layout(roles + (F,) * (len(out_shape) - len(roles)))


def reshape_whole(layout: Layout, in_shape, out_shape) -> Layout:
    """view/reshape of a tensor computed once per run (Act.post, a whole-run tensor): any
    axes move but the batch, which stays one axis of its own with as many elements before
    it (and after it) as in the input. At a static batch of 1 a unit axis next to it can
    fit as well: if the axes before the batch are left as they were, the batch stays where
    it was (a view of the axes after it); else that is refused, not guessed."""
    b = layout.batch_axis
    if layout.roles[b] != B or any(not isinstance(d, int) for i, d in enumerate(in_shape)
                                   if i != b):
        raise AxisError(f"reshapes a tensor with axes {layout}")
    before, after = math.prod(in_shape[:b]), math.prod(in_shape[b + 1:])
    fits = [j for j, d in enumerate(out_shape) if _same(d, in_shape[b])
            and all(isinstance(o, int) for i, o in enumerate(out_shape) if i != j)
            and math.prod(out_shape[:j]) == before and math.prod(out_shape[j + 1:]) == after]
    if len(fits) > 1 and b in fits and tuple(out_shape[:b]) == tuple(in_shape[:b]):
        fits = [b]
    if len(fits) != 1:
        raise AxisError(
            f"reshapes {list(in_shape)} (axes {layout}) to {list(out_shape)}, "
            + ("which splits or merges the batch axis" + (
                "; at an example batch of 1 an earlier view may have taken a unit axis for "
                "the batch: export with an example batch of 2 or more" if in_shape[b] == 1
                else "") if not fits else
               f"where the batch can be axis {fits[0]} or {fits[1]} at an example batch of "
               "1; export with an example batch of 2 or more, or a dynamic batch "
               "(torch.export.Dim)"))
    return Layout(tuple(B if i == fits[0] else F for i in range(len(out_shape))))


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except TypeError:
        return False


def _div(a, b):
    try:
        q = a // b if isinstance(a, int) and isinstance(b, int) else a / b
        return int(q) if getattr(q, "is_Integer", isinstance(q, int)) else q
    except (TypeError, ZeroDivisionError):
        return None


def broadcast(layouts: list[Layout]) -> Layout:
    """Elementwise ops: operands align from the right; the time axis may be missing from
    one (a value that is the same every step) but the roles of shared axes must agree."""
    widest = max(layouts, key=lambda l: l.rank)
    for other in layouts:
        for i in range(1, other.rank + 1):
            a, b = widest.roles[-i], other.roles[-i]
            if a != b:
                raise AxisError(f"combines a tensor with axes {widest} with one with axes "
                                f"{other}: their time and batch axes do not line up")
        missing = widest.roles[:widest.rank - other.rank]
        if any(r in (B, TB) for r in missing):
            raise AxisError(f"combines a tensor with axes {widest} with one with axes {other}")
    return widest
