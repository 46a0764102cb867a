"""What the scan is about to do, said before the first batch: samples, tokens, batches, longest sample.

This is the slot for the pre-flight of issue 8 (peak-memory estimate and warm-up ETA): ``Plan`` is
computed from the batch plan alone; an estimate can be attached to it later without changing callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


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
            out.append(f"estimate: {key} {value}")
        return out


def make_plan(batches: Sequence[Any], sample_lengths: Sequence[int]) -> Plan:
    """Plan of a list of Batch objects (CONTRACTS.md section 3) over samples of the given lengths."""
    padded = [int(b.input_ids.shape[0]) * int(b.input_ids.shape[1]) for b in batches]
    return Plan(
        num_samples=len(sample_lengths),
        num_tokens=int(sum(sample_lengths)),
        num_batches=len(batches),
        longest_sample=int(max(sample_lengths, default=0)),
        padded_tokens=int(sum(padded)),
        max_batch_rows=max((int(b.input_ids.shape[0]) for b in batches), default=0),
        max_batch_tokens=max(padded, default=0),
    )
