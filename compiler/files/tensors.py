"""The tensors of a model: refusing NaN and infinity, and a program's fingerprint.

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
    statistic...) that holds NaN or infinity."""
    for name, value in named:
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
