"""The shape of the value a pickle builds, read from its opcodes without executing any.

torch.load(weights_only=True) builds only tensors and plain containers, but a 1 KB pickle
can still describe a value nested a million levels deep (its hashing or printing overflows
the C stack) or a tuple that holds itself twice forty times over (2^40 values once
expanded: hashing it never ends). `check` follows the pickle machine's stack, memo and
marks (pickletools.genops) and records which object contains which; containers are
objects, so filling a list after it was memoized or shared is counted where it lands. It
then measures every object's depth and expanded size over that graph and refuses the
pickle above MAX_DEPTH or MAX_NODES, or if a value contains itself.
"""

from __future__ import annotations

import io
import pickletools

from .errors import BadInputError

MAX_DEPTH = 100  # nesting of any value (a checkpoint is about 6 deep)
MAX_NODES = 20_000_000  # any value's size with every shared reference expanded
MAX_OBJECTS = 5_000_000  # objects a pickle may create (a 9 M-parameter checkpoint: ~3,000)
MAX_BYTES = 64 << 20  # a checkpoint's pickle holds structure; tensor data lives beside it

_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}
_FILL_TO_MARK = {"APPENDS", "SETITEMS", "ADDITEMS"}  # pop to the mark into the object below
_FILL = {"APPEND": 1, "BUILD": 1, "SETITEM": 2}  # pop n items into the object below


def check(data: bytes, where: str) -> None:
    """Refuse a pickle that is too big, too deep, too large once expanded, or cyclic."""
    if len(data) > MAX_BYTES:
        raise BadInputError(f"{where}: its pickle is {len(data) / 2**20:.0f} MiB; a model "
                            f"file's is far smaller (limit {MAX_BYTES >> 20} MiB)")
    try:
        children = _object_graph(pickletools.genops(io.BytesIO(data)), where)
    except (ValueError, IndexError, KeyError, TypeError, EOFError):
        return  # not a well-formed pickle: torch.load refuses it with its own message
    depth, size = _measure(children, where)
    if depth > MAX_DEPTH or size > MAX_NODES:
        shape = (f"nested more than {MAX_DEPTH} levels deep" if depth > MAX_DEPTH else
                 f"of more than {MAX_NODES:,} values once its shared parts are expanded")
        raise BadInputError(f"{where} holds a pickled value {shape}; no model file looks "
                            "like this, and loading it would exhaust memory or time")


def _object_graph(ops, where: str) -> list[list[int]]:
    """children[i]: the objects object i contains (its items, its arguments, its state)."""
    children: list[list[int]] = []
    stack: list[int] = []
    marks: list[int] = []
    memo: dict = {}

    def new(items) -> int:
        children.append(list(items))
        if len(children) > MAX_OBJECTS:
            raise BadInputError(f"{where}: its pickle creates more than {MAX_OBJECTS:,} "
                                "objects; a model file's creates a few thousand")
        return len(children) - 1

    def to_mark() -> list[int]:
        at = marks.pop()
        items = stack[at:]
        del stack[at:]
        return items

    for op, arg, _ in ops:
        name = op.name
        if name == "STOP":
            break
        if name == "MARK":
            marks.append(len(stack))
        elif name in _PUT or name == "MEMOIZE":
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in _GET:
            stack.append(memo[arg])
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in _FILL_TO_MARK:
            items = to_mark()
            children[stack[-1]].extend(items)
        elif name in _FILL:
            items = [stack.pop() for _ in range(_FILL[name])]
            children[stack[-1]].extend(items)
        else:  # pops what the opcode consumes, pushes a new object made of it
            before = op.stack_before
            items = to_mark() if pickletools.markobject in before else []
            below = before.index(pickletools.markobject) if items or \
                pickletools.markobject in before else len(before)
            items += [stack.pop() for _ in range(below)]
            for _ in op.stack_after:
                stack.append(new(items))
    return children


def _measure(children: list[list[int]], where: str) -> tuple[int, int]:
    """(largest depth, largest expanded size) over all objects; a cycle is refused."""
    count = len(children)
    depth, size, state = [0] * count, [0] * count, [0] * count  # state: 0 new, 1 open, 2 done
    for root in range(count):
        if state[root]:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                if state[node] == 2:
                    continue
                state[node] = 1
            kids = children[node]
            if i < len(kids):
                work.append((node, i + 1))
                child = kids[i]
                if state[child] == 1:
                    raise BadInputError(f"{where} holds a pickled value that contains itself; "
                                        "no model file looks like this")
                if state[child] == 0:
                    work.append((child, 0))
            else:
                depth[node] = 1 + max((depth[c] for c in kids), default=-1)
                size[node] = min(MAX_NODES + 1, 1 + sum(size[c] for c in kids))
                state[node] = 2
    return max(depth, default=0), max(size, default=0)
