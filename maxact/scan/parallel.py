"""Data parallelism for the scan: who does which batch, and the exact merge of the ranks' states.

The loop talks to a ``ParallelContext`` only at a few points, never inside a batch: sharding the batch
plan, a one-flag stop vote between batches (asynchronous, so ranks may drift one batch apart), a
tokens counter at each progress sync, and merging states at a checkpoint and at the end. A single
process uses ``SingleProcess``; a ``torchrun`` launch (``WORLD_SIZE`` > 1 in the environment) uses
``TorchDistributed``. All of its traffic goes over a gloo (CPU) group with a timeout, so a rank that
died or hangs makes the others fail with an error instead of waiting forever; the states travel as
CPU tensors, which also makes replicas spread over several GPUs (``--gpus-per-replica``) merge the
same way as single-GPU ones. Merging goes through ``ActivationStats.merge``, which is exact, along a
binary tree (log2(world) rounds, at most two ranks' states in one process), so the merged result
equals a single-process scan.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from typing import Any, Callable, Iterator, Sequence

import torch

log = logging.getLogger(__name__)

StateDicts = dict[str, dict[str, torch.Tensor]]

#: Default collective timeout (``--dist-timeout``): long enough for a checkpoint of a large model.
DEFAULT_TIMEOUT_S = 1800.0

#: Test hook: ``RANK:K[:MODE]`` makes rank RANK fail after K of its batches (MODE raise | hang | signal).
FAULT_ENV = "MAXACT_TEST_FAULT"


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


def tree_schedule(world_size: int) -> list[list[tuple[int, int]]]:
    """Rounds of (receiver, sender) pairs folding every rank into rank 0.

    Round r pairs rank i (i divisible by 2^(r+1)) with rank i + 2^r. The receiver folds the
    sender's states after its own, so the fold order is fixed by the world size alone.
    """
    rounds, step = [], 1
    while step < world_size:
        rounds.append([(i, i + step) for i in range(0, world_size, 2 * step) if i + step < world_size])
        step *= 2
    return rounds


class PeerFailure(RuntimeError):
    """A collective failed: another rank died, or did not answer within ``--dist-timeout``."""


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

    def vote(self, flag: bool) -> Callable[[], bool]:
        return lambda: flag

    def sum(self, value: int) -> int:
        return value

    def all_gather_floats(self, values: Sequence[float]) -> list[list[float]]:
        return [list(values)]

    def gather_object(self, obj: Any) -> list[Any] | None:
        return [obj]

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def reduce_to_main(self, obj: Any, combine: Callable[[Any, Any], Any]) -> Any:
        return obj

    def barrier(self) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


class TorchDistributed:
    """Data-parallel ranks launched by ``torchrun``; the process group is created here if needed.

    Every collective runs on a gloo group created with ``timeout_s``: a rank that died closes its
    sockets (the peers fail at once), a rank that hangs makes the peers fail after the timeout.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S):
        import torch.distributed as dist

        self._dist = dist
        self._owns_group = False
        timeout = datetime.timedelta(seconds=float(timeout_s))
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend, timeout=timeout)
            self._owns_group = True
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        self.timeout_s = float(timeout_s)
        # States and flags travel as CPU tensors over gloo: no device juggling for replicas spread
        # over several GPUs, and NCCL never sees pickled payloads.
        self._cpu_group = dist.new_group(backend="gloo", timeout=timeout)

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """Turn a backend error (peer gone, timeout) into a PeerFailure that says what happened."""
        try:
            yield
        except RuntimeError as exc:   # gloo/NCCL errors (DistBackendError is a RuntimeError)
            raise PeerFailure(f"rank {self.rank}: {what} failed: another rank died or did not answer within "
                              f"--dist-timeout {self.timeout_s:g} s (its own error is in the log above): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc

    def shard(self, batch_indices: Sequence[int], tokens: Sequence[int]) -> list[int]:
        return shard_by_tokens(batch_indices, tokens, self.world_size)[self.rank]

    def num_steps(self, local_count: int) -> int:
        """Steps every rank walks so collectives line up: the longest shard's length."""
        counts = [None] * self.world_size
        with self._collective("agreeing on the number of steps"):
            self._dist.all_gather_object(counts, local_count, group=self._cpu_group)
        return max(counts)

    def any(self, flag: bool) -> bool:
        return self.vote(flag)()

    def vote(self, flag: bool) -> Callable[[], bool]:
        """Start an all-reduce of one flag (MAX) without waiting; calling the result waits for it.

        The loop starts the vote after batch s and reads it after batch s+1, so the ranks are never
        more than one batch apart but do not wait for each other after every batch.
        """
        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        work = self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX, group=self._cpu_group, async_op=True)

        def result() -> bool:
            with self._collective("the stop vote"):
                work.wait()
            return bool(t.item())

        return result

    def sum(self, value: int) -> int:
        t = torch.tensor([int(value)], dtype=torch.int64)
        with self._collective("a sum over ranks"):
            self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM, group=self._cpu_group)
        return int(t.item())

    def all_gather_floats(self, values: Sequence[float]) -> list[list[float]]:
        """Every rank's ``values`` (same length everywhere), indexed by rank."""
        mine = torch.tensor([float(v) for v in values], dtype=torch.float64)
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        with self._collective("the progress sync"):
            self._dist.all_gather(out, mine, group=self._cpu_group)
        return [t.tolist() for t in out]

    def gather_object(self, obj: Any) -> list[Any] | None:
        gathered = [None] * self.world_size if self.is_main else None
        with self._collective("gathering to rank 0"):
            self._dist.gather_object(obj, gathered, dst=0, group=self._cpu_group)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        with self._collective("a broadcast from rank 0"):
            self._dist.broadcast_object_list(box, src=0, group=self._cpu_group)
        return box[0]

    def reduce_to_main(self, obj: Any, combine: Callable[[Any, Any], Any]) -> Any:
        """Fold every rank's ``obj`` into rank 0's along :func:`tree_schedule`; None off rank 0.

        ``combine(mine, theirs)`` must be associative (``ActivationStats.merge`` is, exactly). A rank
        holds at most its own object and one received at a time, so memory does not grow with the
        number of ranks.
        """
        for pairs in tree_schedule(self.world_size):
            for receiver, sender in pairs:
                if self.rank == sender:
                    with self._collective(f"sending states to rank {receiver}"):
                        self._dist.send_object_list([obj], dst=receiver, group=self._cpu_group)
                    obj = None
                elif self.rank == receiver:
                    box = [None]
                    with self._collective(f"receiving states from rank {sender}"):
                        self._dist.recv_object_list(box, src=sender, group=self._cpu_group)
                    obj = combine(obj, box[0])
        return obj if self.is_main else None

    def barrier(self) -> None:
        with self._collective("a barrier"):
            self._dist.barrier(group=self._cpu_group)

    def close(self, failed: bool = False) -> None:
        """Destroy the process group after a clean run. After a failure it is left to the process
        exit: tearing down a group whose peers are gone can block (NCCL), and torchrun stops the
        other ranks anyway once this one exits with an error."""
        if self._owns_group and not failed and self._dist.is_initialized():
            self._dist.destroy_process_group()


def from_environment(timeout_s: float = DEFAULT_TIMEOUT_S) -> SingleProcess | TorchDistributed:
    """TorchDistributed under torchrun (WORLD_SIZE > 1), else SingleProcess."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return TorchDistributed(timeout_s)
    return SingleProcess()


def local_device(base: str, ctx: SingleProcess | TorchDistributed, *, sliced: bool = False) -> str:
    """The device of this rank: ``cuda:<LOCAL_RANK>`` under torchrun on GPUs, else ``base``.

    ``sliced``: this process sees only its replica's GPUs (``--gpus-per-replica``), its first is cuda:0.
    """
    if sliced and base.startswith("cuda"):
        return "cuda:0"
    if ctx.world_size > 1 and base == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return base


# ------------------------------------------------------------------------------------------------
# test hook: a rank that fails mid-scan
# ------------------------------------------------------------------------------------------------


class InjectedFault(RuntimeError):
    """Raised by the ``MAXACT_TEST_FAULT`` test hook."""


def fault_injector(rank: int, environ: dict[str, str] | None = None,
                   ) -> Callable[[int, Callable[[], bool]], None] | None:
    """The ``MAXACT_TEST_FAULT`` hook for this rank, or None (the normal case).

    ``MAXACT_TEST_FAULT=RANK:K[:MODE]``: once rank RANK has finished K batches it raises
    InjectedFault (MODE ``raise``, the default), blocks until it is told to stop (``hang``: the
    other ranks must give up after ``--dist-timeout``), or sends itself SIGTERM (``signal``: all ranks
    must checkpoint and stop together). The loop calls the hook after each batch with the number of
    batches this rank finished and a function saying whether a stop was requested.
    """
    spec = (environ if environ is not None else os.environ).get(FAULT_ENV)
    if not spec:
        return None
    parts = spec.split(":")
    target, after = int(parts[0]), int(parts[1])
    mode = parts[2] if len(parts) > 2 else "raise"
    if mode not in ("raise", "hang", "signal"):
        raise ValueError(f"{FAULT_ENV}={spec!r}: mode must be raise, hang or signal")
    if target != rank:
        return None

    def fire(done: int, stop_requested: Callable[[], bool]) -> None:
        if done != after:
            return
        if mode == "signal":
            import signal

            log.warning("%s: rank %d sends itself SIGTERM after %d batches", FAULT_ENV, rank, done)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if mode == "hang":
            log.warning("%s: rank %d hangs after %d batches", FAULT_ENV, rank, done)
            while not stop_requested():   # torchrun's SIGTERM ends the hang
                time.sleep(0.05)
        raise InjectedFault(f"injected failure on rank {rank} after {done} batches ({FAULT_ENV}={spec})")

    return fire
