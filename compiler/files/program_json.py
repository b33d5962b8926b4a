"""A serialized ExportedProgram (a torch.export archive's models/<name>.json), checked field by
field before torch reads it.

torch's deserializer turns text from this file into code: shape expressions go through
sympy.sympify (Python eval), `guards_code` and node and input names are pasted into Python
source that torch.fx exec's, node targets are looked up by name. So every text field must
have a known meaning and the form that meaning allows; text under a key this schema does not
know is refused. `check` raises BadInputError naming the field and the text.

| text | rule |
| --- | --- |
| names: node outputs, inputs, tensor/sym value keys, forward_arg_names | Python identifiers |
| parameter/buffer/constant names, module paths (fqn) | dotted identifiers |
| node targets, as_operator | torch.ops.<ns>.<op>[.<overload>], a few _operator/math/torch.sym_* |
| expr_str | arithmetic over shape symbols and sympy's shape functions (syntax tree) |
| guards_code | comparisons of L['input'].size()[i] and the like (syntax tree) |
| in_spec, out_spec | pytree specs of tuples, lists and dicts with identifier keys |
| as_string(s), device type, versions, verifiers | short words |
| node metadata (stack traces, module stacks) | printable text, no carriage return |
"""

from __future__ import annotations

import ast
import json
import re

from snnc.errors import BadInputError

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FQN = re.compile(r"([A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*)?")
WORD = re.compile(r"[A-Za-z0-9_.+\-: ]{0,100}")
SYMBOL = re.compile(r"[a-z]+\d{1,6}")  # s0, s77, u3: torch's shape symbols
TARGET = re.compile(
    r"torch\.ops\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?"
    r"|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|pos|eq|ne|lt|le|gt|ge"
    r"|and_|or_|not_|abs)"
    r"|torch\.sym_(max|min|not|float|int|ite|sqrt|sum)|math\.(ceil|floor|trunc|sqrt)")
NUMBER = re.compile(r"-?\d{1,20}(\.\d{0,20})?([eE][-+]?\d{1,2})?")
MAX_INT = 1 << 63
MAX_SYMBOLS = 16  # dynamic dimensions: batch, perhaps time

# sympy names a shape expression may use: torch's shape functions (serialize.py
# sympy_functions), sympy's arithmetic, relations and constants. No powers or shifts: they
# make sympy compute numbers of any size.
EXPR_NAMES = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "Max",
    "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "floor",
    "ceiling", "oo", "zoo", "nan", "true", "false", "Integer", "Rational", "Float", "int_oo",
    "Add", "Mul", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
    "Unequality", "BooleanTrue", "BooleanFalse", "Infinity", "NegativeInfinity", "IntInfinity",
    "NegativeIntInfinity"}
ASSUMPTIONS = {"positive", "negative", "nonnegative", "nonpositive", "integer", "real",
               "finite", "zero", "nonzero", "even", "odd", "rational", "extended_real"}
GUARD_METHODS = {"size", "stride", "storage_offset", "dim"}
MATH = {"floor", "ceil", "trunc", "sqrt", "inf"}
OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.USub, ast.UAdd,
             ast.Not, ast.Invert, ast.And, ast.Or, ast.BitAnd, ast.BitOr, ast.Eq, ast.NotEq,
             ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Load)
SPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict",
              "collections.OrderedDict", "torch.fx.immutable_collections.immutable_list",
              "torch.fx.immutable_collections.immutable_dict"}


def _expression(text: str) -> bool:
    return _tree_ok(text, _expression_node)


_INPUT_PATH = re.compile(r"L(\[('[A-Za-z_][A-Za-z0-9_]*'|\d+)\])+")


def _guard(text: str) -> bool:
    """Input paths L['x'][0] become one name first, so no other text constant remains."""
    return _tree_ok(_INPUT_PATH.sub("L_", text), _guard_node)


def _state_name(text: str) -> bool:
    """A parameter, buffer or constant name: dotted identifiers, none of them a dunder or an
    nn.Module attribute (torch sets each along its path on the module it rebuilds)."""
    import torch

    parts = text.split(".")
    return bool(FQN.fullmatch(text)) and text != "" and not any(
        (p.startswith("__") and p.endswith("__")) or hasattr(torch.nn.Module, p)
        for p in parts)


def _spec(text: str) -> bool:
    """A pytree spec: [version, {type, context (JSON), children_spec}] of plain containers."""
    def node_ok(spec) -> bool:
        if not isinstance(spec, dict) or set(spec) - {"type", "context", "children_spec"}:
            return False
        context = json.loads(spec.get("context") or "null")
        keys = context if isinstance(context, list) else [] if context is None else None
        return (spec.get("type") in SPEC_TYPES and keys is not None
                and all(isinstance(k, int) or (isinstance(k, str) and IDENT.fullmatch(k))
                        for k in keys)
                and all(node_ok(c) for c in spec.get("children_spec") or []))

    value = json.loads(text)
    return isinstance(value, list) and len(value) == 2 and node_ok(value[1])


def _metadata(text: str) -> bool:
    return len(text) <= 100_000 and "\r" not in text and all(
        c.isprintable() or c in "\n\t" for c in text)


# text field -> rule (a regex, or a function of the text)
TEXT_RULES = {
    "name": IDENT, "as_name": IDENT, "user_input_name": IDENT, "forward_arg_names": IDENT,
    "field_names": IDENT, "input_names": IDENT, "output_names": IDENT,
    "parameter_name": _state_name, "buffer_name": _state_name,
    "tensor_constant_name": _state_name, "custom_obj_name": _state_name, "fqn": FQN,
    "class_fqn": FQN,
    "target": TARGET, "as_operator": TARGET, "expr_str": _expression, "guards_code": _guard,
    "in_spec": _spec, "out_spec": _spec,
    "as_string": WORD, "as_strings": WORD, "type": re.compile("cpu"), "torch_version": WORD,
    "verifiers": WORD,
}
# mapping field -> rule for its keys
KEY_RULES = {
    "tensor_values": IDENT, "sym_int_values": IDENT, "sym_bool_values": IDENT,
    "sym_float_values": IDENT, "custom_obj_values": IDENT, "as_string_to_argument": IDENT,
    "range_constraints": SYMBOL, "opset_version": WORD, "metadata": WORD,
}


def check(program, where: str) -> None:
    """Every text field of a serialized ExportedProgram follows its rule (module docstring)."""
    try:
        if not isinstance(program, dict):
            raise ValueError("not a JSON object")
        for field, kind in (("graph_module", dict), ("range_constraints", dict),
                            ("guards_code", list), ("verifiers", list), ("opset_version", dict)):
            if not isinstance(program.get(field, kind()), kind):
                raise ValueError(f"{field} is a {type(program[field]).__name__}, not a "
                                 f"{kind.__name__}")
        if program.get("treespec_namedtuple_fields") or (
                (program.get("graph_module") or {}).get("treespec_namedtuple_fields")):
            raise BadInputError(f"{where}: the program defines namedtuple types, which snnc "
                                "does not load")
        _walk(program, None, where, 0)
        symbols = set(re.findall(r"Symbol\('([a-z]+\d+)'", json.dumps(program))) | set(
            program.get("range_constraints") or {})
        if len(symbols) > MAX_SYMBOLS:
            raise BadInputError(f"{where}: the program has {len(symbols)} shape symbols; a "
                                f"network's dynamic dimensions are a few (limit {MAX_SYMBOLS})")
    except (AttributeError, TypeError, ValueError, KeyError, RecursionError) as error:
        raise BadInputError(f"{where} is not a program torch.export.save writes "
                            f"({type(error).__name__}: {str(error)[:100]})") from None


def _walk(value, field: str | None, where: str, depth: int) -> None:
    if depth > 200:
        raise BadInputError(f"{where}: the program is nested more than 200 levels deep")
    if isinstance(value, dict):
        key_rule = KEY_RULES.get(field)
        for key, item in value.items():
            if key_rule is not None:
                _check_text(key, key_rule, f"{field} key", where)
            # a metadata entry's text is free text under its own rule
            _walk(item, "metadata value" if field == "metadata" else key, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _walk(item, field, where, depth + 1)
    elif isinstance(value, str):
        rule = _metadata if field == "metadata value" else TEXT_RULES.get(field)
        if rule is None:
            raise BadInputError(f"{where}: text under {str(field)[:40]!r} ({value[:60]!r}), a "
                                "field torch.export.save does not write; the archive is not "
                                "what it writes")
        _check_text(value, rule, field, where)
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        return
    elif isinstance(value, int):
        if abs(value) >= MAX_INT:
            raise BadInputError(f"{where}: the integer {str(value)[:30]}... under {field!r} "
                                "does not fit in 64 bits")
    else:
        raise BadInputError(f"{where}: unexpected JSON value under {field!r}")


def _check_text(text, rule, field: str, where: str) -> None:
    ok = isinstance(text, str) and (
        bool(rule.fullmatch(text)) if isinstance(rule, re.Pattern) else _safe(rule, text))
    if not ok:
        raise BadInputError(f"{where}: the {field} {str(text)[:80]!r} is not of the form torch "
                            "writes there (torch would evaluate or paste it into code); the "
                            "archive is not what torch.export.save writes")


def _safe(rule, text: str) -> bool:
    try:
        return rule(text)
    except (ValueError, TypeError, RecursionError, MemoryError, AttributeError):
        return False


def _tree_ok(text: str, allowed) -> bool:
    if len(text) > 1000:
        return False
    tree = ast.parse(text, mode="eval")
    return all(allowed(node) for node in ast.walk(tree))


def _number_ok(value) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < MAX_INT
    if isinstance(value, float):
        return True
    return isinstance(value, str) and bool(SYMBOL.fullmatch(value) or NUMBER.fullmatch(value))


def _expression_node(node) -> bool:
    """Arithmetic over shape symbols and sympy's functions; Symbol('s0', integer=True)."""
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            return False
        if node.func.id == "Symbol":
            return (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                    and bool(SYMBOL.fullmatch(node.args[0].value))
                    and all(k.arg in ASSUMPTIONS and isinstance(k.value, ast.Constant)
                            and isinstance(k.value.value, bool) for k in node.keywords))
        if node.func.id == "Float":  # Float('1.5', precision=53): sympy computes to it
            extra = node.args[1:] + [k.value for k in node.keywords]
            return len(node.args) in (1, 2) and all(k.arg == "precision" for k in node.keywords) \
                and all(isinstance(e, ast.Constant) and type(e.value) is int
                        and 1 <= e.value <= 64 for e in extra) and len(extra) <= 1
        return node.func.id in EXPR_NAMES and not node.keywords and len(node.args) <= 8
    if isinstance(node, ast.Name):
        return node.id == "Symbol" or node.id in EXPR_NAMES or bool(SYMBOL.fullmatch(node.id))
    if isinstance(node, ast.Constant):
        return _number_ok(node.value)
    if isinstance(node, ast.keyword):
        return node.arg in ASSUMPTIONS or node.arg == "precision"
    return isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
                             ast.Tuple) + OPERATORS)


def _guard_node(node) -> bool:
    """Comparisons of L_.size()[i] (and stride, dim) with numbers; L_ is an input path."""
    if isinstance(node, ast.Name):
        return node.id in ("L_", "math")
    if isinstance(node, ast.Attribute):
        return (node.attr in GUARD_METHODS and not (isinstance(node.value, ast.Name)
                                                    and node.value.id == "math")) or (
            isinstance(node.value, ast.Name) and node.value.id == "math" and node.attr in MATH)
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Attribute) and not node.keywords and len(
            node.args) <= 2 and all(isinstance(a, ast.Constant) and type(a.value) is int
                                    and abs(a.value) < MAX_INT for a in node.args)
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and type(node.slice.value) is int \
            and abs(node.slice.value) < MAX_INT
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float, bool) and _number_ok(node.value)
    return isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp,
                             ast.Compare) + OPERATORS)
