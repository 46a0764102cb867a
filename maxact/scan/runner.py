"""The scan loop: ``scan(config) -> ScanResult``.

One pass over the batch plan. Per batch the loop only moves the batch and its row views to the
device, fills the hooks' batch context and runs the base model under ``torch.inference_mode()`` with
``use_cache=False``: no ``.item()``, no host sync. The progress bar syncs once every
``config.sync_every`` batches (running M). Checkpoints (``--checkpoint-every``, SIGINT/SIGTERM) hold
the merged states and the finished batch indices; ``--resume`` continues from them and ends with the
statistics of an uninterrupted scan. Data-parallel ranks (torchrun) shard the plan by tokens and
merge exactly at checkpoints and at the end (see ``maxact.scan.parallel``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from maxact.scan import checkpoint as ckpt_io
from maxact.scan import parallel, pipeline, replicas
from maxact.scan.config import ScanConfig
from maxact.scan.errors import ScanError, ScanInterrupted
from maxact.scan.faults import StateGuard, StopRequest, run_splitting_on_oom
from maxact.scan.preflight import Warmup, check_memory, make_plan
from maxact.scan.progress import Progress
from maxact.scan.result import M_COMPONENTS, ScanResult
from maxact.scan.sitestate import FIRST_SUFFIX, BatchGeometry, SiteState, device_of_module, stats_kwargs
from maxact.scan.summarize import build_result

log = logging.getLogger(__name__)


@dataclass
class LoopProbes:
    """Hooks into the loop for tests and benchmarks; a normal scan needs none.

    on_model(model, sites): called once before the loop, with the base model and the SiteSpecs
        (a test registers its own plain forward hooks here to capture the same tensors).
    before_forward(batch): called before each forward attempt; may raise (e.g. a simulated OOM).
    after_batch(step, batch_index): called after a batch is folded in; may raise or send a signal.
    state_guard: snapshot states before each batch so an OOM can be undone (None: on for CUDA).
    """

    on_model: Callable[[Any, list[Any]], None] | None = None
    before_forward: Callable[[Any], None] | None = None
    after_batch: Callable[[int, int], None] | None = None
    state_guard: bool | None = None


@dataclass
class _Run:
    """Mutable bookkeeping of one scan invocation."""

    finished: list[int] = field(default_factory=list)   # batch indices folded into this rank's states
    tokens: int = 0                                       # real tokens of those batches
    oom_splits: int = 0
    loop_time_s: float = 0.0
    prior: dict[str, Any] = field(default_factory=dict)   # combined counters of the resumed runs
    handle: Any = None                                    # maxact.hooks.HookHandle of this run
    warmup: Any = None                                    # preflight.Warmup: times the first batches (ETA)

    def counters(self, states: dict[str, SiteState]) -> dict[str, Any]:
        """This rank's counters as plain data (syncs for the expert counts: checkpoints/end only)."""
        experts = {} if self.handle is None else {
            name: [int(v) for v in t.tolist()] for name, t in self.handle.expert_tokens.items()}
        return {"tokens": self.tokens, "oom_splits": self.oom_splits, "loop_time_s": self.loop_time_s,
                "calls": {name: st.calls for name, st in states.items()}, "expert_tokens": experts}


def combine_counters(prior: dict[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters of earlier (resumed) runs plus every rank's of this run.

    Tokens, OOM splits, hook calls and expert token counts add up; loop time adds across runs but
    is the slowest rank's within a run (ranks run concurrently).
    """
    out = {"tokens": int(prior.get("tokens", 0)) + sum(r["tokens"] for r in ranks),
           "oom_splits": int(prior.get("oom_splits", 0)) + sum(r["oom_splits"] for r in ranks),
           "loop_time_s": float(prior.get("loop_time_s", 0.0)) + max((r["loop_time_s"] for r in ranks), default=0.0),
           "calls": dict(prior.get("calls", {})), "expert_tokens": {k: list(v) for k, v in
                                                                    prior.get("expert_tokens", {}).items()}}
    for r in ranks:
        for name, n in r["calls"].items():
            out["calls"][name] = out["calls"].get(name, 0) + n
        for name, counts in r["expert_tokens"].items():
            have = out["expert_tokens"].get(name, [0] * len(counts))
            out["expert_tokens"][name] = [a + b for a, b in zip(have, counts)]
    return out


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------


def scan(config: ScanConfig, *, probes: LoopProbes | None = None) -> ScanResult | None:
    """Run a scan; write ``stats.json`` + sidecar (+ exports) into ``config.out_dir``.

    Returns the ScanResult on rank 0 (None on other torchrun ranks). Raises ScanError on bad input
    (one-line message) and ScanInterrupted after a SIGINT/SIGTERM (the state is checkpointed first).
    """
    started = time.perf_counter()
    replicas.narrow_visible_gpus(config.gpus_per_replica)   # before CUDA starts (a no-op without the flag)
    ctx = parallel.from_environment(config.dist_timeout_s)
    try:
        # Everything, states included, lives in inference mode: no autograd bookkeeping anywhere.
        with torch.inference_mode():
            result = _scan(config, ctx, probes or LoopProbes(), started)
    except ScanInterrupted:   # every rank stopped at the same batch: a clean exit
        ctx.close()
        raise
    except BaseException:
        ctx.close(failed=True)
        raise
    ctx.close()
    return result


def plan_hash(batches: Sequence[Any]) -> str:
    """Identity of a batch plan: the sample ids and shape of every batch, in order."""
    h = hashlib.sha256()
    plans = getattr(batches, "plans", None)
    if plans is not None:   # a lazy BatchSequence: hash the plan without building the batches
        for p in plans:
            h.update(np.asarray(p.indices, dtype=np.int64).tobytes())
            h.update(np.int64(p.seq_len).tobytes())
    else:
        for b in batches:
            h.update(b.sample_ids.numpy().astype(np.int64).tobytes())
            h.update(np.int64(b.input_ids.shape[1]).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# the scan
# ------------------------------------------------------------------------------------------------


def _scan(config: ScanConfig, ctx: Any, probes: LoopProbes, started: float) -> ScanResult | None:
    replica = replicas.narrow_visible_gpus(config.gpus_per_replica)   # the plan scan() applied
    device = pipeline.concrete_device(parallel.local_device(pipeline.resolve_device(config), ctx,
                                                            sliced=replica is not None))
    if device.type == "cuda":
        replicas.check_visible(replica, torch.cuda.device_count())
        torch.cuda.set_device(device)
    torch.manual_seed(config.seed)

    loaded = pipeline.load_model(config, device)
    corpus = pipeline.load_corpus(config, loaded.tokenizer, loaded.vocab_size)
    if corpus.num_samples == 0:
        raise ScanError(f"--corpus {config.corpus}: no usable samples "
                        f"({corpus.num_empty} empty, {corpus.num_bad_lines} bad lines)")
    batches = pipeline.make_batches(corpus, config, loaded.pad_token_id)
    plan = make_plan(batches, corpus.lengths().tolist())
    phash = plan_hash(batches)
    specs = pipeline.discover_sites(loaded, config)

    geometry = BatchGeometry()
    num_samples = corpus.num_samples
    capacity = first_token_capacity(plan.max_batch_rows)
    states = build_states(specs, config, num_samples, geometry, loaded.model, device, first_capacity=capacity)
    run = _Run()

    done: set[int] = set()
    if config.resume:
        done = _resume(config, ctx, states, phash, run)
        plan.batches_done = len(done)
        plan.tokens_done = sum(_batch_tokens(batches, i) for i in done)
    check_memory(plan, config, loaded, states, device, capacity)   # before the first batch; may refuse
    if ctx.is_main:
        for line in plan.lines():
            log.info(line)
        log.info("model %s (%s, %d layers, hidden %d) on %s, %s, attention %s; %d sites",
                 loaded.name, loaded.model_type, loaded.num_layers, loaded.hidden_size, device,
                 config.dtype, loaded.attn_implementation, len(specs))
        if replica is not None:
            log.info(replicas.describe(replica, getattr(loaded.model, "hf_device_map", None)))

    todo = [i for i in range(len(batches)) if i not in done]
    tokens_of = [_batch_tokens(batches, i) for i in todo]
    local = ctx.shard(todo, tokens_of)
    run.warmup = Warmup(plan, sum(_batch_tokens(batches, i) for i in local), len(local), device, ctx.world_size)
    if probes.on_model is not None:
        probes.on_model(loaded.model, specs)
    progress = Progress(plan.num_tokens, initial_tokens=plan.tokens_done,
                        enabled=config.progress and ctx.is_main, world_size=ctx.world_size)
    try:
        _loop(config, ctx, loaded, batches, local, states, geometry, device, progress, probes, run,
              phash, done)
    finally:
        progress.close()

    merged = _collect(ctx, states)
    finished_all = ctx.gather_object(run.finished)
    ranks = ctx.gather_object(run.counters(states))
    if not ctx.is_main:
        return None
    totals = combine_counters(run.prior, ranks)
    all_done = done.union(*map(set, finished_all))
    if len(all_done) != len(batches) or totals["tokens"] != plan.num_tokens:   # every batch exactly once
        raise RuntimeError(f"scan finished {len(all_done)} of {len(batches)} batches, "
                           f"{totals['tokens']} of {plan.num_tokens} tokens")

    result = build_result(config, loaded, corpus, specs, merged, device, plan, ctx, totals,
                           wall=time.perf_counter() - started)
    _finish(config, result)
    return result


def _batch_tokens(batches: Any, i: int) -> int:
    plans = getattr(batches, "plans", None)
    return int(plans[i].num_tokens) if plans is not None else int(batches[i].num_tokens)


def build_states(specs: list[Any], config: ScanConfig, num_samples: int, geometry: BatchGeometry,
                 model: torch.nn.Module, default_device: torch.device, *,
                 first_token_split: bool = True, first_capacity: int = 256) -> dict[str, SiteState]:
    """One SiteState per site, on its module's device; M-eligible sites keep position 0 apart
    (``first_token_split=False`` only for benchmarks that measure what that costs)."""
    from maxact_kernels import ActivationStats

    states: dict[str, SiteState] = {}
    for spec in specs:
        dev = device_of_module(model, spec.module_name, default_device)
        kwargs = stats_kwargs(config, spec, num_samples)

        def make(spec=spec, dev=dev, kwargs=kwargs):
            return ActivationStats(spec.num_channels, device=dev, **kwargs)

        split_first = first_token_split and spec.component in M_COMPONENTS
        states[spec.name] = SiteState(spec, make, split_first, geometry, first_capacity)
    return states


def _named_states(states: dict[str, SiteState]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for st in states.values():
        out.update(st.named_states())
    return out


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------


def _loop(config: ScanConfig, ctx: Any, loaded: Any, batches: Any, local: list[int],
          states: dict[str, SiteState], geometry: BatchGeometry, device: torch.device,
          progress: Progress, probes: LoopProbes, run: _Run, phash: str, done: set[int]) -> None:
    steps = ctx.num_steps(len(local))
    use_guard = probes.state_guard if probes.state_guard is not None else device.type == "cuda"
    guard = _make_guard(states) if use_guard else None
    batch_ctx = pipeline.new_batch_context()
    m_states = [st.main for st in states.values() if st.spec.component in M_COMPONENTS] + \
               [st.first for st in states.values() if st.first is not None]
    m_names = [st.name for st in states.values() if st.spec.component in M_COMPONENTS] + \
              [st.name for st in states.values() if st.first is not None]

    def forward(batch: Any) -> None:
        if probes.before_forward is not None:
            probes.before_forward(batch)
        forward_batch(loaded, batch, batch_ctx, geometry, device, config)

    def split(batch: Any):
        return batch.split() if batch.batch_size > 1 else None

    def on_split(_batch: Any) -> None:
        run.oom_splits += 1

    base_tokens = sum(_batch_tokens(batches, i) for i in done)
    fault = parallel.fault_injector(ctx.rank)   # test hook (MAXACT_TEST_FAULT); None normally
    pending_vote = ctx.vote(False)   # ranks' stop vote, started after each batch and read after the next
    t0 = loop_start = time.perf_counter()
    with StopRequest() as stop, pipeline.attach_hooks(loaded, states, batch_ctx) as handle:
        run.handle = handle
        if run.warmup is not None:
            run.warmup.start()
        for step in range(steps):
            if step < len(local):
                index = local[step]
                batch = batches[index]
                for st in states.values():
                    st.reserve(batch.batch_size)
                run_splitting_on_oom(batch, forward, split, guard, on_split)
                run.finished.append(index)
                run.tokens += batch.num_tokens
                progress.advance(batch.num_tokens)
                eta = run.warmup.batch_done(step, batch.num_tokens) if run.warmup is not None else None
                if eta and ctx.is_main:
                    progress.write(eta)
                if probes.after_batch is not None:
                    probes.after_batch(step, index)
                if fault is not None:
                    fault(len(run.finished), lambda: stop.requested)
            last = step + 1 == steps
            if (step + 1) % config.sync_every == 0 or last:
                m, where = _running_max(m_states, m_names, states)   # the one host sync of this stretch
                progress.show_m(m, where)
                if ctx.world_size > 1:   # every rank's tokens and loop time: the bar shows each one's tokens/s
                    ranks = ctx.all_gather_floats([run.tokens, time.perf_counter() - loop_start])
                    progress.set_ranks(base_tokens, ranks)
            # One process reads its own flag; ranks read the vote started after the previous batch, so
            # all stop at the same step without waiting for each other after every batch.
            stop_now = stop.requested if ctx.world_size == 1 else pending_vote()
            periodic = config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and not last
            if stop_now or periodic:
                run.loop_time_s += _elapsed(t0, device)
                t0 = time.perf_counter()
                path = _save_checkpoint(config, ctx, states, run, phash, done)
                if stop_now:   # batches of all ranks (ctx.sum: every rank is here at the same step)
                    raise ScanInterrupted(f"stopped after {len(done) + ctx.sum(len(run.finished))} batches; "
                                          f"resume with --resume" + (f" (checkpoint {path})" if path else ""),
                                          str(path) if path else None)
            if ctx.world_size > 1 and not last:
                pending_vote = ctx.vote(stop.requested)
        flush_all(states)   # the plan's end: the same point whether or not the scan was resumed
    run.loop_time_s += _elapsed(t0, device)


def _make_guard(states: dict[str, SiteState]) -> StateGuard:
    tensors, host, settle = [], [], []
    for st in states.values():
        t, h = st.live()
        tensors.extend(t)
        host.extend(h)
        settle.extend(stats.settle for stats in st.named_states().values())
    return StateGuard(tensors, host, settle)


def first_token_capacity(max_batch_rows: int) -> int:
    """Rows of position-0 staging per site: about 32 batches' worth, at most 256 (fixed by the plan
    alone, so the folding schedule, and with it every float sum, is the same on resume)."""
    return max(max_batch_rows, min(256, 32 * max_batch_rows))


def flush_all(states: dict[str, SiteState]) -> None:
    """Fold every staged position-0 row into its state (between batches only)."""
    for st in states.values():
        st.flush()


def _elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def forward_batch(loaded: Any, batch: Any, batch_ctx: Any, geometry: BatchGeometry,
                   device: torch.device, config: ScanConfig) -> None:
    """Move one batch to the device, describe its rows to the hooks, run the base model."""
    pin = device.type == "cuda"
    b, t = batch.batch_size, batch.seq_len
    row_mask = batch.row_mask()
    positions = batch.row_positions()
    sample_ids = batch.row_sample_ids()
    kept = row_mask & (positions >= config.skip_first_tokens) if config.skip_first_tokens else row_mask
    rest = kept & (positions >= 1)
    first_index = torch.nonzero(row_mask & (positions == 0)).reshape(-1)
    host = {"input_ids": batch.input_ids, "kept": kept, "rest": rest, "sample_ids": sample_ids,
            "positions": positions, "first_index": first_index,
            "first_sample_ids": sample_ids.index_select(0, first_index)}
    padded = batch.num_tokens != b * t
    if padded:
        host["attention_mask"] = batch.attention_mask
    target = loaded.input_device   # the embedding's device (device_map: the first GPU)
    dev = {k: (v.pin_memory() if pin else v).to(target, non_blocking=pin) for k, v in host.items()}
    geometry.set(dev["rest"], dev["first_index"], dev["first_sample_ids"],
                 torch.zeros_like(dev["first_sample_ids"]))
    pipeline.set_batch_context(batch_ctx, mask=dev["kept"], sample_ids=dev["sample_ids"],
                               positions=dev["positions"])
    # attention_mask=None for unpadded batches: the causal path needs no mask (and no mask checks).
    loaded.forward(dev["input_ids"], dev.get("attention_mask"))


def _running_max(m_states: list[Any], names: list[str], states: dict[str, SiteState]) -> tuple[float, str | None]:
    """Running M and its site with one host sync (only at the progress bar's sync points).

    Position-0 rows still staged count too (read from the staging buffers, not folded: folding
    follows the plan alone, see SiteState)."""
    if not m_states:
        return math.nan, None
    dev = m_states[0].device
    tensors = [pipeline.abs_max_tensor(st) for st in m_states]
    for st in states.values():
        staged = st.staged_abs_max()
        if staged is not None:
            tensors.append(staged)
            names = names + [st.name]
    vals = torch.stack([t.to(dev, non_blocking=True) for t in tensors])
    vals = vals.to("cpu", torch.float64)
    vals = torch.nan_to_num(vals, nan=-1.0)
    i = int(torch.argmax(vals))
    m = float(vals[i])
    return (m, names[i].removesuffix(FIRST_SUFFIX)) if m >= 0 else (math.nan, None)


# ------------------------------------------------------------------------------------------------
# checkpoints, resume, merge
# ------------------------------------------------------------------------------------------------


def _merge_state_dicts(parts: list[dict[str, dict[str, torch.Tensor]]], factories: dict[str, Callable],
                       ) -> dict[str, Any]:
    """Per state name: ActivationStats.merge of the ranks' states (exact)."""
    from maxact_kernels import ActivationStats

    merged = {}
    for name, make in factories.items():
        members = []
        for part in parts:
            st = make()
            st.load_state_dict(part[name])
            members.append(st)
        merged[name] = members[0] if len(members) == 1 else ActivationStats.merge(members)
    return merged


def _factories(states: dict[str, SiteState]) -> dict[str, Callable]:
    out = {}
    for st in states.values():
        for name in st.named_states():
            out[name] = st.make
    return out


STAGED_SUFFIX = "#pos0-staged"


def _save_checkpoint(config: ScanConfig, ctx: Any, states: dict[str, SiteState], run: _Run,
                     phash: str, done: set[int]) -> Path | None:
    if ctx.world_size > 1:
        flush_all(states)   # ranks' staged rows are folded before the merge (sums then agree to 1e-12)
    named = _named_states(states)
    local_sd = {name: st.state_dict() for name, st in named.items()}
    if ctx.world_size == 1:
        for name, st in states.items():
            staged = st.staged()
            if staged is not None:
                local_sd[name + STAGED_SUFFIX] = staged
    # single process: states and staged rows as they are; ranks: the exact merge, on rank 0
    merged_sd = _reduce_states(ctx, local_sd, _factories(states)) if ctx.world_size > 1 else local_sd
    finished = ctx.gather_object(run.finished)
    ranks = ctx.gather_object(run.counters(states))
    path = None
    if ctx.is_main:
        all_finished = sorted(done.union(*map(set, finished)))
        ck = ckpt_io.Checkpoint(
            fingerprint=config.measurement_fingerprint(), plan_hash=phash, finished_batches=all_finished,
            states=merged_sd, world_size=ctx.world_size, counters=combine_counters(run.prior, ranks))
        path = ckpt_io.save(config.checkpoint_dir, ck)
        log.info("checkpoint: %d batches done -> %s", len(all_finished), path)
    ctx.barrier()
    return path


def _resume(config: ScanConfig, ctx: Any, states: dict[str, SiteState], phash: str, run: _Run) -> set[int]:
    """Load the checkpoint: rank 0 takes the merged states, every rank learns the finished batches."""
    info = None
    if ctx.is_main:
        ck = ckpt_io.load(config.checkpoint_dir)
        ckpt_io.check_compatible(ck, config.measurement_fingerprint(), phash,
                                 ckpt_io.checkpoint_path(config.checkpoint_dir))
        named = _named_states(states)
        missing = set(named) - set(ck.states)
        if missing:
            raise ScanError(f"--resume: checkpoint lacks states for {len(missing)} sites "
                            f"(e.g. {sorted(missing)[0]})")
        for name, st in named.items():
            st.load_state_dict(ck.states[name])
        for name, st in states.items():
            if name + STAGED_SUFFIX in ck.states:
                st.load_staged(ck.states[name + STAGED_SUFFIX])
        info = {"finished": ck.finished_batches, "counters": ck.counters, "world_size": ck.world_size}
        if ck.world_size != ctx.world_size:
            log.info("resuming a checkpoint of world size %d with world size %d: the checkpoint holds the "
                     "merged state of all ranks, the remaining batches are re-sharded, and the merge is exact, "
                     "so the result is the same", ck.world_size, ctx.world_size)
        log.info("resuming: %d batches already done", len(ck.finished_batches))
    info = ctx.broadcast_object(info)
    run.prior = dict(info["counters"])
    return set(info["finished"])


def _collect(ctx: Any, states: dict[str, SiteState]) -> dict[str, Any] | None:
    """Final exact merge across ranks; rank 0 gets {state name: ActivationStats}."""
    named = _named_states(states)
    if ctx.world_size == 1:
        return named
    factories = _factories(states)
    merged_sd = _reduce_states(ctx, {name: st.state_dict() for name, st in named.items()}, factories)
    if not ctx.is_main:
        return None
    return _merge_state_dicts([merged_sd], factories)   # onto each site's device


def _reduce_states(ctx: Any, local_sd: dict[str, dict[str, torch.Tensor]],
                   factories: dict[str, Callable]) -> dict[str, dict[str, torch.Tensor]] | None:
    """Every rank's state dicts merged exactly into rank 0's (None elsewhere).

    CPU copies travel along a binary tree (parallel.TorchDistributed.reduce_to_main); each merge
    runs on the states' own devices, so sites of a replica spread over several GPUs merge in place.
    """
    def combine(mine: dict, theirs: dict) -> dict:
        merged = _merge_state_dicts([mine, theirs], factories)
        return ckpt_io.cpu_states({name: st.state_dict() for name, st in merged.items()})

    return ctx.reduce_to_main(ckpt_io.cpu_states(local_sd), combine)


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------


def _finish(config: ScanConfig, result: ScanResult) -> None:
    from maxact.scan.paper_export import export_paper
    from maxact.scan.writer import write_results

    for w in result.warnings:
        log.warning(w)
    out_dir = config.out_dir
    json_path, side_path = write_results(result, out_dir)
    result.out_dir = out_dir
    log.info("wrote %s and %s", json_path, side_path)
    if "max-act-llm" in config.export:
        path = export_paper(result, out_dir)
        log.info("wrote %s", path)
    ckpt_io.remove(config.checkpoint_dir)
