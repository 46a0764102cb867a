"""Data parallelism for the scan: who does which batch, and the exact merge of the ranks' states.

The loop talks to a ``ParallelContext`` only at a few points (sharding the batch plan, agreeing on a
stop at a sync point, merging states at a checkpoint and at the end), never inside a batch. A single
process uses ``SingleProcess``; a ``torchrun`` launch (``WORLD_SIZE`` > 1 in the environment) uses
``TorchDistributed`` (NCCL on GPUs, gloo on CPUs). Merging goes through ``ActivationStats.merge``,
which is exact, so the merged result equals a single-process scan.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Sequence

import torch

log = logging.getLogger(__name__)

StateDicts = dict[str, dict[str, torch.Tensor]]


def shard_by_tokens(batch_indices: Sequence[int], tokens: Sequence[int], world_size: int) -> list[list[int]]:
    """Split batches over ranks, balanced by tokens, deterministically.

    Longest-processing-time greedy: batches in order of (tokens desc, index asc) each go to the rank
    with the fewest tokens so far (lowest rank on ties); each rank then runs its batches in plan order.
    Every rank computes the same split from the same plan, so no communication is needed.
    """
    loads = [0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for idx, tok in sorted(zip(batch_indices, tokens), key=lambda it: (-it[1], it[0])):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += tok
        shards[rank].append(idx)
    return [sorted(s) for s in shards]


class SingleProcess:
    """One process, one model replica: every collective is the identity."""

    rank = 0
    world_size = 1
    is_main = True

    def shard(self, batch_indices: Sequence[int], tokens: Sequence[int]) -> list[int]:
        return list(batch_indices)

    def num_steps(self, local_count: int) -> int:
        return local_count

    def any(self, flag: bool) -> bool:
        return flag

    def sum(self, value: int) -> int:
        return value

    def gather_object(self, obj: Any) -> list[Any] | None:
        return [obj]

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


class TorchDistributed:
    """Data-parallel ranks launched by ``torchrun``; the process group is created here if needed.

    Collectives carry a timeout, so a rank that died makes the others fail instead of hanging.
    """

    def __init__(self, timeout_s: float = 1800.0):
        import torch.distributed as dist

        self._dist = dist
        self._owns_group = False
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
            self._owns_group = True
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        # Objects travel over a CPU (gloo) group so NCCL never sees pickled payloads.
        self._cpu_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))

    def shard(self, batch_indices: Sequence[int], tokens: Sequence[int]) -> list[int]:
        return shard_by_tokens(batch_indices, tokens, self.world_size)[self.rank]

    def num_steps(self, local_count: int) -> int:
        """Steps every rank walks so collectives line up: the longest shard's length."""
        counts = [None] * self.world_size
        self._dist.all_gather_object(counts, local_count, group=self._cpu_group)
        return max(counts)

    def any(self, flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX, group=self._cpu_group)
        return bool(t.item())

    def sum(self, value: int) -> int:
        t = torch.tensor([int(value)], dtype=torch.int64)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM, group=self._cpu_group)
        return int(t.item())

    def gather_object(self, obj: Any) -> list[Any] | None:
        gathered = [None] * self.world_size if self.is_main else None
        self._dist.gather_object(obj, gathered, dst=0, group=self._cpu_group)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=0, group=self._cpu_group)
        return box[0]

    def barrier(self) -> None:
        self._dist.barrier(group=self._cpu_group)

    def close(self) -> None:
        if self._owns_group and self._dist.is_initialized():
            self._dist.destroy_process_group()


def from_environment() -> SingleProcess | TorchDistributed:
    """TorchDistributed under torchrun (WORLD_SIZE > 1), else SingleProcess."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return TorchDistributed()
    return SingleProcess()


def local_device(base: str, ctx: SingleProcess | TorchDistributed) -> str:
    """The device of this rank: ``cuda:<LOCAL_RANK>`` under torchrun on GPUs, else ``base``."""
    if ctx.world_size > 1 and base == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return base
