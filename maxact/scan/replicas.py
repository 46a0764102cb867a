"""Model replicas spread over several GPUs: ``--gpus-per-replica K`` with ``--device-map auto``.

Design: one process per replica. ``torchrun --nproc-per-node P`` starts P processes on a node with
P * K GPUs; local rank r sees only GPUs r*K .. r*K+K-1 (``CUDA_VISIBLE_DEVICES`` is narrowed before
CUDA starts in the process), so ``--device-map auto`` spreads its replica over exactly those, and
the data-parallel side is unchanged: one rank = one replica, N / K replicas over N GPUs. Each site's
state lives on the device of its module; the merge moves state dicts through the CPU, so states on
different GPUs merge like any others. (The alternative, one process per GPU with only a replica's
leader running the model, would need sub-groups and idle processes for nothing.)
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, MutableMapping, Sequence

from maxact.scan.errors import ScanError

log = logging.getLogger(__name__)

VISIBLE = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class ReplicaPlan:
    """Where one process's replica lives."""

    replica: int                # = global rank: one process per replica
    num_replicas: int           # = world size
    local_rank: int
    gpus: tuple[str, ...]       # the entries of CUDA_VISIBLE_DEVICES this process keeps

    @property
    def devices(self) -> list[str]:
        """The replica's devices as this process names them after narrowing (cuda:0 .. cuda:K-1)."""
        return [f"cuda:{i}" for i in range(len(self.gpus))]


def visible_gpus(environ: MutableMapping[str, str]) -> list[str] | None:
    """The CUDA_VISIBLE_DEVICES entries (ids or UUIDs), or None when unset (every GPU visible)."""
    value = environ.get(VISIBLE)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def plan_replica(*, rank: int, world_size: int, local_rank: int, local_world_size: int, gpus_per_replica: int,
                 visible: Sequence[str] | None) -> ReplicaPlan:
    """The GPUs of local rank ``local_rank`` when each of ``local_world_size`` processes takes K of them.

    ``visible``: the node's CUDA_VISIBLE_DEVICES entries, or None (unset: GPUs 0..n-1; whether
    they exist is checked once CUDA is up, see :func:`check_visible`).
    """
    k = int(gpus_per_replica)
    if k < 1:
        raise ScanError(f"--gpus-per-replica: expected a positive integer, got {gpus_per_replica!r}")
    if not 0 <= local_rank < local_world_size:
        raise ScanError(f"local rank {local_rank} outside 0..{local_world_size - 1}")
    need = local_world_size * k
    pool = list(visible) if visible is not None else [str(i) for i in range(need)]
    if len(pool) < need:
        raise ScanError(f"--gpus-per-replica {k} with {local_world_size} processes on this node needs {need} GPUs, "
                        f"but {VISIBLE} lists {len(pool)} ({','.join(pool) or 'none'}); start torchrun with "
                        f"--nproc-per-node {max(1, len(pool) // k)}")
    if len(pool) > need:
        log.warning("--gpus-per-replica %d x %d processes uses %d of the %d visible GPUs", k, local_world_size,
                    need, len(pool))
    return ReplicaPlan(replica=rank, num_replicas=world_size, local_rank=local_rank,
                       gpus=tuple(pool[local_rank * k:(local_rank + 1) * k]))


def _cuda_started() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def narrow_visible_gpus(gpus_per_replica: int | None,
                        environ: MutableMapping[str, str] | None = None) -> ReplicaPlan | None:
    """Apply ``--gpus-per-replica``: narrow CUDA_VISIBLE_DEVICES to this process's replica.

    Must run before CUDA starts in the process (the CLI does it right after parsing). Idempotent:
    a second call returns the first plan. None when ``gpus_per_replica`` is None.
    """
    global _applied
    if gpus_per_replica is None:
        return None
    if _applied is not None:
        return _applied
    env = os.environ if environ is None else environ
    if _cuda_started():
        raise ScanError("--gpus-per-replica: CUDA was started before the scan could choose this replica's GPUs; "
                        "run the scan in a fresh process (python -m maxact.scan / torchrun -m maxact.scan)")
    plan = plan_replica(rank=int(env.get("RANK", "0")), world_size=int(env.get("WORLD_SIZE", "1")),
                        local_rank=int(env.get("LOCAL_RANK", "0")),
                        local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")),
                        gpus_per_replica=gpus_per_replica, visible=visible_gpus(env))
    env[VISIBLE] = ",".join(plan.gpus)
    log.debug("replica %d of %d: %s=%s", plan.replica, plan.num_replicas, VISIBLE, env[VISIBLE])
    if environ is None:
        _applied = plan
    return plan


_applied: ReplicaPlan | None = None


def check_visible(plan: ReplicaPlan | None, device_count: int) -> None:
    """After CUDA started: the process must see exactly its replica's GPUs (else the narrowing came
    too late, or the node has fewer GPUs than the launch assumes)."""
    if plan is None or device_count == len(plan.gpus):
        return
    raise ScanError(f"--gpus-per-replica {len(plan.gpus)}: local rank {plan.local_rank} should see GPUs "
                    f"{','.join(plan.gpus)} but CUDA shows {device_count} device(s) (fewer GPUs on this node than "
                    "--nproc-per-node x --gpus-per-replica, or CUDA was started before the scan)")


def describe(plan: ReplicaPlan, device_map: dict[str, Any] | None) -> str:
    """One log line about a replica's layout: its GPUs and how many mapped modules each holds."""
    per_device: dict[str, int] = {}
    for dev in (device_map or {}).values():
        per_device[str(dev)] = per_device.get(str(dev), 0) + 1
    spread = ", ".join(f"{dev}: {n}" for dev, n in per_device.items()) or "no device map"
    return (f"replica {plan.replica} of {plan.num_replicas} on GPUs {','.join(plan.gpus)} "
            f"(modules per device: {spread})")
