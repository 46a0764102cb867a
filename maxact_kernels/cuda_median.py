"""Exact lower median of |x| per row (token) for bf16/fp16, in CUDA C++ compiled at run time.

Why not the Triton token kernel: its bisection counts three thresholds per step in int64 fields, about
a hundred instructions per element over a row, so every token's median cost 8x the fused statistics
pass (docs/PERF_NOTES.md). Here a row stays in registers (16-bit |x| keys, two per word) and is
bisected on the key: 15 counts over the whole key range, or, when the median lies within a binade of
the previous row's (as tokens of one tensor mostly do), 2 counts to confirm that and 7 inside it, plus
one for the row's non-NaN count. Each count costs, per word of two keys:

* sm_90 (and fp16 anywhere): one packed compare ``set.le.u32.bf16x2`` / ``.f16x2`` (0xffff or 0 per half)
  and half an integer add: the masks are summed as plain 32-bit words and the two halves' counts
  recovered from the sum (see ``count_le``). The compare and the add run on different pipes.
* bf16 before sm_90 (``MAXACT_MEDIAN_SWAR=1`` forces it): four integer instructions, per half
  ``0x8000 + t - k``, whose top bit says ``k <= t``.

Keys are the input's own |x| bits (15 of them); NaN keys lie above inf and are never counted, because
every trial key is clamped to inf. The median is the smallest key whose count exceeds
``kth = (n - 1) // 2`` with n the row's non-NaN count: an element's exact value, as ``torch.median``.

Layout: W warps per row (W = 1 up to 4096 channels, more for wider rows, up to 32768), each lane
holding up to 16 16-byte vectors; W > 1 sums each step's count through shared memory and a named
barrier of the row's warps. A persistent grid: each row's warps prefetch their next row into L2 before
working on this one. It reads the rows that need a median once and writes one float per row.
Rows that need one: ``row_absmax >= 0`` (the fused pass writes -1 for masked rows and rows without a
non-NaN value); other rows get -1. Candidate medians take only the rows that may pass the criterion or
tie the update's max |x|: from a list (``rows=``), or listed by the kernel itself (``select=``, what a GPU
update does: one launch instead of two on its side stream), and only those are read and written.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np
import torch

from . import cuda_hist

logger = logging.getLogger(__name__)

_SWAR = int(os.environ.get("MAXACT_MEDIAN_SWAR", 0))
# packed compares: every this-many-th pair of words counted by integer halves instead (0: none)
_INT_EVERY = int(os.environ.get("MAXACT_MEDIAN_INT_EVERY", 0))
# most 16-byte vectors a lane holds (registers); wider rows take more warps
_MAX_VEC = int(os.environ.get("MAXACT_MEDIAN_MAX_VEC", 16))
_BLOCK = 256
# at most this many blocks (0: as many as fit); the GPU checks set 1 so that each row group walks many rows
_MAX_GRID = int(os.environ.get("MAXACT_MEDIAN_MAX_GRID", 0))
_MAX_WARPS_PER_ROW = 8
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}

_SOURCE = r"""
#ifndef MAXACT_MEDIAN_SWAR
#define MAXACT_MEDIAN_SWAR 0
#endif
#ifndef MAXACT_MEDIAN_INT_EVERY
#define MAXACT_MEDIAN_INT_EVERY 0
#endif

typedef long long i64;

template <int DT> struct KeyInf;   /* |x| bits of +inf in the input's width; NaN keys are above */
template <> struct KeyInf<0> { static constexpr unsigned V = 0x7f80u; };
template <> struct KeyInf<1> { static constexpr unsigned V = 0x7c00u; };


/* Per half of k: 0xffff if k <= t2's half else 0 (t2 never NaN): HSET2 with an integer result. */
template <int DT> __device__ __forceinline__ unsigned le_mask(unsigned k, unsigned t2);
#if __CUDA_ARCH__ >= 900
template <> __device__ __forceinline__ unsigned le_mask<0>(unsigned k, unsigned t2) {
    unsigned d; asm("set.le.u32.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(k), "r"(t2)); return d; }
#endif
template <> __device__ __forceinline__ unsigned le_mask<1>(unsigned k, unsigned t2) {
    unsigned d; asm("set.le.u32.f16x2 %0, %1, %2;" : "=r"(d) : "r"(k), "r"(t2)); return d; }
template <int DT> __device__ __forceinline__ float half_value(unsigned h);
template <> __device__ __forceinline__ float half_value<0>(unsigned h) { return __uint_as_float(h << 16); }
template <> __device__ __forceinline__ float half_value<1>(unsigned h) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)h)); return f; }

/* How many of this lane's keys (two per word) are <= t, for t <= inf.
   Packed compares: the words' 0xffff / 0 masks are summed as plain 32-bit integers, two per IADD3. With H
   high and L low halves set, the sum is S = H * 0xffff0000 + L * 0xffff = (L - H) * 2^16 - L (mod 2^32),
   so L = -S mod 2^16 and L - H = (S + L) >> 16 as a signed 16-bit number (L, H <= 64 here). One compare
   and half an add per word, on two different pipes.
   Integer halves (bf16 before sm_90, or MAXACT_MEDIAN_SWAR): per half 0x8000 + t - k lies in [1, 0xffff]
   (k, t <= 0x7fff), so no borrow crosses halves and its top bit is set iff k <= t. */
template <int DT, int NW>
__device__ __forceinline__ unsigned count_le(const unsigned (&k)[NW], unsigned t) {
#if MAXACT_MEDIAN_SWAR || __CUDA_ARCH__ < 900
    constexpr bool SWAR = MAXACT_MEDIAN_SWAR || DT == 0;   /* set.*.bf16x2 needs sm_90 */
#else
    constexpr bool SWAR = false;
#endif
    unsigned acc[2] = {0u, 0u};
    if constexpr (SWAR) {
        const unsigned t2 = (0x8000u + t) * 0x10001u;
        #pragma unroll
        for (int i = 0; i < NW; ++i) acc[i & 1] += ((t2 - k[i]) >> 15) & 0x10001u;
        const unsigned s = acc[0] + acc[1];
        return (s & 0xffffu) + (s >> 16);
    } else {
        /* MAXACT_MEDIAN_INT_EVERY = e > 0: every e-th pair of words takes the integer form, to share the
           work between the compare pipe and the integer pipe */
        const unsigned t2 = t * 0x10001u, ti = (0x8000u + t) * 0x10001u;
        unsigned ia = 0u;
        #pragma unroll
        for (int i = 0; i < NW; i += 2) {
            if (MAXACT_MEDIAN_INT_EVERY > 0 && (i >> 1) % MAXACT_MEDIAN_INT_EVERY == MAXACT_MEDIAN_INT_EVERY - 1)
                ia += (((ti - k[i]) >> 15) & 0x10001u) + (((ti - k[i + 1]) >> 15) & 0x10001u);
            else
                acc[(i >> 1) & 1] += le_mask<DT>(k[i], t2) + le_mask<DT>(k[i + 1], t2);
        }
        const unsigned s = acc[0] + acc[1];
        const unsigned lo = (0u - s) & 0xffffu;
        const int diff = (short)((s + lo) >> 16);   /* L - H */
        return 2u * lo - (unsigned)diff + (ia & 0xffffu) + (ia >> 16);
    }
}

/* 32 consecutive row maxima from row `first` (-1 past n): 16-byte loads, all in flight at once */
__device__ __forceinline__ void load_row_max32(const float* __restrict__ p, i64 first, i64 n, float (&v)[32]) {
    #pragma unroll
    for (int q = 0; q < 8; ++q) {
        const i64 i = first + 4 * q;
        if (i + 3 < n) {
            const float4 f = *(const float4*)(p + i);
            v[4 * q] = f.x; v[4 * q + 1] = f.y; v[4 * q + 2] = f.z; v[4 * q + 3] = f.w;
        } else {
            #pragma unroll
            for (int k = 0; k < 4; ++k) v[4 * q + k] = i + k < n ? p[i + k] : -1.f;
        }
    }
}

/* SRC 0: every row with a token; 1: the rows list[0 .. *list_n); 2: select them first (see row_median) */
template <int DT, int NV, int W, int SRC>
__global__ void __launch_bounds__(256) maxact_row_median(
    const char* __restrict__ x, i64 n_rows, i64 n_cols, i64 row_stride_bytes,
    const float* __restrict__ row_absmax,   /* [n_rows], -1: masked or no non-NaN value */
    float* __restrict__ row_median,         /* [n_rows] out, -1 where not computed (SRC 1, 2: only listed rows) */
    int* __restrict__ list,                 /* SRC 1: the rows to take; 2: written, the rows taken */
    int* __restrict__ list_n,               /* SRC 1: their number; 2: written */
    const double* __restrict__ params,      /* SRC 2: params[0], the criterion's |x| threshold */
    i64* __restrict__ tok_counts)           /* SRC 2: [0] += the rows with a token */
{
    constexpr int NW = NV * 4;
    constexpr unsigned INF = KeyInf<DT>::V;
    __shared__ unsigned part[2][8];         /* per warp counts, alternating steps (W > 1) */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp / W, wg = warp % W;
    auto needs = [&](i64 r) -> bool { return row_absmax[r] >= 0.f; };   /* the row has a token */
    auto total = [&](unsigned c, unsigned step) -> unsigned {   /* over the row's W warps */
        c = __reduce_add_sync(0xffffffffu, c);
        if (W == 1) return c;
        if (lane == 0) part[step & 1u][warp] = c;
        asm volatile("bar.sync %0, %1;" :: "r"(grp + 1), "r"(W * 32) : "memory");
        unsigned s = 0u;
        #pragma unroll
        for (int i = 0; i < W; ++i) s += part[step & 1u][grp * W + i];
        return s;   /* a warp rewrites this parity two counts later, after every warp passed the next barrier */
    };
    const int nvec = (int)(n_cols >> 3);
    const i64 stride = (i64)gridDim.x * (8 / W);
    constexpr unsigned BRACKET = 64u;
    unsigned prev = 0xffffffffu;   /* this group's previous median key (none yet) */
    unsigned step = 0u;            /* counts taken so far: their parity picks the shared slots (W > 1) */
    /* The median of one row by this group of W warps; `next`, when >= 0, is the group's next row, which
       it asks L2 for first, so that the reads overlap the compute (without it every warp loaded, then
       computed, in lockstep waves). */
    auto median_row = [&](i64 row, i64 next) {
        if (wg == 0 && next >= 0) {
            const char* np = x + next * row_stride_bytes;
#if __CUDA_ARCH__ >= 900
            if (lane == 0)
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(np), "r"((unsigned)(nvec * 16)) : "memory");
#else
            for (int v = lane; v < nvec; v += 32) asm volatile("prefetch.global.L2 [%0];" :: "l"(np + 16 * v));
#endif
        }
        const uint4* rp = (const uint4*)(x + row * row_stride_bytes);
        unsigned k[NW];
        #pragma unroll
        for (int u = 0; u < NV; ++u) {
            const int v = u * (32 * W) + wg * 32 + lane;
            uint4 q = make_uint4(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);   /* NaN keys */
            if (v < nvec) q = load_streaming(rp + v);
            k[4 * u + 0] = q.x & 0x7fff7fffu; k[4 * u + 1] = q.y & 0x7fff7fffu;
            k[4 * u + 2] = q.z & 0x7fff7fffu; k[4 * u + 3] = q.w & 0x7fff7fffu;
        }
        const unsigned n = total(count_le<DT, NW>(k, INF), step++);   /* >= 1: the row has a non-NaN value */
        const unsigned kth = (n - 1u) >> 1;
        /* The median is the smallest key T in [lo, hi] with more than kth keys <= T; count(<= INF) = n > kth.
           Tokens of one tensor have similar medians, so first try the 2 * BRACKET keys (a binade) around
           this group's previous median: two counts, then 7 bisection steps instead of 15. */
        unsigned lo = 0u, hi = INF;
        if (prev <= INF) {
            const unsigned ghi = min(prev + BRACKET - 1u, INF), glo = prev > BRACKET ? prev - BRACKET : 0u;
            if (total(count_le<DT, NW>(k, ghi), step++) > kth) {
                hi = ghi;
                if (glo > 0u && total(count_le<DT, NW>(k, glo - 1u), step++) <= kth) lo = glo;
            } else {
                lo = ghi + 1u;
            }
        }
        #pragma unroll 1
        while (lo < hi) {
            const unsigned mid = (lo + hi) >> 1;
            if (total(count_le<DT, NW>(k, mid), step++) > kth) hi = mid;
            else lo = mid + 1u;
        }
        prev = lo;
        if (wg == 0 && lane == 0) row_median[row] = half_value<DT>(lo);
    };
    const i64 first = (i64)blockIdx.x * (8 / W) + grp;
    if (SRC == 2) {
        /* Candidate medians: the rows that may pass the criterion (max > params[0]) or tie this update's max
           |x| (the possible peak tokens). Every block reads the row maxima and lists the same rows in the same
           order (each thread owns 32 consecutive rows of a chunk; an exclusive scan of the per-thread counts
           places them), so the list it then reads back is its own writing; block 0 also counts the tokens
           and publishes the list's length. Two reads of the maxima, all loads of a chunk in flight: this
           replaces a one-program Triton kernel and a launch on the side stream's critical path. */
        __shared__ int red_top[8];
        __shared__ unsigned red_n[8];
        __shared__ int scan_w[8];
        const int tid = threadIdx.x;
        constexpr int NT = 256;
        int top_i = __float_as_int(-1.f);   /* as int, -1.f is below every |x| */
        unsigned n_tok = 0u;
        for (i64 c0 = 0; c0 < n_rows; c0 += 32 * NT) {
            float v[32];
            load_row_max32(row_absmax, c0 + 32 * tid, n_rows, v);
            #pragma unroll
            for (int k = 0; k < 32; ++k) { top_i = max(top_i, __float_as_int(v[k])); n_tok += v[k] >= 0.f; }
        }
        top_i = __reduce_max_sync(0xffffffffu, top_i);
        n_tok = __reduce_add_sync(0xffffffffu, n_tok);
        if (lane == 0) { red_top[warp] = top_i; red_n[warp] = n_tok; }
        __syncthreads();
        top_i = red_top[0]; n_tok = red_n[0];
        #pragma unroll
        for (int w = 1; w < NT / 32; ++w) { top_i = max(top_i, red_top[w]); n_tok += red_n[w]; }
        if (blockIdx.x == 0 && tid == 0 && n_tok) atomicAdd((unsigned long long*)tok_counts, (unsigned long long)n_tok);
        const float top = __int_as_float(top_i);
        const double t_val = params[0];
        int n_list = 0;   /* block-uniform */
        for (i64 c0 = 0; c0 < n_rows; c0 += 32 * NT) {
            float v[32];
            load_row_max32(row_absmax, c0 + 32 * tid, n_rows, v);
            unsigned take = 0u;
            #pragma unroll
            for (int k = 0; k < 32; ++k) take |= (unsigned)(v[k] >= 0.f && ((double)v[k] > t_val || v[k] == top)) << k;
            /* exclusive scan of the per-thread counts: within the warp by shuffles, across warps in shared */
            const int c = __popc(take);
            int incl = c;
            #pragma unroll
            for (int off = 1; off < 32; off <<= 1) {
                const int o = __shfl_up_sync(0xffffffffu, incl, off);
                if (lane >= off) incl += o;
            }
            __syncthreads();   /* the previous chunk's readers of scan_w are done */
            if (lane == 31) scan_w[warp] = incl;
            __syncthreads();
            int at = n_list + incl - c, total = 0;
            #pragma unroll
            for (int w = 0; w < NT / 32; ++w) { at += w < warp ? scan_w[w] : 0; total += scan_w[w]; }
            for (unsigned t = take; t != 0u; t &= t - 1u) list[at++] = (int)(c0 + 32 * tid + __ffs(t) - 1);
            n_list += total;
        }
        if (blockIdx.x == 0 && tid == 0) *list_n = n_list;
        __syncthreads();   /* this block's list writes are visible to all its threads */
        for (i64 j = first; j < n_list; j += stride) median_row(list[j], j + stride < n_list ? list[j + stride] : -1);
        return;
    }
    if (SRC == 1) {
        /* the rows someone picked (candidate medians: a handful per update, see triton_tokens) */
        const i64 n_list = *list_n;
        for (i64 j = first; j < n_list; j += stride) median_row(list[j], j + stride < n_list ? list[j + stride] : -1);
        return;
    }
    /* Persistent: each group of W warps walks rows first, first + stride, ... in batches of 32: each lane
       asks whether one row of the batch needs a median (one load latency per 32 rows, not one per row),
       writes -1 for those that do not, and the group works
       through the others. All W warps of a row take the same ballot, so a row's named barrier only sees
       warps that stay. */
    for (i64 j0 = 0; first + j0 * stride < n_rows; j0 += 32) {
        const i64 mine = first + (j0 + lane) * stride;
        const bool need = mine < n_rows && needs(mine);
        if (wg == 0 && mine < n_rows && !need) row_median[mine] = -1.f;
        unsigned todo = __ballot_sync(0xffffffffu, need);
        while (todo != 0u) {
            const i64 row = first + (j0 + __ffs(todo) - 1) * stride;
            todo &= todo - 1u;
            median_row(row, todo != 0u ? first + (j0 + __ffs(todo) - 1) * stride : -1);
        }
    }
}
"""


def _source(swar: int | None = None, int_every: int | None = None) -> str:
    swar = _SWAR if swar is None else swar
    int_every = _INT_EVERY if int_every is None else int_every
    return (f"#define MAXACT_MEDIAN_SWAR {swar}\n#define MAXACT_MEDIAN_INT_EVERY {int_every}\n"
            + cuda_hist.LOAD_STREAMING_SRC + _SOURCE)


def kernel_name(dtype_code: int, nv: int, warps: int, source: int = 0) -> str:
    """The instantiation for ``nv`` 16-byte vectors per lane and ``warps`` warps per row; ``source`` of the
    rows: 0 every row with a token, 1 a given list (``row_median(rows=...)``), 2 selected by the kernel
    (``row_median(select=...)``)."""
    return f"maxact_row_median<{dtype_code}, {nv}, {warps}, {int(source)}>"


def layout(n_cols: int) -> tuple[int, int] | None:
    """(16-byte vectors per lane, warps per row) for a row of ``n_cols`` 16-bit values, or None if too wide."""
    nvec = -(-n_cols // 8)
    warps = 1
    while 32 * warps * _MAX_VEC < nvec:
        warps *= 2
        if warps > _MAX_WARPS_PER_ROW:
            return None
    per_lane = -(-nvec // (32 * warps))
    nv = 1
    while nv < per_lane:
        nv *= 2
    return nv, warps


def supports(x2d: torch.Tensor) -> bool:
    """Whether :func:`row_median` takes ``x2d``: bf16/fp16 rows of whole 16-byte vectors, aligned."""
    return (
        x2d.is_cuda
        and x2d.dtype in _DTYPE_CODE
        and x2d.dim() == 2
        and x2d.stride(1) == 1
        and x2d.shape[1] % 8 == 0
        and x2d.stride(0) % 8 == 0
        and x2d.data_ptr() % 16 == 0
        and layout(x2d.shape[1]) is not None
        and cuda_hist.available(x2d.device)
    )


def _kernel(device_index: int, dtype_code: int, nv: int, warps: int, source: int):
    """(compiled kernel, resident blocks per SM) for the current count method."""
    return _compiled(device_index, dtype_code, nv, warps, source, _SWAR, _INT_EVERY)


@functools.lru_cache(maxsize=None)
def _compiled(device_index: int, dtype_code: int, nv: int, warps: int, source: int, swar: int, int_every: int):
    cc = cuda_hist._cuda_core()
    cc.Device(device_index).set_current()
    major, minor = torch.cuda.get_device_capability(device_index)
    name = kernel_name(dtype_code, nv, warps, source)
    kernel = cuda_hist._compile(cc, _source(swar, int_every), f"sm_{major}{minor}", name).get_kernel(name)
    attrs = kernel.attributes
    logger.info("compiled %s for sm_%d%d: %d registers, %d bytes local memory",
                name, major, minor, attrs.num_regs, attrs.local_size_bytes)
    return kernel, _blocks_per_sm(attrs.num_regs)


def _blocks_per_sm(num_regs: int) -> int:
    """Resident blocks per SM (registers allocated per warp in units of 256; 64 Ki registers, 2048 threads)."""
    regs = max(1, num_regs)
    per_warp = -(-regs * 32 // 256) * 256
    return max(1, min(65536 // (per_warp * (_BLOCK // 32)), 2048 // _BLOCK))


def row_median(
    x2d: torch.Tensor,
    row_absmax: torch.Tensor,
    out: torch.Tensor,
    *,
    rows: torch.Tensor | None = None,
    n_listed: torch.Tensor | None = None,
    blocks: int = 0,
    select: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Write each row's lower median |x| (float32) into ``out``, -1 where no median is needed.

    ``row_absmax`` (float32[R]) is the fused pass's row max (-1: masked or no non-NaN value). With ``rows``
    (int32[R]) and ``n_listed`` (int32[1], on the device), only rows ``rows[:n_listed]`` are taken (each must
    have a non-NaN value) and no other entry of ``out`` is written.
    ``select`` = (params, tok_counts) makes the kernel list those rows itself, into ``rows`` and ``n_listed``:
    the candidate medians of the Sun criterion, the rows whose max |x| exceeds ``params[0]`` (float64) or
    equals this update's largest (in rising row order); it also adds the number of rows with a token to
    ``tok_counts[0]`` (int64).
    ``blocks`` > 0 caps the grid (a few blocks leave the other SMs to other streams). No host sync.
    """
    if not supports(x2d):
        raise ValueError(f"row_median takes aligned bf16/fp16 rows of a multiple of 8 channels up to "
                         f"{8 * 32 * _MAX_VEC * _MAX_WARPS_PER_ROW}, got {x2d.dtype}{tuple(x2d.shape)}")
    n_rows, n_cols = x2d.shape
    if n_rows == 0:
        return
    listed = rows is not None
    if listed and (n_listed is None or rows.dtype != torch.int32 or n_listed.dtype != torch.int32):
        raise ValueError("rows (int32) and n_listed (int32[1]) go together")
    if select is not None and not (listed and rows.numel() >= n_rows and row_absmax.data_ptr() % 16 == 0):
        raise ValueError("select needs rows (int32, one per row) and n_listed to write, and 16-byte aligned row_absmax")
    source = 2 if select is not None else int(listed)
    params, tok_counts = select if select is not None else (None, None)
    nv, warps = layout(n_cols)
    dev_index = x2d.device.index if x2d.device.index is not None else torch.cuda.current_device()
    kernel, blocks_per_sm = _kernel(dev_index, _DTYPE_CODE[x2d.dtype], nv, warps, source)
    rows_per_block = (_BLOCK // 32) // warps
    grid = min(-(-n_rows // rows_per_block), cuda_hist._num_sms(dev_index) * blocks_per_sm)
    for cap in (_MAX_GRID, blocks):
        if cap > 0:
            grid = min(grid, cap)
    cc = cuda_hist._cuda_core()
    stream = cuda_hist._stream(torch.cuda.current_stream(x2d.device).cuda_stream)
    config = cc.LaunchConfig(grid=grid, block=_BLOCK)
    p = np.uintp
    cc.launch(
        stream, config, kernel,
        p(x2d.data_ptr()), np.int64(n_rows), np.int64(n_cols), np.int64(x2d.stride(0) * x2d.element_size()),
        p(row_absmax.data_ptr()), p(out.data_ptr()),
        p(rows.data_ptr() if listed else 0), p(n_listed.data_ptr() if listed else 0),
        p(params.data_ptr() if params is not None else 0), p(tok_counts.data_ptr() if tok_counts is not None else 0),
    )
