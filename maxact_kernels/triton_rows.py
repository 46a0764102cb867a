"""Triton: one read of ``x[R, C]`` for the element-wise statistics, then a per-row finalisation.

``_rows_kernel`` runs on a 2-D persistent grid: program ``(p, cb)`` owns channel block ``cb`` and the
row blocks ``p, p + P, p + 2P...``, so per-channel maxima stay in registers for the whole update and
cost one atomic per channel per program, whatever the width. Feature flags are constexpr:

* ``DO_BASIC``: counts (non-NaN, NaN, +inf, -inf), sum / sum of squares / sum of |x| over finite values
  (fp32 partials over at most ``FLUSH`` tiles, fp64 across them and across programs), min / max over
  non-NaN values. Min/max are taken on an order-preserving int32 image of the float bits, so
  subnormals are never flushed; -0.0 counts as 0.
* ``DO_HIST``: the exact 32768-bin |x| histogram by one global atomic per element (bin = float32 bits
  of |x| >> 16, NaN excluded, inf -> 32640). Exact but slow (under 1% of copy bandwidth on an H100):
  the portable path; on NVIDIA GPUs ``cuda_hist.py`` does it in shared memory.
* ``DO_CHANNELS``: max |x| per channel (atomic max on the int32 bits, valid since |x| >= 0).
* ``DO_ROWPACK``: per row ``(bits(max|x|) << 32) | (0xFFFFFFFF - first channel attaining it)`` by an
  int64 atomic max across channel blocks; ``_finalize_rows_kernel`` turns it into ``row_absmax`` and the
  per-sample maxima, and restores it to -1 for the next update.

Bytes: reads R x C x itemsize once (masked rows are not read); writes the small state tensors, plus
8 bytes per row for the packed row maxima when requested.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .triton_bits import INTERPRETED, ceil_div, load_f32_bits, reduce_max, reduce_min, reduce_sum  # noqa: F401


_ABS = tl.constexpr(0x7FFFFFFF)
_INF_BITS = tl.constexpr(0x7F800000)
_I32_MAX = tl.constexpr(2147483647)
_I32_MIN = tl.constexpr(-2147483648)

# Launch shapes. The CPU (interpreter) values are small so that tests cover several programs and
# channel blocks; tests may lower them further.
CPU_BLOCK_C = 64
CPU_BLOCK_R = 4
CPU_PROGRAMS = 3
FLUSH = 16  # tiles per fp32 partial of the sums
MIN_TILES = 8


@triton.jit
def _rows_kernel(
    # pointers
    x_ptr, mask_ptr,
    counts_ptr, sums_ptr, minmax_ptr, hist_ptr, chan_ptr, rowpack_ptr,
    # strides
    stride_row,
    # sizes
    n_rows, n_cols,
    # meta-parameters
    HAS_MASK: tl.constexpr, DO_BASIC: tl.constexpr, DO_HIST: tl.constexpr,
    DO_CHANNELS: tl.constexpr, DO_ROWPACK: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, FLUSH_TILES: tl.constexpr,
):
    """Element statistics of one update (see the module docstring for the semantics)."""
    pid = tl.program_id(0)
    cb = tl.program_id(1)
    n_prog = tl.num_programs(0)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    col_in = cols < n_cols
    n_rblk = ceil_div(n_rows, BLOCK_R)
    my_tiles = ceil_div(n_rblk - pid, n_prog)  # the launcher keeps pid < n_rblk

    # per-lane accumulators, reduced once at the end (sums: every FLUSH_TILES tiles)
    n_ok = tl.full([BLOCK_R, BLOCK_C], 0, dtype=tl.int32)
    n_nan = tl.full([BLOCK_R, BLOCK_C], 0, dtype=tl.int32)
    n_pinf = tl.full([BLOCK_R, BLOCK_C], 0, dtype=tl.int32)
    n_ninf = tl.full([BLOCK_R, BLOCK_C], 0, dtype=tl.int32)
    lo = tl.full([BLOCK_R, BLOCK_C], _I32_MAX, dtype=tl.int32)
    hi = tl.full([BLOCK_R, BLOCK_C], _I32_MIN, dtype=tl.int32)
    ch = tl.full([BLOCK_R, BLOCK_C], 0, dtype=tl.int32)
    s64 = tl.full([1], 0, dtype=tl.float64)
    sq64 = tl.full([1], 0, dtype=tl.float64)
    ab64 = tl.full([1], 0, dtype=tl.float64)

    for t0 in range(0, my_tiles, FLUSH_TILES):
        s = tl.full([BLOCK_R, BLOCK_C], 0, dtype=tl.float32)
        sq = tl.full([BLOCK_R, BLOCK_C], 0, dtype=tl.float32)
        sa = tl.full([BLOCK_R, BLOCK_C], 0, dtype=tl.float32)
        for t in range(t0, tl.minimum(t0 + FLUSH_TILES, my_tiles)):
            rows = (pid + t * n_prog) * BLOCK_R + tl.arange(0, BLOCK_R)
            row_in = rows < n_rows
            if HAS_MASK:
                row_ok = row_in & (tl.load(mask_ptr + rows, mask=row_in, other=0) != 0)
            else:
                row_ok = row_in
            inb = row_ok[:, None] & col_in[None, :]
            offs = rows.to(tl.int64)[:, None] * stride_row + cols[None, :]
            bits = load_f32_bits(x_ptr + offs, inb)
            bits = tl.where(bits == _I32_MIN, 0, bits)  # -0.0 -> 0.0, in integers: no FTZ surprises
            ab = bits & _ABS
            ok = inb & (ab <= _INF_BITS)  # present and not NaN
            if DO_BASIC:
                fin = ok & (ab < _INF_BITS)
                v = tl.where(fin, bits.to(tl.float32, bitcast=True), 0.0)
                s += v
                sq += v * v
                sa += tl.abs(v)
                n_ok += ok.to(tl.int32)
                n_nan += (inb & (ab > _INF_BITS)).to(tl.int32)
                n_pinf += (inb & (bits == _INF_BITS)).to(tl.int32)
                n_ninf += (inb & (ab == _INF_BITS) & (bits < 0)).to(tl.int32)
                # order-preserving int32 image of the float: negatives get their magnitude bits flipped
                ordv = tl.where(bits < 0, bits ^ _ABS, bits)
                lo = tl.minimum(lo, tl.where(ok, ordv, _I32_MAX))
                hi = tl.maximum(hi, tl.where(ok, ordv, _I32_MIN))
            if DO_HIST:
                tl.atomic_add(hist_ptr + (ab >> 16), 1, mask=ok)
            if DO_CHANNELS:
                ch = tl.maximum(ch, tl.where(ok, ab, 0))
            if DO_ROWPACK:
                amax = reduce_max(tl.where(ok, ab, -1), axis=1)
                first = reduce_min(tl.where(ok & (ab == amax[:, None]), cols[None, :], _I32_MAX), axis=1)
                pack = (amax.to(tl.int64) << 32) | (0xFFFFFFFF - first.to(tl.int64))
                tl.atomic_max(rowpack_ptr + rows, pack, mask=row_ok & (amax >= 0))
        if DO_BASIC:
            s64 += reduce_sum(reduce_sum(s, axis=1), axis=0).to(tl.float64)
            sq64 += reduce_sum(reduce_sum(sq, axis=1), axis=0).to(tl.float64)
            ab64 += reduce_sum(reduce_sum(sa, axis=1), axis=0).to(tl.float64)

    if DO_BASIC:
        cnt = reduce_sum(reduce_sum(n_ok, axis=1), axis=0)
        tl.atomic_add(counts_ptr + 0, cnt.to(tl.int64))
        tl.atomic_add(counts_ptr + 1, reduce_sum(reduce_sum(n_nan, axis=1), axis=0).to(tl.int64))
        tl.atomic_add(counts_ptr + 2, reduce_sum(reduce_sum(n_pinf, axis=1), axis=0).to(tl.int64))
        tl.atomic_add(counts_ptr + 3, reduce_sum(reduce_sum(n_ninf, axis=1), axis=0).to(tl.int64))
        one = tl.arange(0, 1)
        tl.atomic_add(sums_ptr + 0 + one, s64)
        tl.atomic_add(sums_ptr + 1 + one, sq64)
        tl.atomic_add(sums_ptr + 2 + one, ab64)
        lo_o = reduce_min(reduce_min(lo, axis=1), axis=0)
        hi_o = reduce_max(reduce_max(hi, axis=1), axis=0)
        lo_f = tl.where(lo_o < 0, lo_o ^ _ABS, lo_o).to(tl.float32, bitcast=True)
        hi_f = tl.where(hi_o < 0, hi_o ^ _ABS, hi_o).to(tl.float32, bitcast=True)
        tl.atomic_min(minmax_ptr + 0, lo_f, mask=cnt > 0)
        tl.atomic_max(minmax_ptr + 1, hi_f, mask=cnt > 0)
    if DO_CHANNELS:
        cmax = reduce_max(ch, axis=0)
        tl.atomic_max(chan_ptr + cols, cmax, mask=col_in & (cmax > 0))


@triton.jit
def _finalize_rows_kernel(
    # pointers
    rowpack_ptr, row_absmax_ptr, sid_ptr, smax_ptr, oor_ptr,
    # sizes
    n_rows, n_samples,
    # meta-parameters
    HAS_SIDS: tl.constexpr, DO_ROWS: tl.constexpr, DO_SAMPLES: tl.constexpr, BLOCK: tl.constexpr,
):
    """Decode the packed row maxima: row_absmax (-1: masked or all NaN); per-sample max |x| by atomic max
    on the int32 bits (one atomic for all rows of the block's first sample); count rows with a
    non-NaN value whose sample id is outside [0, n_samples). Resets the packed buffer to -1."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    oor = tl.full([BLOCK], 0, dtype=tl.int32)
    for blk in range(pid, ceil_div(n_rows, BLOCK), n_prog):
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        row_in = rows < n_rows
        pack = tl.load(rowpack_ptr + rows, mask=row_in, other=-1)
        has = pack >= 0
        amax = (pack >> 32).to(tl.int32)
        if DO_ROWS:
            tl.store(row_absmax_ptr + rows, tl.where(has, amax.to(tl.float32, bitcast=True), -1.0), mask=row_in)
        if DO_SAMPLES:
            if HAS_SIDS:
                sid = tl.load(sid_ptr + rows, mask=row_in, other=-1)
            else:
                sid = tl.full([BLOCK], -1, dtype=tl.int64)
            in_range = (sid >= 0) & (sid < n_samples)
            oor += (has & ~in_range).to(tl.int32)
            do = has & in_range
            # Rows come in sample order: the rows of the block's smallest sample id share one atomic,
            # the others (usually none) take one each.
            s_lo = reduce_min(tl.where(do, sid, 9223372036854775807), axis=0)
            group = do & (sid == s_lo)
            group_max = reduce_max(tl.where(group, amax, -1), axis=0)
            first_row = reduce_min(tl.where(group, rows, _I32_MAX), axis=0)
            val = tl.where(group, group_max, amax)
            act = do & ((sid != s_lo) | (rows == first_row))
            tl.atomic_max(smax_ptr + sid, val, mask=act)
        tl.store(rowpack_ptr + rows, tl.full([BLOCK], -1, dtype=tl.int64), mask=row_in)
    if DO_SAMPLES:
        tl.atomic_add(oor_ptr, reduce_sum(oor, axis=0).to(tl.int64))


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _rows_config(n_rows: int, n_cols: int, itemsize: int, device: torch.device) -> dict:
    """Block sizes, warps and grid of ``_rows_kernel``."""
    if device.type != "cuda":
        block_c = min(triton.next_power_of_2(n_cols), CPU_BLOCK_C)
        block_r = CPU_BLOCK_R
        target, warps = CPU_PROGRAMS, 1
    else:
        # ~4-8K elements per tile, channel blocks of at most 1024 (2 KiB of bf16 per row segment)
        block_c = max(16, min(triton.next_power_of_2(n_cols), 1024))
        block_r = max(1, min(4096 * 2 // itemsize // block_c, 64))
        target, warps = _num_sms(device.index) * 4, 8
    n_cblk = triton.cdiv(n_cols, block_c)
    n_rblk = triton.cdiv(n_rows, block_r)
    # at least MIN_TILES row blocks per program on the GPU: each program ends with one atomic per
    # channel and statistic, which dominate small updates when spread over too many programs
    min_tiles = MIN_TILES if device.type == "cuda" else 1
    programs = max(1, min(triton.cdiv(n_rblk, min_tiles), triton.cdiv(target, n_cblk)))
    return {"block_r": block_r, "block_c": block_c, "grid": (programs, n_cblk), "num_warps": warps}


def rows_update(
    x2d: torch.Tensor,
    row_mask: torch.Tensor | None,
    state,
    *,
    do_basic: bool,
    do_hist: bool,
    do_channels: bool,
    rowpack: torch.Tensor | None,
) -> None:
    """Launch ``_rows_kernel`` on ``x2d`` ([R, C], column stride 1) into ``state``'s tensors.

    ``rowpack`` (int64[R], all -1 on entry) receives the packed row maxima when given.
    """
    n_rows, n_cols = x2d.shape
    assert n_cols == 1 or x2d.stride(1) == 1, "columns must be contiguous"
    if not (do_basic or do_hist or do_channels or rowpack is not None) or n_rows == 0:
        return
    cfg = _rows_config(n_rows, n_cols, x2d.element_size(), x2d.device)
    dummy = state.counts
    chan = state.channel_abs_max.view(torch.int32) if do_channels else dummy
    _rows_kernel[cfg["grid"]](
        x2d, row_mask if row_mask is not None else dummy,
        state.counts, state.sums, state.minmax, state.abs_hist, chan,
        rowpack if rowpack is not None else dummy,
        x2d.stride(0),
        n_rows, n_cols,
        HAS_MASK=row_mask is not None, DO_BASIC=do_basic, DO_HIST=do_hist,
        DO_CHANNELS=do_channels, DO_ROWPACK=rowpack is not None,
        BLOCK_R=cfg["block_r"], BLOCK_C=cfg["block_c"], FLUSH_TILES=FLUSH,
        num_warps=cfg["num_warps"],
    )


def finalize_rows(
    rowpack: torch.Tensor,
    state,
    *,
    row_absmax: torch.Tensor | None,
    sample_ids: torch.Tensor | None,
) -> None:
    """Launch ``_finalize_rows_kernel``: the row maxima when ``row_absmax`` is given, per-sample maxima when
    the state tracks samples. Reads 8 bytes per row (+8 for sample ids), writes 12 per row."""
    n_rows = rowpack.numel()
    do_rows = row_absmax is not None
    do_samples = bool(state.config.num_samples)
    if n_rows == 0 or not (do_rows or do_samples):
        return
    if rowpack.device.type == "cuda":
        block, target, warps = 1024, _num_sms(rowpack.device.index) * 2, 4
    else:
        block, target, warps = 16, CPU_PROGRAMS, 1
    grid = (max(1, min(triton.cdiv(n_rows, block), target)),)
    dummy = state.counts
    _finalize_rows_kernel[grid](
        rowpack,
        row_absmax if do_rows else dummy,
        sample_ids if sample_ids is not None else dummy,
        state.sample_abs_max.view(torch.int32) if do_samples else dummy,
        state.sample_oor if do_samples else dummy,
        n_rows, state.config.num_samples,
        HAS_SIDS=sample_ids is not None, DO_ROWS=do_rows, DO_SAMPLES=do_samples, BLOCK=block,
        num_warps=warps,
    )
