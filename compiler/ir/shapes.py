"""Shapes with a symbolic batch: the dimension "N" (one batch) or "kN" (k batches of N
samples, time-major: what a layer sees when it runs on all k = T timesteps at once).
Shared by the IR and its op vocabulary (numpy only)."""

from __future__ import annotations

BATCH = "N"  # the symbolic batch dimension
Dim = int | str
Shape = tuple[Dim, ...]


class ShapeError(ValueError):
    """Operand types an op cannot take (raised by type inference)."""


def batch_factor(dim: Dim) -> int | None:
    """k for a symbolic batch dimension "kN" (1 for "N"); None for a static size.

    "kN" is k batches of N samples, time-major: what a layer sees when it runs on all
    k = T timesteps at once (unroll_timesteps)."""
    if isinstance(dim, int):
        return None
    if dim == BATCH:
        return 1
    if dim.endswith(BATCH) and dim[:-1].isdigit():
        return int(dim[:-1])
    raise ValueError(f"bad symbolic dimension {dim!r}")


def times_batch(k: int) -> str:
    return BATCH if k == 1 else f"{k}{BATCH}"


def concrete_shape(shape: Shape, batch: int) -> tuple[int, ...]:
    return tuple(int(d) if batch_factor(d) is None else batch * batch_factor(d) for d in shape)
