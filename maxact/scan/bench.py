"""Benchmark hooks: time the bare base-model forward and the maxact scan on the same batches, in the
same process, so their ratio is measured under identical conditions.

    from maxact.scan import ScanConfig
    from maxact.scan.bench import bare_forward_throughput
    r = bare_forward_throughput(ScanConfig(model="random:qwen3-8b", corpus="synthetic:64:0"), max_batches=20)
    r["bare_tokens_per_s"], r["scan_tokens_per_s"], r["ratio"]

Both loops move each batch to the device the same way the scan does (the scan additionally moves its
row views) and run the base model under ``torch.inference_mode()`` with ``use_cache=False``; the scan
loop has every default statistic on. Timing brackets the loop with device synchronisations only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from maxact.scan import parallel, pipeline
from maxact.scan.config import ScanConfig
from maxact.scan.runner import build_states, first_token_capacity, flush_all, forward_batch
from maxact.scan.sitestate import BatchGeometry

log = logging.getLogger(__name__)


@dataclass
class Throughput:
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class BenchSession:
    """A model, its sites and a list of batches, loaded once and timed several ways."""

    config: ScanConfig
    device: torch.device
    model: Any                # pipeline.Model
    batches: list[Any]
    specs: list[Any]
    num_samples: int


def prepare(config: ScanConfig, max_batches: int | None = None) -> BenchSession:
    """Load model, corpus, batches (the first ``max_batches``) and sites as a scan would."""
    device = pipeline.concrete_device(parallel.local_device(pipeline.resolve_device(config),
                                                            parallel.SingleProcess()))
    torch.manual_seed(config.seed)
    with torch.inference_mode():
        model = pipeline.load_model(config, device)
    corpus = pipeline.load_corpus(config, model.tokenizer, model.vocab_size)
    seq = pipeline.make_batches(corpus, config, model.pad_token_id)
    n = len(seq) if max_batches is None else min(max_batches, len(seq))
    batches = [seq[i] for i in range(n)]
    return BenchSession(config, device, model, batches, pipeline.discover_sites(model, config),
                        corpus.num_samples)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bare_step(session: BenchSession, batch: Any) -> None:
    pin = session.device.type == "cuda"
    ids = (batch.input_ids.pin_memory() if pin else batch.input_ids).to(session.device, non_blocking=pin)
    mask = None
    if batch.num_tokens != batch.batch_size * batch.seq_len:
        am = batch.attention_mask
        mask = (am.pin_memory() if pin else am).to(session.device, non_blocking=pin)
    session.model.forward(ids, mask)


def time_bare(session: BenchSession, warmup: int = 1) -> Throughput:
    """Bare base-model forward over the session's batches, after ``warmup`` untimed passes over them."""
    with torch.inference_mode():
        for batch in session.batches * warmup:
            _bare_step(session, batch)
        _sync(session.device)
        t0 = time.perf_counter()
        for batch in session.batches:
            _bare_step(session, batch)
        _sync(session.device)
    return Throughput(sum(b.num_tokens for b in session.batches), time.perf_counter() - t0)


def _scan_step(session: BenchSession, states: dict, batch: Any, ctx: Any, geometry: BatchGeometry) -> None:
    for st in states.values():
        st.reserve(batch.batch_size)
    forward_batch(session.model, batch, ctx, geometry, session.device, session.config)


def time_scan(session: BenchSession, warmup: int = 1, *, first_token_split: bool = True) -> Throughput:
    """The scan's hooked forward over the same batches, after ``warmup`` untimed passes (which also
    compile every kernel specialisation the timed pass meets), with the states reset before timing.

    ``first_token_split=False`` drops the position-0 states of M-eligible sites (to measure their cost).
    """
    geometry = BatchGeometry()
    cfg = session.config
    with torch.inference_mode():
        rows = max(b.batch_size for b in session.batches)
        states = build_states(session.specs, cfg, session.num_samples, geometry, session.model.model,
                              session.device, first_token_split=first_token_split,
                              first_capacity=first_token_capacity(rows))
        ctx = pipeline.new_batch_context()
        with pipeline.attach_hooks(session.model, states, ctx):
            for _ in range(warmup):
                for batch in session.batches:
                    _scan_step(session, states, batch, ctx, geometry)
                flush_all(states)
            _sync(session.device)
            for st in states.values():
                for s in st.named_states().values():
                    s.reset()
            t0 = time.perf_counter()
            for batch in session.batches:
                _scan_step(session, states, batch, ctx, geometry)
            flush_all(states)
            _sync(session.device)
            seconds = time.perf_counter() - t0
    return Throughput(sum(b.num_tokens for b in session.batches), seconds)


def bare_forward_throughput(config: ScanConfig, *, max_batches: int | None = None, warmup: int = 1,
                            session: BenchSession | None = None) -> dict[str, Any]:
    """Bare forward vs maxact scan tokens/s on the same batches, same process; and their ratio."""
    session = session or prepare(config, max_batches)
    bare = time_bare(session, warmup)
    scanned = time_scan(session, warmup)
    out = {"model": session.model.name, "device": str(session.device), "dtype": config.dtype,
           "batches": len(session.batches), "tokens": bare.tokens, "sites": len(session.specs),
           "bare_tokens_per_s": bare.tokens_per_s, "scan_tokens_per_s": scanned.tokens_per_s,
           "ratio": scanned.tokens_per_s / bare.tokens_per_s}
    log.info("bare %.1f tok/s, scan %.1f tok/s, ratio %.3f", out["bare_tokens_per_s"],
             out["scan_tokens_per_s"], out["ratio"])
    return out
