"""The GPU (Triton) update: which kernels run for which features, with no host sync.

On a CUDA device with ``cuda-core`` installed, ``cuda_hist.fused_stats`` (CUDA C++, shared-memory
histogram) reads x once for the histogram, counts, sums, min/max and, when needed, the row maxima,
per-sample maxima and per-channel maxima (the Triton rows kernel takes the channel maxima
only of tensors too wide for its shared memory: see ``cuda_hist.channels_fit``); for bf16/fp16 rows
``cuda_median`` then takes each token's median |x| and a small Triton kernel the criterion and records. Without
``cuda-core`` (one warning) and on the CPU (Triton interpreter), the Triton rows kernel does all of it,
its histogram by global atomics, and the Triton token kernel finds the medians. Top-k is Triton in both cases.

On a GPU the top-k and the token kernels run on two side streams after the fused pass, and nothing waits for
them until the state is read (``StatsState.settle``): they overlap the next update's fused pass or the model.
Each block of the fused pass holds a whole SM, so a kernel queued beside it can only start where it leaves
an SM free; the fused pass leaves ``SPARE_SMS``, and the token chain of candidate medians is two launches of
a few blocks that fit there: ``cuda_median`` lists the rows that need a median and takes those, and one
Triton program the criterion and records of those rows alone. The chain is paced by its launches' latency,
not by bytes, and it runs beside every fused pass, so it must stay shorter than one (docs/PERF_NOTES.md,
v15). Top-k keeps its spread-out launches (one program measured slower on tie-heavy data:
``triton_topk.topk_update``).

Imported lazily by :mod:`maxact_kernels._backend` (the interpreter is chosen at import time).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings

import torch

from . import triton_rows, triton_tokens, triton_topk
from ._state import StatsState

log = logging.getLogger(__name__)

INTERPRETED = triton_rows.INTERPRETED


@functools.lru_cache(maxsize=None)
def _cuda_hist_module():
    """``maxact_kernels.cuda_hist`` if it imports, else None (a missing file or cuda-core means no fast path)."""
    try:
        from . import cuda_hist
    except Exception as exc:  # ImportError, or cuda bindings failing at import
        log.debug("maxact_kernels.cuda_hist unavailable: %s", exc)
        return None
    return cuda_hist


@functools.lru_cache(maxsize=None)
def _fast_hist_available(device_index: int) -> bool:
    mod = _cuda_hist_module()
    if mod is None:
        return False
    try:
        return bool(mod.available(torch.device("cuda", device_index)))
    except Exception as exc:
        log.warning("maxact_kernels.cuda_hist.available() failed (%s); using the Triton histogram", exc)
        return False


@functools.lru_cache(maxsize=None)
def _warn_slow_hist_once() -> None:
    warnings.warn(
        "maxact_kernels: cuda-core is not installed, so the exact |x| histogram runs in Triton with one "
        "global atomic per element (about 100x slower than the fused CUDA C++ kernel). "
        "Install it with: pip install 'maxact[cuda]'",
        RuntimeWarning,
        stacklevel=4,
    )


def _cuda_median_supports(x2d: torch.Tensor) -> bool:
    """Whether ``cuda_median`` takes the per-token medians of ``x2d`` (bf16/fp16, aligned, not too wide)."""
    try:
        from . import cuda_median
    except Exception as exc:
        log.debug("maxact_kernels.cuda_median unavailable: %s", exc)
        return False
    return cuda_median.supports(x2d)


def use_cuda_hist(device: torch.device) -> bool:
    """Whether updates on ``device`` use the CUDA C++ fused histogram (warns once when it cannot)."""
    if device.type != "cuda" or INTERPRETED:
        return False
    fast = _fast_hist_available(device.index if device.index is not None else torch.cuda.current_device())
    if not fast:
        _warn_slow_hist_once()
    return fast


# SMs the fused pass leaves to the side streams' one-program kernels. Measured (H200, [16384, 4096]): the
# fused pass took 48.6-50.1 us on 130 blocks against 48.3-51.4 on 132 (scripts/trace_updates.py).
SPARE_SMS = 2
# Blocks of the candidate-median kernel (each takes 8 rows at a time, and lists the candidates itself).
MEDIAN_BLOCKS = 4
# Priority of the side streams (torch's convention: lower is more urgent; 0 is the default priority).
SIDE_PRIORITY = 0


@functools.lru_cache(maxsize=None)
def _side_streams(device_index: int) -> tuple[torch.cuda.Stream, torch.cuda.Stream, torch.cuda.Event]:
    """Two side streams of the device (top-k; token medians and records) and the event that forks them
    from the current stream after each fused pass."""
    with torch.cuda.device(device_index):
        return (torch.cuda.Stream(priority=SIDE_PRIORITY), torch.cuda.Stream(priority=SIDE_PRIORITY),
                torch.cuda.Event())


def _fork(dev: torch.device) -> tuple[torch.cuda.Stream, torch.cuda.Stream]:
    """The device's side streams, made to start after the work queued so far on the current stream."""
    top, tok, fork = _side_streams(dev.index if dev.index is not None else torch.cuda.current_device())
    fork.record(torch.cuda.current_stream(dev))
    top.wait_event(fork)
    tok.wait_event(fork)
    return top, tok


def _keep_alive(stream: torch.cuda.Stream, *tensors: torch.Tensor | None) -> None:
    """The caching allocator must not hand these tensors' memory on before ``stream``'s work so far is done
    (x and the per-row inputs are the caller's, and freed as soon as it lets go of them)."""
    for t in tensors:
        if t is not None:
            t.record_stream(stream)


@torch.no_grad()
def update(
    state: StatsState,
    x2d: torch.Tensor,
    row_mask: torch.Tensor | None,
    sample_ids: torch.Tensor | None,
    positions: torch.Tensor | None,
) -> None:
    """Fold ``x2d`` ([R, C], column stride 1) into ``state``; same contract as ``reference.update``."""
    cfg = state.config
    n_rows = x2d.shape[0]
    if n_rows == 0:
        return
    dev = x2d.device
    fast = use_cuda_hist(dev)
    candidates = cfg.track_tokens and cfg.token_median == "candidates"
    # per-token medians by the CUDA kernel (rows in registers) from the fused pass's row maxima
    median_cuda = fast and cfg.track_tokens and _cuda_median_supports(x2d)
    need_row_max = bool(cfg.topk) or candidates or median_cuda or bool(cfg.num_samples)  # row_absmax
    # On a GPU, what follows the fused pass runs on side streams. They read this update's row maxima from a
    # buffer of its own, which the caching allocator keeps until they are done (as it keeps x), so that the
    # next fused pass need not wait for them (see StatsState.begin_side_work).
    side_work = dev.type == "cuda" and bool(cfg.topk or cfg.track_tokens)
    slot = state.begin_side_work() if side_work else 0
    row_absmax = None
    if need_row_max:
        row_absmax = (torch.empty(n_rows, dtype=torch.float32, device=dev) if side_work
                      else state.scratch("row_absmax", n_rows, torch.float32))
    mask_u8 = row_mask.view(torch.uint8) if row_mask is not None else None
    # Triton launches on the current device; switch only when x lives elsewhere (the switch costs host time)
    other_gpu = dev.type == "cuda" and dev.index != torch.cuda.current_device()
    device_ctx = torch.cuda.device(dev) if other_gpu else contextlib.nullcontext()
    with device_ctx:
        if fast:
            from . import cuda_hist

            samples = bool(cfg.num_samples)
            fused_channels = cfg.track_channels and cuda_hist.channels_fit(x2d.shape[1], x2d.dtype)
            cuda_hist.fused_stats(
                x2d, row_mask, state.counts, state.sums, state.minmax, state.abs_hist,
                row_absmax=row_absmax,
                sample_ids=sample_ids if samples else None,
                sample_abs_max=state.sample_abs_max if samples else None,
                sample_oor=state.sample_oor if samples else None,
                channel_abs_max=state.channel_abs_max if fused_channels else None,
                spare_sms=SPARE_SMS if side_work else 0,
            )
            if cfg.track_channels and not fused_channels:  # too wide for shared memory: a second pass
                triton_rows.rows_update(x2d, mask_u8, state, do_basic=False, do_hist=False, do_channels=True,
                                        rowpack=None)
        else:
            # rowpack stays all -1 between updates: the finalize kernel restores it after use
            rowpack = state.scratch("rowpack", n_rows, torch.int64, fill=-1) if need_row_max else None
            triton_rows.rows_update(x2d, mask_u8, state, do_basic=True, do_hist=True,
                                    do_channels=cfg.track_channels, rowpack=rowpack)
            if need_row_max:
                triton_rows.finalize_rows(rowpack, state, row_absmax=row_absmax, sample_ids=sample_ids)
        if not (cfg.topk or cfg.track_tokens):
            return
        # Two chains of short, latency-bound launches that depend on the fused pass and not on each other:
        # each on its own side stream (on the CPU, in order), beside the current stream's next work.
        top_stream, tok_stream = _fork(dev) if side_work else (None, None)
        events = state.side_events(slot, bool(cfg.topk) + bool(cfg.track_tokens)) if side_work else ()
        if cfg.topk:
            state.topk_compactor = triton_topk.topk_compact
            with _on(top_stream):
                triton_topk.topk_update(x2d, row_absmax, sample_ids, positions, state)
            _done(top_stream, events[0] if events else None, x2d, row_absmax, sample_ids, positions)
        if cfg.track_tokens:
            with _on(tok_stream):
                if median_cuda:
                    from . import cuda_median

                    row_median = state.scratch("row_median", n_rows, torch.float32)
                    listed = None
                    if candidates:
                        # the median kernel lists the rows that may pass or tie this update's max |x| (the
                        # possible peak tokens), a handful, and takes their medians, on the SMs left free
                        listed = (state.scratch("cand_rows", n_rows, torch.int32),
                                  state.scratch("cand_n", 1, torch.int32))
                        cuda_median.row_median(x2d, row_absmax, row_median, rows=listed[0], n_listed=listed[1],
                                               blocks=MEDIAN_BLOCKS, select=(state.sun_params, state.tok_counts))
                    else:
                        cuda_median.row_median(x2d, row_absmax, row_median)
                    triton_tokens.tokens_from_rows(x2d, row_absmax, row_median, sample_ids, positions,
                                                   state, listed=listed)
                else:
                    triton_tokens.tokens_update(x2d, mask_u8, sample_ids, positions, state,
                                                row_absmax if candidates else None)
            _done(tok_stream, events[-1] if events else None, x2d, row_absmax, row_mask, sample_ids, positions)
        if side_work:
            state.end_side_work(slot, events)


def _on(stream: torch.cuda.Stream | None):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _done(stream: torch.cuda.Stream | None, event: torch.cuda.Event | None, *inputs: torch.Tensor | None) -> None:
    """Mark the end of ``stream``'s work for this update with ``event``; the inputs it read stay allocated
    until then."""
    if stream is None:
        return
    _keep_alive(stream, *inputs)
    event.record(stream)
