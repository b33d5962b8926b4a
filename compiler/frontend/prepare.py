"""Before lifting: the exported graph made functional, and ops snnc has no rule for broken
into ones it has, with torch's own decompositions.

torch.export's default IR keeps a model's in-place operations as written: `out += identity`
is `aten.add_`, `x[..., a:b] = y` is a slice (a view of x) and `aten.copy_` into it.
`functional_graph` returns a copy of the program's graph with each in-place op replaced by
its out-of-place twin (add_ -> add, copy_ -> copy, fill_ -> fill, ...); a write into a view
becomes a new value of the view's base, rebuilt through the chain of views (slice ->
slice_scatter, select -> select_scatter, permute/transpose -> the inverse permutation,
view/reshape/unsqueeze/squeeze/alias -> a reshape back), and views of that base taken before
the write are re-taken after it. Later uses read the newest value. This is what
functionalization does, without also decomposing SpikingJelly's neuron ops
(ExportedProgram.run_decompositions rewrites those into their reference arithmetic).

`decompose` then replaces each node whose op has no lifting rule by the ops torch's core
decomposition table gives for it (roll -> arange, fmod, index_select; reflection padding
and nearest upsampling -> index arithmetic and index; einsum -> permute, view, bmm), traced
on the node's own shapes, when every op that comes out has a rule or computes only from
constants (which the lifter folds). Ops with rules are never touched, so a program snnc
compiled before compiles to the same graph.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from snnc.frontend.lifter import NEURON_OPS, QUANT_OP, op_name

aten = torch.ops.aten

# A write into a view of these ops is written back into the base with the op that inverts
# the view (the scatter twins) or, for views that only reshape or permute, its inverse.
_RESHAPING_VIEWS = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
                    "aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims",
                    "aten.squeeze.default", "aten.flatten.using_ints", "aten.unflatten.int",
                    "aten.alias.default", "aten.detach.default", "aten.view_as.default")


class FunctionalizeError(Exception):
    """An in-place write snnc cannot make functional: (what, fx node)."""

    def __init__(self, what: str, node: torch.fx.Node):
        super().__init__(what)
        self.node = node


def _schema(node: torch.fx.Node):
    return getattr(node.target, "_schema", None)


def _writes_self(node: torch.fx.Node) -> bool:
    """An in-place op: its first argument is written (add_, copy_, fill_, ...)."""
    schema = _schema(node)
    if schema is None or not schema.arguments or schema.is_mutable is False:
        return False
    info = schema.arguments[0].alias_info
    return info is not None and info.is_write and not schema.name.endswith("_out") and \
        not any(a.kwarg_only and a.alias_info is not None and a.alias_info.is_write
                for a in schema.arguments[1:])


def _is_view(node: torch.fx.Node) -> bool:
    """A view op: its result aliases its first argument without writing it."""
    schema = _schema(node)
    if schema is None or not schema.returns or not schema.arguments:
        return False
    ret, first = schema.returns[0].alias_info, schema.arguments[0].alias_info
    return ret is not None and not ret.is_write and first is not None and \
        not first.is_write and isinstance(node.args[0], torch.fx.Node)


def _functional_twin(node: torch.fx.Node):
    """add_.Tensor -> add.Tensor; zero_ -> zero; None when torch has no twin."""
    schema = _schema(node)
    namespace, name = schema.name.split("::")
    if not name.endswith("_"):
        return None
    packet = getattr(getattr(torch.ops, namespace), name[:-1], None)
    overload = schema.overload_name or "default"
    return getattr(packet, overload, None) if packet is not None else None


def functional_graph(program: torch.export.ExportedProgram) -> torch.fx.Graph:
    """A copy of the program's graph with no in-place op (module docstring). Raises
    FunctionalizeError for a write snnc cannot express (through a view it cannot invert)."""
    graph = torch.fx.Graph()
    out = graph.graph_copy(program.graph, {})
    graph.output(out)
    if any(_writes_self(n) for n in graph.nodes if n.op == "call_function"):
        _functionalize(graph)
        _forward_reads(graph)
    # what no output reads: a value a module keeps for itself (spike_dhs's neuron stores
    # its mean membrane as an attribute, which torch.export drops but leaves computed)
    graph.eliminate_dead_code()
    return graph


def input_specs(program: torch.export.ExportedProgram, graph: torch.fx.Graph) -> dict:
    """The program's input specs by the placeholder names of `graph`, a copy of its graph:
    matched by position, as the copy may rename them (a forward argument named `input`, a
    Python builtin, becomes `input_1`)."""
    ours = [n.name for n in graph.nodes if n.op == "placeholder"]
    return dict(zip(ours, program.graph_signature.input_specs))


def _functionalize(graph: torch.fx.Graph) -> None:
    """Rewrite `graph` in place: every in-place op replaced (module docstring)."""
    f = _Functionalizer(graph)
    for node in list(graph.nodes):
        f.at = node
        first = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) \
            else None  # before resolving: the user's name for the tensor
        if node.op in ("call_function", "output"):
            node.args = torch.fx.node.map_arg(node.args, f.resolve)
            node.kwargs = torch.fx.node.map_arg(node.kwargs, f.resolve)
        if node.op != "call_function" or first is None:
            continue
        if _writes_self(node):
            f.write(node, f.named(first))
        elif _is_view(node):
            f.base[node] = f.named(first)
            f.views.setdefault(f.root(node), []).append(node)
    for node in reversed(list(graph.nodes)):
        if node.op == "call_function" and _writes_self(node) and not node.users:
            graph.erase_node(node)


class _Functionalizer:
    """Tensors are named by the user's node that made them (an in-place op's result is its
    first argument); `current` maps each to the node holding its newest value."""

    def __init__(self, graph: torch.fx.Graph):
        self.graph = graph
        self.current: dict[torch.fx.Node, torch.fx.Node] = {}  # a tensor's newest value
        self.alias: dict[torch.fx.Node, torch.fx.Node] = {}  # in-place op -> tensor written
        self.base: dict[torch.fx.Node, torch.fx.Node] = {}  # a view -> the tensor it views
        self.views: dict[torch.fx.Node, list[torch.fx.Node]] = {}  # root -> views taken
        self.stale: set[torch.fx.Node] = set()  # views of a root written since they were taken
        self.at: torch.fx.Node | None = None  # the node being rewritten (insert before it)

    def named(self, node: torch.fx.Node) -> torch.fx.Node:
        return self.named(self.alias[node]) if node in self.alias else node

    def root(self, node: torch.fx.Node) -> torch.fx.Node:
        return self.root(self.base[node]) if node in self.base else node

    def resolve(self, node: torch.fx.Node) -> torch.fx.Node:
        """The newest value of `node`: a view of a since-written base is taken again."""
        node = self.named(node)
        if node in self.stale:
            self.stale.discard(node)
            base = self.resolve(self.base[node])
            rest = torch.fx.node.map_arg(node.args[1:], self.resolve)
            self.current[node] = self.insert(node.target, (base, *rest), node.kwargs, node,
                                             node.meta.get("val"))
        return self.current.get(node, node)

    def insert(self, target, args, kwargs, like: torch.fx.Node, val) -> torch.fx.Node:
        with self.graph.inserting_before(self.at):
            new = self.graph.call_function(target, tuple(args), dict(kwargs))
        new.meta = {k: v for k, v in like.meta.items()
                    if k in ("nn_module_stack", "stack_trace", "source_fn_stack")}
        new.meta["val"] = val
        return new

    def write(self, node: torch.fx.Node, target: torch.fx.Node) -> None:
        twin = _functional_twin(node)
        if twin is None:
            raise FunctionalizeError(f"writes in place with {op_name(node)}, which has no "
                                     "out-of-place form", node)
        self.alias[node] = target
        value = self.insert(twin, node.args, node.kwargs, node, node.meta.get("val"))
        chain = []
        while True:  # the written view, its base, that base's base, ...: their new values
            self.current[target] = value
            chain.append(target)
            if target not in self.base:
                break
            base = self.base[target]
            value = _inverse(self, target, value, self.resolve(base), node)
            target = base
        self.stale.update(v for v in self.views.get(target, []) if v not in chain)



def _inverse(f: _Functionalizer, view: torch.fx.Node, value: torch.fx.Node,
             base: torch.fx.Node, write: torch.fx.Node) -> torch.fx.Node:
    """The base of `view` after the view's elements became `value`."""
    name, val = op_name(view), base.meta.get("val")
    args = view.args
    if name == "aten.slice.Tensor":
        return f.insert(aten.slice_scatter.default, (base, value, *args[1:]), view.kwargs,
                        write, val)
    if name == "aten.select.int":
        return f.insert(aten.select_scatter.default, (base, value, *args[1:]), view.kwargs,
                        write, val)
    if name == "aten.permute.default":
        perm = list(args[1])
        inverse = [perm.index(i) for i in range(len(perm))]
        return f.insert(aten.permute.default, (value, inverse), {}, write, val)
    if name in ("aten.transpose.int", "aten.t.default"):
        return f.insert(view.target, (value, *args[1:]), view.kwargs, write, val)
    if name in _RESHAPING_VIEWS and isinstance(val, torch.Tensor):
        shape = [d if not isinstance(d, torch.SymInt) else
                 f.insert(aten.sym_size.int, (base, i), {}, base, d)
                 for i, d in enumerate(val.shape)]
        return f.insert(aten.view.default, (value, shape), {}, write, val)
    raise FunctionalizeError(
        f"writes in place into a view made by {name}, which snnc cannot write back "
        "into its tensor; write the result to a new tensor (torch.cat, or x = x + y)",
        write)


def _forward_reads(graph: torch.fx.Graph) -> None:
    """Store-to-load forwarding: `select(select_scatter(base, src, d, k), d, j)` reads `src`
    when j is k, else `select(base, d, j)` (and likewise through a slice_scatter whose slice
    holds or misses index j); a written `copy(dst, src)` of the same shape and dtype is
    `src`. A loop
    that writes into its own input (`x_seq[t + 1] = x_seq[t + 1] + r`, SpikingJelly's ILC
    neurons) then reads each step's input as a value of that step, not of the whole run's
    rewritten tensor, so it can be re-rolled (neuron_regions.py). Exact: the same elements.
    `view_as(a, b)` of a static shape is `view(a, shape)`: it reads only b's shape, so the
    writes b holds need not be computed for it."""
    for node in list(graph.nodes):
        name = op_name(node)
        if name == "aten.view_as.default" and _same_type(node, node) and all(
                isinstance(d, int) for d in node.meta["val"].shape):
            with graph.inserting_before(node):
                view = graph.call_function(aten.view.default,
                                           (node.args[0], list(node.meta["val"].shape)))
            view.meta = dict(node.meta)
            node.replace_all_uses_with(view)
        if name != "aten.select.int":
            continue
        while True:
            found = _forwarded(*node.args)
            if found is None:
                break
            if isinstance(found, tuple):
                node.args = found
                continue
            node.replace_all_uses_with(found)
            break
    graph.eliminate_dead_code()


def _same_type(a: torch.fx.Node, b: torch.fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and \
        va.dtype == vb.dtype and tuple(va.shape) == tuple(vb.shape)


def _forwarded(source, dim, index):
    """What `select(source, dim, index)` reads if `source` is a scatter: the written value
    (a node), or the select's arguments on the scatter's base (a tuple); None if neither."""
    name = op_name(source) if isinstance(source, torch.fx.Node) else ""
    if name not in ("aten.select_scatter.default", "aten.slice_scatter.default") or \
            not isinstance(index, int):
        return None
    base, src, *rest = source.args
    shape = tuple(base.meta["val"].shape) if isinstance(base.meta.get("val"), torch.Tensor) \
        else ()
    if not shape or not isinstance(dim, int) or any(not isinstance(d, int) for d in shape):
        return None
    dim, index = dim % len(shape), index % shape[dim % len(shape)]
    if name == "aten.select_scatter.default":
        if not isinstance(rest[0], int) or rest[0] % len(shape) != dim:
            return None
        if rest[1] % shape[dim] != index:
            return (base, dim, index)
        while op_name(src) == "aten.copy.default" and _same_type(src, src.args[1]):
            src = src.args[1]  # copy(dst, src) of the same shape and dtype: src
        return src if isinstance(src, torch.fx.Node) and src.meta.get("val") is not None \
            else None
    sdim, start, end, step = (list(rest) + [0, None, None, 1])[:4]
    if not isinstance(sdim, int) or sdim % len(shape) != dim or \
            not all(isinstance(v, (int, type(None))) for v in (start, end, step)):
        return None
    hits = range(shape[dim])[slice(start, end, step)]
    return (src, dim, hits.index(index)) if index in hits else (base, dim, index)


# -- decomposing ops that have no rule ------------------------------------------------------

_NEVER = NEURON_OPS + (QUANT_OP,)
# Beyond the core table: torch's decompositions of resampling into index arithmetic.
_ALSO = [aten.upsample_bilinear2d, aten.upsample_nearest2d, aten.upsample_linear1d,
         aten.upsample_nearest1d, aten.upsample_bicubic2d, aten.upsample_nearest3d,
         aten.upsample_trilinear3d]


def decompose(graph: torch.fx.Graph, has_rule: Callable[[str], bool],
              constant: set[torch.fx.Node]) -> torch.fx.Graph:
    """Nodes without a rule replaced by torch's core decomposition of them (module
    docstring), repeatedly, while that helps. `constant`: the placeholders of parameters,
    buffers and constants (what the lifter folds from)."""
    from torch._decomp import core_aten_decompositions, get_decompositions
    table = core_aten_decompositions()
    table.update(get_decompositions(_ALSO))
    known = set(constant)
    for _ in range(4):  # a decomposition's ops can need one more round
        changed = False
        for node in list(graph.nodes):
            if node.op != "call_function":
                continue
            if all(a in known for a in node.all_input_nodes) and _foldable(node):
                known.add(node)
                continue
            name = op_name(node)
            if has_rule(name) or name in _NEVER or not name.startswith("aten."):
                continue
            if _splice(graph, node, table, has_rule, known):
                changed = True
        if not changed:
            break
    return graph


def _foldable(node: torch.fx.Node) -> bool:
    """An op the lifter may evaluate at compile time when its inputs are constants."""
    name = op_name(node)
    if name in _NEVER or not (name.startswith(("aten.", "operator.")) or name == "getitem"):
        return False
    tags = getattr(node.target, "tags", ())
    return torch.Tag.nondeterministic_seeded not in tags


def _splice(graph: torch.fx.Graph, node: torch.fx.Node, table, has_rule, known) -> bool:
    inputs = node.all_input_nodes
    vals = [n.meta.get("val") for n in inputs]
    if not all(isinstance(v, torch.Tensor) for v in vals):
        return False
    index = {n: i for i, n in enumerate(inputs)}

    def fn(*tensors):
        args = torch.fx.node.map_arg(node.args, lambda n: tensors[index[n]])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: tensors[index[n]])
        return node.target(*args, **kwargs)

    try:
        from torch._guards import detect_fake_mode
        mode = detect_fake_mode(vals)
        with _quiet():
            if mode is not None:
                with mode:
                    sub = make_fx(fn, decomposition_table=table, tracing_mode="real")(*vals)
            else:
                sub = make_fx(fn, decomposition_table=table, tracing_mode="fake")(*vals)
    except Exception:  # torch cannot decompose it: the op is reported as it is
        return False
    ops = [n for n in sub.graph.nodes if n.op == "call_function"]
    if not ops or any(op_name(n) == op_name(node) for n in ops):
        return False
    # every op that comes out has a rule, or computes only from constants
    local_known = {p for p, i in zip([n for n in sub.graph.nodes if n.op == "placeholder"],
                                     inputs) if i in known}
    for n in ops:
        if all(a in local_known for a in n.all_input_nodes) and _foldable(n):
            local_known.add(n)
        elif not has_rule(op_name(n)):
            return False
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    env.update(zip(placeholders, inputs))
    keep = {k: v for k, v in node.meta.items()
            if k in ("nn_module_stack", "stack_trace", "source_fn_stack")}
    result = None
    with graph.inserting_before(node):
        for n in sub.graph.nodes:
            if n.op == "call_function":
                new = graph.node_copy(n, lambda a: env[a])
                new.meta = {**keep, "val": n.meta.get("val")}
                env[n] = new
            elif n.op == "output":
                result = torch.fx.node.map_arg(n.args[0], lambda a: env[a])
    if not isinstance(result, torch.fx.Node):
        return False  # several outputs: leave the op as it is
    node.replace_all_uses_with(result)
    graph.erase_node(node)
    return True


class _quiet:
    """make_fx logs nothing we want; warnings from its tracing are not the user's."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


