"""`snnc inspect FILE`: what a file holds, before a config is written for it.

- a weight pack (.snnpack): its layer table (snnc.backend.pack);
- an snnc checkpoint or a NIR graph: the model's quantizable layers (Conv1d, Conv2d, Linear
  modules) by the names `snnc quantize --config` matches, with parameters, scheme and bits;
- a torch.export archive: its conv and linear layers as the compiler sees them (the same
  module names), with the quantization the program carries.
Loading follows the model-file rules (docs/model_files.md): no code runs unless trusted."""

from __future__ import annotations

import json

from snnc.errors import BadInputError
from snnc.files.paths import KINDS, check_input, sniff


def inspect_file(path: str, as_json: bool = False, trust_code: bool = False,
                 trust_pickle: bool = False) -> str:
    from snnc.files.loader import inspect_pack

    check_input("FILE", path)
    kind = sniff(path)
    if kind == "snnpack":
        return inspect_pack(path, as_json)
    if kind in ("onnx", "ort"):
        raise BadInputError(
            f"{path} is {KINDS[kind]}: inspect reads model files (an snnc checkpoint, a "
            "torch.export archive, a NIR graph) and weight packs (.snnpack). For a compiled "
            "model, inspect the model it was compiled from, its .snnpack (compile --pack), or "
            "its per-layer report (compile --report)")
    if kind in ("torch", "pickle", "nir"):
        rows = _checkpoint_layers(path, trust_code)
    elif kind == "export":
        rows = _program_layers(path, trust_pickle)
    else:
        raise BadInputError(f"{path} is {KINDS.get(kind, kind)}, not a file inspect reads: an "
                            "snnc checkpoint, a torch.export archive, a NIR graph or an "
                            ".snnpack weight pack (docs/model_files.md)")
    total = sum(r["parameters"] for r in rows)
    average = sum(r["bits"] * r["parameters"] for r in rows) / total if total else 0.0
    if as_json:
        return json.dumps({"file": path, "kind": kind, "layers": rows, "parameters": total,
                           "average_bits": average}, sort_keys=True)
    return _table(path, kind, rows, total, average)


def _checkpoint_layers(path: str, trust_code: bool) -> list:
    from snnc.files import loader
    from snnc.quant.quantize import QUANTIZABLE, report

    ckpt = loader.load_checkpoint(path, "snnc inspect")
    net = loader.build_from_checkpoint(path, ckpt, trust_code=trust_code)
    kinds = {name: next(c.__name__ for c in type(m).__mro__ if c in QUANTIZABLE)
             for name, m in net.named_modules() if isinstance(m, QUANTIZABLE)}
    rows, _ = report(net)
    return [{"name": r.name, "op": kinds[r.name], "parameters": r.parameters,
             "scheme": r.scheme, "bits": r.bits} for r in rows]


def _program_layers(path: str, trust_pickle: bool) -> list:
    from snnc.check.report import weight_layers
    from snnc.files import loader
    from snnc.frontend.lift import lift

    graph = lift(loader.load_program(path, trust_pickle=trust_pickle))
    return [{"name": r.layer, "op": r.op, "parameters": r.parameters, "scheme": r.scheme,
             "bits": r.bits} for r in weight_layers(graph)]


def _table(path: str, kind: str, rows: list, total: int, average: float) -> str:
    width = max([len(r["name"]) for r in rows] + [5])
    what = "an snnc checkpoint" if kind in ("torch", "pickle") else KINDS[kind]
    lines = [f"{path}: {what}, {len(rows)} quantizable layer(s)",
             f"{'layer':<{width}}  {'op':<7}  {'parameters':>11}  {'scheme':<7}  {'bits':>4}"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {r['op']:<7}  {r['parameters']:>11,}  "
                     f"{r['scheme']:<7}  {r['bits']:>4g}")
    lines.append(f"{'total':<{width}}  {'':<7}  {total:>11,}  {'':<7}  {average:>4.2f}   "
                 "(average bits weighted by parameters; float layers count 32)")
    if rows:
        lines.append(f"a --config for snnc quantize matches these names with globs, e.g. "
                     f'{{"{rows[0]["name"]}": {{"scheme": "uniform", "bits": 8}}, '
                     f'"*": {{"scheme": "pot", "bits": 4}}}} ({{"scheme": "ternary"}} and '
                     f'{{"scheme": "binary"}} take no bits; docs/quantization.md)')
    return "\n".join(lines)
