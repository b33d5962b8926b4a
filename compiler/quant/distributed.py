"""Data parallelism for snnc search on torch.distributed (docs/search.md).

Under `torchrun --nproc_per_node N -m snnc search ...` every process reads the same files and
runs the same search. `Context` gathers what each process computed on its share (training
chunks k = rank, rank + N, ...; validation samples likewise) so that every process can add
the parts in one fixed order (gloo: the search runs on CPU tensors): every process takes the
same decisions, and one process the same as N, bit for bit (snnc.quant.search.engine.Runner).
"""

from __future__ import annotations

import os

import torch

from snnc.errors import BadInputError, first_line


class Context:
    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def single() -> "Context":
        return Context()

    @staticmethod
    def from_environment() -> "Context":
        """The torchrun process group (WORLD_SIZE > 1 in the environment), or one process."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return Context()
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "gloo"  # the search keeps every tensor on the CPU; NCCL takes only GPU ones
            try:
                dist.init_process_group(backend)
            except Exception as error:
                raise BadInputError(f"cannot join the torchrun process group ({backend}): "
                                    f"{type(error).__name__}: {first_line(error)}") from None
        return Context(dist.get_rank(), dist.get_world_size())

    def sum(self, values: list[float]) -> list[float]:
        """Elementwise sums over every process, in float64."""
        if self.world == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
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
        dist.all_gather(sizes, counts)
        longest = int(max(int(s) for s in sizes))
        padded = torch.zeros(longest, dtype=values.dtype)
        padded[:len(values)] = values
        parts = [torch.zeros(longest, dtype=values.dtype) for _ in range(self.world)]
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
        dist.all_gather(parts, mine)
        return [parts[k % self.world][k // self.world] for k in range(count)]

    def broadcast(self, module: torch.nn.Module) -> None:
        """Process 0's parameters and buffers to every process."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self, wait: bool = True) -> None:
        """Leave the group: once every process is done (`wait`: a process that tears gloo
        down while another still writes its outputs aborts the other), or at once after an
        error or Ctrl-C, when the others may never reach a barrier."""
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                if wait:
                    self.barrier()
                dist.destroy_process_group()
