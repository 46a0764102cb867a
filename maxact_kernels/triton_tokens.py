"""Triton: per token max and exact lower median |x| over channels, the Sun et al. criterion, and the
max-ratio / peak token records, all without a host sync.

Per valid row (token) with n non-NaN values: ``tmax = max |x|`` (first channel attaining it),
``tmed`` = the ``(n - 1) // 2``-th smallest |x| (0-based), i.e. the lower median as ``torch.median``.
The median is found by bisection on the integer key ``bits(|x|) >> SHIFT``, which orders |x| like
the floats do and is exact for the input dtype: SHIFT = 16 / 13 / 0 and 15 / 18 / 31 key bits for
bf16 / fp16 / fp32 (their float32 images have that many low zero bits). Each step counts the keys <=
three trial values at once (21-bit fields of one int64, one reduction) and fixes two bits, so the
result is the exact key of an element: ``tmed`` is an element's value, not a bin. NaN and masked lanes
get a sentinel key above every real key.

ratio = tmax / max(tmed, float32 tiny) in float64 (a token whose median is inf has ratio 1); pass =
tmax > t_val and tmax > t_ratio * tmed, compared in float64. ``CANDIDATES``: only rows whose max
(from the rows pass) exceeds t_val or equals this update's max are read and bisected: ``n_tokens`` and
``n_pass`` are unchanged (no other row can pass), the peak record too (the peak is a candidate), and
the max-ratio record is taken over the rows whose max exceeds t_val (so it does not depend on how
the updates are cut).

Records: each lane keeps its best row per record under (key desc, sample asc, position asc, row asc)
with no reduction; each program reduces its lanes once and writes the result to a partials buffer;
``_token_records_kernel`` (one program) folds the partials into
the state's records, ties keeping the earlier record. Bytes: reads the valid rows once when a row fits
one block (``ONE_BLOCK``), otherwise once per bisection step (wide rows); writes a few bytes per program.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._state import FLOAT32_TINY
from .triton_bits import INTERPRETED, ceil_div, load_f32_bits, reduce_max, reduce_min, reduce_sum  # noqa: F401


_I32_MAX = tl.constexpr(2147483647)
_TINY = tl.constexpr(FLOAT32_TINY)
_I64_MAX = tl.constexpr(9223372036854775807)

# dtype -> (SHIFT, NBITS): the float32 image of |x| has SHIFT low zero bits, keys fit in NBITS bits.
_KEY_BITS = {torch.bfloat16: (16, 15), torch.float16: (13, 18), torch.float32: (0, 31)}
CPU_BLOCK_C = 512  # widest row held in one block in the interpreter; tests lower it to cover wide rows
CPU_BLOCK_R = 2
CPU_PROGRAMS = 3
GPU_MAX_ROW_BLOCK = 16384  # rows up to this width stay in registers on the GPU
PARTS_PER_PROGRAM_F = 6  # 2 records x (key, tmax, tmed)
PARTS_PER_PROGRAM_I = 8  # 2 records x (sample, position, channel, row)


@triton.jit
def _row_keys(x_ptr, offs, inb, SHIFT: tl.constexpr):
    """Integer keys bits(|x|) >> SHIFT; NaN and masked lanes get the sentinel (all ones)."""
    ab = load_f32_bits(x_ptr + offs, inb) & 0x7FFFFFFF
    return tl.where(inb & (ab <= 0x7F800000), ab >> SHIFT, 0x7FFFFFFF >> SHIFT)


@triton.jit
def _better(m, s, p, r, bm, bs, bp, br):
    """(m, s, p, r) strictly precedes (bm, bs, bp, br) under (key desc, sample, position, row asc)."""
    return (m > bm) | ((m == bm) & ((s < bs) | ((s == bs) & ((p < bp) | ((p == bp) & (r < br))))))


@triton.jit
def _lane_best(key, scope, sid, pos, rows, tmax, tmed, arg, bk, bs, bp, br, bmax, bmed, barg):
    """Per lane (no reduction): keep the better of the running record and this tile's row."""
    take = scope & _better(key, sid, pos, rows, bk, bs, bp, br)
    return (tl.where(take, key, bk), tl.where(take, sid, bs), tl.where(take, pos, bp), tl.where(take, rows, br),
            tl.where(take, tmax, bmax), tl.where(take, tmed, bmed), tl.where(take, arg, barg))


@triton.jit
def _store_best(pf, pi, bk, bs, bp, br, bmax, bmed, barg):
    """Reduce the per-lane records to the program's best one and store it (key, tmax, tmed | s, p, ch, row)."""
    m = reduce_max(bk, 0)
    tie = bk == m
    s = reduce_min(tl.where(tie, bs, _I64_MAX), 0)
    tie = tie & (bs == s)
    p = reduce_min(tl.where(tie, bp, _I64_MAX), 0)
    tie = tie & (bp == p)
    r = reduce_min(tl.where(tie, br, _I64_MAX), 0)
    sel = tie & (br == r)
    tl.store(pf + 0, m)
    tl.store(pf + 1, reduce_max(tl.where(sel, bmax, -1.0), 0).to(tl.float64))
    tl.store(pf + 2, reduce_max(tl.where(sel, bmed, -1.0), 0).to(tl.float64))
    tl.store(pi + 0, s)
    tl.store(pi + 1, p)
    tl.store(pi + 2, reduce_max(tl.where(sel, barg, -1), 0).to(tl.int64))
    tl.store(pi + 3, r)


@triton.jit
def _empty_records(BLOCK: tl.constexpr):
    """Per-lane running records (key, sample, position, row, tmax, tmed, arg), all empty."""
    k = tl.full([BLOCK], -1.0, dtype=tl.float64)
    s = tl.full([BLOCK], _I64_MAX, dtype=tl.int64)
    x = tl.full([BLOCK], -1.0, dtype=tl.float32)
    a = tl.full([BLOCK], -1, dtype=tl.int32)
    return k, s, s, s, x, x, a


@triton.jit
def _fold_tokens(valid, tmax, tmed, arg, both_inf, rows, row_in, sid_ptr, pos_ptr, t_val, t_ratio,
                 n_pass, r_sum, r_sq, k0, s0, p0, r0, x0, m0, a0, k1, s1, p1, r1, x1, m1, a1,
                 HAS_SIDS: tl.constexpr, HAS_POS: tl.constexpr, CANDIDATES: tl.constexpr):
    """Fold a tile of tokens (``valid``: has a max and a median) into the criterion count, the ratio sums
    and the two per-lane records (0 = max ratio, 1 = peak)."""
    tmax64 = tmax.to(tl.float64)
    tmed64 = tmed.to(tl.float64)
    ratio = tl.where(both_inf, 1.0, tmax64) / tl.where(both_inf, 1.0, tl.maximum(tmed64, _TINY))
    n_pass += (valid & (tmax64 > t_val) & (tmax64 > t_ratio * tmed64)).to(tl.int32)
    if not CANDIDATES:
        r_sum += tl.where(valid, ratio, 0.0)
        r_sq += tl.where(valid, ratio * ratio, 0.0)
    if HAS_SIDS:
        sid = tl.load(sid_ptr + rows, mask=row_in, other=-1)
    else:
        sid = rows.to(tl.int64) * 0 - 1  # (tl.zeros_like is itself a jit function the interpreter may not patch)
    if HAS_POS:
        pos = tl.load(pos_ptr + rows, mask=row_in, other=0)
    else:
        pos = rows.to(tl.int64)
    if CANDIDATES:
        ratio_scope = valid & (tmax64 > t_val)  # not the peak rows: keeps merges exact
    else:
        ratio_scope = valid
    rows64 = rows.to(tl.int64)
    k0, s0, p0, r0, x0, m0, a0 = _lane_best(ratio, ratio_scope, sid, pos, rows64, tmax, tmed, arg,
                                            k0, s0, p0, r0, x0, m0, a0)
    k1, s1, p1, r1, x1, m1, a1 = _lane_best(tmax64, valid, sid, pos, rows64, tmax, tmed, arg,
                                            k1, s1, p1, r1, x1, m1, a1)
    return n_pass, r_sum, r_sq, k0, s0, p0, r0, x0, m0, a0, k1, s1, p1, r1, x1, m1, a1


@triton.jit
def _finish_tokens(tok_counts_ptr, ratio_sums_ptr, part_f_ptr, part_i_ptr, pid, n_tok, n_pass, r_sum, r_sq,
                   k0, s0, p0, r0, x0, m0, a0, k1, s1, p1, r1, x1, m1, a1, CANDIDATES: tl.constexpr):
    """A program's counts and sums into the state (relaxed: nothing in the launch reads them back, and the
    next kernel is ordered by the stream), its two records into the partials buffer."""
    tl.atomic_add(tok_counts_ptr + 0, reduce_sum(n_tok, 0).to(tl.int64), sem="relaxed")
    tl.atomic_add(tok_counts_ptr + 1, reduce_sum(n_pass, 0).to(tl.int64), sem="relaxed")
    if not CANDIDATES:
        tl.atomic_add(ratio_sums_ptr + 0, reduce_sum(r_sum, 0), sem="relaxed")
        tl.atomic_add(ratio_sums_ptr + 1, reduce_sum(r_sq, 0), sem="relaxed")
    _store_best(part_f_ptr + pid * 6, part_i_ptr + pid * 8, k0, s0, p0, r0, x0, m0, a0)
    _store_best(part_f_ptr + pid * 6 + 3, part_i_ptr + pid * 8 + 4, k1, s1, p1, r1, x1, m1, a1)


@triton.jit
def _count_le3(x_ptr, row_off, work, cols0, n_cols, t1, t2, t3, ONE_BLOCK: tl.constexpr, keys,
               SHIFT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per row, the counts of keys <= t1, <= t2, <= t3, packed in 21-bit fields of one int64 (one
    reduction for two bits of the bisection)."""
    if ONE_BLOCK:
        packed = ((keys <= t1[:, None]).to(tl.int64) + ((keys <= t2[:, None]).to(tl.int64) << 21)
                  + ((keys <= t3[:, None]).to(tl.int64) << 42))
        total = reduce_sum(packed, 1)
    else:
        total = tl.full([BLOCK_R], 0, dtype=tl.int64)
        for c0 in range(0, n_cols, BLOCK_C):
            cols = c0 + cols0
            inb = work[:, None] & (cols < n_cols)[None, :]
            k = _row_keys(x_ptr, row_off + cols[None, :], inb, SHIFT)
            packed = ((k <= t1[:, None]).to(tl.int64) + ((k <= t2[:, None]).to(tl.int64) << 21)
                      + ((k <= t3[:, None]).to(tl.int64) << 42))
            total += reduce_sum(packed, 1)
    return total


@triton.jit
def _tokens_kernel(
    # pointers
    x_ptr, mask_ptr, sid_ptr, pos_ptr, row_absmax_ptr, umax_ptr, params_ptr,
    tok_counts_ptr, ratio_sums_ptr, part_f_ptr, part_i_ptr,
    # strides
    stride_row,
    # sizes
    n_rows, n_cols,
    # meta-parameters
    HAS_MASK: tl.constexpr, HAS_SIDS: tl.constexpr, HAS_POS: tl.constexpr, CANDIDATES: tl.constexpr,
    ONE_BLOCK: tl.constexpr, SHIFT: tl.constexpr, NBITS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per token max / lower median |x| and the criterion (see the module docstring)."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    t_val = tl.load(params_ptr)
    t_ratio = tl.load(params_ptr + 1)
    inf_key = 0x7F800000 >> SHIFT
    sentinel = 0x7FFFFFFF >> SHIFT
    cols0 = tl.arange(0, BLOCK_C)
    mask21 = (1 << 21) - 1

    n_tok = tl.full([BLOCK_R], 0, dtype=tl.int32)
    n_pass = tl.full([BLOCK_R], 0, dtype=tl.int32)
    r_sum = tl.full([BLOCK_R], 0, dtype=tl.float64)
    r_sq = tl.full([BLOCK_R], 0, dtype=tl.float64)
    # per-lane running records (reduced once at the end): 0 = max ratio, 1 = peak
    k0, s0, p0, r0, x0, m0, a0 = _empty_records(BLOCK_R)
    k1, s1, p1, r1, x1, m1, a1 = _empty_records(BLOCK_R)
    if CANDIDATES:
        umax = tl.load(umax_ptr)

    for rb in range(pid, ceil_div(n_rows, BLOCK_R), n_prog):
        rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
        row_in = rows < n_rows
        if HAS_MASK:
            row_ok = row_in & (tl.load(mask_ptr + rows, mask=row_in, other=0) != 0)
        else:
            row_ok = row_in
        if CANDIDATES:
            ramax = tl.load(row_absmax_ptr + rows, mask=row_in, other=-1.0)
            has_value = row_ok & (ramax >= 0)
            n_tok += has_value.to(tl.int32)
            work = has_value & ((ramax.to(tl.float64) > t_val) | (ramax == umax))
        else:
            work = row_ok
        # skip tiles without work (only possible with candidates or a mask)
        if CANDIDATES or HAS_MASK:
            any_work = reduce_max(work.to(tl.int32), 0) > 0
        else:
            any_work = True
        if any_work:
            row_off = rows.to(tl.int64)[:, None] * stride_row
            if ONE_BLOCK:
                inb = work[:, None] & (cols0 < n_cols)[None, :]
                keys = _row_keys(x_ptr, row_off + cols0[None, :], inb, SHIFT)
                real = keys != sentinel
                n = reduce_sum(real.to(tl.int32), 1)
                kmax = reduce_max(tl.where(real, keys, -1), 1)
                arg = reduce_min(tl.where(real & (keys == kmax[:, None]), cols0[None, :], _I32_MAX), 1)
            else:
                keys = tl.full([BLOCK_R, BLOCK_C], 0, dtype=tl.int32)  # unused: rows are re-read per step
                n = tl.full([BLOCK_R], 0, dtype=tl.int32)
                kmax = tl.full([BLOCK_R], -1, dtype=tl.int32)
                arg = tl.full([BLOCK_R], _I32_MAX, dtype=tl.int32)
                for c0 in range(0, n_cols, BLOCK_C):
                    cols = c0 + cols0
                    inb = work[:, None] & (cols < n_cols)[None, :]
                    k = _row_keys(x_ptr, row_off + cols[None, :], inb, SHIFT)
                    real = k != sentinel
                    n += reduce_sum(real.to(tl.int32), 1)
                    bmax = reduce_max(tl.where(real, k, -1), 1)
                    barg = reduce_min(tl.where(real & (k == bmax[:, None]), cols[None, :], _I32_MAX), 1)
                    arg = tl.where(bmax > kmax, barg, arg)  # strict: the first block keeps a tie
                    kmax = tl.maximum(kmax, bmax)
            kth = tl.where(n > 0, (n - 1) // 2, 0)
            # Bisection from the top bit for the smallest key with more than kth keys <= it: one bit
            # first if NBITS is odd, then two bits per step (counts for three thresholds at once).
            prefix = tl.full([BLOCK_R], 0, dtype=tl.int32)
            for i in tl.static_range(NBITS % 2):
                bit = NBITS - 1
                t = prefix | ((1 << bit) - 1)
                cnt = _count_le3(x_ptr, row_off, work, cols0, n_cols, t, t, t, ONE_BLOCK, keys, SHIFT, BLOCK_R,
                                 BLOCK_C)
                prefix = tl.where((cnt & mask21) > kth, prefix, prefix | (1 << bit))
            for i in tl.static_range(NBITS // 2):
                b = NBITS - (NBITS % 2) - 2 * i - 2
                t1 = prefix | ((1 << b) - 1)
                t2 = prefix | ((2 << b) - 1)
                t3 = prefix | ((3 << b) - 1)
                cnt = _count_le3(x_ptr, row_off, work, cols0, n_cols, t1, t2, t3, ONE_BLOCK, keys, SHIFT, BLOCK_R,
                                 BLOCK_C)
                digit = (((cnt & mask21) <= kth).to(tl.int32) + (((cnt >> 21) & mask21) <= kth).to(tl.int32)
                         + ((cnt >> 42) <= kth).to(tl.int32))
                prefix = prefix | (digit << b)

            valid = work & (n > 0)
            if not CANDIDATES:
                n_tok += valid.to(tl.int32)
            tmax = (tl.maximum(kmax, 0) << SHIFT).to(tl.float32, bitcast=True)
            tmed = (prefix << SHIFT).to(tl.float32, bitcast=True)
            both_inf = (kmax == inf_key) & (prefix == inf_key)  # inf / inf: ratio 1 by definition
            (n_pass, r_sum, r_sq, k0, s0, p0, r0, x0, m0, a0, k1, s1, p1, r1, x1, m1, a1) = _fold_tokens(
                valid, tmax, tmed, arg, both_inf, rows, row_in, sid_ptr, pos_ptr, t_val, t_ratio,
                n_pass, r_sum, r_sq, k0, s0, p0, r0, x0, m0, a0, k1, s1, p1, r1, x1, m1, a1,
                HAS_SIDS, HAS_POS, CANDIDATES)

    _finish_tokens(tok_counts_ptr, ratio_sums_ptr, part_f_ptr, part_i_ptr, pid, n_tok, n_pass, r_sum, r_sq,
                   k0, s0, p0, r0, x0, m0, a0, k1, s1, p1, r1, x1, m1, a1, CANDIDATES)


@triton.jit
def _tokens_rows_kernel(
    row_absmax_ptr, row_med_ptr, sid_ptr, pos_ptr, params_ptr,
    tok_counts_ptr, ratio_sums_ptr, part_f_ptr, part_i_ptr, list_ptr, list_n_ptr,
    rec_f_ptr, rec_i_ptr, x_ptr, stride_row, n_cols,
    n_rows,
    HAS_SIDS: tl.constexpr, HAS_POS: tl.constexpr, CANDIDATES: tl.constexpr, LIST: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The criterion, counts and records from per-row max and median computed elsewhere (the fused CUDA
    pass and ``cuda_median``): ``row_absmax`` -1 = masked or no non-NaN value, ``row_med`` -1 = no median
    taken (candidates). Same results as ``_tokens_kernel``, reading a few bytes per row, except the records'
    channel: left -1 here, found by ``_token_records_kernel`` (``FIND_CHANNEL``) in the winning rows alone.
    ``LIST``: only the rows ``list[0 .. *list_n)`` (from ``cuda_median``'s selection, which counted the
    tokens), in one program, which then folds its records into the state's
    itself (``_fold_records``: no second launch on the side stream)."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    t_val = tl.load(params_ptr)
    t_ratio = tl.load(params_ptr + 1)
    n_tok = tl.full([BLOCK], 0, dtype=tl.int32)
    n_pass = tl.full([BLOCK], 0, dtype=tl.int32)
    r_sum = tl.full([BLOCK], 0, dtype=tl.float64)
    r_sq = tl.full([BLOCK], 0, dtype=tl.float64)
    k0, s0, p0, r0, x0, m0, a0 = _empty_records(BLOCK)
    k1, s1, p1, r1, x1, m1, a1 = _empty_records(BLOCK)
    if LIST:
        n_items = tl.load(list_n_ptr)
    else:
        n_items = n_rows
    for rb in range(pid, ceil_div(n_items, BLOCK), n_prog):
        items = rb * BLOCK + tl.arange(0, BLOCK)
        row_in = items < n_items
        if LIST:
            rows = tl.load(list_ptr + items, mask=row_in, other=0)
        else:
            rows = items
        tmax = tl.load(row_absmax_ptr + rows, mask=row_in, other=-1.0)
        tmed = tl.load(row_med_ptr + rows, mask=row_in, other=-1.0)
        arg = (rows * 0 - 1).to(tl.int32)
        if not LIST:
            n_tok += (tmax >= 0).to(tl.int32)
        valid = (tmax >= 0) & (tmed >= 0)
        both_inf = (tmax == float("inf")) & (tmed == float("inf"))  # inf / inf: ratio 1 by definition
        (n_pass, r_sum, r_sq, k0, s0, p0, r0, x0, m0, a0, k1, s1, p1, r1, x1, m1, a1) = _fold_tokens(
            valid, tmax, tmed, arg, both_inf, rows, row_in, sid_ptr, pos_ptr, t_val, t_ratio,
            n_pass, r_sum, r_sq, k0, s0, p0, r0, x0, m0, a0, k1, s1, p1, r1, x1, m1, a1,
            HAS_SIDS, HAS_POS, CANDIDATES)
    _finish_tokens(tok_counts_ptr, ratio_sums_ptr, part_f_ptr, part_i_ptr, pid, n_tok, n_pass, r_sum, r_sq,
                   k0, s0, p0, r0, x0, m0, a0, k1, s1, p1, r1, x1, m1, a1, CANDIDATES)
    if LIST:
        tl.debug_barrier()   # the partials just written, read back by the whole program
        _fold_records(part_f_ptr, part_i_ptr, rec_f_ptr, rec_i_ptr, x_ptr, stride_row, n_cols, 1,
                      16, True, BLOCK_C)


@triton.jit
def _token_records_kernel(part_f_ptr, part_i_ptr, rec_f_ptr, rec_i_ptr, x_ptr, stride_row, n_cols, n_parts,
                          BLOCK_P: tl.constexpr, FIND_CHANNEL: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program: ``_fold_records``."""
    _fold_records(part_f_ptr, part_i_ptr, rec_f_ptr, rec_i_ptr, x_ptr, stride_row, n_cols, n_parts,
                  BLOCK_P, FIND_CHANNEL, BLOCK_C)


@triton.jit
def _fold_records(part_f_ptr, part_i_ptr, rec_f_ptr, rec_i_ptr, x_ptr, stride_row, n_cols, n_parts,
                  BLOCK_P: tl.constexpr, FIND_CHANNEL: tl.constexpr, BLOCK_C: tl.constexpr):
    """Fold the per-program partial records into the state's two records (ties keep the state's record,
    which came from an earlier update). ``FIND_CHANNEL``: the partials carry no channel, and a record taken
    here reads its row of x for the first channel attaining the row's max |x| (one row per record that
    changes, rather than every row's channel in the pass over x)."""
    p = tl.arange(0, BLOCK_P)
    pin = p < n_parts
    for rec in tl.static_range(2):
        key = tl.load(part_f_ptr + p * 6 + rec * 3, mask=pin, other=-1.0)
        sid = tl.load(part_i_ptr + p * 8 + rec * 4 + 0, mask=pin, other=_I64_MAX)
        pos = tl.load(part_i_ptr + p * 8 + rec * 4 + 1, mask=pin, other=_I64_MAX)
        row = tl.load(part_i_ptr + p * 8 + rec * 4 + 3, mask=pin, other=_I64_MAX)
        m = reduce_max(key, axis=0)
        tie = pin & (key == m)
        s = reduce_min(tl.where(tie, sid, _I64_MAX), axis=0)
        tie = tie & (sid == s)
        q = reduce_min(tl.where(tie, pos, _I64_MAX), axis=0)
        tie = tie & (pos == q)
        r = reduce_min(tl.where(tie, row, _I64_MAX), axis=0)
        sel = tie & (row == r)
        w = reduce_min(tl.where(sel, p, BLOCK_P), axis=0)  # the winning partial
        old_k = tl.load(rec_f_ptr + rec * 3)
        old_s = tl.load(rec_i_ptr + rec * 3 + 0)
        old_p = tl.load(rec_i_ptr + rec * 3 + 1)
        take = (m >= 0) & ((m > old_k) | ((m == old_k) & ((s < old_s) | ((s == old_s) & (q < old_p)))))
        wf = part_f_ptr + w * 6 + rec * 3
        wi = part_i_ptr + w * 8 + rec * 4
        channel = tl.load(wi + 2)
        if FIND_CHANNEL:
            channel = _first_channel(x_ptr, r, stride_row, n_cols, tl.load(wf + 1), take, BLOCK_C)
        for j in tl.static_range(3):
            tl.store(rec_f_ptr + rec * 3 + j, tl.load(wf + j), mask=take)
        for j in tl.static_range(2):
            tl.store(rec_i_ptr + rec * 3 + j, tl.load(wi + j), mask=take)
        tl.store(rec_i_ptr + rec * 3 + 2, channel, mask=take)


@triton.jit
def _first_channel(x_ptr, row, stride_row, n_cols, tmax, take, BLOCK_C: tl.constexpr):
    """The first channel of row ``row`` whose |x| equals ``tmax`` (the row's max |x|, exact in float32);
    reads the row only when ``take``."""
    cols0 = tl.arange(0, BLOCK_C)
    first = row * 0 - 1
    if take:
        first = row * 0 + n_cols
        for c0 in range(0, n_cols, BLOCK_C):
            cols = c0 + cols0
            inb = cols < n_cols
            v = tl.load(x_ptr + row * stride_row + cols, mask=inb, other=0.0).to(tl.float32)
            hit = inb & (tl.abs(v) == tmax)
            first = tl.minimum(first, reduce_min(tl.where(hit, cols, n_cols), 0).to(tl.int64))
    return first


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _tokens_config(n_rows: int, n_cols: int, device: torch.device) -> dict:
    if device.type != "cuda":
        block_c = min(triton.next_power_of_2(n_cols), CPU_BLOCK_C)
        block_r, programs, warps = CPU_BLOCK_R, CPU_PROGRAMS, 1
    else:
        block_c = max(16, min(triton.next_power_of_2(n_cols), GPU_MAX_ROW_BLOCK))
        block_r = max(1, min(2048 // block_c, 16))
        warps = 4 if block_c <= 2048 else (8 if block_c <= 8192 else 16)
        programs = _num_sms(device.index) * max(1, 32 // warps)
    programs = max(1, min(programs, triton.cdiv(n_rows, block_r)))
    return {"block_r": block_r, "block_c": block_c, "programs": programs, "num_warps": warps}


def tokens_update(
    x2d: torch.Tensor,
    row_mask: torch.Tensor | None,
    sample_ids: torch.Tensor | None,
    positions: torch.Tensor | None,
    state,
    row_absmax: torch.Tensor | None,
) -> None:
    """Launch the token kernel and the record epilogue. ``row_absmax`` (float32[R], -1 for invalid
    rows) is required in candidates mode, where it selects the rows to read."""
    n_rows, n_cols = x2d.shape
    cfg = state.config
    candidates = cfg.token_median == "candidates"
    if candidates and row_absmax is None:
        raise ValueError("token_median='candidates' needs the row maxima of the rows pass")
    conf = _tokens_config(n_rows, n_cols, x2d.device)
    shift, nbits = _KEY_BITS[x2d.dtype]
    programs = conf["programs"]
    part_f = state.scratch("tok_part_f", programs * PARTS_PER_PROGRAM_F, torch.float64)
    part_i = state.scratch("tok_part_i", programs * PARTS_PER_PROGRAM_I, torch.int64)
    dummy = state.tok_counts
    umax = torch.amax(row_absmax) if candidates else dummy  # 0-d device tensor: no sync
    _tokens_kernel[(programs,)](
        x2d, row_mask if row_mask is not None else dummy,
        sample_ids if sample_ids is not None else dummy,
        positions if positions is not None else dummy,
        row_absmax if candidates else dummy, umax, state.sun_params,
        state.tok_counts, state.ratio_sums, part_f, part_i,
        x2d.stride(0),
        n_rows, n_cols,
        HAS_MASK=row_mask is not None, HAS_SIDS=sample_ids is not None, HAS_POS=positions is not None,
        CANDIDATES=candidates, ONE_BLOCK=conf["block_c"] >= n_cols, SHIFT=shift, NBITS=nbits,
        BLOCK_R=conf["block_r"], BLOCK_C=conf["block_c"],
        num_warps=conf["num_warps"],
    )
    _token_records_kernel[(1,)](
        part_f, part_i, state.tok_rec_f, state.tok_rec_i, x2d, x2d.stride(0), n_cols, programs,
        BLOCK_P=max(16, triton.next_power_of_2(programs)), FIND_CHANNEL=False, BLOCK_C=16,
        num_warps=1 if x2d.device.type != "cuda" else 4,
    )


ROWS_BLOCK = 256        # rows per program and step of the per-row epilogue (one warp: no barriers)
RECORD_BLOCK_C = 2048   # channels per step when a record's channel is looked up in its row
CPU_ROWS_BLOCK = 16


def tokens_from_rows(
    x2d: torch.Tensor,
    row_absmax: torch.Tensor,
    row_median: torch.Tensor,
    sample_ids: torch.Tensor | None,
    positions: torch.Tensor | None,
    state,
    listed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """The token statistics of one update of ``x2d`` ([R, C], column stride 1) from per-row max |x|
    (float32, -1 = no token) and the lower median |x| (float32, -1 = not computed: only candidates need
    one). ``listed``: (rows, n) from ``cuda_median.row_median(select=...)``, the only rows read (their medians set, the
    tokens counted there), in one program. Of x itself only the rows of records that change are read, for
    the channel of their max."""
    n_rows = row_absmax.numel()
    cfg = state.config
    candidates = cfg.token_median == "candidates"
    block = ROWS_BLOCK if row_absmax.is_cuda else CPU_ROWS_BLOCK
    programs = max(1, min(triton.cdiv(n_rows, block), 2 * _num_sms(row_absmax.device.index)
                          if row_absmax.is_cuda else CPU_PROGRAMS))
    if listed is not None:
        programs = 1
    part_f = state.scratch("tok_part_f", programs * PARTS_PER_PROGRAM_F, torch.float64)
    part_i = state.scratch("tok_part_i", programs * PARTS_PER_PROGRAM_I, torch.int64)
    dummy = state.tok_counts
    n_cols = x2d.shape[1]
    block_c = min(max(16, triton.next_power_of_2(n_cols)), RECORD_BLOCK_C if x2d.is_cuda else CPU_BLOCK_C)
    _tokens_rows_kernel[(programs,)](
        row_absmax, row_median,
        sample_ids if sample_ids is not None else dummy,
        positions if positions is not None else dummy,
        state.sun_params, state.tok_counts, state.ratio_sums, part_f, part_i,
        listed[0] if listed is not None else dummy, listed[1] if listed is not None else dummy,
        state.tok_rec_f, state.tok_rec_i, x2d, x2d.stride(0), n_cols,
        n_rows,
        HAS_SIDS=sample_ids is not None, HAS_POS=positions is not None, CANDIDATES=candidates,
        LIST=listed is not None, BLOCK=block, BLOCK_C=block_c,
        num_warps=1,
    )
    if listed is None:   # several programs: their partials are folded by one more
        _token_records_kernel[(1,)](
            part_f, part_i, state.tok_rec_f, state.tok_rec_i, x2d, x2d.stride(0), n_cols, programs,
            BLOCK_P=max(16, triton.next_power_of_2(programs)), FIND_CHANNEL=True, BLOCK_C=block_c,
            num_warps=1 if not row_absmax.is_cuda or programs <= 256 else 4,
        )
