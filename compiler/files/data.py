"""Data files: an .npz with `x` (inputs, samples on axis 0: [n, C, H, W] for an image model,
[n, T, C, H, W] for a model that reads a sequence [T, N, ...]) and, optionally, `y` (labels).

A data file is untrusted input like a model file: it is read without pickles, and what it
holds is checked before anything runs on it. An .npz is a zip, and a 1 MB one can unpack to
1 GiB, so nothing is unpacked before the zip's directory and the arrays' headers pass:

- every member is an array `<name>.npy` (what numpy.savez writes), each name once, and the
  whole zip unpacks within snnc.files.limits (in all, and relative to the file's size);
- x.npy's header declares real numbers (bool, integer or float) with samples on axis 0,
  y.npy's one integer per sample, and each member holds exactly the bytes its header
  declares;
- x read and cast to float32, and y to int64, fit in limits.max_unpacked().

x and y are then read from the zip that was checked, as np.load reads an .npz member
(numpy.lib.format.read_array, no pickles); no other member is ever unpacked.
"""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np

from snnc.errors import BadInputError, first_line
from snnc.files import limits

_WRITER = "numpy.savez writes its arrays uncompressed"


def load_data(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(x float32, y int64 or None) from an .npz with arrays x and (optionally) y."""
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: no such data file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise BadInputError(f"cannot read {path} as an .npz of arrays x and y: "
                            f"{first_line(error)}") from None
    with archive:
        arrays = _arrays(path, archive)
        if "x" not in arrays:
            raise BadInputError(f"{path} has no array 'x' (it has {sorted(arrays)[:20]}); "
                                "the data file needs x (inputs, samples first) and "
                                "optionally y (labels)")
        x_shape, x_dtype = _header(path, archive, arrays["x"])
        if x_dtype.kind not in "biuf" or len(x_shape) < 2 or x_shape[0] == 0:
            raise BadInputError(f"{path}: x must be a non-empty array of real numbers (bool, "
                                f"integer or float) with samples on axis 0, got {x_dtype} "
                                f"{list(x_shape)}")
        need = math.prod(x_shape) * (x_dtype.itemsize + 4)  # as read, and as float32
        if "y" in arrays:
            y_shape, y_dtype = _header(path, archive, arrays["y"])
            if len(y_shape) != 1 or y_shape[0] != x_shape[0] or y_dtype.kind not in "iu":
                raise BadInputError(f"{path}: y must hold one integer label per sample of x "
                                    f"({x_shape[0]}), got {y_dtype} {list(y_shape)}")
            need += y_shape[0] * (y_dtype.itemsize + 8)  # as read, and as int64
        if need > limits.max_unpacked():
            raise BadInputError(
                f"{path}: x and y take {need / 2**30:.1f} GiB of memory once read and cast "
                f"to float32 and int64, more than snnc reads ({limits.max_unpacked():,} "
                "bytes); pass fewer samples, or raise the limit with SNNC_MAX_UNPACKED (for "
                f"example SNNC_MAX_UNPACKED={-(-need >> 30)}G)")
        x = _read(path, archive, arrays["x"])
        y = _read(path, archive, arrays["y"]) if "y" in arrays else None
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused
        x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        samples = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
        raise BadInputError(f"{path}: x holds {int(np.isnan(x).sum()):,} NaN and "
                            f"{int(np.isinf(x).sum()):,} infinite value(s) (as float32) in "
                            f"{len(samples):,} sample(s), first {samples[:5].tolist()}; "
                            "inputs must be finite")
    if y is not None:
        huge = y > np.iinfo(np.int64).max if y.dtype.kind == "u" else np.zeros(len(y), bool)
        if huge.any():
            raise BadInputError(f"{path}: {int(huge.sum()):,} labels y are beyond any class "
                                f"(for example {int(y[huge][0])} at sample "
                                f"{int(np.flatnonzero(huge)[0])})")
        y = y.astype(np.int64)
    return x, y


def _arrays(path: str, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """{array name: its member}, after the checks on the zip's directory."""
    infos = archive.infolist()
    limits.check_unpacked(path, sum(i.file_size for i in infos), os.path.getsize(path),
                          _WRITER)
    arrays: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if not info.filename.endswith(".npy") or info.is_dir():
            raise BadInputError(f"{path} holds {info.filename[:120]!r}, which is not an array "
                                "numpy.savez writes (an .npz holds only <name>.npy members); "
                                "write the data again with numpy.savez(path, x=..., y=...)")
        if info.filename[:-4] in arrays:
            raise BadInputError(f"{path} holds {info.filename[:120]!r} twice; numpy.savez "
                                "writes each array once: the file was altered")
        arrays[info.filename[:-4]] = info
    return arrays


def _header(path: str, archive: zipfile.ZipFile,
            info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the .npy header of `info`, which must hold exactly the bytes
    it declares; reads nothing past the header."""
    where = f"{path}: {info.filename[:120]}"
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy version {version[0]}.{version[1]} (numpy.save writes "
                                 "1.0 or 2.0 for arrays of numbers)")
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                    np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(member)
            offset = member.tell()
    except Exception as error:  # numpy's header parser, zlib, zipfile: any damage
        raise BadInputError(f"{where} is not an array numpy.save writes "
                            f"({first_line(error)}); write the data again with "
                            "numpy.savez") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None \
            or any(d < 0 for d in shape):
        raise BadInputError(f"{where} declares {dtype} {list(shape)}, not an array of numbers "
                            "(objects, records and nested arrays are refused)")
    declared = math.prod(shape) * dtype.itemsize
    if declared != info.file_size - offset:
        raise BadInputError(f"{where} declares {dtype} {list(shape)} ({declared:,} bytes) but "
                            f"holds {max(info.file_size - offset, 0):,}; the file is damaged "
                            "or altered")
    return shape, dtype


def _read(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    try:
        with archive.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    except Exception as error:  # a bad CRC, a damaged deflate stream, a short member
        raise BadInputError(f"cannot read {path}: {info.filename[:120]} ("
                            f"{first_line(error)}); the file is damaged") from None


def read_config(path: str) -> dict:
    """A quantization config (snnc quantize --config): a non-empty JSON object."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise BadInputError(f"cannot read the config {path} as JSON: {first_line(error)}") \
            from None
    if not isinstance(config, dict) or not config:
        raise BadInputError(f"the config {path} must be a JSON object mapping module-name globs to "
                        '{"scheme": ..., "bits": ...} or "float" (docs/quantization.md), got '
                        f"{type(config).__name__}")
    return config
