"""Reading a NIR file (HDF5, as `nir.write` makes it) without trusting it.

`nir.read` reads every dataset of the file into memory and recurses without limit. snnc
walks the file itself first, with h5py, and refuses before reading anything large:
- groups nested deeper than MAX_DEPTH, more than MAX_ITEMS groups and datasets in all;
- a dataset that is not numeric (integer, float, bool) or a string (object, compound,
  reference and opaque types: h5py never unpickles, but snnc reads numbers and names only);
- more than MAX_ELEMENTS array elements in all (checked on the datasets' shapes before
  they are read).
Then the dictionary goes to `nir.dict2NIRNode` with NIR's type check: an unknown node
type, a missing field or shapes that do not fit are refused naming the node's path.
Nothing in the file is executed: HDF5 holds data only.
"""

from __future__ import annotations

import math
import re

import numpy as np

from snnc.errors import BadInputError, first_line

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_DEPTH = 32
MAX_ITEMS = 100_000
MAX_ELEMENTS = 2 ** 28  # 1 GiB of float32


def is_nir(head: bytes) -> bool:
    """Whether a file starting with `head` is HDF5 (a NIR file is one; the signature may
    also sit at 512, 1024, ... bytes after a user block: nir.write puts it at 0)."""
    return head[:8] == HDF5_SIGNATURE


def read(path, where: str | None = None):
    """The nir.NIRGraph in the NIR file at `path` (a path, or a binary file object named
    `where` in messages) (module docstring)."""
    where = where or path
    try:
        import h5py
        import nir
    except ImportError:
        raise BadInputError(f"{where} is a NIR file; reading it needs the `nir` package: "
                            "pip install 'snnc[nir]'") from None
    try:
        with h5py.File(path, "r") as f:
            if "node" not in f or not isinstance(f["node"], h5py.Group):
                raise BadInputError(f"{where} is an HDF5 file but not a NIR graph (it has no "
                                    "'node' group); write it with nir.write")
            counts = {"items": 0, "elements": 0}
            data = _group(f["node"], "node", 0, counts, where, h5py)
    except BadInputError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise BadInputError(f"{where}: cannot read it as HDF5 ({first_line(error)}); is it a "
                            "NIR file written by nir.write?") from None
    return to_graph(data, where, nir)


def to_graph(data: dict, where: str, nir):
    """A NIRGraph from the dictionary of a NIR file, refusals naming the node's path."""
    if data.get("type") != "NIRGraph":
        raise BadInputError(f"{where}: the top node is a {data.get('type')!r}, not a NIRGraph")
    _check_types(data, "", where, nir)
    data["type_check"] = True
    try:
        return nir.dict2NIRNode(data)
    except Exception as error:  # noqa: BLE001 - nir raises what its dataclasses raise
        hint = ""
        if re.search(r"mismatch: \S*input\.output: \[\[\d+ ", first_line(error)):
            hint = ("; an Input type with more axes than the node reading it takes holds an "
                    "example's batch (Norse's to_nir writes it): export one sample, without "
                    "its batch axis")
        raise BadInputError(f"{where}: the NIR graph is not valid ({type(error).__name__}: "
                            f"{first_line(error)}){hint}") from None


def _check_types(data: dict, at: str, where: str, nir) -> None:
    """Every node's type is a NIR node type (nested graphs checked too)."""
    for name, node in (data.get("nodes") or {}).items():
        path = f"{at}{name}"
        kind = node.get("type") if isinstance(node, dict) else None
        if not isinstance(kind, str) or not isinstance(getattr(nir, kind, None), type):
            raise BadInputError(f"{where}: node {path!r} has the unknown type {kind!r}; NIR "
                                "1.0 node types are Input, Output, Affine, Linear, Scale, "
                                "Conv1d, Conv2d, Flatten, AvgPool2d, SumPool2d, Threshold, "
                                "I, LI, IF, LIF, CubaLI, CubaLIF, Delay and NIRGraph")
        if kind == "NIRGraph":
            _check_types(node, f"{path}.", where, nir)
    edges = data.get("edges")
    if edges is None or not isinstance(data.get("nodes"), dict):
        raise BadInputError(f"{where}: the graph {at[:-1] or '(top)'!r} has no nodes or edges")


def _group(group, path: str, depth: int, counts: dict, where: str, h5py) -> dict:
    if depth > MAX_DEPTH:
        raise BadInputError(f"{where}: groups nested deeper than {MAX_DEPTH} at {path}")
    out: dict = {}
    for key, item in group.items():
        counts["items"] += 1
        if counts["items"] > MAX_ITEMS:
            raise BadInputError(f"{where}: more than {MAX_ITEMS:,} groups and datasets")
        at = f"{path}/{key}"
        if isinstance(item, h5py.Group):
            out[key] = _group(item, at, depth + 1, counts, where, h5py)
        elif isinstance(item, h5py.Dataset):
            out[key] = _dataset(item, at, counts, where, h5py)
        else:
            raise BadInputError(f"{where}: {at} is neither a group nor a dataset")
    return out


def _dataset(item, path: str, counts: dict, where: str, h5py):
    dtype = item.dtype
    text = h5py.check_string_dtype(dtype) is not None
    if not text and dtype.kind not in "biuf":
        raise BadInputError(f"{where}: {path} holds {dtype} data; a NIR file holds numbers "
                            "and names only")
    size = math.prod(item.shape) if item.shape else 1
    counts["elements"] += size
    if counts["elements"] > MAX_ELEMENTS:
        raise BadInputError(f"{where}: more than {MAX_ELEMENTS:,} array elements in all")
    value = item[()]
    if isinstance(value, bytes):
        return value.decode("utf8", errors="replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
        return _decoded(value.tolist())  # names (edges: an [E, 2] array of them)
    return value


def _decoded(value):
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value.decode("utf8", errors="replace") if isinstance(value, bytes) else str(value)
