"""The tensors of a model: refusing NaN, infinity and tensors no saved weight is, and a
program's fingerprint.

Shared by loading (files.loader), quantizing (quant.quantize) and compiling (driver).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import torch

from snnc.errors import BadInputError

FINGERPRINT_KEY = "snnc.source_fingerprint"  # the ONNX metadata entry compile writes it to

def check_finite(named: Iterable[tuple[str, Any]], where: str) -> None:
    """BadInputError naming the first floating tensor (a layer's weight, a BatchNorm
    statistic...) that holds NaN or infinity, or the first complex one."""
    for name, value in named:
        if isinstance(value, torch.Tensor) and value.is_complex():
            raise BadInputError(f"{where}: {name} is a complex tensor ({value.dtype}); snnc "
                                "compiles models with real weights")
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            finite = torch.isfinite(value.detach())
            if not bool(finite.all()):
                nan = int(torch.isnan(value.detach()).sum())
                layer = name.replace(".parametrizations.weight.original", ".weight")
                raise BadInputError(
                    f"{where}: {layer} (layer {layer.rsplit('.', 1)[0]}) holds "
                    f"{nan:,} NaN and {int((~finite).sum()) - nan:,} infinite value(s) out of "
                    f"{value.numel():,}; snnc needs finite weights. Retrain or repair the "
                    "layer.")


def check_saved_tensors(obj: Any, path: str) -> None:
    """BadInputError for a tensor in a loaded torch.save file that no saved weight is: a
    complex one (snnc compiles real-valued models), or one that claims more elements than
    its storage holds (a zero or overlapping stride, as from `expand`: a 1 KB file can then
    claim 2^34 values and every pass over them costs their count). Runs right after
    torch.load, before anything reads the values."""
    stack, seen = [((), obj)], set()
    while stack:
        where, value = stack.pop()
        if id(value) in seen:  # shared by reference: a pickle's memo can share any object
            continue
        seen.add(id(value))
        if isinstance(value, dict):
            stack.extend((where + (str(k),), v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((where + (str(i),), v) for i, v in enumerate(value))
        elif isinstance(value, torch.Tensor):
            name = ".".join(where) or "the file's tensor"
            if value.is_complex():
                raise BadInputError(
                    f"{path}: {name} is a complex tensor ({value.dtype}); snnc compiles models "
                    "with real weights. Save the model's real-valued weights.")
            if _overlaps(value):
                held = value.untyped_storage().nbytes() // max(value.element_size(), 1)
                raise BadInputError(
                    f"{path}: {name} claims {value.numel():,} values "
                    f"(shape {list(value.shape)}, stride {list(value.stride())}) from a "
                    f"storage of {held:,}: a view whose elements repeat (as `expand` makes), "
                    "not a saved weight. Save `tensor.contiguous()` (a checkpoint's "
                    "state_dict() is already saved that way).")


def _overlaps(tensor: torch.Tensor) -> bool:
    """Whether two of the tensor's indices share an element (a zero or overlapping stride).
    Sorted by stride, each dimension must step over everything the ones inside it span."""
    span = 1
    for stride, size in sorted((stride, size) for stride, size
                               in zip(tensor.stride(), tensor.shape) if size > 1):
        if stride < span:
            return True
        span = stride * size
    return False


def program_tensors(program: torch.export.ExportedProgram) -> list[tuple[str, Any]]:
    """The program's weights, buffers and constants, by name (sorted)."""
    tensors = dict(program.state_dict)
    tensors.update(program.constants)
    return sorted(tensors.items())


def fingerprint(program: torch.export.ExportedProgram) -> str:
    """A digest of a program's graph (every operation in order with all its arguments:
    thresholds, time constants, reset values, shapes, T) and of every weight, buffer and
    constant (name, dtype, shape, bytes). Another model, the same graph with other weights,
    or the same model with another neuron setting has another fingerprint. snnc compile
    stores it in the ONNX metadata; snnc verify checks SOURCE against it."""
    digest = hashlib.sha256(b"snnc-fingerprint-2\n")
    index = {node: i for i, node in enumerate(program.graph.nodes)}
    for node in program.graph.nodes:
        if node.op == "call_function":
            args = _canonical((node.args, node.kwargs), index)
            digest.update(f"{node.target} {args}\n".encode())
    for name, value in program_tensors(program):
        if isinstance(value, torch.Tensor):
            tensor = value.detach().contiguous().cpu()
            digest.update(f"{name} {tensor.dtype} {list(tensor.shape)}\n".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _canonical(value, index: dict) -> str:
    """A node's arguments as text: other nodes by position, floats exactly (hex)."""
    if isinstance(value, torch.fx.Node):
        return f"%{index[value]}"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_canonical(v, index) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_canonical(v, index)}" for k, v in sorted(value.items())) \
            + "}"
    if isinstance(value, float):
        return value.hex()
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    return str(value)  # dtype, device, layout, memory format
