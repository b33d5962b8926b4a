"""Single-step parallel spiking neurons (SlidingPSN, MaskedPSN in step_mode "s") keep a queue
of their past inputs, each flattened with its batch (`x.flatten()`, all axes), and compute a
step as `sum(w[:, None] * torch.stack(queue), 0) + b`, thresholded and viewed back to the
input's shape (spikingjelly's sliding_psn_step, masked_psn_step). The flattening is the only
thing the IR cannot carry (the batch merged into the features); the arithmetic is per
position: element i of the step reads element i of each queued input, the same sample and
feature of an earlier call. So the queue mixes no samples, and the step is, at each
position, the weighted sum of the inputs of the last k calls (the multi-step neuron's mix
over time, row t).

`per_position(graph, constants)` rewrites such a weighted sum over a queue of flattened
tensors into the same sum on the unflattened ones: `w[0] * x_0 + w[1] * x_1 + ...`, added
one after the other from the first. That is the order torch.sum adds the k stacked rows at
every position for a queue of k <= 4 (k >= 5: at the positions its CPU kernel vectorizes;
the rest of the last vector's width it adds four interleaved partial sums, within float
rounding of this), so the step rounds as in PyTorch; what the neuron computes from it (bias, threshold)
then has the input's shape, and its final `view(x.shape)` changes nothing. It applies only
when every value computed from the sum is elementwise, with scalars or one-element
constants, up to a view to the queued inputs' shape. Otherwise the graph is left as it is
and the neuron is refused (neuron_regions.QUEUED: a flatten of all axes is left in it). The graph is the prepared copy
(prepare.py).
"""

from __future__ import annotations

import torch

from snnc.frontend.lifter import op_name

aten = torch.ops.aten

# Ops that act position by position, and may read scalars or one-element constants.
_POSITIONWISE = ("aten.add.Tensor", "aten.sub.Tensor", "aten.mul.Tensor", "aten.div.Tensor",
                 "aten.rsub.Scalar", "aten.ge.Scalar", "aten.gt.Scalar", "aten.le.Scalar",
                 "aten.lt.Scalar", "aten.ge.Tensor", "aten.gt.Tensor", "aten.le.Tensor",
                 "aten.lt.Tensor", "aten.to.device", "aten.to.dtype", "aten.clone.default",
                 "aten.detach.default", "aten._assert_tensor_metadata.default")
_VIEWS = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default")


def per_position(graph: torch.fx.Graph, constant: set) -> torch.fx.Graph:
    """The graph with each weighted sum over a queue of flattened tensors computed per
    position (module docstring); `constant`: the nodes computed from parameters and
    buffers alone (neuron_regions.constant_nodes)."""
    changed = False
    for node in list(graph.nodes):
        found = _queue_sum(node, constant)
        if found is None:
            continue
        weights, inputs = found
        after = _downstream(node, tuple(_val(inputs[0]).shape), constant)
        if after is not None:
            _rewrite(graph, node, weights, inputs, after)
            changed = True
    if changed:  # the flattened queue and its sum
        graph.eliminate_dead_code()
    return graph


def _val(node):
    return node.meta.get("val")


def _queue_sum(node, constant: set):
    """(the weight node [k, 1], the queued tensors x_j) if `node` is
    sum(w[:, None] * stack([x_0.flatten(), ..., x_k-1.flatten()]), [0]), else None."""
    if op_name(node) != "aten.sum.dim_IntList" or list(node.args[1:2]) != [[0]] or \
            node.kwargs.get("keepdim") or len(node.args) > 2 or \
            op_name(node.args[0]) != "aten.mul.Tensor":
        return None
    a, b = node.args[0].args[:2]
    weights, stack = (a, b) if a in constant else (b, a)
    if not isinstance(stack, torch.fx.Node) or op_name(stack) != "aten.stack.default" or \
            (list(stack.args[1:2]) or [0])[0] != 0 or weights not in constant:
        return None
    flats = list(stack.args[0])
    inputs = [f.args[0] for f in flats if flattens_all(f)]
    shapes = {tuple(_val(x).shape) for x in inputs if isinstance(_val(x), torch.Tensor)}
    w = _val(weights)
    if len(inputs) != len(flats) or len(shapes) != 1 or not isinstance(w, torch.Tensor) or \
            tuple(w.shape) != (len(flats), 1):
        return None
    return weights, inputs


def flattens_all(node) -> bool:
    """x.flatten() of a tensor of rank >= 2: every axis, the batch with the features."""
    if not isinstance(node, torch.fx.Node) or op_name(node) != "aten.flatten.using_ints":
        return False
    x = node.args[0]
    rank = len(_val(x).shape) if isinstance(_val(x), torch.Tensor) else 0
    start, end = (list(node.args[1:3]) + [0, -1][len(node.args) - 1:])[:2]
    return rank >= 2 and start in (0, -rank) and end in (-1, rank - 1)


def _downstream(node, shape: tuple, constant: set) -> list | None:
    """The nodes computed from the sum up to (without) the views back to `shape`, in graph
    order, if all are position by position (their other operands scalars or one-element
    constants); else None."""
    found: set = set()
    todo = list(node.users)
    while todo:
        user = todo.pop()
        if user in found or (op_name(user) in _VIEWS and user.op == "call_function" and
                             tuple(_val(user).shape) == shape):
            continue
        found.add(user)
        todo.extend(user.users)
    for user in found:
        others = [a for a in user.all_input_nodes if a is not node and a not in found]
        if op_name(user) not in _POSITIONWISE or any(
                a not in constant or not isinstance(_val(a), torch.Tensor) or
                _val(a).numel() != 1 for a in others):
            return None
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    return sorted(found, key=order.get)


def _rewrite(graph: torch.fx.Graph, node, weights, inputs, after: list) -> None:
    """sum -> w[0] * x_0 + w[1] * x_1 + ... on the unflattened x_j; the nodes after it take
    x_j's shape."""
    meta = {k: node.meta.get(k) for k in ("nn_module_stack", "stack_trace")}
    like = _val(inputs[0])
    total = None
    with graph.inserting_before(node):
        for j, x in enumerate(inputs):
            w = _call(graph, aten.select.int, (weights, 0, j), meta, _val(weights)[j])
            term = _call(graph, aten.mul.Tensor, (x, w), meta, like)
            total = term if total is None else \
                _call(graph, aten.add.Tensor, (total, term), meta, like)
    node.replace_all_uses_with(total)
    for user in after:
        if isinstance(_val(user), torch.Tensor):  # (an assertion has no value)
            user.meta["val"] = _val(user).new_empty(like.shape)


def _call(graph, target, args, meta, val):
    new = graph.call_function(target, args)
    new.meta.update(meta, val=val)
    return new
