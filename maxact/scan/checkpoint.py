"""Atomic checkpoints of a scan: every site's state plus the batches already folded into it.

A checkpoint is one ``torch.save`` file, ``<out>/checkpoint/scan.pt``, written to a temporary file in
the same directory, flushed, fsync'ed and moved over the old one with ``os.replace``, so a crash in
the middle of a save leaves the previous checkpoint intact. It holds the *merged* state of all ranks
and the union of their finished batch indices, so a resume may use any number of ranks: the batches
still to do are re-sharded, and because merging is exact the result equals an uninterrupted scan.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maxact.scan.errors import ScanError

log = logging.getLogger(__name__)

FORMAT = "maxact.checkpoint/1"
FILE_NAME = "scan.pt"


@dataclass
class Checkpoint:
    """What a checkpoint holds (plain data and CPU tensors)."""

    fingerprint: dict[str, Any]            # ScanConfig.measurement_fingerprint()
    plan_hash: str                         # hash of the batch plan (sample ids of every batch)
    finished_batches: list[int]            # sorted batch indices already in the states
    states: dict[str, dict[str, torch.Tensor]]   # state name -> ActivationStats.state_dict()
    counters: dict[str, Any] = field(default_factory=dict)   # tokens, wall time, OOM splits...
    world_size: int = 1

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            # JSON text keeps the payload loadable with torch.load(weights_only=True).
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "plan_hash": self.plan_hash,
            "finished_batches": torch.tensor(sorted(self.finished_batches), dtype=torch.int64),
            "states": self.states,
            "counters": json.dumps(self.counters, sort_keys=True),
            "world_size": self.world_size,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "Checkpoint":
        if payload.get("format") != FORMAT:
            raise ScanError(f"checkpoint format {payload.get('format')!r} is not {FORMAT!r}")
        return cls(
            fingerprint=json.loads(payload["fingerprint"]),
            plan_hash=payload["plan_hash"],
            finished_batches=[int(i) for i in payload["finished_batches"].tolist()],
            states=payload["states"],
            counters=json.loads(payload["counters"]),
            world_size=int(payload["world_size"]),
        )


def checkpoint_path(directory: Path) -> Path:
    return Path(directory) / FILE_NAME


def cpu_states(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """CPU copies of state dicts (what is saved, and what ranks send each other to merge)."""
    # copy: the saved tensors must not alias live device buffers that keep changing.
    return {name: {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
                   for k, v in sd.items()}
            for name, sd in states.items()}


def save(directory: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically (temp file + fsync + os.replace + directory fsync); return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(directory)
    ckpt = Checkpoint(ckpt.fingerprint, ckpt.plan_hash, ckpt.finished_batches, cpu_states(ckpt.states),
                      ckpt.counters, ckpt.world_size)
    fd, tmp_name = tempfile.mkstemp(prefix=".scan.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(ckpt.to_payload(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    log.debug("checkpoint: %d batches -> %s", len(ckpt.finished_batches), target)
    return target


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load(directory: Path) -> Checkpoint:
    """Read the checkpoint in ``directory``; ScanError (one line) when missing or unreadable."""
    path = checkpoint_path(directory)
    if not path.is_file():
        raise ScanError(f"--resume: no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise ScanError(f"--resume: cannot read checkpoint {path}: {exc}") from None
    return Checkpoint.from_payload(payload)


def check_compatible(ckpt: Checkpoint, fingerprint: dict[str, Any], plan_hash: str, path: Path) -> None:
    """Refuse to resume a checkpoint taken under other measurement settings or another batch plan."""
    if ckpt.fingerprint != fingerprint:
        diffs = sorted(k for k in set(ckpt.fingerprint) | set(fingerprint)
                       if ckpt.fingerprint.get(k) != fingerprint.get(k))
        detail = ", ".join(f"{k}: {ckpt.fingerprint.get(k)!r} -> {fingerprint.get(k)!r}" for k in diffs)
        raise ScanError(f"--resume: checkpoint {path} was written with other settings ({detail})")
    if ckpt.plan_hash != plan_hash:
        raise ScanError(f"--resume: checkpoint {path} belongs to another batch plan "
                        "(the corpus or its tokenization changed)")


def remove(directory: Path) -> None:
    """Delete the checkpoint after a completed scan (its statistics are in stats.json now)."""
    path = checkpoint_path(directory)
    if path.exists():
        path.unlink()
    try:
        Path(directory).rmdir()
    except OSError:
        pass
