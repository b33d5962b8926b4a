"""How much a model or data file may unpack to (docs/model_files.md, "Size limits").

A zip member is as large as its header says, whatever the file's size: a 1 MB zip of
deflated zeros unpacks to 1 GiB, and a thousand 16 MiB members that nothing reads still
cost their unpacking. So every zip snnc reads (model files, the sample inputs inside an
archive, search states, data files) is bounded as a whole, from its central directory,
before any member is unpacked:

- its members may unpack to at most `max_unpacked()` bytes in all (SNNC_MAX_UNPACKED,
  default 4 GiB: far above any spiking network or data set snnc targets);
- beyond RATIO_FLOOR bytes in all, they may unpack to at most `max_ratio()` times the
  zip's own size (SNNC_MAX_RATIO, default 100). torch writes its members uncompressed
  (ratio 1) and numpy.savez too; numpy.savez_compressed of real inputs packs 2 to 50
  times, of sparse float32 spikes about 140; deflate cannot pass about 1,030.
"""

from __future__ import annotations

import os
import re

from snnc.errors import BadInputError

MAX_UNPACKED = 4 << 30  # SNNC_MAX_UNPACKED
MAX_RATIO = 100  # SNNC_MAX_RATIO
RATIO_FLOOR = 64 << 20  # a file that unpacks to less may pack at any ratio
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def max_unpacked() -> int:
    """Bytes a file may unpack to: SNNC_MAX_UNPACKED (bytes, or with a K, M, G or T suffix,
    powers of 1024), default MAX_UNPACKED."""
    text = os.environ.get("SNNC_MAX_UNPACKED", "").strip()
    found = re.fullmatch(r"(\d+)\s*([kmgt]?)(?:i?b)?", text, re.IGNORECASE)
    if not text:
        return MAX_UNPACKED
    if found is None or int(found.group(1)) == 0:
        raise BadInputError(f"SNNC_MAX_UNPACKED={text[:40]!r} is not a positive size in bytes "
                            "(for example 8G or 8589934592)")
    return int(found.group(1)) * _UNITS[found.group(2).lower()]


def max_ratio() -> float:
    """How many times its size a file may unpack to (beyond RATIO_FLOOR): SNNC_MAX_RATIO,
    default MAX_RATIO."""
    text = os.environ.get("SNNC_MAX_RATIO", "").strip()
    if not text:
        return MAX_RATIO
    try:
        ratio = float(text)
    except ValueError:
        ratio = float("nan")
    if not ratio >= 1 or ratio == float("inf"):
        raise BadInputError(f"SNNC_MAX_RATIO={text[:40]!r} is not a finite number >= 1 (for "
                            "example 1000)")
    return ratio


def check_unpacked(where: str, unpacked: int, packed: int, writer: str) -> None:
    """Refuse a zip of `packed` bytes whose members unpack to `unpacked` bytes in all beyond
    the limits (`writer`: what writes such files, for the message)."""
    limit = max_unpacked()
    if unpacked > limit:
        raise BadInputError(
            f"{where} unpacks to {_size(unpacked)}, more than snnc reads ({_size(limit)}); "
            "if the file is genuine, raise the limit with SNNC_MAX_UNPACKED (for example "
            f"SNNC_MAX_UNPACKED={-(-unpacked >> 30)}G)")
    ratio = max_ratio()
    if unpacked > RATIO_FLOOR and unpacked > ratio * max(packed, 1):
        raise BadInputError(
            f"{where} unpacks to {_size(unpacked)} from {_size(packed)}, "
            f"{unpacked / max(packed, 1):,.0f} times its size (limit {ratio:g} beyond "
            f"{_size(RATIO_FLOOR)}; {writer}): refused as a zip bomb. If the file is genuine, "
            "raise the limit with SNNC_MAX_RATIO (for example SNNC_MAX_RATIO="
            f"{-(-unpacked // max(packed, 1))})")


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):,.1f} {unit}"
    return f"{n:,} bytes"
