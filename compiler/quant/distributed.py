"""Data parallelism for snnc search on torch.distributed (docs/search.md).

Under `torchrun --nproc_per_node N -m snnc search ...` every process reads the same files and
runs the same search. `Context` gathers what each process computed on its share (training
chunks k = rank, rank + N, ...; validation samples likewise) so that every process can add
the parts in one fixed order (gloo: the search runs on CPU tensors): every process takes the
same decisions, and one process the same as N, bit for bit (snnc.quant.search.engine.Runner).

The torchrun variables are checked before any connection is tried, and every wait on the
other processes (joining the group, each exchange) ends after SNNC_DIST_TIMEOUT seconds with
a message that says which processes are missing, instead of torch's silent 30 minutes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import tempfile
from datetime import timedelta

import torch

from snnc.errors import BadInputError, SnncError, first_line

TIMEOUT_VARIABLE = "SNNC_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0  # seconds; far above a legitimate wait (process 0 writing the state)
MAX_WORLD = 2 ** 31 - 1  # torch holds ranks and world sizes in 32-bit integers
DOC = 'docs/search.md, "Data parallelism: torchrun"'


class Context:
    def __init__(self, rank: int = 0, world: int = 1, timeout: float = DEFAULT_TIMEOUT):
        self.rank, self.world, self.timeout = rank, world, timeout

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def single() -> "Context":
        return Context()

    @staticmethod
    def from_environment() -> "Context":
        """The torchrun process group (WORLD_SIZE > 1 in the environment), or one process.
        BadInputError for a malformed torchrun variable, before any connection is tried, and
        for a group whose other processes do not join within the timeout."""
        env = check_environment(os.environ)
        if env is None:
            return Context()
        timeout = env[TIMEOUT_VARIABLE]  # torch reads the rest from the environment
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "gloo"  # the search keeps every tensor on the CPU; NCCL takes only GPU ones
            try:
                with _quiet_stderr():  # c10d logs each failed connection with C++ frames
                    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
            except Exception as error:
                raise BadInputError(_join_failed(env, error)) from None
        return Context(dist.get_rank(), dist.get_world_size(), timeout)

    def sum(self, values: list[float]) -> list[float]:
        """Elementwise sums over every process, in float64."""
        if self.world == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        with self._exchange("a sum"):
            dist.all_reduce(t)
        return t.tolist()

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every process's `values` (a 1-D float64 tensor of its share: samples rank, rank +
        world, ...) back in the global sample order."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        counts = torch.tensor([len(values)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        with self._exchange("gathering per-sample values"):
            dist.all_gather(sizes, counts)
        longest = int(max(int(s) for s in sizes))
        padded = torch.zeros(longest, dtype=values.dtype)
        padded[:len(values)] = values
        parts = [torch.zeros(longest, dtype=values.dtype) for _ in range(self.world)]
        with self._exchange("gathering per-sample values"):
            dist.all_gather(parts, padded)
        total = sum(int(s) for s in sizes)
        out = torch.empty(total, dtype=values.dtype)
        for rank, (part, size) in enumerate(zip(parts, sizes)):
            out[rank::self.world] = part[:int(size)]
        return out

    def gather_rows(self, rows: list[torch.Tensor], count: int, width: int) -> list[torch.Tensor]:
        """The `count` rows dealt round-robin (row k computed by process k % world), from
        every process, in row order."""
        if self.world == 1:
            return rows
        import torch.distributed as dist

        per = -(-count // self.world)
        mine = torch.zeros(per, width)
        for i, row in enumerate(rows):
            mine[i] = row
        parts = [torch.zeros(per, width) for _ in range(self.world)]
        with self._exchange("gathering gradients"):
            dist.all_gather(parts, mine)
        return [parts[k % self.world][k // self.world] for k in range(count)]

    def broadcast(self, module: torch.nn.Module) -> None:
        """Process 0's parameters and buffers to every process."""
        if self.world == 1:
            return
        import torch.distributed as dist

        with self._exchange("receiving process 0's model"):
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, 0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            with self._exchange("waiting for every process to finish"):
                dist.barrier()

    def close(self, wait: bool = True) -> None:
        """Leave the group: once every process is done (`wait`: a process that tears gloo
        down while another still writes its outputs aborts the other), or at once after an
        error or Ctrl-C, when the others may never reach a barrier."""
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                try:
                    if wait:
                        self.barrier()
                finally:
                    dist.destroy_process_group()

    @contextlib.contextmanager
    def _exchange(self, what: str):
        """A collective: its failure (a peer that stopped, or none that answered within the
        timeout) as one SnncError instead of gloo's RuntimeError."""
        try:
            yield
        except RuntimeError as error:  # torch.distributed.DistError is one too
            text = first_line(error)
            if "timed out" in text.lower():
                why = (f"no answer from the other processes within {self.timeout:g} s: one of "
                       "them is stuck or stopped without closing its connection, or is slower "
                       f"than the timeout (raise {TIMEOUT_VARIABLE}, now {self.timeout:g} s)")
            else:
                why = "another process stopped (its own error says why)"
            raise SnncError(f"torchrun: process {self.rank} of {self.world} lost the group while "
                            f"{what}: {why}. gloo: {text.rstrip('.')}") from None


def check_environment(environ) -> dict | None:
    """The torchrun variables, checked: None when WORLD_SIZE is unset or 1 (one process, the
    other variables unused), else WORLD_SIZE, RANK, LOCAL_RANK (or None), MASTER_ADDR,
    MASTER_PORT and the timeout. BadInputError names the first malformed one."""
    if environ.get("WORLD_SIZE") is None:
        return None
    world = _whole(environ, "WORLD_SIZE", 1, MAX_WORLD, "the number of processes")
    if world == 1:
        return None
    return {"WORLD_SIZE": world,
            "RANK": _whole(environ, "RANK", 0, world - 1, "this process's rank"),
            "LOCAL_RANK": _whole(environ, "LOCAL_RANK", 0, world - 1, "its rank on this node",
                                 required=False),
            "MASTER_ADDR": _host(environ),
            "MASTER_PORT": _whole(environ, "MASTER_PORT", 1, 65535, "process 0's TCP port"),
            TIMEOUT_VARIABLE: timeout_from(environ)}


def timeout_from(environ) -> float:
    """SNNC_DIST_TIMEOUT: seconds, a finite number above 0 (DEFAULT_TIMEOUT when unset)."""
    text = environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 10 ** 7):
        raise BadInputError(f"{TIMEOUT_VARIABLE}={text!r} must be the seconds a torchrun process "
                            "waits for the others: a number above 0 and at most 10000000 (unset, "
                            f"it is {DEFAULT_TIMEOUT:g})")
    return value


def _malformed(name: str, value, expected: str) -> BadInputError:
    shown = "is not set" if value is None else f"is {value!r}"
    return BadInputError(
        f"torchrun environment: {name} {shown}, but snnc search needs {expected}. If this "
        "process was not started by torchrun, the variables are left over from another run: "
        "unset WORLD_SIZE (or set it to 1) to search in one process; otherwise start every "
        f"process with torchrun ({DOC})")


def _whole(environ, name: str, low: int, high: int, what: str, required: bool = True):
    value = environ.get(name)
    if value is None and not required:
        return None
    if value is None or not re.fullmatch(r"[0-9]{1,12}", value) or not low <= int(value) <= high:
        raise _malformed(name, value, f"{what}, a whole number from {low} to {high}")
    return int(value)


_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _host(environ) -> str:
    """MASTER_ADDR: an IPv4 or IPv6 address, or a host name (dot-separated labels of letters,
    digits, '-' and '_', at most 63 characters each and 253 in all, the last one not all
    digits: 300.1.1.1 is a mistyped address, not a name)."""
    value = environ.get("MASTER_ADDR")
    expected = "process 0's host: an IP address or a host name such as node-1.example.org"
    if not value:
        raise _malformed("MASTER_ADDR", value, expected)
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels) \
            or labels[-1].isdigit():
        raise _malformed("MASTER_ADDR", value, expected)
    return value


def _join_failed(env: dict, error: Exception) -> str:
    """What is missing when init_process_group fails: the other processes (process 0 waits
    for them), or process 0 (the others connect to it)."""
    world, rank, timeout = env["WORLD_SIZE"], env["RANK"], env[TIMEOUT_VARIABLE]
    where = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    text = f"{type(error).__name__}: {first_line(error).rstrip('.')}"
    if "timed out" not in text.lower():
        return (f"torchrun: process {rank} of WORLD_SIZE={world} cannot join the process group "
                f"at MASTER_ADDR:MASTER_PORT {where} ({text}). Check MASTER_ADDR and that "
                f"MASTER_PORT is free on process 0's host ({DOC})")
    if rank == 0:
        missing = (f"the other {world - 1} process(es) of WORLD_SIZE={world} did not all join "
                   f"process 0 at {where}")
    else:
        missing = f"process {rank} (RANK={rank}) could not reach process 0 at {where}"
    return (f"torchrun: {missing} within {timeout:g} s ({text}). Start all {world} processes "
            "with torchrun (--nproc_per_node, --nnodes), or, if this environment is left over "
            "from another run, unset WORLD_SIZE to search in one process. "
            f"{TIMEOUT_VARIABLE} sets the timeout in seconds (now {timeout:g}; {DOC})")


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to a scratch file while torch's C++ side runs: c10d logs every
    failed connection attempt, with C++ stack frames, to stderr. snnc says what failed."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect
        yield
        return
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
