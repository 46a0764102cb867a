"""Triton: the K largest |x| of an update, appended to the state's pending top-k buffer; and the
compaction of that buffer. Three small launches per update, no torch sort / topk (whose multi-kernel
radix selects cost more host time than the whole rest of an update), no host sync.

Total order inside an update: (|x| desc, row asc, channel asc). Row keys ``(bits(row max) << 32) |
(0xFFFFFFFF - row)`` (made from the rows pass's row maxima) order rows by (max desc, row asc), and the K largest
elements always lie in the K rows with the largest row keys (an element outside them is beaten by each
of those rows' maxima). So:

1. ``_topk_rows_kernel``: each program makes the keys of a block of rows and folds them into its local top K.
2. ``_topk_elems_kernel``, program (i, cb): takes the top K row keys of all partials, the i-th of them
   (in any fixed order), its rank r among the picked rows by row index, and folds the element keys
   ``(bits(|x|) << 32) | (0xFFFFFFFF - (r * C + c))`` of channel block cb into a local top K (r * C + c
   < K * C < 2**32 whatever the number of rows).
3. ``_topk_merge_kernel`` (one program): folds all element partials into the top K and writes
   (|x|, signed value, sample, position, channel) to the pending slots (abs -1 for empty ones).

Kernels 1 and 2 first drop the keys below the least |x| held in pending slots 0 .. K - 1 (see
``_threshold_key``): after a site's first updates almost every row and element falls below it, and each
fold takes only as many steps as keys that enter, so a steady-state update costs a few steps, not K per
program. The first update of a state (empty slots) filters nothing.

Keys are unique (they carry an index), so "remove the maximum" removes exactly one key. Bytes: reads
the R row maxima and K rows of x; writes a few KiB. ``_topk_compact_kernel`` keeps the first K pending
entries under (abs desc, sample asc, position asc, channel asc, slot asc), like the torch path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._state import INT64_MAX
from .triton_bits import INTERPRETED, ceil_div, load_f32_bits, reduce_max, reduce_min, reduce_sum  # noqa: F401

_I64_MAX = tl.constexpr(INT64_MAX)
CPU_BLOCK_C = 64
CPU_ROW_BLOCK = 64
# One warp per program: each of the K fold steps is a few reductions, which inside one warp need no
# shared memory or barrier; more, smaller programs instead (scripts/profile_update.py: 29 -> see PERF_NOTES).
GPU_BLOCK_C = 1024
GPU_ROW_BLOCK = 1024
CAND_BLOCK = 4096  # partial candidates folded per step


@triton.jit
def _fold(best, keys, K, KB: tl.constexpr):
    """Fold the K largest of ``keys`` (int64, unique except -1) into ``best`` (int64[KB]: slots < K hold the
    running top K unordered, -1 = empty; slots >= K hold INT64_MAX and are never replaced).

    Takes keys largest first while the largest left beats the least kept: at most K steps (after K, the
    kept ones are the K taken, each above every key left), and as many as there are keys that enter, so
    few once the threshold filter (``_threshold_key``) has turned most keys into -1."""
    slots = tl.arange(0, KB)
    m = reduce_max(keys, 0)
    lo = reduce_min(best, 0)
    while m > lo:
        slot = reduce_min(tl.where(best == lo, slots, KB), 0)
        best = tl.where(slots == slot, m, best)
        keys = tl.where(keys == m, -1, keys)
        m = reduce_max(keys, 0)
        lo = reduce_min(best, 0)
    return best


@triton.jit
def _threshold_key(kept_abs_ptr, K, KB: tl.constexpr):
    """A key below which no element can reach the final top K: (bits of the least |x| among pending slots
    0 .. K - 1) << 32, or 0 while any of them is empty (abs -1). Those slots always hold K real candidates
    once filled (the first update's, then each compaction's best), and the final top K is taken over all
    pending candidates, so an element with a smaller |x| is beaten by K of them. Ties are kept (a key with
    the same |x| is >= this), as the order breaks them by sample, position and channel."""
    slots = tl.arange(0, KB)
    kept = tl.load(kept_abs_ptr + slots, mask=slots < K, other=float("inf"))
    lo = reduce_min(kept, 0)
    lo_bits = tl.maximum(lo, 0.0).to(tl.int32, bitcast=True).to(tl.int64)
    return tl.where(lo >= 0, lo_bits << 32, 0)


@triton.jit
def _empty_best(K, KB: tl.constexpr):
    slots = tl.arange(0, KB)
    return tl.where(slots < K, tl.full([KB], -1, dtype=tl.int64), tl.full([KB], _I64_MAX, dtype=tl.int64))


@triton.jit
def _top(keys, K, KB: tl.constexpr):
    """The K largest of ``keys`` (int64, unique except -1) as a fresh ``best`` (layout of ``_empty_best``).
    Keys leave largest first, so the i-th taken goes to slot i: one reduction per step where ``_fold``,
    which must find the least kept slot, takes three (these steps are the latency of every top-k kernel)."""
    slots = tl.arange(0, KB)
    best = _empty_best(K, KB)
    m = reduce_max(keys, 0)
    i = 0
    while (m >= 0) & (i < K):
        best = tl.where(slots == i, m, best)
        keys = tl.where(keys == m, -1, keys)
        m = reduce_max(keys, 0)
        i += 1
    return best


@triton.jit
def _fold_partials(part_ptr, n_parts, K, KB: tl.constexpr, BLOCK: tl.constexpr):
    """Top K of the ``n_parts`` int64 keys at ``part_ptr`` (padding -1): ``_top`` of the first BLOCK,
    folded with the rest (the launches size BLOCK so that there is rarely a rest)."""
    offs = tl.arange(0, BLOCK)
    best = _top(tl.load(part_ptr + offs, mask=offs < n_parts, other=-1), K, KB)
    for b0 in range(BLOCK, n_parts, BLOCK):
        offs = b0 + tl.arange(0, BLOCK)
        keys = tl.load(part_ptr + offs, mask=offs < n_parts, other=-1)
        best = _fold(best, keys, K, KB)
    return best


@triton.jit
def _topk_rows_kernel(row_absmax_ptr, kept_abs_ptr, part_ptr, n_rows, K, KB: tl.constexpr, BLOCK: tl.constexpr):
    """Program p: the top K row keys of row block p into part[p * K ...]; rows without a max (-1: masked
    or all NaN) and rows whose max is below the threshold (no element of theirs can make the top K) count
    as empty."""
    pid = tl.program_id(0)
    thr = _threshold_key(kept_abs_ptr, K, KB)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    amax = tl.load(row_absmax_ptr + offs, mask=offs < n_rows, other=-1.0)
    bits = tl.maximum(amax, 0.0).to(tl.int32, bitcast=True).to(tl.int64)
    keys = tl.where(amax >= 0, (bits << 32) | (0xFFFFFFFF - offs.to(tl.int64)), -1)
    best = _top(tl.where(keys >= thr, keys, -1), K, KB)
    slots = tl.arange(0, KB)
    tl.store(part_ptr + pid * K + slots, best, mask=slots < K)


@triton.jit
def _topk_elems_kernel(
    # pointers
    x_ptr, row_part_ptr, sel_ptr, elem_part_ptr, kept_abs_ptr,
    # strides
    stride_row,
    # sizes
    n_row_parts, n_cols, K,
    # meta-parameters
    KB: tl.constexpr, BLOCK_C: tl.constexpr, CAND_BLOCK: tl.constexpr,
):
    """Program p: the top K element keys of tile (picked row i, channel block cb), p = i * n_cblk + cb, into
    elem_part[p * K ...]. Tiles of empty slots write no keys (steady state: all but the rows that beat the
    threshold)."""
    pid = tl.program_id(0)
    slots = tl.arange(0, KB)
    picked = _fold_partials(row_part_ptr, n_row_parts, K, KB, CAND_BLOCK)
    valid = (slots < K) & (picked >= 0)
    rows = tl.where(valid, 0xFFFFFFFF - (picked & 0xFFFFFFFF), _I64_MAX)
    thr = _threshold_key(kept_abs_ptr, K, KB)
    best = _empty_best(K, KB)
    n_cblk = ceil_div(n_cols, BLOCK_C)
    i = pid // n_cblk
    cb = pid % n_cblk
    row = reduce_min(tl.where(slots == i, rows, _I64_MAX), 0)  # INT64_MAX: no row in this slot
    if row < _I64_MAX:
        rank = reduce_sum((rows < row).to(tl.int64), 0)  # position among the picked rows, by row index
        if cb == 0:
            tl.store(sel_ptr + rank, row)
        cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        ok_c = cols < n_cols
        ab = load_f32_bits(x_ptr + row * stride_row + cols, ok_c) & 0x7FFFFFFF
        ok = ok_c & (ab <= 0x7F800000)
        local = rank * n_cols + cols
        keys = tl.where(ok, (ab.to(tl.int64) << 32) | (0xFFFFFFFF - local), -1)
        best = _fold(best, tl.where(keys >= thr, keys, -1), K, KB)
    tl.store(elem_part_ptr + pid * K + slots, best, mask=slots < K)


@triton.jit
def _topk_merge_kernel(
    # pointers
    x_ptr, elem_part_ptr, sel_ptr, sid_ptr, pos_ptr, out_abs_ptr, out_val_ptr, out_idx_ptr,
    # strides
    stride_row,
    # sizes
    n_parts, n_cols, K, slot0,
    # meta-parameters
    HAS_SIDS: tl.constexpr, HAS_POS: tl.constexpr, KB: tl.constexpr, CAND_BLOCK: tl.constexpr,
):
    """One program: the top K element keys, decoded into pending slots slot0 .. slot0 + K - 1."""
    slots = tl.arange(0, KB)
    best = _fold_partials(elem_part_ptr, n_parts, K, KB, CAND_BLOCK)
    keep = slots < K
    valid = keep & (best >= 0)
    local = tl.where(valid, 0xFFFFFFFF - (best & 0xFFFFFFFF), 0)
    rank = local // n_cols
    col = local % n_cols
    row = tl.load(sel_ptr + rank, mask=valid, other=0)
    ab = (tl.where(valid, best, 0) >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    bits = load_f32_bits(x_ptr + row * stride_row + col, valid)
    value = tl.where(bits == -2147483648, 0, bits).to(tl.float32, bitcast=True)  # -0.0 -> 0.0
    if HAS_SIDS:
        sid = tl.load(sid_ptr + row, mask=valid, other=-1)
    else:
        sid = tl.full([KB], -1, dtype=tl.int64)
    if HAS_POS:
        pos = tl.load(pos_ptr + row, mask=valid, other=0)
    else:
        pos = row
    out = slot0 + slots
    tl.store(out_abs_ptr + out, tl.where(valid, ab, -1.0), mask=keep)
    tl.store(out_val_ptr + out, tl.where(valid, value, 0.0), mask=keep)
    tl.store(out_idx_ptr + out * 3 + 0, tl.where(valid, sid, _I64_MAX), mask=keep)
    tl.store(out_idx_ptr + out * 3 + 1, tl.where(valid, pos, _I64_MAX), mask=keep)
    tl.store(out_idx_ptr + out * 3 + 2, tl.where(valid, col, _I64_MAX), mask=keep)


@triton.jit
def _topk_compact_kernel(abs_ptr, val_ptr, idx_ptr, n, K, BLOCK: tl.constexpr, KB: tl.constexpr):
    """One program: the first K of the n pending entries under (abs desc, sample, position, channel, slot
    asc) to slots 0 .. K - 1 in that order; every other slot emptied (abs -1, indices INT64_MAX)."""
    offs = tl.arange(0, BLOCK)
    inb = offs < n
    ab = tl.load(abs_ptr + offs, mask=inb, other=-2.0)
    val = tl.load(val_ptr + offs, mask=inb, other=0.0)
    sid = tl.load(idx_ptr + offs * 3 + 0, mask=inb, other=_I64_MAX)
    pos = tl.load(idx_ptr + offs * 3 + 1, mask=inb, other=_I64_MAX)
    ch = tl.load(idx_ptr + offs * 3 + 2, mask=inb, other=_I64_MAX)
    slots = tl.arange(0, KB)
    o_ab = tl.full([KB], -1.0, dtype=tl.float32)
    o_val = tl.full([KB], 0.0, dtype=tl.float32)
    o_sid = tl.full([KB], _I64_MAX, dtype=tl.int64)
    o_pos = o_sid
    o_ch = o_sid
    for j in range(K):
        m = reduce_max(ab, 0)
        t = ab == m
        s = reduce_min(tl.where(t, sid, _I64_MAX), 0)
        t = t & (sid == s)
        p = reduce_min(tl.where(t, pos, _I64_MAX), 0)
        t = t & (pos == p)
        c = reduce_min(tl.where(t, ch, _I64_MAX), 0)
        t = t & (ch == c)
        w = reduce_min(tl.where(t, offs, BLOCK), 0)
        pick = (slots == j) & ((m + 0.0 * slots.to(tl.float32)) >= 0)  # m < 0: only empty slots left
        o_ab = tl.where(pick, m, o_ab)
        o_val = tl.where(pick, reduce_sum(tl.where(offs == w, val, 0.0), 0), o_val)
        o_sid = tl.where(pick, s, o_sid)
        o_pos = tl.where(pick, p, o_pos)
        o_ch = tl.where(pick, c, o_ch)
        ab = tl.where(offs == w, -3.0, ab)
    tl.store(abs_ptr + offs, tl.full([BLOCK], -1.0, dtype=tl.float32), mask=inb)
    tl.store(val_ptr + offs, tl.full([BLOCK], 0.0, dtype=tl.float32), mask=inb)
    for f in tl.static_range(3):
        tl.store(idx_ptr + offs * 3 + f, tl.full([BLOCK], _I64_MAX, dtype=tl.int64), mask=inb)
    keep = slots < K
    tl.store(abs_ptr + slots, o_ab, mask=keep)
    tl.store(val_ptr + slots, o_val, mask=keep)
    tl.store(idx_ptr + slots * 3 + 0, o_sid, mask=keep)
    tl.store(idx_ptr + slots * 3 + 1, o_pos, mask=keep)
    tl.store(idx_ptr + slots * 3 + 2, o_ch, mask=keep)


def _warps(device: torch.device, n: int) -> int:
    return 1 if device.type != "cuda" or n <= 1024 else (4 if n <= 4096 else 8)


def topk_update(
    x2d: torch.Tensor,
    row_absmax: torch.Tensor,
    sample_ids: torch.Tensor | None,
    positions: torch.Tensor | None,
    state,
) -> None:
    """Append this update's K best elements to ``state``'s pending top-k buffer (3 launches: one program
    per block of row keys, one per (picked row, channel block) tile, one merge). A single looping program
    per launch, to fit the SMs a fused pass leaves free, measured far slower: 88-148 µs against about 7 µs
    for the elements kernel on the benchmark's activations (docs/PERF_NOTES.md, kernel v13)."""
    n_rows, n_cols = x2d.shape
    k = state.config.topk
    kb = max(16, triton.next_power_of_2(k))
    dev = x2d.device
    gpu = dev.type == "cuda"
    row_block = min(triton.next_power_of_2(n_rows), GPU_ROW_BLOCK if gpu else CPU_ROW_BLOCK)
    n_row_programs = triton.cdiv(n_rows, row_block)
    row_part = state.scratch("topk_row_part", n_row_programs * k, torch.int64)
    _topk_rows_kernel[(n_row_programs,)](row_absmax, state.topk_abs, row_part, n_rows, k, KB=kb, BLOCK=row_block,
                                         num_warps=_warps(dev, row_block))
    block_c = min(max(16, triton.next_power_of_2(n_cols)), GPU_BLOCK_C if gpu else CPU_BLOCK_C)
    n_cblk = triton.cdiv(n_cols, block_c)
    n_elem_programs = k * n_cblk
    sel = state.scratch("topk_sel", k, torch.int64)
    elem_part = state.scratch("topk_elem_part", n_elem_programs * k, torch.int64)
    cand_block = min(CAND_BLOCK, max(16, triton.next_power_of_2(n_row_programs * k)))
    _topk_elems_kernel[(n_elem_programs,)](
        x2d, row_part, sel, elem_part, state.topk_abs,
        x2d.stride(0),
        n_row_programs * k, n_cols, k,
        KB=kb, BLOCK_C=block_c, CAND_BLOCK=cand_block,
        num_warps=_warps(dev, block_c),
    )
    slot0 = state.topk_reserve(k)
    dummy = state.counts
    _topk_merge_kernel[(1,)](
        x2d, elem_part, sel,
        sample_ids if sample_ids is not None else dummy,
        positions if positions is not None else dummy,
        state.topk_abs, state.topk_value, state.topk_index,
        x2d.stride(0),
        n_elem_programs * k, n_cols, k, slot0,
        HAS_SIDS=sample_ids is not None, HAS_POS=positions is not None, KB=kb,
        CAND_BLOCK=min(CAND_BLOCK, max(16, triton.next_power_of_2(n_elem_programs * k))),
        num_warps=1 if not gpu else 4,  # measured: 5.5 us with 4 warps, 7.7 with 1 ([16384, 4096], K = 16)
    )


def topk_compact(state) -> None:
    """Device compaction of the pending buffer (one launch); same result as the torch path in _state."""
    n = state.topk_fill
    k = state.config.topk
    block = max(16, triton.next_power_of_2(max(n, 1)))
    _topk_compact_kernel[(1,)](
        state.topk_abs, state.topk_value, state.topk_index, n, k,
        BLOCK=block, KB=max(16, triton.next_power_of_2(k)),
        num_warps=_warps(state.topk_abs.device, block),
    )
    state.topk_fill = k
