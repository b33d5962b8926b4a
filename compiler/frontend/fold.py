"""Constant folding while lifting: an op whose inputs are all parameters, buffers, constants
or earlier folded results is evaluated once, by torch itself, at compile time, and becomes a
constant of the IR.

Published networks compute constants in forward: a scale `1 / torch.sqrt(self.rate * k)`
from registered buffers, weight standardization (the mean and variance of a conv's weights,
OTTT's VGG), index tables (`torch.arange` for a roll or a relative position), masks. Any
deterministic aten op folds (sqrt, reciprocal, pow, exp, log, div, clamp, where, indexing,
reductions, arange, ...); shape arithmetic on folded sizes too. Not folded: neurons, snnc's
fake-quant of a weight (the quantization reads it), ops of other namespaces, and random ops
(`nondeterministic_seeded`), which stay and are refused by their rules. `empty` folds to
zeros (torch leaves it uninitialized; a model that reads it before writing it is wrong
either way). A folded constant is named after the layer and op that computed it, so IR
dumps and errors say where it came from.
"""

from __future__ import annotations

import torch

from snnc.frontend.lifter import QUANT_OP, Lifter, op_name, source_of
from snnc.frontend.prepare import _foldable

CONSTANT_KINDS = ("PARAMETER", "BUFFER", "CONSTANT_TENSOR")
_EMPTY = ("aten.empty.memory_format", "aten.empty_like.default", "aten.new_empty.default",
          "aten.empty_strided.default")


def fold(lx: Lifter, node: torch.fx.Node) -> bool:
    """Evaluate `node` if every input is a constant: its value goes into lx.env (as the IR's
    constants) and lx.tensors (as torch values, for the next fold). False if it is not
    constant, or torch cannot evaluate it (its rule then decides)."""
    if not (_foldable(node) or _transformed_weight(node)) or \
            any(n not in lx.tensors and not _quantized_weight(lx, n)
                for n in node.all_input_nodes):
        return False
    args = torch.fx.node.map_arg(node.args, lambda n: _tensor(lx, n))
    kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: _tensor(lx, n))
    try:
        with torch.no_grad():
            value = node.target(*args, **kwargs)
            if str(node.target).replace("torch.ops.", "") in _EMPTY:
                value = torch.zeros_like(value)
    except Exception:  # noqa: BLE001 - not evaluable here: the rule reports it
        return False
    if not _storable(value):
        return False
    lx.tensors[node] = value
    lx.env[node] = _ir_value(lx, node, value)
    return True


def _quantized_weight(lx: Lifter, node: torch.fx.Node) -> bool:
    """snnc's fake-quant of a constant weight, left unfolded for the layer that reads it: a
    layer applied to a constant (a recurrent Linear on the zeros before step 0) folds with
    the quantized weight's values (_tensor)."""
    return op_name(node) == QUANT_OP and all(n in lx.tensors for n in node.all_input_nodes)


def _tensor(lx: Lifter, node: torch.fx.Node):
    if node in lx.tensors:
        return lx.tensors[node]
    args = torch.fx.node.map_arg(node.args, lambda n: lx.tensors[n])
    with torch.no_grad():  # a quantized weight (_quantized_weight): its values, not stored
        return node.target(*args, **torch.fx.node.map_arg(node.kwargs,
                                                          lambda n: lx.tensors[n]))


# Ops that take a quantized weight as their weight: the integer lowering reads it there.
WEIGHT_USERS = ("aten.conv1d.default", "aten.conv2d.default", "aten.linear.default",
                "aten.matmul.default")


def _transformed_weight(node: torch.fx.Node) -> bool:
    """snnc's fake-quant of a weight the model then computes with (weight standardization
    of the quantized weight, OTTT's VGG): the layer's real weight is that computation's
    result, not on the quantization grid, so the quantized weight folds like any constant
    and the layer runs in float (docs/quantization.md)."""
    return op_name(node) == QUANT_OP and any(op_name(u) not in WEIGHT_USERS
                                             for u in node.users)


def _storable(value) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_storable(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.device.type == "cpu" and not value.is_complex() and \
            value.layout == torch.strided
    return isinstance(value, (int, float, bool))


def _ir_value(lx: Lifter, node: torch.fx.Node, value):
    """A float tensor: an IR constant named after where it was computed; other tensors:
    numpy arrays (indices, masks); tuples item by item; numbers stay numbers."""
    if isinstance(value, (tuple, list)):
        return tuple(_ir_value(lx, node, v) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        where = source_of(node).layer or "model"
        return lx.constant(value.detach().to(torch.float32).numpy(), f"{where}.{node.name}")
    return value.detach().numpy()
