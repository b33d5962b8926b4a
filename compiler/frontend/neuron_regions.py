"""Neurons written in plain PyTorch: SpikingJelly classes without a registered op (ternary
IF/LIF, KLIF, CUBA LIF, ...) export as aten arithmetic inside the neuron module. A
*region* is one call of such a module: every fx node whose nn_module_stack holds it.

- single-step (one call per timestep) and multi-step modules that treat the whole tensor at
  once need nothing special: the walk lifts their arithmetic op by op, the membrane passed
  from call to call as an ordinary value;
- a multi-step module that loops over time (`for t in range(T): ... x_seq[t] ...`, then
  `torch.stack`) is *re-rolled*: its nodes are grouped by the last step whose input x_seq[t]
  they depend on, consecutive steps must be the same computation (the same ops on the
  matching nodes of their own step, the previous step, or the same outside values), and the
  body of step 0 becomes the one-step IR. A value step t+1 reads from step t is a `State`
  whose initial value is what step 0 reads in its place (a constant fill, or a Python number
  step 0 reads where the others read the state: step 0 is rewritten to read a fill). What
  step 0 computes from the initial state alone (no input read) is folded to constants. A
  loop whose output at step t reads x_seq[t - k] at the latest (RAFNode fires on its state
  before the step: k = 1) has its first k outputs among those constants; its body makes
  step t + k's output, which reaches step t + k through k delay states (_lag). Anything
  else (steps that differ, a state that starts from a non-constant) is refused naming the
  class. A constant output of a single-step call becomes an activation where an op needs
  one (lifter._neuron_constant).

A region that draws random numbers is refused: such a neuron is nondeterministic.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch

from snnc.frontend import axes, fold, queues
from snnc.frontend.lifter import Act, Marker, Unsupported, dims, op_name
from snnc.ir.graph import State, Value

NEURON_PACKAGE = "spikingjelly.activation_based.neuron"
_RANDOM = ("aten.rand", "aten.randn", "aten.randint", "aten.bernoulli", "aten.normal",
           "aten.uniform", "aten.exponential", "aten.multinomial", "aten.poisson",
           "aten.native_dropout")
_FILLS = ("aten.full_like.default", "aten.zeros_like.default", "aten.ones_like.default",
          "aten.zeros.default", "aten.full.default")
# torch.zeros(x_seq.shape[1:]) (GLIF's first spike): a fill of one step's shape
_SHAPED_FILLS = ("aten.zeros.default", "aten.full.default")
_ALIASES = ("aten.detach.default", "aten.alias.default", "aten.clone.default")


# A neuron whose step flattens its input with the batch (x.flatten(), all axes) and uses it
# other than as queues.per_position rewrites (a weighted sum over the queued inputs, then
# position by position, viewed back): the IR's axes cannot carry the batch merged into the
# features, and such a step may read other samples of the batch.
QUEUED = ("flattens its input with the batch (x.flatten(), all axes: a single-step "
          "SlidingPSN/MaskedPSN's queue of past inputs) and computes its step from it other "
          "than position by position (a weighted sum over the queued inputs, elementwise "
          "arithmetic with scalars after it, viewed back to the input's shape), so a sample's "
          "output may read other samples of the batch; keep each sample's positions apart "
          "(or, for SlidingPSN/MaskedPSN, use step_mode='m': the same neuron as a mix over time)")


@dataclass
class Region:
    """One call of a SpikingJelly neuron module that has no registered op."""

    cls: str
    module: str
    nodes: list[torch.fx.Node]
    loop: "Loop | None" = None
    op: bool = False  # made by a registered neuron op (its rule lifts it)
    error: str = ""  # why its loop over time cannot be re-rolled

    @property
    def where(self) -> str:
        return f"{self.module} ({self.cls})"


@dataclass
class Loop:
    source: torch.fx.Node  # x_seq
    steps: list[list[torch.fx.Node]]  # S_t, graph order
    stack: torch.fx.Node | None  # None while a loop returning its last step is matched
    skipped: set = field(default_factory=set)  # steps 1.. and the unbind
    carried: dict = field(default_factory=dict)  # (body node, arg index) -> state key
    inits: dict = field(default_factory=dict)  # state key (a step-0 node) -> init node
    reads: dict = field(default_factory=dict)  # state key -> IR Value
    constant: set = field(default_factory=set)  # fx nodes computed from constants alone
    phis: list = field(default_factory=list)  # per step t: step t's node -> step t+1's
    gates: dict = field(default_factory=dict)  # step-0 per-step constant -> its Act
    seen: dict = field(default_factory=dict)  # state key -> what the body reads
    fills: dict = field(default_factory=dict)  # state key -> the fill it starts from
    lag: int = 0  # step t's body makes step t + lag's output (_lag)


def is_neuron_class(name: str) -> bool:
    """Whether the class of this dotted name is a SpikingJelly neuron: a class of
    spikingjelly.activation_based.neuron, or a `...Node` class elsewhere in SpikingJelly
    (spike_dhs's save_v_LIFNode subclasses LIFNode); or a neuron of a NIR graph
    (snnc.nir.neurons)."""
    return name.startswith((NEURON_PACKAGE + ".", "snnc.nir.neurons.")) or (
        name.startswith("spikingjelly.") and name.endswith("Node"))


def _owner(node: torch.fx.Node):
    """(key, module path, class name) of the outermost SpikingJelly neuron module that
    made `node` (is_neuron_class), or None."""
    for key, (path, cls) in (node.meta.get("nn_module_stack") or {}).items():
        name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        if is_neuron_class(name):
            return key, path, name.rsplit(".", 1)[-1]
    return None


def find(graph: torch.fx.Graph, neuron_ops, constants=()) -> list[Region]:
    """The neuron-module calls, in graph order, each checked: its loop found (if it has no
    registered neuron op), or why it is refused. `constants`: the placeholders that are
    parameters, buffers or constant tensors."""
    constant = constant_nodes(graph, constants)
    groups: dict[str, Region] = {}
    for node in graph.nodes:
        owner = _owner(node) if node.op == "call_function" else None
        if owner is not None:
            key, path, cls = owner
            groups.setdefault(key, Region(cls, path, [])).nodes.append(node)
    regions = list(groups.values())
    for region in regions:
        drawn = sorted({op_name(n) for n in region.nodes if op_name(n).startswith(_RANDOM)})
        calls = sum(op_name(n) in neuron_ops for n in region.nodes)
        region.op = calls > 0
        try:
            if drawn:
                raise Unsupported(
                    f"draws random numbers ({', '.join(drawn)}): a nondeterministic neuron "
                    "cannot be compiled; call model.eval() before export if it is "
                    "deterministic in eval mode (noisy neurons are not)")
            if any(queues.flattens_all(n) for n in region.nodes):
                raise Unsupported(QUEUED)
            region.loop = None if calls == 1 else _loop(region, constant)
            region.op = region.op and region.loop is None
        except Unsupported as why:
            region.error = str(why)
    return regions


def problems(regions: list[Region]) -> list[tuple[str, str]]:
    """(what, where) for every region snnc refuses as a whole: it draws random numbers, is
    parallel over time, or loops over time in a way snnc cannot re-roll."""
    return [(f"neuron {r.cls}: {r.error}", r.where) for r in regions if r.error]


# -- finding a loop over time ----------------------------------------------------------------

def _step_index(node, inside=None) -> tuple | None:
    """(x_seq, t) if node is x_seq[t] of a tensor from outside the region: select(x, 0, t)
    or getitem(unbind(x, 0), t)."""
    name = op_name(node)
    if name == "aten.select.int" and node.args[1] == 0 and \
            isinstance(node.args[0], torch.fx.Node) and isinstance(node.args[2], int) and \
            (inside is None or node.args[0] not in inside):
        return node.args[0], node.args[2]
    if node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node) and \
            op_name(node.args[0]) == "aten.unbind.int" and \
            (inside is None or node.args[0] in inside) and \
            (list(node.args[0].args[1:2]) or [0])[0] == 0:
        return node.args[0].args[0], node.args[1]
    return None


def constant_nodes(graph: torch.fx.Graph, constants) -> set:
    """The nodes computed from the given placeholders (parameters, buffers) alone."""
    found = set(constants)
    for node in graph.nodes:
        if node.op == "call_function" and node.all_input_nodes and \
                all(n in found for n in node.all_input_nodes):
            found.add(node)
    return found


def _loop(region: Region, constant=frozenset()) -> Loop | None:
    """The loop over time of a region, or None. Besides its input x_seq, a step may read a
    parameter indexed by the step (GLIF's conduct[t]): a constant that differs per step."""
    inside = set(region.nodes)
    index = {n: _step_index(n, inside) for n in region.nodes}
    sources = {i[0] for i in index.values() if i is not None and i[0] not in constant}
    if not sources:
        return None
    stack, count, last = _loop_outputs(region, index, inside, sources)
    if count is None or count == 1:  # no loop; or a single-step call through a one-step
        return None                  # loop (OTTT, SLTT)
    dep: dict = {}
    for n in region.nodes:
        if index[n] is not None and not _feeds_fill(n):
            dep[n] = index[n][1]  # (x_seq[0] read only to fill the initial state: not a step)
        elif op_name(n) in _FILLS or op_name(n) == "aten.unbind.int" or n is stack or \
                _feeds_fill(n):
            dep[n] = -1
        else:
            dep[n] = max((dep.get(a, -1) for a in n.all_input_nodes), default=-1)
    source = sources.pop()
    try:
        loop = _rerolled(region, dep, stack, last, count, source, constant)
    except Unsupported:
        if not _first_read_as_the_others(region, dep, source, count):
            raise
        loop = _rerolled(region, dep, stack, last, count, source, constant)
    if last is not None:
        _stack_last(region, loop, last)
    elif stack not in inside:  # torch.stack(v_seq) of the list the module returns
        region.nodes.append(stack)
    return loop


def _rerolled(region: Region, dep: dict, stack, last, count: int, source, constant) -> Loop:
    """The loop's steps grouped by `dep` and matched (_matched)."""
    lag = _lag(region, stack.args[0], dep) if stack is not None else 0
    steps = [[n for n in region.nodes if dep[n] == t and n is not stack]
             for t in range(count - lag)]
    if any(not s for s in steps) or max(dep.values()) >= count - lag or \
            (last is not None and dep[last] != count - 1):
        raise Unsupported(f"{region.cls}'s loop does not make one output per step")
    loop = Loop(source, steps, stack, constant=set(constant), lag=lag)
    loop.skipped = {n for s in steps[1:] for n in s} | {
        n for n in region.nodes if op_name(n) == "aten.unbind.int"}
    _matched(region, loop, dep)
    return loop


def _first_read_as_the_others(region: Region, dep: dict, source, count: int) -> bool:
    """A loop that writes into its own input (SpikingJelly's ILC neurons: `x_seq[t + 1] =
    x_seq[t + 1] + conn(spike)`, read back through prepare._forward_reads) reads x_seq[t] + r
    at every step t > 0, r made by step t - 1, and x_seq[0] alone at step 0. Step 0 is
    given x_seq[0] + 0 (exact: x + 0.0 is x), the 0 a fill that the state r starts from, so
    that every step is the same computation (tried when the steps as traced do not match;
    whether it rewrote step 0). The prepared graph is a copy (prepare.py)."""
    reads = {t: [n for n in region.nodes if _step_index(n) == (source, t) and dep[n] == t]
             for t in range(count)}
    sides = set()
    for t in range(1, count):
        for n in reads[t]:
            for user in n.users:
                if op_name(user) == "aten.copy.default" and user.args[0] is n:
                    continue  # x_seq[t] as the place written: its values unread
                if op_name(user) != "aten.add.Tensor" or len(user.args) != 2 or \
                        user.kwargs or n not in user.args or user.args[0] is user.args[1]:
                    return False
                other = user.args[1 - user.args.index(n)]
                if not isinstance(other, torch.fx.Node) or dep.get(other) != t - 1:
                    return False
                sides.add(user.args.index(n))
    if len(sides) != 1 or not reads[0]:
        return False
    side = sides.pop()
    for n in reads[0]:
        graph, users = n.graph, [u for u in n.users if dep.get(u) != -1]
        with graph.inserting_after(n):
            zero = graph.call_function(torch.ops.aten.full_like.default, (n, 0.0))
        with graph.inserting_after(zero):
            total = graph.call_function(torch.ops.aten.add.Tensor,
                                        (n, zero) if side == 0 else (zero, n))
        for new in (zero, total):
            new.meta.update(val=n.meta["val"], nn_module_stack=n.meta.get("nn_module_stack"),
                            stack_trace=n.meta.get("stack_trace"))
        for user in users:
            user.args = torch.fx.node.map_arg(user.args, lambda a: total if a is n else a)
        at = region.nodes.index(n) + 1
        region.nodes[at:at] = [zero, total]
        dep[zero], dep[total] = -1, 0
    return True


def _feeds_fill(node) -> bool:
    """Whether `node` is read only to fill a state: by full_like and the like, directly or
    through detach (NonSpikingBaseNode's `full_like(x_seq[0].data, 0.0)`)."""
    return bool(node.users) and all(
        op_name(u) in _FILLS or (op_name(u) in _ALIASES and _feeds_fill(u)) for u in node.users)


def _loop_outputs(region: Region, index: dict, inside: set, sources: set) -> tuple:
    """(the stack of the steps' outputs, the number of steps, the last step's output): the
    loop stacks its steps' outputs itself; returns them as a list its caller stacks
    (torch.stack(v_seq) outside the module); or returns only the last step's (a non-spiking
    neuron's decode='last_mem': the stack is made, see _stack_last). (None, None, None):
    no loop over time."""
    stacks = [n for n in region.nodes if _stacks_time(n)]
    if len(sources) != 1 or len(stacks) > 1:
        raise Unsupported(f"{region.cls} loops over {len(sources)} sequence(s) into "
                          f"{len(stacks)} stack(s); snnc re-rolls a loop over one input")
    if stacks:
        return stacks[0], len(stacks[0].args[0]), None
    source = next(iter(sources))
    taken = sorted({i[1] for n, i in index.items() if i is not None and i[0] is source
                    and not _feeds_fill(n)})
    steps = dims(source)[0]
    if len(taken) < 2 or not isinstance(steps, int) or taken != list(range(steps)):
        return None, None, None
    read = [n for n in region.nodes if any(u not in inside for u in n.users)]
    outer = {u for n in read for u in n.users if u not in inside}
    if len(outer) == 1 and _stacks_time(next(iter(outer))) and \
            set(next(iter(outer)).args[0]) == set(read):
        stack = next(iter(outer))
        return stack, len(stack.args[0]), None
    if len(read) == 1:
        return None, len(taken), read[0]
    raise Unsupported(f"{region.cls} returns its steps' values as a list that its caller "
                      "does not stack; snnc compiles a neuron's loop over time whose outputs "
                      "are stacked (torch.stack(v_seq)), reduced over time, or its last step")


def _stacks_time(node) -> bool:
    return op_name(node) == "aten.stack.default" and (list(node.args[1:2]) or [0])[0] == 0


def _matched(region: Region, loop: Loop, dep: dict) -> None:
    """_match_steps, or, if step 0 differs from the others only as _same allows, step 0
    rewritten to read its states as they do, then matched."""
    try:
        _match_steps(region, loop, dep)
    except Unsupported:
        fixes: list = []
        try:
            _match_steps(region, Loop(loop.source, loop.steps, loop.stack,
                                      constant=loop.constant, lag=loop.lag), dep, fixes)
        except Unsupported:
            fixes = []
        if not fixes:
            raise
        _first_step_as_the_others(region, loop, dep, fixes)
        loop.inits.clear()
        loop.carried.clear()
        _match_steps(region, loop, dep)


def _stack_last(region: Region, loop: Loop, last) -> None:
    """A loop whose module returns only its last step's output o[T-1]: o[0], ..., o[T-1]
    found back through the steps' matching, stacked (the loop's output, with time) and
    o[T-1]'s readers given `stack[T-1]` (a time_reduce "last" of it). The prepared graph is
    a copy (prepare.py)."""
    chain = [last]
    for phi in reversed(loop.phis):
        back = [a for a, b in phi.items() if b is chain[0]]
        if len(back) != 1:
            raise Unsupported(f"{region.cls} returns its last step's value, which the other "
                              "steps do not compute the same way")
        chain.insert(0, back[0])
    graph, val = last.graph, last.meta["val"]
    inside = set(region.nodes)
    with graph.inserting_after(last):
        stack = graph.call_function(torch.ops.aten.stack.default, (chain,))
    with graph.inserting_after(stack):
        pick = graph.call_function(torch.ops.aten.select.int, (stack, 0, len(chain) - 1))
    meta = {k: last.meta.get(k) for k in ("nn_module_stack", "stack_trace")}
    stack.meta.update(meta, val=val.new_empty((len(chain), *val.shape)))
    pick.meta.update(meta, val=val)
    last.replace_all_uses_with(pick, delete_user_cb=lambda u: u not in inside and
                               u not in (stack, pick))
    loop.stack = stack
    region.nodes.append(stack)


def _lag(region: Region, outs, dep: dict) -> int:
    """How many steps the loop's outputs lag behind the inputs they read: 0 when the output
    of step t reads x_seq[t]; k when it reads x_seq[t - k] at the latest (RAFNode fires on
    its state before the step: k = 1), its first k outputs computed from the initial state
    alone (constants). Steps are grouped by the last input they read, so the step body
    re-rolled then makes step t + k's output, which reaches step t + k through k states."""
    lag = len(outs) - 1 - dep.get(outs[-1], len(outs))
    if not 0 <= lag < len(outs) or any(not isinstance(o, torch.fx.Node) or
                                       dep.get(o) != max(t - lag, -1)
                                       for t, o in enumerate(outs)):
        raise Unsupported(f"{region.cls}'s loop does not make one output per step")
    return lag


def _first_step_as_the_others(region: Region, loop: Loop, dep: dict, fixes: list) -> None:
    """Rewrite step 0 to read its states as the later steps do: a state that starts as a
    Python number (SimpleIFNode's v = 0.0: `v + x` traces as add(x, 0.0) at step 0, as
    add(v, x) after) becomes a fill full_like(x_seq[0], c), and the operands of a
    commutative op take the later steps' order. The prepared graph is a copy (prepare.py)."""
    first = next(n for n in loop.steps[0] if _step_index(n) is not None)
    for node, kind, k, c in fixes:
        if kind == "swap":
            node.args = (node.args[1], node.args[0], *node.args[2:])
            continue
        with node.graph.inserting_before(node):
            fill = node.graph.call_function(torch.ops.aten.full_like.default, (first, c))
        fill.meta.update(val=first.meta["val"], nn_module_stack=node.meta.get("nn_module_stack"),
                         stack_trace=node.meta.get("stack_trace"))
        node.args = (*node.args[:k], fill, *node.args[k + 1:])
        region.nodes.insert(region.nodes.index(node), fill)
        dep[fill] = -1


def _match_steps(region: Region, loop: Loop, dep: dict, fixes: list | None = None) -> None:
    """Check that each step is the previous one's computation; record the states. With
    `fixes`, step 0 may differ from step 1 as _same allows, listing the rewrites."""
    phis = []
    for t in range(len(loop.steps) - 1):
        a, b = loop.steps[t], loop.steps[t + 1]
        phi: dict = {}
        i = 0
        for node in b:  # greedy: a step may lack nodes (below)
            while i < len(a) and not _same(a[i], node, t, phi, phis, dep, loop,
                                           fixes if t == 0 else None):
                i += 1
            if i == len(a):
                raise Unsupported(f"{region.cls}'s steps {t} and {t + 1} compute different "
                                  f"things (at {node.name}); snnc re-rolls a loop whose "
                                  "every step is the same computation")
            phi[a[i]] = node
            i += 1
        # only the last steps may lack nodes whose results nobody reads (the last step's
        # state updates; with a lag they are spread over the last lag + 1 groups)
        if t + 1 < len(loop.steps) - 1 - loop.lag and len(phi) != len(a):
            raise Unsupported(f"{region.cls}'s steps {t} and {t + 1} differ in length")
        phis.append(phi)
        loop.phis = phis
        outs = loop.stack.args[0][loop.lag:] if loop.stack is not None else None
        if outs is not None and phi.get(outs[t]) is not outs[t + 1]:
            raise Unsupported(f"{region.cls} stacks different results at steps {t}, {t + 1}")


_COMMUTATIVE = ("aten.add.Tensor", "aten.mul.Tensor")


def _same(x, y, t, phi, phis, dep, loop, fixes=None) -> bool:
    """Whether node y of step t+1 computes what node x of step t does. With `fixes` (step
    0 only), x may also read a number where y reads a state, or a commutative op's operands
    in the other order: the rewrites that make it so are appended to `fixes`."""
    ix, iy = (i if i is not None and dep.get(i[0], -1) < 0 else None  # a step's own
              for i in (_step_index(x), _step_index(y)))  # value[0] is no step read
    if ix is not None or iy is not None:  # x_seq[t] and x_seq[t + 1]
        return ix is not None and iy is not None and ix[0] is iy[0] and \
            (ix[1], iy[1]) == (t, t + 1)
    if x.target != y.target or len(x.args) != len(y.args) or x.kwargs != y.kwargs:
        return False
    orders = [x.args]
    if fixes is not None and op_name(x) in _COMMUTATIVE and len(x.args) == 2:
        orders.append((x.args[1], x.args[0]))
    for swapped, args in enumerate(orders):
        found = _same_args(args, y.args, t, phi, phis, dep, fixes is not None, loop.constant)
        if found is None:
            continue
        pending, numbers = found
        if t == 0:
            for k, u, v in pending:  # step 0 reads u where step 1 reads v: a state
                if loop.inits.get(v, u) is not u:
                    return False
                loop.inits[v] = u
                loop.carried[(x, k)] = v
        if fixes is not None:
            fixes.extend([(x, "swap", 0, None)] * swapped +
                         [(x, "fill", k, c) for k, c in numbers])  # k: after the swap
        return True
    return False


def _arg_pairs(xargs, yargs) -> list | None:
    """(argument index, x's, y's, inside a list) for every pair of corresponding arguments,
    lists paired element by element; None if their list structure differs."""
    pairs = []
    for k, (p, q) in enumerate(zip(xargs, yargs)):
        listed = isinstance(p, (list, tuple))
        if listed != isinstance(q, (list, tuple)) or (listed and len(p) != len(q)):
            return None
        pairs.extend((k, u, v, listed) for u, v in (zip(p, q) if listed else [(p, q)]))
    return pairs


def _same_args(xargs, yargs, t, phi, phis, dep, relaxed: bool, constant=frozenset()):
    """(states read, numbers standing for a state) if the arguments match, else None."""
    pairs = _arg_pairs(xargs, yargs)
    if pairs is None:
        return None
    pending, numbers = [], []
    for k, u, v, listed in pairs:
        if not isinstance(u, torch.fx.Node) or not isinstance(v, torch.fx.Node):
            if relaxed and t == 0 and isinstance(u, (int, float)) and \
                    not isinstance(u, bool) and isinstance(v, torch.fx.Node) and \
                    dep.get(v) == 0 and not listed:
                numbers.append((k, float(u)))  # a state that starts as a number
                continue
            if isinstance(u, torch.fx.Node) or isinstance(v, torch.fx.Node) or u != v:
                return None
            continue
        du, dv = dep.get(u), dep.get(v)
        if du == t:  # x reads its own step: y reads the matching node of its own
            if phi.get(u) is not v:
                return None
        elif dv == t and (du == t - 1 or (t == 0 and du in (None, -1))):
            if t == 0:  # step 0 reads u where step 1 reads step 0's v: a state
                pending.append((k, u, v))
            elif phis[t - 1].get(u) is not v:
                return None
        elif u is not v and not _same_constant(u, v, constant):
            return None
    return pending, numbers


def _same_constant(u, v, constant: set) -> bool:
    """Whether u and v compute the same constant the same way (each step recomputing
    `1 - alpha * (1 - tau)` from the parameters)."""
    if u is v:
        return True
    if not isinstance(u, torch.fx.Node) or not isinstance(v, torch.fx.Node):
        return not isinstance(u, torch.fx.Node) and not isinstance(v, torch.fx.Node) and u == v
    if u not in constant or v not in constant or u.op != "call_function" or \
            u.target != v.target or u.kwargs != v.kwargs:
        return False
    pairs = _arg_pairs(u.args, v.args) if len(u.args) == len(v.args) else None
    return pairs is not None and all(_same_constant(p, q, constant) for _, p, q, _ in pairs)


# -- lifting a loop region -------------------------------------------------------------------

def lift_node(lx, region: Region, node: torch.fx.Node, apply) -> object:
    """What `node` of a loop region is in the lift; `apply(lx, node)` runs its rule."""
    loop = region.loop
    if node in loop.skipped:
        return Marker("membrane")
    if node is loop.stack:
        return _output(lx, region)
    source = lx.env.get(loop.source)
    if not isinstance(source, Act) or source.layout.roles[0] != axes.T or \
            dims(loop.source)[0] != lx.steps:
        raise Unsupported(f"{region.cls} loops over a tensor that is not [T={lx.steps}, B, ...]")
    if op_name(node) in _SHAPED_FILLS and tuple(dims(node)) == tuple(dims(loop.source))[1:]:
        return Marker("init", float(node.args[1]) if len(node.args) > 1 else 0.0)
    if node in loop.constant and op_name(node) not in _FILLS and fold.fold(lx, node):
        return lx.env[node]  # a constant (step 0's, for a per-step one: see _gate)
    indexed = _step_index(node, set(region.nodes))
    if indexed is not None:  # x_seq[0]: the step's input
        if indexed[0] is not loop.source:
            raise Unsupported(f"{region.cls} indexes a constant by the step that snnc "
                              "cannot evaluate")
        return Act(source.value, source.layout.drop(0))
    saved = {}
    for k, arg in enumerate(node.args):
        key = loop.carried.get((node, k))
        if key is not None and not isinstance(arg, torch.fx.Node):
            raise Unsupported(f"{region.cls} carries a value from step to step inside a list")
        if key is not None:
            saved.setdefault(arg, lx.env.get(arg))
            lx.env[arg] = Act(_read(lx, region, key, source), source.layout.drop(0))
        elif arg in loop.constant and arg in loop.steps[0]:  # differs per step
            saved.setdefault(arg, lx.env.get(arg))
            lx.env[arg] = _gate(lx, region, arg, source)
    try:
        return apply(lx, node)
    finally:
        lx.env.update(saved)


def _gate(lx, region: Region, node, source: Act) -> Act:
    """A constant step 0 computes from a parameter indexed by the step (GLIF's
    `conduct[t].view(1, -1, 1, 1).sigmoid()`), as the value it has at each step."""
    loop = region.loop
    if node not in loop.gates:
        chain = [node]
        for phi in loop.phis:
            chain.append(phi.get(chain[-1]))
        steps = [_folded(lx, n, loop.constant, region).detach().to(torch.float32).numpy()
                 for n in chain]
        steps += steps[-1:] * loop.lag  # steps whose outputs come after the last: unread
        loop.gates[node] = _per_step(lx, region, steps, source, node)
    return loop.gates[node]


def _per_step(lx, region: Region, steps: list, source: Act, node) -> Act:
    """Constants c[t] that differ per step, as one value with the step input's shape: a
    time_mix of the input with weight 0 and bias [T, ...] (c without the batch axis: it
    must broadcast against the input's features without changing its shape)."""
    x, array = source.value, np.stack(steps).astype(np.float32)
    trail = array.shape[1:]
    if len(trail) == len(x.shape) and trail[:1] == (1,):
        trail = trail[1:]  # a leading 1 broadcasts against the batch
    if len(trail) >= len(x.shape) or \
            any(d not in (1, e) for d, e in zip(trail[::-1], x.shape[::-1])):
        raise Unsupported(
            f"{region.cls} reads a constant of shape {list(array.shape[1:])} that differs per "
            f"step against its input of shape {list(x.shape)} (one step, N the batch); snnc "
            "lifts one that broadcasts against the input's features")
    name = f"{region.module}.{node.name}"
    value, = lx.emit("time_mix", [x, lx.constant(np.zeros((len(steps),) * 2, np.float32),
                                                 f"{name}.zero"),
                                  lx.constant(array.reshape(len(steps), *trail),
                                              f"{name}.steps")], {}, node)
    return Act(value, source.layout.drop(0))


def _folded(lx, node, constant: set, region: Region):
    """The torch value of a constant node, evaluated (with what it reads) if not yet."""
    if node not in lx.tensors:
        for arg in node.all_input_nodes if node is not None else ():
            _folded(lx, arg, constant, region)
        if node is None or node not in constant or not fold.fold(lx, node):
            raise Unsupported(f"{region.cls} reads a constant that differs per step and "
                              "that snnc cannot evaluate")
    return lx.tensors[node]


def _read(lx, region: Region, key, source: Act) -> Value:
    """The value a state holds at the start of a step (_started)."""
    loop = region.loop
    if key not in loop.reads:
        read = Value("f32", source.value.shape, f"{region.module}.s{len(loop.reads)}")
        loop.reads[key] = read
        loop.seen[key], loop.fills[key] = _started(lx, region, read, loop.inits[key], source)
    return loop.seen[key]


def _started(lx, region: Region, read: Value, init, source: Act) -> tuple:
    """(the state's value as a step reads it, the fill it starts from) for a state read
    `read` whose value before step 0 is the fx node `init`: a constant of one value is the
    fill; another constant tensor (GLIF's per-channel `(1 - alpha * (1 - tau)) * 0 - (1 -
    alpha) * decay`) is a state starting at 0 plus that constant at step 0 only (0 + c = c
    and v + 0 = v exactly); anything else has no fill (None, refused by _output)."""
    got = lx.env.get(init)
    fill = _init(lx, got)
    if fill is None and isinstance(got, Value) and got in lx.builder.constants:
        first = np.asarray(lx.builder.constants[got], np.float32)
        steps = [first] + [np.zeros_like(first)] * (lx.steps - 1)
        start = _per_step(lx, region, steps, source, init)
        seen, = lx.emit("add", [read, start.value], {}, init)
        return seen, 0.0
    return read, fill


def _output(lx, region: Region) -> Act:
    """The stacked outputs: the body's output with time (delayed by the loop's lag); the
    states registered."""
    loop = region.loop
    source = lx.env[loop.source]
    outs = loop.stack.args[0]
    first = lx.env.get(outs[loop.lag])
    if not isinstance(first, Act):
        raise Unsupported(f"{region.cls}'s steps do not output an activation")
    states = [(lx.env.get(key), read, loop.fills[key]) for key, read in loop.reads.items()]
    value = first.value
    for k in range(loop.lag):  # state k + 1 holds the output of k + 1 steps before
        read = Value("f32", value.shape, f"{region.module}.out{k + 1}")
        seen, fill = _started(lx, region, read, outs[loop.lag - 1 - k], source)
        states.append((Act(value, first.layout), read, fill))
        value = seen
    taken = {s.name for s in lx.builder.states}
    for k, (write, read, init) in enumerate(states):
        if not isinstance(write, Act) or write.value.shape != read.shape:
            raise Unsupported(f"{region.cls} carries a value from step to step that is not "
                              "an activation of its input's shape")
        if init is None:
            raise Unsupported(f"{region.cls} starts a state from a value that is not a "
                              "constant fill; reset the network before export")
        name = region.module if k == 0 else f"{region.module}.s{k}"
        name = name if name not in taken else f"{name}#{len(taken)}"
        lx.builder.states.append(State(read, write.value, init, name))
        taken.add(name)
    return lx.new_act(value, source.layout)


def _init(lx, got) -> float | None:
    if isinstance(got, Marker) and got.kind == "init":
        return float(got.payload)
    if isinstance(got, Value) and got in lx.builder.constants:
        array = np.asarray(lx.builder.constants[got])
        if array.size and np.all(array == array.reshape(-1)[0]):  # one value everywhere
            return float(array.reshape(-1)[0])
    return None
