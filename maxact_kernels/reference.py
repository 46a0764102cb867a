"""Float64 PyTorch twin of the fused update: the ground truth of the tests and the CPU path of real scans.

Same state layout (:mod:`maxact_kernels._state`), same semantics, plain vectorised torch: sums in
float64, the histogram by ``bincount`` (``index_add_`` on CUDA, which needs no sync), token medians by
``torch.nanmedian``, top-k by ``torch.topk`` over element keys of the same total order as the Triton
path. Every statistic is computed from the float32 bit pattern of ``x`` (|x| = bits & 0x7FFFFFFF), so
min/max/abs_max/counts/histogram/top-k/channel and sample maxima are bit-identical to the kernels.

Memory: a few float32/float64/int64 temporaries of the update's size; no per-row Python loop, no
``.item()``; on CUDA the only host syncs are none (boolean indexing is used on the CPU only).
"""

from __future__ import annotations

import torch

from ._state import FLOAT32_TINY, INT64_MAX, REC_PEAK, REC_RATIO, StatsState, merge_records
from .hist_math import HIST_BINS

_ABS_MASK = 0x7FFFFFFF
_INF_BITS = 0x7F800000
_NEG_INF_BITS = -0x800000  # int32 view of 0xFF800000
_NEG_ZERO_BITS = -(2**31)  # int32 view of 0x80000000
_LOW32 = 0xFFFFFFFF


@torch.no_grad()
def update(
    state: StatsState,
    x2d: torch.Tensor,
    row_mask: torch.Tensor | None,
    sample_ids: torch.Tensor | None,
    positions: torch.Tensor | None,
) -> None:
    """Fold the rows of ``x2d`` ([R, C], bf16/fp16/fp32) into ``state``.

    ``row_mask`` bool [R] (True = real token) or None; ``sample_ids`` / ``positions`` int64 [R] or None
    (defaults: sample -1, position = row index within this update). Rows are expected in
    (sample, position) order: within one update, ties of top-k and token records break by row index.
    """
    n_rows, n_cols = x2d.shape
    if n_rows == 0:
        return
    cfg = state.config
    bits = x2d.to(torch.float32).view(torch.int32)
    bits = torch.where(bits == _NEG_ZERO_BITS, 0, bits)  # -0.0 is 0
    xf = bits.view(torch.float32)
    abits = bits & _ABS_MASK
    present = row_mask[:, None] if row_mask is not None else torch.ones((), dtype=torch.bool, device=x2d.device)
    ok = (abits <= _INF_BITS) & present  # present and not NaN

    _basic(state, xf, bits, abits, ok, present)
    _histogram(state, abits, ok)
    if cfg.track_channels:
        cmax = state.channel_abs_max.view(torch.int32)
        torch.maximum(cmax, torch.where(ok, abits, 0).amax(dim=0), out=cmax)
    if cfg.num_samples or cfg.track_tokens:
        masked_abits = torch.where(ok, abits, -1)
        row_bits = masked_abits.amax(dim=1)  # int32 [R]; -1: masked row or no non-NaN value
        if cfg.num_samples:
            _samples(state, row_bits, sample_ids)
        if cfg.track_tokens:
            _tokens(state, xf, ok, masked_abits, row_bits, sample_ids, positions)
    if cfg.topk:
        _topk(state, xf, abits, ok, sample_ids, positions)


def _basic(state, xf, bits, abits, ok, present) -> None:
    """counts, float64 sums over finite values, min/max over non-NaN values."""
    is_inf = abits == _INF_BITS
    finite = ok & ~is_inf
    counts = torch.stack(
        [
            ok.sum(),
            ((abits > _INF_BITS) & present).sum(),
            ((bits == _INF_BITS) & present).sum(),
            ((bits == _NEG_INF_BITS) & present).sum(),
        ]
    )
    state.counts += counts
    x64 = torch.where(finite, xf.to(torch.float64), 0.0)
    state.sums += torch.stack([x64.sum(), (x64 * x64).sum(), x64.abs().sum()])
    lo = torch.where(ok, xf, float("inf")).amin()
    hi = torch.where(ok, xf, float("-inf")).amax()
    state.minmax.copy_(torch.stack([torch.minimum(state.minmax[0], lo), torch.maximum(state.minmax[1], hi)]))


def _histogram(state, abits, ok) -> None:
    keys = abits >> 16
    if keys.is_cuda:
        # index_add_ with 0/1 weights: no data-dependent output size, hence no host sync.
        state.abs_hist.index_add_(0, keys.reshape(-1).to(torch.int64), ok.expand_as(keys).reshape(-1).to(torch.int64))
    else:
        state.abs_hist += torch.bincount(keys[ok.expand_as(keys)], minlength=HIST_BINS)


def _samples(state, row_bits, sample_ids) -> None:
    """Per-sample max |x|; rows with a non-NaN value whose id is outside [0, N) are counted instead."""
    n = state.config.num_samples
    rows = row_bits.numel()
    sid = sample_ids if sample_ids is not None else torch.full((rows,), -1, dtype=torch.int64, device=row_bits.device)
    in_range = (sid >= 0) & (sid < n)
    state.sample_oor += ((row_bits >= 0) & ~in_range).sum()
    smax = state.sample_abs_max.view(torch.int32)
    smax.scatter_reduce_(0, torch.where(in_range, sid, 0), torch.where(in_range, row_bits.clamp_min(0), 0), "amax")


def _best_row(key: torch.Tensor, sample: torch.Tensor, position: torch.Tensor, scope: torch.Tensor):
    """Index of the best row in ``scope`` under (key desc, sample asc, position asc, row asc), and whether any."""
    k = torch.where(scope, key, float("-inf"))
    tie = scope & (k == k.amax())
    s = torch.where(tie, sample, INT64_MAX).amin()
    tie = tie & (sample == s)
    p = torch.where(tie, position, INT64_MAX).amin()
    tie = tie & (position == p)
    return torch.argmax(tie.to(torch.int32)), scope.any()


def token_ratio(tmax64: torch.Tensor, tmed64: torch.Tensor) -> torch.Tensor:
    """max / max(median, float32 tiny) in float64; a token whose median is inf (so is its max) has ratio 1."""
    ratio = tmax64 / torch.clamp_min(tmed64, FLOAT32_TINY)
    return torch.where(torch.isinf(tmax64) & torch.isinf(tmed64), 1.0, ratio)


def _tokens(state, xf, ok, masked_abits, row_bits, sample_ids, positions) -> None:
    """Per token max and lower median |x|, Sun et al. criterion, max-ratio and peak records."""
    cfg = state.config
    rows = row_bits.numel()
    dev = xf.device
    valid = row_bits >= 0
    tmax = torch.where(valid, row_bits, 0).view(torch.float32)
    argmax = torch.argmax(masked_abits, dim=1)  # first channel attaining the max
    tmed = torch.nanmedian(torch.where(ok, xf.abs(), float("nan")), dim=1).values
    tmax64 = tmax.to(torch.float64)
    tmed64 = torch.where(valid, tmed, 0.0).to(torch.float64)
    t_val, t_ratio = cfg.sun_abs_threshold, cfg.sun_ratio_threshold
    ratio = token_ratio(tmax64, tmed64)
    passed = valid & (tmax64 > t_val) & (tmax64 > t_ratio * tmed64)
    if cfg.token_median == "candidates":
        # Only tokens that can pass (max > t_val) and this update's peak rows get a median; the
        # max-ratio record looks at the former only, so that it does not depend on how updates are cut.
        umax = torch.where(valid, tmax, -1.0).amax()
        ratio_scope = valid & (tmax64 > t_val)
        peak_scope = ratio_scope | (valid & (tmax == umax))
    else:
        ratio_scope = peak_scope = valid
        r = torch.where(valid, ratio, 0.0)
        state.ratio_sums += torch.stack([r.sum(), (r * r).sum()])
    state.tok_counts += torch.stack([valid.sum(), passed.sum()])

    sid = sample_ids if sample_ids is not None else torch.full((rows,), -1, dtype=torch.int64, device=dev)
    pos = positions if positions is not None else torch.arange(rows, dtype=torch.int64, device=dev)
    new_f, new_i = [], []
    for key, scope in ((ratio, ratio_scope), (tmax64, peak_scope)):  # REC_RATIO, REC_PEAK
        r, has = _best_row(key, sid, pos, scope)
        r = r.view(1)  # index_select, not t[r]: indexing by a 0-d tensor would sync on CUDA
        new_f.append(torch.where(has, torch.cat([t.index_select(0, r) for t in (key, tmax64, tmed64)]), -1.0))
        new_i.append(torch.where(has, torch.cat([t.index_select(0, r) for t in (sid, pos, argmax)]), INT64_MAX))
    assert (REC_RATIO, REC_PEAK) == (0, 1)
    merge_records(state.tok_rec_f, state.tok_rec_i, torch.stack(new_f), torch.stack(new_i))


def _topk(state, xf, abits, ok, sample_ids, positions) -> None:
    """Append this update's K best elements under (abs desc, row asc, channel asc) to the pending buffer."""
    k = state.config.topk
    n_rows, n_cols = xf.shape
    dev = xf.device
    ok = ok.expand_as(abits)
    rows_per_chunk = max(1, (2**32 - 1) // n_cols)  # element keys hold a 32-bit flat index
    for start in range(0, n_rows, rows_per_chunk):
        stop = min(n_rows, start + rows_per_chunk)
        n = (stop - start) * n_cols
        flat = torch.arange(n, dtype=torch.int64, device=dev).view(stop - start, n_cols)
        keys = torch.where(ok[start:stop], (abits[start:stop].to(torch.int64) << 32) | (_LOW32 - flat), -1)
        top = torch.topk(keys.reshape(-1), min(k, n)).values
        valid = top >= 0
        local = torch.where(valid, _LOW32 - (top & _LOW32), 0)
        row = start + local // n_cols
        col = local % n_cols
        abs_ = torch.where(valid, (top >> 32).to(torch.int32).view(torch.float32), -1.0)
        value = xf.reshape(-1)[row * n_cols + col]
        sid = sample_ids[row] if sample_ids is not None else torch.full_like(row, -1)
        pos = positions[row] if positions is not None else row
        index = torch.where(valid[:, None], torch.stack([sid, pos, col], dim=1), INT64_MAX)
        off = state.topk_reserve(top.numel())
        end = off + top.numel()
        state.topk_abs[off:end] = abs_
        state.topk_value[off:end] = torch.where(valid, value, 0.0)
        state.topk_index[off:end] = index
