"""The shape of the value a pickle builds, read from its opcodes without executing any.

torch.load(weights_only=True) builds only tensors and plain containers, but a 1 KB pickle
can still describe a value nested a million levels deep (its hashing or printing overflows
the C stack), a tuple that holds itself twice forty times over (2^40 values once expanded:
hashing it never ends), or call an allowed constructor such as bytearray(4e9). `check`
follows the pickle machine's stack, memo and marks (pickletools.genops) and records which
object contains which; containers are objects, so filling a list after it was memoized or
shared is counted where it lands. It refuses a pickle that names a global a model file
never needs (GLOBALS: tensors, storages, OrderedDict), that has more than MAX_OPS opcodes
or MAX_OBJECTS objects, whose values nest deeper than MAX_DEPTH or expand beyond MAX_NODES,
that hashes (as a dict key or set member) a value of more than MAX_KEY_NODES, or whose
value contains itself. A pickle it cannot follow to its end is refused too: one without
STOP, with bytes after it (torch.save writes none), or whose opcodes do not fit the stack
they work on; torch's unpickler would execute its opcodes one by one before reaching the
bad end, and a few hundred bytes of them can keep it busy for ever.

`check` returns the records the pickle's persistent ids name (torch.save's
('storage', type, key, location, numel)): the data/<key> members of the file it needs.
"""

from __future__ import annotations

import io
import pickletools
import re

from snnc.errors import BadInputError

MAX_DEPTH = 100  # nesting of any value (a checkpoint is about 6 deep)
MAX_NODES = 20_000_000  # any value's size with every shared reference expanded
MAX_OBJECTS = 2_000_000  # objects a pickle may create (a 9 M-parameter checkpoint: ~3,000)
MAX_OPS = 4_000_000  # opcodes, marks included
MAX_KEY_NODES = 64  # a dict key or set member (a checkpoint's are strings: 1)
MAX_BYTES = 16 << 20  # a checkpoint's pickle holds structure; tensor data lives beside it
# The globals a checkpoint or a tensor file names: tensors, their storages, dtypes, sizes,
# devices and OrderedDict. Everything else torch's weights-only unpickler would also allow
# (bytearray, set, ...) a model file never needs.
GLOBALS = re.compile(
    r"collections\.OrderedDict|torch\._utils\._rebuild_(tensor_v2|parameter"
    r"|parameter_with_state)|torch\.[A-Za-z0-9]*Storage|torch\.storage\.UntypedStorage"
    r"|torch\.Size|torch\.device|torch\.(float|double|half|bfloat16|int|long|short|bool"
    r"|uint8|int8|int16|int32|int64|float16|float32|float64)")
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
            "BINSTRING", "SHORT_BINSTRING"}

_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}
_FILL_TO_MARK = {"APPENDS", "SETITEMS", "ADDITEMS"}  # pop to the mark into the object below
_FILL = {"APPEND": 1, "BUILD": 1, "SETITEM": 2}  # pop n items into the object below


def check(data: bytes, where: str, any_global: bool = False) -> set[str]:
    """Refuse a pickle of the kinds the module docstring lists; the storage records its
    persistent ids name. `any_global`: the user trusts the file (--trust-pickle), so it may
    name any global."""
    if len(data) > MAX_BYTES:
        raise BadInputError(f"{where}: its pickle is {len(data) / 2**20:.0f} MiB; a model "
                            f"file's is far smaller (limit {MAX_BYTES >> 20} MiB)")
    try:
        children, hashed, records = _object_graph(pickletools.genops(io.BytesIO(data)), where,
                                                  any_global, len(data))
    except (ValueError, IndexError, KeyError, TypeError, EOFError) as error:
        raise BadInputError(
            f"{where}: its pickle cannot be read to its end ({str(error)[:100] or 'malformed'}"
            "), so snnc cannot check what loading it would do; torch.save writes whole "
            "pickles: the file is truncated, damaged or crafted. Write it again with "
            "torch.save") from None
    depth, size = _measure(children, where)
    if max(depth, default=0) > MAX_DEPTH or max(size, default=0) > MAX_NODES:
        shape = (f"nested more than {MAX_DEPTH} levels deep" if max(depth) > MAX_DEPTH else
                 f"of more than {MAX_NODES:,} values once its shared parts are expanded")
        raise BadInputError(f"{where} holds a pickled value {shape}; no model file looks "
                            "like this, and loading it would exhaust memory or time")
    big = [size[k] for k in hashed if size[k] > MAX_KEY_NODES]
    if big:
        raise BadInputError(f"{where} holds a pickled dict key or set member of {big[0]:,} "
                            f"values (limit {MAX_KEY_NODES}); a model file's keys are names")
    return records


def _object_graph(ops, where: str, any_global: bool,
                  length: int) -> tuple[list[list[int]], set[int], set[str]]:
    """(children[i]: the objects object i contains (its items, its arguments, its state),
    in stack order; the objects that get hashed as dict keys or set members; the records
    persistent ids name). Raises ValueError unless the opcodes end with STOP at `length`."""
    children: list[list[int]] = []
    hashed: set[int] = set()
    strings: dict[int, str] = {}
    persistent: list[int] = []
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

    for count, (op, arg, at) in enumerate(ops):
        name = op.name
        if count > MAX_OPS:
            raise BadInputError(f"{where}: its pickle has more than {MAX_OPS:,} operations; "
                                "a model file's has a few thousand")
        if name == "STOP":
            if at + 1 != length:
                raise ValueError(f"{length - at - 1:,} byte(s) after STOP")
            stack.pop()
            return children, hashed, {key for pid in persistent if (key := _record(
                children[pid], strings)) is not None}
        if name in ("GLOBAL", "STACK_GLOBAL") and not any_global:
            _check_global(arg.replace(" ", ".") if name == "GLOBAL" else
                          f"{strings.get(stack[-2], '?')}.{strings.get(stack[-1], '?')}",
                          where)
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
            hashed.update(items if name == "ADDITEMS" else items[0::2] if
                          name == "SETITEMS" else ())
            children[stack[-1]].extend(items)
        elif name in _FILL:
            items = [stack.pop() for _ in range(_FILL[name])]
            if name == "SETITEM":
                hashed.add(items[1])
            children[stack[-1]].extend(items)
        else:  # pops what the opcode consumes, pushes a new object made of it
            before = op.stack_before
            items = to_mark() if pickletools.markobject in before else []
            below = before.index(pickletools.markobject) if items or \
                pickletools.markobject in before else len(before)
            if below:
                if len(stack) < below:
                    raise IndexError("an operation finds too few values on the stack")
                items += stack[-below:]
                del stack[-below:]
            if name == "BINPERSID":
                persistent.append(items[0])
            hashed.update(items[0::2] if name == "DICT" else items if name == "FROZENSET"
                          else ())
            for _ in op.stack_after:
                stack.append(new(items))
                if name in _STRINGS:
                    strings[stack[-1]] = str(arg)
    raise ValueError("no STOP at its end")


def _record(pid: list[int], strings: dict[int, str]) -> str | None:
    """The record key of torch.save's persistent id ('storage', type, key, location,
    numel), or None for anything else (torch.load refuses it)."""
    if len(pid) == 5 and strings.get(pid[0]) == "storage":
        return strings.get(pid[2])
    return None


def _check_global(target: str, where: str) -> None:
    if not GLOBALS.fullmatch(target):
        raise BadInputError(
            f"{where} is a pickled Python object: its pickle calls {target[:80]} (a model file "
            "needs only tensors, storages and OrderedDict; a whole nn.Module saved with "
            "torch.save(model) names its classes). Loading it runs arbitrary code from the "
            "file, so snnc refuses it. Save the model with torch.export.save or as an snnc "
            "checkpoint (docs/model_files.md), or pass --trust-pickle if you trust this file.")


def _measure(children: list[list[int]], where: str) -> tuple[list[int], list[int]]:
    """(depth, expanded size) of every object; a cycle is refused."""
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
    return depth, size
