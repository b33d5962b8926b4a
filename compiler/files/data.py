"""Data files: an .npz with `x` (inputs, samples on axis 0: [n, C, H, W] for an image model,
[n, T, C, H, W] for a model that reads a sequence [T, N, ...]) and, optionally, `y` (labels).

A data file is untrusted input like a model file: it is read without pickles, and what it
holds is checked before anything runs on it.
"""

from __future__ import annotations

import os

import numpy as np

from snnc.errors import BadInputError


def load_data(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(x float32, y int64 or None) from an .npz with arrays x and (optionally) y."""
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data:
                raise BadInputError(f"{path} has no array 'x' (it has {sorted(data.files)}); "
                                    "the data file needs x (inputs, samples first) and "
                                    "optionally y (labels)")
            x = data["x"]
            y = data["y"] if "y" in data else None
    except BadInputError:
        raise
    except Exception as error:
        raise BadInputError(f"cannot read {path} as an .npz of arrays x and y: {error}") from None
    if x.dtype.kind not in "biuf" or x.ndim < 2 or len(x) == 0:  # not complex, time, text
        raise BadInputError(f"{path}: x must be a non-empty array of real numbers (bool, "
                            f"integer or float) with samples on axis 0, got {x.dtype} "
                            f"{list(x.shape)}")
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
        if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
            raise BadInputError(f"{path}: y must hold one integer label per sample of x "
                                f"({len(x)}), got {y.dtype} {list(y.shape)}")
        huge = y > np.iinfo(np.int64).max if y.dtype.kind == "u" else np.zeros(len(y), bool)
        if huge.any():
            raise BadInputError(f"{path}: {int(huge.sum()):,} labels y are beyond any class "
                                f"(for example {int(y[huge][0])} at sample "
                                f"{int(np.flatnonzero(huge)[0])})")
        y = y.astype(np.int64)
    return x, y
