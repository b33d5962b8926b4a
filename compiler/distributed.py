"""Data parallelism for snnc search on torch.distributed (docs/search.md).

Under `torchrun --nproc_per_node N -m snnc search ...` every process reads the same files and
runs the same search; `Context` gives each its share of every batch (samples rank, rank +
world, ...) and sums gradients and evaluation counts across processes (gloo: the search
runs on CPU tensors), so every process takes the same decisions, and one process the same
as N.
"""

from __future__ import annotations

import os

import torch

from .errors import BadInputError, first_line


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

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the trainable parameters' gradients over the processes. A parameter without a
        gradient in this process (its share of the batch was empty) gets one if another
        process has it; one no process has stays without (the optimizer skips it)."""
        params = [p for p in params if p.requires_grad]
        if self.world == 1 or not params:
            return
        import torch.distributed as dist

        present = torch.tensor([0.0 if p.grad is None else 1.0 for p in params])
        flat = torch.cat([torch.zeros(p.numel()) if p.grad is None else
                          p.grad.detach().reshape(-1).float() for p in params])
        dist.all_reduce(present)
        dist.all_reduce(flat)
        offset = 0
        for p, have in zip(params, present.tolist()):
            n = p.numel()
            if have:
                grad = flat[offset:offset + n].view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = grad.clone()
                else:
                    p.grad.copy_(grad)
            offset += n

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
                    dist.barrier()
                dist.destroy_process_group()
