"""What a torch.export archive may hold, checked before torch.export.load reads it.

torch.export.load trusts its input (its documentation: never load an untrusted file). Besides
the pickles snnc.loader forces to weights-only, it evaluates strings of the archive's
models/*.json: every symbolic shape `expr_str` goes through sympy.sympify (Python eval),
`guards_code` is exec'd as Python when the program is turned into a module, and node
targets are looked up by name. It also loads AOTInductor shared libraries found under
data/aotinductor/ and extracts them to disk. So an archive is accepted only if:

- its members are exactly the kinds torch.export.save writes (models/<name>.json,
  data/weights/weight_<i> and their config, data/constants/tensor_<i> and their config,
  data/sample_inputs/<name>.pt, the version files), each name once, no path tricks, at most
  MAX_UNCOMPRESSED bytes in all;
- each weight and constant record is a plain tensor record (weight_<i> / tensor_<i>: no
  custom or opaque objects) whose declared shape fits in its member's bytes;
- in each models/*.json, every expression is arithmetic over shape symbols, every guard a
  comparison of input sizes, every target an operator (check_program_json).

An archive that fails any of these is refused with BadInputError naming what and where.
"""

from __future__ import annotations

import ast
import json
import re
import zipfile

from .errors import BadInputError

MAX_UNCOMPRESSED = 4 << 30  # 4 GiB: far above any spiking network snnc targets
_ID = r"[A-Za-z_][A-Za-z0-9_]*"
_MEMBER = re.compile(
    rf"(?P<root>{_ID})/(?:archive_format|archive_version|byteorder|\.data/version"
    rf"|\.data/serialization_id|models/(?P<model>{_ID})\.json"
    rf"|data/weights/(?:weight_\d+|(?P<wconf>{_ID})_weights_config\.json)"
    rf"|data/constants/(?:tensor_\d+|(?P<cconf>{_ID})_constants_config\.json)"
    rf"|data/sample_inputs/{_ID}\.pt|extra/{_ID}\.json)")
_RECORD = {"weights": re.compile(r"weight_\d+"), "constants": re.compile(r"tensor_\d+")}
# torch._export.serde.schema.ScalarType -> bytes per element (unknown codes refused)
_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1,
             13: 2, 14: 1, 15: 2, 16: 2, 17: 2, 18: 2, 19: 2}


def check(path: str) -> None:
    """Refuse an archive torch.export.load should not be given (module docstring)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            sizes = {info.filename: info.file_size for info in infos}
            _check_members(path, infos)
            for name in sorted(sizes):
                kind = "weights" if name.endswith("_weights_config.json") else \
                    "constants" if name.endswith("_constants_config.json") else None
                if kind:
                    _check_records(path, name, _json(archive, path, name), kind, sizes)
                elif "/models/" in name:
                    check_program_json(_json(archive, path, name), f"{path}: {name}")
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as error:
        raise BadInputError(f"{path}: cannot read the zip archive ({error})") from None


def _check_members(path: str, infos: list[zipfile.ZipInfo]) -> None:
    seen: set[str] = set()
    roots = set()
    for info in infos:
        match = _MEMBER.fullmatch(info.filename)
        if match is None:
            raise BadInputError(
                f"{path} holds {info.filename!r}, which torch.export.save does not write "
                "(AOTInductor libraries, pickled objects, files outside the archive's folder "
                "are refused: loading them could run code); re-export the model with "
                "torch.export.save")
        if info.filename.casefold() in seen:
            raise BadInputError(f"{path} holds {info.filename!r} twice; re-export the model")
        seen.add(info.filename.casefold())
        roots.add(match.group("root"))
    if len(roots) != 1:
        raise BadInputError(f"{path} has {len(roots)} top-level folders; a torch.export "
                            "archive has one")
    root = roots.pop()
    models = [m.group("model") for m in map(_MEMBER.fullmatch, (i.filename for i in infos))
              if m.group("model")]
    needed = [f"{root}/archive_format"] + [
        f"{root}/{part.format(model)}" for model in models
        for part in ("data/sample_inputs/{}.pt", "data/weights/{}_weights_config.json",
                     "data/constants/{}_constants_config.json")]
    missing = [n for n in needed if n.casefold() not in seen] or ([] if models else
                                                                   [f"{root}/models/*.json"])
    if missing:
        raise BadInputError(f"{path} is an incomplete torch.export archive: {missing[0]} is "
                            "missing; write it again with torch.export.save")
    total = sum(info.file_size for info in infos)
    if total > MAX_UNCOMPRESSED:
        raise BadInputError(f"{path} unpacks to {total / 2**30:.1f} GiB, more than snnc reads "
                            f"({MAX_UNCOMPRESSED / 2**30:.0f} GiB)")


def _json(archive: zipfile.ZipFile, path: str, name: str):
    if archive.getinfo(name).file_size > 256 << 20:
        raise BadInputError(f"{path}: {name} is over 256 MiB of JSON")
    try:
        return json.loads(archive.read(name))
    except (ValueError, RecursionError) as error:
        raise BadInputError(f"{path}: {name} is not valid JSON ({str(error)[:120]})") from None


def _check_records(path: str, name: str, config, kind: str, sizes: dict[str, int]) -> None:
    """Every entry a plain tensor record whose declared extent fits in its member."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise BadInputError(f"{path}: {name} has no 'config' mapping")
    folder = name.rsplit("/", 1)[0]
    for fqn, entry in entries.items():
        where = f"{path}: {name}: {str(fqn)[:80]!r}"
        record = entry.get("path_name") if isinstance(entry, dict) else None
        if not isinstance(record, str) or not _RECORD[kind].fullmatch(record):
            raise BadInputError(f"{where} is stored as {str(record)[:60]!r}, not a plain tensor "
                                "record (pickled objects are refused: they could run code)")
        member = f"{folder}/{record}"
        if member not in sizes:
            raise BadInputError(f"{where}: its record {record} is missing from the archive")
        meta = entry.get("tensor_meta")
        if meta is not None and not entry.get("use_pickle"):
            need = _extent(meta, where)
            if need > sizes[member]:
                raise BadInputError(f"{where} declares {need:,} bytes but its record holds "
                                    f"{sizes[member]:,}; the archive is damaged")


def _extent(meta, where: str) -> int:
    """Bytes a strided tensor record must hold."""
    def ints(values):
        if not isinstance(values, list) or not all(
                isinstance(v, dict) and type(v.get("as_int")) is int and v["as_int"] >= 0
                for v in values):
            raise BadInputError(f"{where} has symbolic or malformed sizes in its record")
        return [v["as_int"] for v in values]

    if not isinstance(meta, dict) or meta.get("dtype") not in _ITEMSIZE:
        raise BadInputError(f"{where} has an unknown tensor dtype")
    sizes, strides = ints(meta.get("sizes")), ints(meta.get("strides"))
    offset, = ints([meta.get("storage_offset")])
    if len(sizes) != len(strides):
        raise BadInputError(f"{where} has {len(sizes)} sizes but {len(strides)} strides")
    if 0 in sizes:
        return 0
    elements = offset + 1 + sum((s - 1) * t for s, t in zip(sizes, strides))
    return elements * _ITEMSIZE[meta["dtype"]]


# ------------------------------------------------------------------------------------------
# The strings of models/*.json that torch evaluates

_SYMBOL = re.compile(r"[a-z]+\d+")  # s0, s77, u3: torch's shape symbols
# sympy names torch.export may print in a shape expression (serialize.py's sympy_functions,
# sympy's relations and constants); none reaches anything but arithmetic
_EXPR_NAMES = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "Max", "Min", "Abs", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "floor", "ceiling", "sqrt", "oo",
    "zoo", "nan", "true", "false", "Integer", "Rational", "Float", "int_oo", "Add", "Mul",
    "Pow", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
    "Unequality", "BooleanTrue", "BooleanFalse", "Infinity", "NegativeInfinity", "IntInfinity",
    "NegativeIntInfinity"}
_NUMBER = re.compile(r"-?\d+(\.\d*)?([eE][-+]?\d+)?")
_ASSUMPTIONS = {"positive", "negative", "nonnegative", "nonpositive", "integer", "real",
                "finite", "zero", "nonzero", "even", "odd", "rational", "extended_real"}
_GUARD_METHODS = {"size", "stride", "storage_offset", "dim"}
_MATH = {"floor", "ceil", "trunc", "sqrt", "inf"}
_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub,
        ast.UAdd, ast.Not, ast.Invert, ast.And, ast.Or, ast.BitAnd, ast.BitOr, ast.Eq,
        ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Load)
_TARGET = re.compile(
    rf"torch\.ops\.{_ID}\.{_ID}(\.{_ID})?"
    r"|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|pos|pow|eq|ne|lt|le|gt|ge"
    r"|and_|or_|not_|abs)"
    r"|torch\.sym_(max|min|not|float|int|ite|sqrt|sum)|math\.(ceil|floor|trunc|sqrt)")


def check_program_json(program, where: str) -> None:
    """Every evaluated string of a serialized ExportedProgram is harmless (module docstring)."""
    for key, value in _walk(program):
        if key == "expr_str":
            _check_text(value, where, "shape expression", _expression_node)
        elif key == "target" and isinstance(value, str) and not _TARGET.fullmatch(value):
            raise BadInputError(f"{where}: a node calls {value[:80]!r}, which is not an "
                                "operator; the archive is not what torch.export.save writes")
    if isinstance(program, dict):
        for guard in program.get("guards_code") or []:
            _check_text(guard, where, "guard", _guard_node)
        for name in (program.get("range_constraints") or {}):
            if not _SYMBOL.fullmatch(str(name)):
                raise BadInputError(f"{where}: range constraint on {str(name)[:60]!r}, not a "
                                    "shape symbol")
        graph = (program.get("graph_module") or {}).get("graph") or {}
        if graph.get("custom_obj_values"):
            raise BadInputError(f"{where}: the program holds custom objects (torchbind), "
                                "which snnc does not load")


def _walk(value, depth: int = 0):
    if depth > 200:
        raise BadInputError("the archive's program is nested more than 200 levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _walk(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, depth + 1)


def _check_text(text, where: str, what: str, allowed) -> None:
    try:
        if not isinstance(text, str) or len(text) > 4000:
            raise ValueError
        tree = ast.parse(text, mode="eval")
        ok = all(allowed(node) for node in ast.walk(tree))
    except (ValueError, SyntaxError, RecursionError, MemoryError):
        ok = False
    if not ok:
        raise BadInputError(f"{where}: the {what} {str(text)[:80]!r} is not plain arithmetic on "
                            "shapes (torch would evaluate it as Python); the archive is not "
                            "what torch.export.save writes")


def _expression_node(node) -> bool:
    """Arithmetic over shape symbols and sympy's functions; Symbol('s0', integer=True)."""
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            return False
        if node.func.id == "Symbol":
            return (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                    and bool(_SYMBOL.fullmatch(node.args[0].value))
                    and all(k.arg in _ASSUMPTIONS and isinstance(k.value, ast.Constant)
                            and isinstance(k.value.value, bool) for k in node.keywords))
        if node.func.id == "Float":  # Float('1.5', precision=53)
            return all(isinstance(a, ast.Constant) and (type(a.value) in (int, float) or (
                isinstance(a.value, str) and bool(_NUMBER.fullmatch(a.value))))
                for a in node.args) and all(k.arg == "precision" for k in node.keywords)
        return node.func.id in _EXPR_NAMES and not node.keywords
    if isinstance(node, ast.Name):
        return node.id == "Symbol" or node.id in _EXPR_NAMES or bool(_SYMBOL.fullmatch(node.id))
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float, bool) or (isinstance(node.value, str) and bool(
            _SYMBOL.fullmatch(node.value) or _NUMBER.fullmatch(node.value)))
    if isinstance(node, ast.keyword):
        return node.arg in _ASSUMPTIONS or node.arg == "precision"
    return isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
                             ast.Tuple) + _OPS)


def _guard_node(node) -> bool:
    """Comparisons of L['input'].size()[i] (and stride, dim) with integers."""
    if isinstance(node, ast.Name):
        return node.id in ("L", "math")
    if isinstance(node, ast.Attribute):
        return (node.attr in _GUARD_METHODS and not isinstance(node.value, ast.Name)) or (
            isinstance(node.value, ast.Name) and node.value.id == "math" and node.attr in _MATH)
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Attribute) and not node.keywords and all(
            isinstance(a, ast.Constant) and type(a.value) is int for a in node.args)
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and (
            type(node.slice.value) is int
            or (isinstance(node.slice.value, str) and re.fullmatch(_ID, node.slice.value)))
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float, bool) or (
            isinstance(node.value, str) and bool(re.fullmatch(_ID, node.value)))
    return isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp,
                             ast.Compare) + _OPS)



# ------------------------------------------------------------------------------------------
# torch.save files (snnc checkpoints, pickled modules): the pickle's shape before torch.load

MAX_DEPTH = 100  # nesting of the unpickled value (a checkpoint is about 5 deep)
MAX_NODES = 20_000_000  # its size with every shared reference expanded


def check_torch_file(path: str, kind: str) -> None:
    """Refuse a torch.save file whose pickle would nest deeper than MAX_DEPTH or expand to
    more than MAX_NODES values (a 1 KB pickle of shared tuples can describe 2^40 of them,
    which hashing or printing never finishes), or whose zip unpacks beyond MAX_UNCOMPRESSED.
    Reads the pickle's opcodes without executing any (pickletools)."""
    if kind == "torch":
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            total = sum(info.file_size for info in infos)
            if total > MAX_UNCOMPRESSED:
                raise BadInputError(f"{path} unpacks to {total / 2**30:.1f} GiB, more than "
                                    f"snnc reads ({MAX_UNCOMPRESSED / 2**30:.0f} GiB)")
            pickles = [archive.read(i.filename) for i in infos
                       if i.filename.endswith("/data.pkl") and i.file_size < 1 << 30]
    else:  # the legacy format: a few pickles back to back, then raw storage bytes
        with open(path, "rb") as f:
            pickles = [f.read(64 << 20)]
    for data in pickles:
        _check_pickle_shape(data, path)


def _check_pickle_shape(data: bytes, path: str) -> None:
    import io
    import pickletools

    stream = io.BytesIO(data)
    for _ in range(5):  # the legacy format's magic, protocol, sys info, object, storage keys
        start = stream.tell()
        if start >= len(data):
            return
        try:
            depth, nodes = _pickle_extent(pickletools.genops(stream))
        except (ValueError, IndexError, KeyError, TypeError):
            return  # not a well-formed pickle: torch.load says so
        if depth > MAX_DEPTH or nodes > MAX_NODES:
            shape = (f"nested more than {MAX_DEPTH} levels deep" if depth > MAX_DEPTH else
                     f"of more than {MAX_NODES:,} values once its shared parts are expanded")
            raise BadInputError(f"{path} holds a pickled value {shape}; no model file looks "
                                "like this, and loading it would exhaust memory or time")


def _pickle_extent(ops) -> tuple[int, int]:
    """(deepest nesting, largest expanded size) of the values a pickle builds: each stack
    item is (depth, size); memo references keep both, so sharing counts in full."""
    import pickletools

    stack: list[tuple[int, int]] = []
    marks: list[int] = []
    memo: dict = {}
    worst = (0, 0)

    def to_mark():
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
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, (0, 1)))
        else:
            if name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                items, below = to_mark(), 1
            elif name in ("APPEND", "SETITEM", "BUILD"):
                items, below = [stack.pop() for _ in range(2 if name == "SETITEM" else 1)], 1
            else:
                before = op.stack_before
                items = to_mark() if pickletools.markobject in before else []
                count = before.index(pickletools.markobject) if items or \
                    pickletools.markobject in before else len(before)
                items += [stack.pop() for _ in range(count)]
                below = 0
            if below:  # items go into the container below them
                depth, size = stack[-1]
                stack[-1] = (max([depth] + [d + 1 for d, _ in items]),
                             size + sum(n for _, n in items))
            else:
                value = (max((d for d, _ in items), default=-1) + 1,
                         1 + sum(n for _, n in items))
                stack.extend([value] * len(op.stack_after))
        if stack:
            worst = (max(worst[0], stack[-1][0]), max(worst[1], stack[-1][1]))
            if worst[0] > MAX_DEPTH or worst[1] > MAX_NODES:
                break
    return worst
