"""What the scan is about to do, said before the first batch: samples, tokens, batches, longest
sample, an estimate of the peak memory (checked against the device's free memory) and, after a
warm-up of the first batches, an ETA.

``Plan`` is computed from the batch plan alone; ``Plan.estimates`` holds the memory estimate and the
ETA (printed by ``Plan.lines`` and kept in ``stats.json`` under ``metadata.preflight``). The memory
model is in :mod:`maxact.scan.memory`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from maxact.scan import memory
from maxact.scan.errors import ScanError


@dataclass
class Plan:
    """Shape of a scan, known before any forward pass."""

    num_samples: int
    num_tokens: int                 # real tokens in the corpus
    num_batches: int
    longest_sample: int
    padded_tokens: int              # rows x columns over all batches, padding included
    max_batch_rows: int
    max_batch_tokens: int           # rows x columns of the largest batch
    max_attention_elems: int = 0    # max over batches of rows x columns^2 (eager attention scores)
    max_seq_len: int = 0            # widest batch (columns)
    batches_done: int = 0           # already in a resumed checkpoint
    tokens_done: int = 0
    estimates: dict[str, Any] = field(default_factory=dict)

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.num_tokens / self.padded_tokens if self.padded_tokens else 0.0

    def lines(self) -> list[str]:
        out = [f"plan: {self.num_samples:,} samples, {self.num_tokens:,} tokens in {self.num_batches:,} "
               f"batches (largest {self.max_batch_rows} rows, {self.max_batch_tokens:,} tokens); longest "
               f"sample {self.longest_sample:,} tokens; padding {100 * self.padding_fraction:.2f}%"]
        if self.batches_done:
            out.append(f"resume: {self.batches_done:,} batches ({self.tokens_done:,} tokens) already done")
        for key, value in self.estimates.items():
            if isinstance(value, str):
                out.append(f"estimate: {key} {value}")
        return out


def _shapes(batches: Sequence[Any]) -> list[tuple[int, int]]:
    """(rows, columns) of every batch; from the lazy plan when there is one (no collation)."""
    plans = getattr(batches, "plans", None)
    if plans is not None:
        return [(int(p.rows), int(p.seq_len)) for p in plans]
    return [(int(b.input_ids.shape[0]), int(b.input_ids.shape[1])) for b in batches]


def make_plan(batches: Sequence[Any], sample_lengths: Sequence[int]) -> Plan:
    """Plan of a list of Batch objects (CONTRACTS.md section 3) over samples of the given lengths."""
    shapes = _shapes(batches)
    padded = [r * t for r, t in shapes]
    return Plan(
        num_samples=len(sample_lengths),
        num_tokens=int(sum(sample_lengths)),
        num_batches=len(shapes),
        longest_sample=int(max(sample_lengths, default=0)),
        padded_tokens=int(sum(padded)),
        max_batch_rows=max((r for r, _ in shapes), default=0),
        max_batch_tokens=max(padded, default=0),
        max_attention_elems=max((r * t * t for r, t in shapes), default=0),
        max_seq_len=max((t for _, t in shapes), default=0),
    )


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------


def estimator(config: Any, loaded: Any, states: dict[str, Any], device: torch.device,
              staging_capacity: int) -> memory.Estimator:
    """The memory model of this scan: measured parameters and states, config-derived activations."""
    dtype_bytes = memory.DTYPE_BYTES.get(config.dtype, 4)
    st_bytes = memory.state_bytes(states)
    model = loaded.model
    return memory.Estimator(
        shape=memory.ModelShape.from_config(model.config),
        dtype_bytes=dtype_bytes,
        eager=str(getattr(loaded, "attn_implementation", config.attn)) == "eager",
        max_channels=max((st.spec.num_channels for st in states.values()), default=0),
        workspace_per_element=memory.workspace_per_element(config.backend, device),
        parameters=memory.module_bytes(model),
        states=st_bytes,
        staging=memory.staging_bytes(states, staging_capacity, dtype_bytes),
        guard=st_bytes if device.type == "cuda" else 0,   # StateGuard's snapshot buffers
    )


def check_memory(plan: Plan, config: Any, loaded: Any, states: dict[str, Any], device: torch.device,
                 staging_capacity: int) -> memory.MemoryEstimate:
    """Estimate the peak memory into ``plan.estimates``; refuse (ScanError) when it cannot fit.

    Called after the model and the states are allocated, so the device's free memory already
    excludes them and only the pending part must fit. Skipped (estimate still shown) under
    ``--device-map`` (the layers spread over several devices), with ``--no-memory-check``, or when
    the free memory cannot be read.
    """
    est_fn = estimator(config, loaded, states, device, staging_capacity)
    est = est_fn.estimate(plan.max_batch_tokens, plan.max_attention_elems)
    free = memory.free_memory(device)
    where = f"{memory.gib(free)} free on {device}" if free is not None else f"free memory of {device} unknown"
    plan.estimates["peak memory"] = f"{est.text()}; {where}"
    plan.estimates["memory"] = dict(est.as_dict(), free=free, device=str(device), margin=memory.MARGIN)
    checked = free is not None and not config.device_map and getattr(config, "memory_check", True)
    if checked and est.pending > free:
        raise ScanError(refusal(est_fn, est, free, plan, config, device))
    return est


def refusal(est_fn: memory.Estimator, est: memory.MemoryEstimate, free: int, plan: Plan, config: Any,
            device: torch.device) -> str:
    """The one-line message of a scan that would not fit, naming a setting that does."""
    head = (f"estimated peak memory {est.text()} does not fit on {device}: the largest batch needs "
            f"{memory.gib(est.pending)} more, {memory.gib(free)} free")
    tail = " (--no-memory-check runs anyway)"
    budget = memory.fitting_budget(est_fn, free, plan.max_seq_len, config.tokens_per_batch)
    if budget is not None:
        return f"{head}; --tokens-per-batch {budget} fits{tail}"
    seq = memory.fitting_seq_len(est_fn, free, plan.max_seq_len)
    if seq is not None:
        return (f"{head}; even one {plan.max_seq_len}-token sample does not fit: "
                f"--max-seq-len {seq} --tokens-per-batch {seq} fits{tail}")
    return f"{head}; the model and its statistics leave no room for a batch (fewer sites, or another device){tail}"


# ------------------------------------------------------------------------------------------------
# ETA
# ------------------------------------------------------------------------------------------------


class Warmup:
    """Times the first ``batches`` batches (one device sync each) and extrapolates an ETA by tokens.

    The first batch pays one-off costs (kernel compilation, allocator growth), so the rate is the
    last warm-up batch's. ``local_tokens`` are the tokens this process will run (its shard).
    """

    def __init__(self, plan: Plan, local_tokens: int, num_local_batches: int, device: torch.device,
                 world_size: int = 1, batches: int = 2):
        self.plan = plan
        self.local_tokens = int(local_tokens)
        self.device = device
        self.world_size = world_size
        self.batches = max(1, min(batches, num_local_batches))
        self.timed: list[tuple[int, float]] = []
        self._t = 0.0

    def start(self) -> None:
        self._t = time.perf_counter()

    def batch_done(self, step: int, tokens: int) -> str | None:
        """After each batch; returns the ETA line once the warm-up is over (None otherwise)."""
        if step >= self.batches:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timed.append((int(tokens), now - self._t))
        self._t = now
        if len(self.timed) < self.batches:
            return None
        tok, dt = self.timed[-1]
        rate = tok / dt if dt > 0 else float("inf")
        done = sum(t for t, _ in self.timed)
        eta = (self.local_tokens - done) / rate if rate > 0 else float("nan")
        elapsed = sum(d for _, d in self.timed)
        self.plan.estimates["warmup"] = {"batches": len(self.timed), "seconds": elapsed,
                                         "tokens_per_s": rate * self.world_size, "eta_s": eta}
        return (f"warm-up: {len(self.timed)} batch(es), {done:,} tokens in {elapsed:.2f} s; "
                f"{rate * self.world_size:,.0f} tokens/s; ETA {format_duration(eta)}")


def format_duration(seconds: float) -> str:
    """3725 -> '1 h 02 min', 75 -> '1 min 15 s', 4.2 -> '4.2 s'."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "unknown"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"
