"""The search's state file: every finished unit of work is committed to it atomically, a
search resumes from it (--resume), and it is refused when it is not a state or belongs to
another search. Its key is no signature: the search checks every field of a resumed state
before using any (engine.Search.check_state, schema.py).
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import torch

from snnc.errors import BadInputError, SnncError
from snnc.files import loader
from snnc.files.outputs import write_atomic
from snnc.quant.distributed import Context
from snnc.quant.search.space import candidates


class State:
    """The search's record: written atomically after every unit of work, by process 0."""

    def __init__(self, path: str | None, key: str, ctx: Context, resume: bool):
        self.path, self.key, self.ctx = path, key, ctx
        self.data: dict = {"format": "snnc-search-state", "version": 1, "key": key}
        if resume:
            self.data = load_state(path, key)

    def save(self) -> None:
        """Process 0 writes the state; every process learns whether that failed (a full disk
        on process 0 must stop all of them, not leave the others waiting in a collective)."""
        failed: Exception | None = None
        if self.path is not None and self.ctx.main:
            try:
                buffer = io.BytesIO()
                torch.save(self.data, buffer)
                write_atomic(self.path, buffer.getvalue())
            except (SnncError, OSError) as error:
                failed = error
        if self.ctx.sum([1.0 if failed else 0.0])[0]:
            raise failed if failed else BadInputError(
                "process 0 could not write the search state; see its error")


def load_state(path: str | None, key: str) -> dict:
    if path is None or not os.path.isfile(path):
        raise BadInputError(f"--resume: there is no search state {path} to resume from; run "
                            "the search without --resume first")
    try:
        data = loader._torch_load(path, "torch", trust_pickle=False)
    except SnncError as error:
        raise BadInputError(f"--resume: {path} is not a search state snnc wrote ({error})") \
            from None
    if not (isinstance(data, dict) and data.get("format") == "snnc-search-state"):
        raise BadInputError(f"--resume: {path} is not a search state snnc wrote")
    if data.get("key") != key:
        raise BadInputError(f"--resume: {path} is the state of another search (another model, "
                            "data, method or options); rerun with the same arguments, or "
                            "without --resume to start over")
    return data


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype} {a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def default_key(model: torch.nn.Module, train, val, opts) -> str:
    """What a state file must match to be resumed: the model's weights, the data, options."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(digest(t.detach().cpu().contiguous().numpy()).encode())
    h.update(digest(train.x, train.y, val.x, val.y).encode())
    h.update(repr(sorted(opts.key().items())).encode())
    # the candidates: a state of a search over other ones (an older snnc's) is another search
    h.update(repr([c.label for c in candidates(opts.allow_float)]).encode())
    return h.hexdigest()
