"""The GPU (Triton) update: which kernels run for which features, with no host sync.

On a CUDA device with ``cuda-core`` installed, ``cuda_hist.fused_stats`` (CUDA C++, shared-memory
histogram) reads x once for the histogram, counts, sums, min/max and, when needed, the row maxima,
row keys, per-sample maxima and per-channel maxima (the Triton rows kernel takes the channel maxima
only of tensors too wide for its shared memory: see ``cuda_hist.channels_fit``); for bf16/fp16 rows
``cuda_median`` then takes each token's median |x| and a small Triton kernel the criterion and records. Without
``cuda-core`` (one warning) and on the CPU (Triton interpreter), the Triton rows kernel does all of it,
its histogram by global atomics, and the Triton token kernel finds the medians. Top-k is Triton in both cases
(on a GPU with tokens tracked too, on a side stream beside the token kernels).

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


@functools.lru_cache(maxsize=None)
def _side_stream(device_index: int) -> tuple[torch.cuda.Stream, torch.cuda.Event, torch.cuda.Event]:
    """A second stream of the device, with a fork and a join event (re-recorded by every update)."""
    with torch.cuda.device(device_index):
        return torch.cuda.Stream(), torch.cuda.Event(), torch.cuda.Event()


def _fork(dev: torch.device) -> torch.cuda.Stream:
    """The device's side stream, made to start after the work queued so far on the current stream."""
    side, fork, _ = _side_stream(dev.index if dev.index is not None else torch.cuda.current_device())
    fork.record(torch.cuda.current_stream(dev))
    side.wait_event(fork)
    return side


def _join(dev: torch.device) -> None:
    """The current stream waits for the side stream's work (no host sync): later work on it (the next
    update, the freeing of x) stays ordered after the side work."""
    side, _, join = _side_stream(dev.index if dev.index is not None else torch.cuda.current_device())
    join.record(side)
    torch.cuda.current_stream(dev).wait_event(join)


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
    need_rows = bool(cfg.topk) or candidates or median_cuda  # row_absmax / row_argmax / rowkey
    need_row_max = need_rows or bool(cfg.num_samples)
    row_absmax = row_argmax = rowkey = None
    if need_row_max:
        row_absmax = state.scratch("row_absmax", n_rows, torch.float32)
        row_argmax = state.scratch("row_argmax", n_rows, torch.int32)
        rowkey = state.scratch("rowkey", n_rows, torch.int64)
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
                row_absmax=row_absmax, row_argmax=row_argmax, rowkey=rowkey,
                sample_ids=sample_ids if samples else None,
                sample_abs_max=state.sample_abs_max if samples else None,
                sample_oor=state.sample_oor if samples else None,
                channel_abs_max=state.channel_abs_max if fused_channels else None,
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
                triton_rows.finalize_rows(
                    rowpack, state,
                    row_absmax=row_absmax if need_rows else None,
                    row_argmax=row_argmax if need_rows else None,
                    rowkey=rowkey if need_rows else None,
                    sample_ids=sample_ids,
                )
        # The top-k and the token kernels are two chains of short, latency-bound launches that do not
        # depend on each other: on the GPU top-k runs on a side stream, beside the token chain.
        side = _fork(dev) if dev.type == "cuda" and cfg.topk and cfg.track_tokens else None
        if cfg.topk:
            state.topk_compactor = triton_topk.topk_compact
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                triton_topk.topk_update(x2d, rowkey, sample_ids, positions, state)
        if median_cuda:
            from . import cuda_median

            row_median = state.scratch("row_median", n_rows, torch.float32)
            # candidates: rows that may pass, or tie the running max |x| (the fused pass included x2d)
            cuda_median.row_median(x2d, row_absmax, row_median, minmax=state.minmax if candidates else None,
                                   params=state.sun_params if candidates else None)
            triton_tokens.tokens_from_rows(row_absmax, row_argmax, row_median, sample_ids, positions, state)
        elif cfg.track_tokens:
            triton_tokens.tokens_update(x2d, mask_u8, sample_ids, positions, state,
                                        row_absmax if candidates else None)
        if side is not None:
            _join(dev)
