"""Distributed collection under ``torchrun``: one process group, data split by batch, sums reduced.

Nothing here starts processes: ``torchrun --nproc_per_node K -m hedonic_neurons collect ...`` does,
and sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``. A process group is created only when
``WORLD_SIZE`` > 1 (gloo on CPU, nccl on GPU); a single process runs exactly as without torchrun.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes; ``device`` to use."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> range:
        """Indices of the batches this rank processes (batch b goes to rank b mod size)."""
        return range(self.rank, count, self.size)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


@contextmanager
def process_group() -> Iterator[World]:
    """Join the torchrun process group if ``WORLD_SIZE`` > 1; yields this process's :class:`World`.

    The group is destroyed on exit (also after an error). On GPU machines each rank uses
    ``cuda:LOCAL_RANK`` and nccl; otherwise gloo on CPU.
    """
    import torch.distributed as dist

    size = env_world_size()
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        if dist.is_available() and dist.is_initialized():
            yield World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        else:
            yield World()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = None
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield World(dist.get_rank(), dist.get_world_size(), local_rank, device)
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
