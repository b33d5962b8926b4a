"""What a directory holds, to show that a refused command wrote nothing (test_bad_inputs,
test_outputs)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed): its type, a file's digest, a link's
    target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(mode):
                out[path] = "link -> " + os.readlink(path)
            else:
                out[path] = stat.filemode(mode)
    return out
