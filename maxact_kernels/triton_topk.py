"""Triton + torch.topk: the K largest |x| of an update, appended to the state's pending buffer.

Total order inside an update: (|x| desc, row asc, channel asc). Row keys ``(bits(row max) << 32) |
(0xFFFFFFFF - row)`` order rows by (max desc, row asc); the K largest elements always lie in the K
rows with the largest row keys (an element outside them is beaten by each of those K rows' maxima).
So: ``torch.topk`` of the row keys picks K rows, sorted back into row order; ``_topk_keys_kernel``
builds element keys ``(bits(|x|) << 32) | (0xFFFFFFFF - (i * C + c))`` for them (i = rank of the
row among the picked ones, so the index fits 32 bits whatever R is; -1 for NaN or invalid rows);
``torch.topk`` picks K keys; ``_topk_decode_kernel`` writes (|x|, signed value, sample, position,
channel) to the pending slots. No host sync: K and the slot offset are host integers.
Bytes: reads K rows of x (K x C x itemsize) and R row keys; writes K x C keys + K entries.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_bits import load_f32_bits

INTERPRETED = bool(triton.knobs.runtime.interpret)

_I64_MAX = tl.constexpr(9223372036854775807)
CPU_BLOCK_C = 64


@triton.jit
def _topk_keys_kernel(
    # pointers
    x_ptr, sel_ptr, rowkey_ptr, keys_ptr,
    # strides
    stride_row,
    # sizes
    n_cols,
    # meta-parameters
    BLOCK_C: tl.constexpr,
):
    """Program (i, cb): element keys of channel block cb of the i-th picked row."""
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_in = cols < n_cols
    # the row index broadcast over the block (a vector, not a scalar, so masks stay element-wise)
    row = tl.load(sel_ptr + i + tl.zeros([BLOCK_C], dtype=tl.int32))
    row_valid = tl.load(rowkey_ptr + row) >= 0
    ab = load_f32_bits(x_ptr + row * stride_row + cols, col_in & row_valid) & 0x7FFFFFFF
    ok = col_in & row_valid & (ab <= 0x7F800000)
    local = i.to(tl.int64) * n_cols + cols
    key = (ab.to(tl.int64) << 32) | (0xFFFFFFFF - local)
    tl.store(keys_ptr + local, tl.where(ok, key, -1), mask=col_in)


@triton.jit
def _topk_decode_kernel(
    # pointers
    x_ptr, sel_ptr, top_ptr, sid_ptr, pos_ptr, out_abs_ptr, out_val_ptr, out_idx_ptr,
    # strides
    stride_row,
    # sizes
    n_cols, n_top,
    # meta-parameters
    HAS_SIDS: tl.constexpr, HAS_POS: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program: decode the picked keys into pending top-k entries (abs -1 for empty keys)."""
    j = tl.arange(0, BLOCK)
    j_in = j < n_top
    key = tl.load(top_ptr + j, mask=j_in, other=-1)
    valid = j_in & (key >= 0)
    local = tl.where(valid, 0xFFFFFFFF - (key & 0xFFFFFFFF), 0)
    i = local // n_cols
    col = local % n_cols
    row = tl.load(sel_ptr + i, mask=valid, other=0)
    ab = (key >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    bits = load_f32_bits(x_ptr + row * stride_row + col, valid)
    value = tl.where(bits == -2147483648, 0, bits).to(tl.float32, bitcast=True)  # -0.0 -> 0.0
    if HAS_SIDS:
        sid = tl.load(sid_ptr + row, mask=valid, other=-1)
    else:
        sid = tl.full([BLOCK], -1, dtype=tl.int64)
    if HAS_POS:
        pos = tl.load(pos_ptr + row, mask=valid, other=0)
    else:
        pos = row
    tl.store(out_abs_ptr + j, tl.where(valid, ab, -1.0), mask=j_in)
    tl.store(out_val_ptr + j, tl.where(valid, value, 0.0), mask=j_in)
    tl.store(out_idx_ptr + j * 3 + 0, tl.where(valid, sid, _I64_MAX), mask=j_in)
    tl.store(out_idx_ptr + j * 3 + 1, tl.where(valid, pos, _I64_MAX), mask=j_in)
    tl.store(out_idx_ptr + j * 3 + 2, tl.where(valid, col, _I64_MAX), mask=j_in)


def topk_update(
    x2d: torch.Tensor,
    rowkey: torch.Tensor,
    sample_ids: torch.Tensor | None,
    positions: torch.Tensor | None,
    state,
) -> None:
    """Append this update's K best elements to ``state``'s pending top-k buffer."""
    n_rows, n_cols = x2d.shape
    k = state.config.topk
    k_rows = min(k, n_rows)
    sel = torch.sort(torch.topk(rowkey, k_rows, sorted=False).indices).values
    keys = state.scratch("topk_keys", k_rows * n_cols, torch.int64)
    block_c = min(triton.next_power_of_2(n_cols), CPU_BLOCK_C if x2d.device.type != "cuda" else 1024)
    _topk_keys_kernel[(k_rows, triton.cdiv(n_cols, block_c))](
        x2d, sel, rowkey, keys, x2d.stride(0), n_cols, BLOCK_C=block_c,
        num_warps=1 if x2d.device.type != "cuda" else 4,
    )
    n_top = min(k, k_rows * n_cols)
    top = torch.topk(keys, n_top, sorted=False).values
    off = state.topk_reserve(n_top)
    dummy = state.counts
    _topk_decode_kernel[(1,)](
        x2d, sel, top,
        sample_ids if sample_ids is not None else dummy,
        positions if positions is not None else dummy,
        state.topk_abs[off:], state.topk_value[off:], state.topk_index[off:],
        x2d.stride(0), n_cols, n_top,
        HAS_SIDS=sample_ids is not None, HAS_POS=positions is not None,
        BLOCK=max(16, triton.next_power_of_2(n_top)),
        num_warps=1 if x2d.device.type != "cuda" else 4,
    )
