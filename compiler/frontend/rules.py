"""The frontend's lifting rules: one small function per aten op (or family), in one table.

A rule gets the `Lifter`, the fx node and its arguments by schema name, and returns what
the node is in the lift: an `Act` (IR value + axis layout), a constant `Value`, a list of
them, or a `Marker`. It raises `Unsupported` saying what to change. The rules live in
rules_tensors.py (plumbing, axes), rules_neurons.py, rules_time.py, rules_layers.py and
rules_float.py (float islands: LayerNorm, softmax, GELU, ...), rules_select.py
(comparisons, selection), each with its own table;
`RULES` here is their union. The supported-op list, the unsupported-op message and the
table in docs/ops.md all come from it (`ops_table()`; runtime_tests/test_rules.py checks
the doc against it).
"""

from __future__ import annotations

import difflib
from typing import Callable

import torch

from snnc.frontend import (rules_float, rules_index, rules_layers, rules_neurons,
                           rules_select, rules_tensors, rules_time, stacked)
from snnc.frontend.lifter import (ELEMENTWISE, FLOAT_ELEMENTWISE, Act, Lifter, Marker, Rules,
                                  Unsupported, bind, dims, op_name)
from snnc.ir.ops import ShapeError

RULES = Rules.union(rules_tensors.RULES, rules_neurons.RULES, rules_time.RULES,
                    rules_layers.RULES, rules_index.RULES, rules_float.RULES,
                    rules_select.RULES)


def apply_over_time(lx: Lifter, node):
    """apply, and if the rule refuses, the op on the whole run (stacked.py)."""
    return stacked.lifted(lx, node, lambda: apply(lx, node))


def apply(lx: Lifter, node):
    fill = rules_index.fill_of(lx, node)
    if fill is not None:  # a view or copy of a constant fill is that fill
        return fill
    found = RULES.get(op_name(node))
    if found is None:
        raise Unsupported(_no_rule_text(op_name(node)))
    try:
        rows = _on_time_rows(lx, node, found.fn)
        return found.fn(lx, node, bind(node)) if rows is None else rows
    except ShapeError as error:  # the IR op's type check refused the operands
        raise Unsupported(f"its operands do not fit together ({error})") from None


# Elementwise ops a [T, B*...] matrix over time may pass through before it is viewed back
# as [T, B, ...] (a PSN fires on W @ x_seq.flatten(1) + B, then views the spikes back).
ROW_OPS = frozenset(ELEMENTWISE + (
    "aten.ge.Scalar", "aten.ge.Tensor", "aten.gt.Scalar", "aten.gt.Tensor", "aten.le.Scalar",
    "aten.le.Tensor", "aten.lt.Scalar", "aten.lt.Tensor", "aten.where.self",
    "aten.clamp.default", "aten.round.default", "aten.to.dtype", "aten.to.device",
    "aten._assert_tensor_metadata.default")) - {"aten.linear.default"}


def _on_time_rows(lx: Lifter, node, fn):
    """An elementwise op on such a matrix (rules_time.time_rows), lifted on the activation
    it came from as if it were viewed back first: the same numbers in the same places.
    None if no operand is one, or the op is not elementwise (then lx.operand refuses)."""
    rows = [n for n in node.all_input_nodes
            if isinstance(lx.env.get(n), Marker) and lx.env[n].kind == "time_rows"]
    if not rows or op_name(node) not in ROW_OPS or \
            len({tuple(dims(n)) for n in (node, *rows)
                 if isinstance(n.meta.get("val"), torch.Tensor)}) != 1:
        return None
    x, shape, like = lx.env[rows[0]].payload
    if any(list(lx.env[n].payload[1]) != list(shape) for n in rows):
        return None
    saved = {n: n.meta.get("val") for n in (node, *rows)}
    envs = {n: lx.env[n] for n in rows}
    try:
        for n, val in saved.items():
            n.meta["val"] = like.to(val.dtype) if isinstance(val, torch.Tensor) else val
        lx.env.update((n, lx.env[n].payload[0]) for n in rows)
        result = fn(lx, node, bind(node))
    finally:
        for n, val in saved.items():
            n.meta["val"] = val
        lx.env.update(envs)
    return Marker("time_rows", (result, shape, like)) if isinstance(result, Act) else result


# What to write instead, for ops users reach for that snnc has no rule for.
SUGGEST = {
    "aten.sum.default": "sum over named feature axes: x.sum(dim=...)",
    "aten.mean.default": "average over named feature axes: x.mean(dim=...)",
    "aten.max_pool2d_with_indices.default": "use MaxPool2d without return_indices",
    "aten.conv_transpose2d.input": "use Conv2d (a transposed conv has no snnc lowering)",
}


def _no_rule_text(name: str) -> str:
    """What to write instead: a known alternative, else the nearest supported op by name
    (conv3d -> conv2d, max_pool1d -> max_pool2d), else the list in docs/ops.md."""
    if name in SUGGEST:
        return f"has no snnc lowering; {SUGGEST[name]}"
    base = lambda op: op.split(".")[1] if op.count(".") >= 1 else op  # aten.conv3d.x: conv3d
    known = {base(n): n for n in RULES  # (a float function is no stand-in for another)
             if n.startswith("aten.") and n not in FLOAT_ELEMENTWISE}
    near = difflib.get_close_matches(base(name), list(known), 1, 0.75)
    if near:
        op = known[near[0]]
        return (f"has no snnc lowering; the closest supported op is {op}"
                + (f" ({RULES[op].note})" if RULES[op].note else ""))
    return ("has no snnc lowering (docs/ops.md lists what snnc compiles; write it with those "
            "operations)")


def no_rule(node) -> str:
    return f"{op_name(node)}: {_no_rule_text(op_name(node))}"


# -- docs/ops.md -------------------------------------------------------------------------

def ops_table() -> str:
    """The markdown table of docs/ops.md "Operations", one row per rule."""
    rows: dict[Callable, list[str]] = {}
    for name, r in RULES.items():
        rows.setdefault(r.fn, []).append(name)
    lines = ["| PyTorch op | IR op | notes |", "| --- | --- | --- |"]
    for fn, names in rows.items():
        r = RULES[names[0]]
        ops = ", ".join(f"`{n}`" for n in names)
        lines.append(f"| {ops} | {r.ir or 'nothing'} | {r.note} |")
    return "\n".join(lines)


def write_docs(path: str) -> None:
    """Put ops_table() between docs/ops.md's `<!-- rules: begin/end -->` markers and the
    neuron table (rules_neurons.neurons_table()) between `<!-- neurons: begin/end -->`."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for marker, table in (("rules", ops_table()), ("neurons", rules_neurons.neurons_table())):
        head, rest = text.split(f"<!-- {marker}: begin -->\n")
        tail = rest.split(f"\n<!-- {marker}: end -->")[1]
        text = f"{head}<!-- {marker}: begin -->\n{table}\n<!-- {marker}: end -->{tail}"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)



# python3 -m snnc.frontend.rules [docs/ops.md]: print the table, or rewrite it in the doc
if __name__ == "__main__":
    import sys

    write_docs(sys.argv[1]) if len(sys.argv) > 1 else print(ops_table())
