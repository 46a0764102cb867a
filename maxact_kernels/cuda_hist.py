"""Exact |x| histogram fused with the basic statistics, in CUDA C++ compiled at run time.

Why CUDA C++ here: the exact 32768-bin histogram needs shared-memory atomics, which Triton does not
expose (a Triton histogram by global atomics runs at under 5% of copy bandwidth on an H100). This kernel
reads each element once and, in the same pass, updates

* the exact |x| histogram (bin = float32 bits of |x| >> 16, NaN excluded, inf in bin 32640),
* counts (non-NaN, NaN, +inf, -inf), sum / sum of squares / sum of |x| over finite values
  (fp32 inside a 16-byte vector, fp64 per thread and across blocks), min and max over non-NaN values,
* optionally per row: max |x|, the first channel attaining it, the packed top-k row key, and the
  per-sample peak (atomic max into ``sample_abs_max[sample_id]``),
* optionally the per-channel max |x| (up to 19456 channels; wider tensors take a Triton pass).

Layout: one warp per row (so per-row maxima need no cross-warp traffic), 16-byte loads when the row
pitch and base pointer allow, a persistent grid of at most two 512-thread blocks per SM, rows visited
last to first (the end of a tensor its producer just wrote is what L2 still holds). The shared
histogram covers the 64 binades 2^-32 <= |x| < 2^32 (8192 bins, 32 KiB, cheap to zero and flush);
exact zeros are counted in a register, and anything else (subnormals, |x| >= 2^32, inf) goes straight
to the global histogram with a global atomic: exact, and rare in real activations. For bf16 and fp16
one packed min/max per 16-byte vector proves all eight elements lie in the window, so the hot path
has no per-element tests. Channel maxima live in shared memory as raw |x| bits (one word per
channel), seeded from the global maxima so that an element costs a compare and only a record costs
a shared atomicMax; each block raises the global maxima it beats at its end.

Semantics are those of ``maxact_kernels.reference`` (see DESIGN.md); the state tensors are the ones
ActivationStats owns. Compiled once per (device, dtype, variant) through ``cuda.core`` (NVRTC) and
launched on torch's current stream, so no host synchronisation happens.
"""

from __future__ import annotations

import functools
import os
import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

HIST_BINS = 32768
_BLOCK = 512
_BLOCKS_PER_SM = int(os.environ.get("MAXACT_CUDA_BLOCKS_PER_SM", 2))
# Below this many bytes per block the fixed cost (zeroing and flushing 8192 shared bins) dominates.
_MIN_BYTES_PER_BLOCK = int(os.environ.get("MAXACT_CUDA_MIN_BYTES_PER_BLOCK", 64 * 1024))
# 16-byte loads each lane issues before using the first: memory-level parallelism on HBM3.
_UNROLL = int(os.environ.get("MAXACT_CUDA_UNROLL", 2))
# Shared histogram increments as ATOMS.POPC.INC (0) or plain ATOMS.ADD (1): see hist_inc in the source.
_HIST_INC = int(os.environ.get("MAXACT_CUDA_HIST_INC", 0))
# Visit rows last to first: the end of a tensor its producer just wrote is the part still in L2.
_REVERSE = int(os.environ.get("MAXACT_CUDA_REVERSE", 1))
# Shared bytes of the histogram window (WBINS + 4 words); the channel maxima come after it.
_SH_HIST_BYTES = (8192 + 4) * 4
# Channel maxima are fused when they fit in this much shared memory (two blocks per SM must fit in
# 227 KiB with the histogram): 19456 channels, e.g. Qwen2.5-7B's 18944-wide MLP.
CHANNEL_MAX_BYTES = 76 * 1024

_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}

_SOURCE = r"""
#ifndef MAXACT_MIN_BLOCKS
#define MAXACT_MIN_BLOCKS 2
#endif
typedef unsigned long long u64;
typedef long long i64;

#ifndef MAXACT_HIST_INC
#define MAXACT_HIST_INC 0
#endif

/* Shared histogram increment. atomicAdd(p, 1) compiles to ATOMS.POPC.INC (lanes on one address are
   combined first); with the 1 read from constant memory the compiler cannot see it and emits a plain
   ATOMS.ADD. On an H200 both ran at the same speed on random data, and POPC.INC 4x faster on constant
   data (every lane on one bin), so it is the default (scripts/gpu_check_cuda_hist.py, variant "atoms-add"). */
__constant__ unsigned maxact_one = 1u;
__device__ __forceinline__ void hist_inc(unsigned* p) {
#if MAXACT_HIST_INC
    atomicAdd(p, maxact_one);
#else
    atomicAdd(p, 1u);
#endif
}

#define WLO   12160   /* first windowed bin: exponent field 95, i.e. |x| = 2^-32 */
#define WBINS 8192    /* 64 binades x 128 mantissa bins: 2^-32 <= |x| < 2^32; slot WBINS is a dump */

template <int DT> struct Elem;
template <> struct Elem<0> { static constexpr int PER_VEC = 8; };   /* bf16 */
template <> struct Elem<1> { static constexpr int PER_VEC = 8; };   /* fp16 */
template <> struct Elem<2> { static constexpr int PER_VEC = 4; };   /* fp32 */

__device__ __forceinline__ float half_to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

/* The i-th element (0 <= i < 2) of a 32-bit word holding 16-bit values, or the word itself for fp32. */
template <int DT> __device__ __forceinline__ float unpack(unsigned w, int i);
template <> __device__ __forceinline__ float unpack<0>(unsigned w, int i) {
    return __uint_as_float(i == 0 ? (w << 16) : (w & 0xffff0000u));
}
template <> __device__ __forceinline__ float unpack<1>(unsigned w, int i) {
    return half_to_float((unsigned short)(i == 0 ? (w & 0xffffu) : (w >> 16)));
}
template <> __device__ __forceinline__ float unpack<2>(unsigned w, int i) { return __uint_as_float(w); }

template <int DT> __device__ __forceinline__ float load_scalar(const char* p, i64 c);
template <> __device__ __forceinline__ float load_scalar<0>(const char* p, i64 c) {
    return __uint_as_float(((unsigned)((const unsigned short*)p)[c]) << 16);
}
template <> __device__ __forceinline__ float load_scalar<1>(const char* p, i64 c) {
    return half_to_float(((const unsigned short*)p)[c]);
}
template <> __device__ __forceinline__ float load_scalar<2>(const char* p, i64 c) {
    return ((const float*)p)[c];
}

struct Acc {
    double s, s2, sa;           /* finite values: sum, sum of squares, sum of |x| */
    float mn, mx;               /* non-NaN values (fminf/fmaxf skip NaN) */
    unsigned n, nnan, npinf, nninf;   /* n = elements of valid rows, NaN included */
};

/* One element. fs/fs2/fsa are fp32 partials of the current 16-byte vector. */
template <bool ROWS>
__device__ __forceinline__ void visit(float v, unsigned* sh, u64* ghist, Acc& a, unsigned& nzero,
                                      float& fs, float& fs2, float& fsa,
                                      float& rmax, int& rarg, int ch) {
    const unsigned ab = __float_as_uint(v) & 0x7fffffffu;
    const float x = __uint_as_float(ab);
    a.mn = fminf(a.mn, v);
    a.mx = fmaxf(a.mx, v);
    if (ROWS && x > rmax) { rmax = x; rarg = ch; }   /* strict: keeps the first channel of a tie; NaN never wins */
    const float vf = ab < 0x7f800000u ? v : 0.f;      /* sums skip inf and NaN */
    fs += vf; fs2 = fmaf(vf, vf, fs2); fsa += fabsf(vf);
    const unsigned w = (ab >> 16) - WLO;
    if (w < WBINS) {
        hist_inc(sh + w);
    } else if ((ab >> 16) == 0u) {
        nzero += 1u;
    } else if (ab > 0x7f800000u) {
        a.nnan += 1;
    } else {   /* subnormal, tiny, huge or inf: rare, straight to the global histogram */
        atomicAdd(ghist + (ab >> 16), 1ull);
        if (ab == 0x7f800000u) { if (v < 0.f) a.nninf += 1; else a.npinf += 1; }
    }
}

__device__ __forceinline__ void atomic_max_float(float* addr, float v) {
    if (v >= 0.f) atomicMax((int*)addr, __float_as_int(v));
    else atomicMin((unsigned*)addr, __float_as_uint(v));
}
__device__ __forceinline__ void atomic_min_float(float* addr, float v) {
    if (v >= 0.f) atomicMin((int*)addr, __float_as_int(v));
    else atomicMax((unsigned*)addr, __float_as_uint(v));
}

/* Activations are read once: keep them out of L1 (the load flavour made no measurable difference). */
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
    uint4 q;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(q.x), "=r"(q.y), "=r"(q.z), "=r"(q.w) : "l"(p));
    return q;
}

/* Packed 16-bit helpers (sm_80+). Without the .NaN modifier, min/max return the non-NaN operand. */
template <int DT> __device__ __forceinline__ unsigned pmax(unsigned a, unsigned b);
template <int DT> __device__ __forceinline__ unsigned pmin(unsigned a, unsigned b);
template <> __device__ __forceinline__ unsigned pmax<0>(unsigned a, unsigned b) {
    unsigned d; asm("max.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d; }
template <> __device__ __forceinline__ unsigned pmin<0>(unsigned a, unsigned b) {
    unsigned d; asm("min.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d; }
template <> __device__ __forceinline__ unsigned pmax<1>(unsigned a, unsigned b) {
    unsigned d; asm("max.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d; }
template <> __device__ __forceinline__ unsigned pmin<1>(unsigned a, unsigned b) {
    unsigned d; asm("min.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d; }
/* exponent bits of both halves: a half is inf or NaN when all of them are set */
template <int DT> struct Exp16;
template <> struct Exp16<0> { static constexpr unsigned M = 0x7f807f80u; };
template <> struct Exp16<1> { static constexpr unsigned M = 0x7c007c00u; };

/* ---- per-channel max |x| in shared memory -------------------------------------------------------
   One 32-bit word per channel holds the raw bits of its max |x| in the input's width (16 bits for
   bf16/fp16, 32 for fp32). Bits of non-negative, non-NaN floats order like their values, so integer max
   is value max and a record is one native shared atomicMax (no compare-and-swap retries when warps
   race on a channel). The block starts from the global maxima (rounded towards zero, so they never
   exceed the truth): almost every element then only compares. */

__device__ __forceinline__ void ch_max_elem(unsigned* chw, int ch, unsigned abits) {
    if (abits > chw[ch]) atomicMax(chw + ch, abits);
}

/* A 16-byte vector of bf16/fp16 at channels ch0..ch0+7 (ch0 a multiple of 8), packed |x| words aw[4]. */
__device__ __forceinline__ void ch_max_vec16(unsigned* chw, int ch0, const unsigned aw[4]) {
    const uint4 c0 = *(const uint4*)(chw + ch0);
    const uint4 c1 = *(const uint4*)(chw + ch0 + 4);
    const unsigned cur[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
    unsigned b[8];
    bool gt = false;
    #pragma unroll
    for (int j = 0; j < 8; ++j) {
        b[j] = (j & 1) ? (aw[j >> 1] >> 16) : (aw[j >> 1] & 0xffffu);
        gt |= b[j] > cur[j];
    }
    if (gt) {                                  /* rare once the block has seen a few rows */
        #pragma unroll
        for (int j = 0; j < 8; ++j) if (b[j] > cur[j]) atomicMax(chw + ch0 + j, b[j]);
    }
}

/* A 16-byte vector of fp32 at channels ch0..ch0+3, |x| bits aw[4]. */
__device__ __forceinline__ void ch_max_vec32(unsigned* chw, int ch0, const unsigned aw[4]) {
    const uint4 c = *(const uint4*)(chw + ch0);
    const unsigned cur[4] = {c.x, c.y, c.z, c.w};
    bool gt = false;
    #pragma unroll
    for (int j = 0; j < 4; ++j) gt |= aw[j] > cur[j];
    if (gt) {
        #pragma unroll
        for (int j = 0; j < 4; ++j) if (aw[j] > cur[j]) atomicMax(chw + ch0 + j, aw[j]);
    }
}

/* One 16-byte vector of bf16 or fp16 with no inf or NaN: the hot path. The vector's packed |x| min and
   max (integer halves) decide whether every element lies in the shared window (bf16: 2^-32 <= |x| <
   2^32; fp16: any non-zero value); then each element costs one shared atomic on its window bin and three
   fp32 sums, with no per-element tests. Otherwise (zeros, tiny or huge values) each element is routed:
   window bin, bin 0 counted in a register, or the global histogram. Min and max stay packed (pmn/pmx). */
template <int DT, bool ROWS, bool CH>
__device__ __forceinline__ void visit_vec16(const unsigned wv[4], unsigned* sh, u64* ghist, unsigned* chw,
                                            Acc& a, unsigned& pmn, unsigned& pmx, unsigned& nzero,
                                            float& rmax, int& rarg, int ch0) {
    constexpr int D = DT == 2 ? 0 : DT;   /* keeps the 16-bit helpers instantiable */
    unsigned aw[4];
    #pragma unroll
    for (int k = 0; k < 4; ++k) aw[k] = wv[k] & 0x7fff7fffu;
    /* packed float min/max (native; exact on subnormals) of non-negative finite halves = integer order */
    const unsigned vmax2 = pmax<D>(pmax<D>(aw[0], aw[1]), pmax<D>(aw[2], aw[3]));
    const unsigned vmin2 = pmin<D>(pmin<D>(aw[0], aw[1]), pmin<D>(aw[2], aw[3]));
    const unsigned hi = max(vmax2 & 0xffffu, vmax2 >> 16);
    const unsigned lo = min(vmin2 & 0xffffu, vmin2 >> 16);
    #pragma unroll
    for (int k = 0; k < 4; ++k) { pmn = pmin<D>(pmn, wv[k]); pmx = pmax<D>(pmx, wv[k]); }
    constexpr unsigned LO = DT == 0 ? (unsigned)WLO : 1u;
    constexpr unsigned HI = DT == 0 ? (unsigned)(WLO + WBINS) : 0x7c00u;
    float fs = 0.f, fs2 = 0.f, fsa = 0.f;
    unsigned* shw = sh - WLO;                  /* window bin b lives at shw[b] */
    if (lo >= LO && hi < HI) {
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float v = unpack<D>(wv[j >> 1], j & 1);
            const unsigned b = DT == 0 ? ((j & 1) ? (aw[j >> 1] >> 16) : (aw[j >> 1] & 0xffffu))
                                       : (__float_as_uint(fabsf(v)) >> 16);
            hist_inc(shw + b);
            fs += v; fs2 = fmaf(v, v, fs2); fsa += fabsf(v);
        }
    } else {
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float v = unpack<D>(wv[j >> 1], j & 1);
            const unsigned b = (__float_as_uint(v) & 0x7fffffffu) >> 16;
            fs += v; fs2 = fmaf(v, v, fs2); fsa += fabsf(v);
            if (b - WLO < WBINS) hist_inc(shw + b);
            else if (b == 0u) nzero += 1u;
            else atomicAdd(ghist + b, 1ull);
        }
    }
    a.s += (double)fs; a.s2 += (double)fs2; a.sa += (double)fsa;
    if (ROWS) {
        const float vm = DT == 0 ? __uint_as_float(hi << 16) : half_to_float((unsigned short)hi);
        if (vm > rmax) {                      /* rare after the first vectors: find the first channel */
            rmax = vm;
            #pragma unroll
            for (int j = 7; j >= 0; --j) {
                if (fabsf(unpack<D>(wv[j >> 1], j & 1)) == vm) rarg = ch0 + j;
            }
        }
    }
    if (CH) ch_max_vec16(chw, ch0, aw);
}

/* One 16-byte vector of fp32 with no inf or NaN. Every element does one shared atomic: its window bin,
   or the dump slot WBINS (never flushed) when outside the window; bin 0 (zeros) is counted in a
   register; the rare bins outside the window are redone once per vector on the global histogram. */
template <bool ROWS, bool CH>
__device__ __forceinline__ void visit_vec32(const unsigned wv[4], unsigned* sh, u64* ghist, unsigned* chw,
                                            Acc& a, unsigned& nzero, float& rmax, int& rarg, int ch0) {
    float v[4];
    unsigned bn[4], aw[4];
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
        v[j] = __uint_as_float(wv[j]);
        aw[j] = wv[j] & 0x7fffffffu;
        bn[j] = aw[j] >> 16;
    }
    float fs = 0.f, fs2 = 0.f, fsa = 0.f, vm = 0.f;
    bool rare = false;
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
        fs += v[j]; fs2 = fmaf(v[j], v[j], fs2); fsa += fabsf(v[j]);
        const unsigned w = bn[j] - WLO;
        const bool in = w < WBINS;
        hist_inc(sh + (in ? w : WBINS));
        nzero += (bn[j] == 0u);
        rare |= !in & (bn[j] != 0u);
        a.mn = fminf(a.mn, v[j]); a.mx = fmaxf(a.mx, v[j]);
        vm = fmaxf(vm, fabsf(v[j]));
    }
    a.s += (double)fs; a.s2 += (double)fs2; a.sa += (double)fsa;
    if (rare) {
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (bn[j] - WLO >= WBINS && bn[j] != 0u) atomicAdd(ghist + bn[j], 1ull);
        }
    }
    if (ROWS && vm > rmax) {
        rmax = vm;
        #pragma unroll
        for (int j = 3; j >= 0; --j) {
            if (fabsf(v[j]) == vm) rarg = ch0 + j;
        }
    }
    if (CH) ch_max_vec32(chw, ch0, aw);
}

/* |x| bits of element h of word w in the input's width (16-bit types: the half's bits without sign). */
template <int DT> __device__ __forceinline__ unsigned abits_of(unsigned w, int h) {
    if (DT == 2) return w & 0x7fffffffu;
    return (h == 0 ? w : (w >> 16)) & 0x7fffu;
}
template <int DT> struct NanAbove;   /* |x| bits above this are NaN */
template <> struct NanAbove<0> { static constexpr unsigned V = 0x7f80u; };
template <> struct NanAbove<1> { static constexpr unsigned V = 0x7c00u; };
template <> struct NanAbove<2> { static constexpr unsigned V = 0x7f800000u; };

/* One loaded 16-byte vector starting at channel ch0: the finite fast path, or element by element. */
template <int DT, bool ROWS, bool CH>
__device__ __forceinline__ void process_vec(const uint4 q, int ch0, unsigned* sh, u64* hist, unsigned* chw,
                                            Acc& a, unsigned& pmn, unsigned& pmx, unsigned& nzero,
                                            float& rmax, int& rarg) {
    constexpr int PER_WORD = (DT == 2) ? 1 : 2;
    const unsigned wv[4] = {q.x, q.y, q.z, q.w};
    unsigned nonfinite = 0u;
    #pragma unroll
    for (int k = 0; k < 4; ++k) {
        if (DT == 2) nonfinite |= (wv[k] & 0x7f800000u) == 0x7f800000u;
        else nonfinite |= __vcmpeq2(wv[k] & Exp16<DT == 2 ? 0 : DT>::M, Exp16<DT == 2 ? 0 : DT>::M);
    }
    if (nonfinite == 0u) {
        if (DT == 2) visit_vec32<ROWS, CH>(wv, sh, hist, chw, a, nzero, rmax, rarg, ch0);
        else visit_vec16<DT, ROWS, CH>(wv, sh, hist, chw, a, pmn, pmx, nzero, rmax, rarg, ch0);
        return;
    }
    float fs = 0.f, fs2 = 0.f, fsa = 0.f;
    #pragma unroll
    for (int k = 0; k < 4; ++k) {
        #pragma unroll
        for (int h = 0; h < PER_WORD; ++h) {
            visit<ROWS>(unpack<DT>(wv[k], h), sh, hist, a, nzero, fs, fs2, fsa, rmax, rarg, ch0 + k * PER_WORD + h);
            const unsigned ab = abits_of<DT>(wv[k], h);
            if (CH && ab <= NanAbove<DT>::V) ch_max_elem(chw, ch0 + k * PER_WORD + h, ab);
        }
    }
    a.s += (double)fs; a.s2 += (double)fs2; a.sa += (double)fsa;
}

/* End of a row: warp arg-max (larger value wins, the smaller channel breaks ties), then lane 0 writes the
   row outputs and the per-sample peak. */
__device__ __forceinline__ void finish_row(i64 row, int lane, float rmax, int rarg,
                                           float* row_absmax, int* row_argmax, i64* rowkey,
                                           const i64* sample_ids, float* sample_max, i64 n_samples,
                                           i64* sample_oor) {
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        float om = __shfl_down_sync(0xffffffffu, rmax, off);
        int oa = __shfl_down_sync(0xffffffffu, rarg, off);
        if (om > rmax || (om == rmax && oa >= 0 && (rarg < 0 || oa < rarg))) { rmax = om; rarg = oa; }
    }
    if (lane == 0) {
        row_absmax[row] = rmax;
        row_argmax[row] = rmax >= 0.f ? rarg : -1;
        rowkey[row] = rmax >= 0.f
            ? (((i64)__float_as_int(rmax)) << 32) | (i64)(0xffffffffu - (unsigned)row)
            : (i64)-1;
        if (sample_max != nullptr && rmax >= 0.f) {
            i64 sid = sample_ids != nullptr ? sample_ids[row] : (i64)-1;
            if (sid >= 0 && sid < n_samples) atomicMax((int*)(sample_max + sid), __float_as_int(rmax));
            else atomicAdd((u64*)sample_oor, 1ull);
        }
    }
}

#define SH_HIST_WORDS (WBINS + 4)   /* window bins, the dump slot, padding to 16 bytes */

template <int DT, bool VEC, bool ROWS, bool CH, int UNROLL>
__global__ void __launch_bounds__(512, MAXACT_MIN_BLOCKS) maxact_fused_stats(
    const char* __restrict__ x, i64 n_rows, i64 n_cols, i64 row_stride_bytes,
    const unsigned char* __restrict__ mask,           /* [n_rows] or null */
    i64* __restrict__ counts,                          /* [4] non-NaN, NaN, +inf, -inf */
    double* __restrict__ sums,                         /* [3] */
    float* __restrict__ minmax,                        /* [2] */
    u64* __restrict__ hist,                            /* [32768] */
    float* __restrict__ row_absmax, int* __restrict__ row_argmax, i64* __restrict__ rowkey,
    const i64* __restrict__ sample_ids,                /* [n_rows] or null */
    float* __restrict__ sample_max, i64 n_samples, i64* __restrict__ sample_oor,
    float* __restrict__ channel_max,                   /* [n_cols] when CH */
    int reverse)                                       /* visit rows last to first (hot in L2 first) */
{
    extern __shared__ __align__(16) unsigned smem[];
    unsigned* sh = smem;                               /* [SH_HIST_WORDS] */
    unsigned* chw = smem + SH_HIST_WORDS;              /* channel maxima (CH) */
    for (int i = threadIdx.x; i < WBINS + 1; i += blockDim.x) sh[i] = 0u;
    if (CH) {
        /* start from the global maxima, rounded towards zero in the input's width */
        const int nch = (int)((n_cols + 7) & ~7LL);
        for (int c = threadIdx.x; c < nch; c += blockDim.x) {
            const float g = c < n_cols ? channel_max[c] : 0.f;
            if (DT == 2) chw[c] = __float_as_uint(g);
            else if (DT == 0) chw[c] = __float_as_uint(g) >> 16;
            else {
                unsigned short h;
                asm("cvt.rz.f16.f32 %0, %1;" : "=h"(h) : "f"(g));
                chw[c] = h;
            }
        }
    }
    __syncthreads();

    const int lane = threadIdx.x & 31;  /* one warp per row */
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    constexpr int PV = Elem<DT>::PER_VEC;

    Acc a;
    a.s = 0.0; a.s2 = 0.0; a.sa = 0.0;
    a.mn = __int_as_float(0x7f800000); a.mx = __int_as_float(0xff800000);
    a.n = 0u; a.nnan = 0u; a.npinf = 0u; a.nninf = 0u;
    /* packed running min/max of the finite fast path: +inf / -inf in both halves */
    unsigned pmn = DT == 1 ? 0x7c007c00u : 0x7f807f80u;
    unsigned pmx = DT == 1 ? 0xfc00fc00u : 0xff80ff80u;
    unsigned nzero = 0u;    /* elements in bin 0 (zeros, and fp32 subnormals below 2^-133) */

    const i64 step = (i64)gridDim.x * nwarps;
    /* masked rows get -1 row outputs and are skipped; returns the first valid row at or after r */
    auto phys = [&](i64 r) { return reverse ? n_rows - 1 - r : r; };
    auto next_valid = [&](i64 r) {
        while (r < n_rows && mask != nullptr && mask[phys(r)] == 0) {
            if (ROWS && lane == 0) { const i64 p = phys(r); row_absmax[p] = -1.f; row_argmax[p] = -1; rowkey[p] = -1; }
            r += step;
        }
        return r;
    };
    float rmax = -1.f;
    int rarg = -1;
    if (VEC) {
        /* Software-pipelined over (row, chunk): the next chunk's UNROLL 16-byte loads, possibly of the
           warp's next row, are in flight while the current chunk is processed, so short rows (1-4K
           channels) do not stall the warp at every row start. */
        const i64 nvec = n_cols / PV;
        const i64 chunk = 32 * UNROLL;
        const i64 cpr = (nvec + chunk - 1) / chunk;
        i64 row = next_valid((i64)blockIdx.x * nwarps + warp);
        i64 c = 0;
        uint4 q[UNROLL];
        auto load_chunk = [&](i64 r, i64 cc) {
            const uint4* vp = (const uint4*)(x + phys(r) * row_stride_bytes);
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const i64 v = cc * chunk + lane + (i64)u * 32;
                if (v < nvec) q[u] = load_streaming(vp + v);
            }
        };
        if (row < n_rows) load_chunk(row, c);
        while (row < n_rows) {
            uint4 cur[UNROLL];
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) cur[u] = q[u];
            const i64 cur_row = row, cur_c = c;
            if (++c == cpr) { c = 0; row = next_valid(row + step); }
            if (row < n_rows) load_chunk(row, c);
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const i64 v = cur_c * chunk + lane + (i64)u * 32;
                if (v < nvec) process_vec<DT, ROWS, CH>(cur[u], (int)(v * PV), sh, hist, chw, a, pmn, pmx, nzero, rmax, rarg);
            }
            if (cur_c == cpr - 1) {
                if (lane == 0) a.n += (unsigned)n_cols;
                if (ROWS) finish_row(phys(cur_row), lane, rmax, rarg, row_absmax, row_argmax, rowkey,
                                     sample_ids, sample_max, n_samples, sample_oor);
                rmax = -1.f; rarg = -1;
            }
        }
    } else {
        for (i64 row = next_valid((i64)blockIdx.x * nwarps + warp); row < n_rows; row = next_valid(row + step)) {
            const char* rp = x + phys(row) * row_stride_bytes;
            for (i64 c = lane; c < n_cols; c += 32) {
                float fs = 0.f, fs2 = 0.f, fsa = 0.f;
                const float v = load_scalar<DT>(rp, c);
                visit<ROWS>(v, sh, hist, a, nzero, fs, fs2, fsa, rmax, rarg, (int)c);
                a.s += (double)fs; a.s2 += (double)fs2; a.sa += (double)fsa;
                if (CH) {
                    const unsigned ab = DT == 2 ? (__float_as_uint(v) & 0x7fffffffu)
                                                : ((const unsigned short*)rp)[c] & 0x7fffu;
                    if (ab <= NanAbove<DT>::V) ch_max_elem(chw, (int)c, ab);
                }
            }
            if (lane == 0) a.n += (unsigned)n_cols;
            if (ROWS) finish_row(phys(row), lane, rmax, rarg, row_absmax, row_argmax, rowkey,
                                 sample_ids, sample_max, n_samples, sample_oor);
            rmax = -1.f; rarg = -1;
        }
    }

    if (DT != 2) {   /* fold the packed min/max of the finite fast path */
        a.mn = fminf(a.mn, fminf(unpack<DT == 2 ? 0 : DT>(pmn, 0), unpack<DT == 2 ? 0 : DT>(pmn, 1)));
        a.mx = fmaxf(a.mx, fmaxf(unpack<DT == 2 ? 0 : DT>(pmx, 0), unpack<DT == 2 ? 0 : DT>(pmx, 1)));
    }
    /* warp reductions, then one global atomic per warp and statistic */
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        a.s += __shfl_down_sync(0xffffffffu, a.s, off);
        a.s2 += __shfl_down_sync(0xffffffffu, a.s2, off);
        a.sa += __shfl_down_sync(0xffffffffu, a.sa, off);
        a.mn = fminf(a.mn, __shfl_down_sync(0xffffffffu, a.mn, off));
        a.mx = fmaxf(a.mx, __shfl_down_sync(0xffffffffu, a.mx, off));
        a.n += __shfl_down_sync(0xffffffffu, a.n, off);
        a.nnan += __shfl_down_sync(0xffffffffu, a.nnan, off);
        a.npinf += __shfl_down_sync(0xffffffffu, a.npinf, off);
        a.nninf += __shfl_down_sync(0xffffffffu, a.nninf, off);
        nzero += __shfl_down_sync(0xffffffffu, nzero, off);
    }
    if (lane == 0 && a.n > 0u) {
        atomicAdd((u64*)counts + 0, (u64)(a.n - a.nnan));
        if (a.nnan) atomicAdd((u64*)counts + 1, (u64)a.nnan);
        if (a.npinf) atomicAdd((u64*)counts + 2, (u64)a.npinf);
        if (a.nninf) atomicAdd((u64*)counts + 3, (u64)a.nninf);
        if (nzero) atomicAdd(hist, (u64)nzero);
        atomicAdd(sums + 0, a.s);
        atomicAdd(sums + 1, a.s2);
        atomicAdd(sums + 2, a.sa);
        if (a.n > a.nnan) {
            atomic_min_float(minmax + 0, a.mn + 0.f);   /* + 0.f turns -0.0 into 0 */
            atomic_max_float(minmax + 1, a.mx + 0.f);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < WBINS; i += blockDim.x) {
        unsigned c = sh[i];
        if (c) atomicAdd(hist + WLO + i, (u64)c);
    }
    if (CH) {   /* only channels whose block max beats the global one (as last seen) take an atomic */
        for (int c = threadIdx.x; c < n_cols; c += blockDim.x) {
            float v;
            if (DT == 2) v = __uint_as_float(chw[c]);
            else if (DT == 0) v = __uint_as_float(chw[c] << 16);
            else v = half_to_float((unsigned short)chw[c]);
            if (v > *(volatile float*)(channel_max + c)) atomicMax((int*)(channel_max + c), __float_as_int(v));
        }
    }
}
"""


class _TorchStream:
    """Hands torch's current CUDA stream to cuda.core through the __cuda_stream__ protocol."""

    def __init__(self, handle: int):
        self._handle = handle

    def __cuda_stream__(self):
        return (0, self._handle)


@functools.lru_cache(maxsize=64)
def _stream(handle: int):
    """A cuda.core Stream wrapping (not owning) torch's stream ``handle``; cached per handle."""
    cc = _cuda_core()
    from_handle = getattr(cc.Stream, "from_handle", None)
    return from_handle(handle) if from_handle is not None else _TorchStream(handle)


@functools.lru_cache(maxsize=None)
def _cuda_core():
    try:
        from cuda import core as cuda_core  # noqa: F401
    except Exception:  # ImportError, or a driver/binding mismatch raised at import
        return None
    return cuda_core


def available(device: torch.device | str | None = None) -> bool:
    """True when the CUDA C++ path can run on ``device``: an NVIDIA GPU and ``cuda-core`` importable."""
    if not torch.cuda.is_available() or torch.version.hip is not None:
        return False
    if device is not None and torch.device(device).type != "cuda":
        return False
    return _cuda_core() is not None


def _source() -> str:
    return f"#define MAXACT_MIN_BLOCKS {_BLOCKS_PER_SM}\n#define MAXACT_HIST_INC {_HIST_INC}\n" + _SOURCE


def _compile(cc, source: str, arch: str, name: str, target: str = "cubin"):
    """NVRTC-compile one instantiation of ``source`` (``target`` "cubin" or "ptx")."""
    opts = cc.ProgramOptions(std="c++17", arch=arch)
    prog = cc.Program(source, code_type="c++", options=opts)
    return prog.compile(target, name_expressions=(name,))


def kernel_name(dtype_code: int, vec: bool, rows: bool, channels: bool) -> str:
    b = lambda f: "true" if f else "false"  # noqa: E731
    return f"maxact_fused_stats<{dtype_code}, {b(vec)}, {b(rows)}, {b(channels)}, {_UNROLL}>"


@functools.lru_cache(maxsize=None)
def _kernel(device_index: int, dtype_code: int, vec: bool, rows: bool, channels: bool):
    cc = _cuda_core()
    dev = cc.Device(device_index)
    dev.set_current()
    major, minor = torch.cuda.get_device_capability(device_index)
    name = kernel_name(dtype_code, vec, rows, channels)
    kernel = _compile(cc, _source(), f"sm_{major}{minor}", name).get_kernel(name)
    attrs = kernel.attributes
    logger.info("compiled %s for sm_%d%d: %d registers, %d bytes local memory",
                name, major, minor, attrs.num_regs, attrs.local_size_bytes)
    return kernel


@functools.lru_cache(maxsize=None)
def _allow_shared(kernel, device_index: int, nbytes: int) -> None:
    """Opt ``kernel`` in to ``nbytes`` of dynamic shared memory (needed above 48 KiB); once per size."""
    from cuda.bindings import driver

    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    (err,) = driver.cuKernelSetAttribute(attr, nbytes, kernel.handle, device_index)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuKernelSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, {nbytes}) failed: {err}")


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def fused_stats(
    x2d: torch.Tensor,
    row_mask: torch.Tensor | None,
    counts: torch.Tensor,
    sums: torch.Tensor,
    minmax: torch.Tensor,
    abs_hist: torch.Tensor,
    *,
    row_absmax: torch.Tensor | None = None,
    row_argmax: torch.Tensor | None = None,
    rowkey: torch.Tensor | None = None,
    sample_ids: torch.Tensor | None = None,
    sample_abs_max: torch.Tensor | None = None,
    sample_oor: torch.Tensor | None = None,
    channel_abs_max: torch.Tensor | None = None,
) -> None:
    """Accumulate one [rows, channels] tensor into the state tensors, on torch's current stream.

    Reads ``x2d`` once (rows * channels * itemsize bytes) and writes only the small state tensors.
    ``counts`` int64[4], ``sums`` float64[3], ``minmax`` float32[2], ``abs_hist`` int64[32768] are
    accumulated into. When ``row_absmax`` is given, ``row_argmax`` (int32) and ``rowkey`` (int64) must be
    too: they are overwritten for every row (-1 for masked rows and rows with no non-NaN value).
    ``sample_abs_max`` (float32[N], values >= 0) takes an atomic max per row at ``sample_ids[row]``;
    ids outside [0, N) are counted in ``sample_oor``. ``channel_abs_max`` (float32[C], values >= 0)
    takes the per-channel max |x| (only when :func:`channels_fit`).
    """
    if x2d.dim() != 2:
        raise ValueError(f"fused_stats expects a 2-D [rows, channels] tensor, got shape {tuple(x2d.shape)}")
    if x2d.dtype not in _DTYPE_CODE:
        raise TypeError(f"fused_stats supports bfloat16, float16 and float32, got {x2d.dtype}")
    n_rows, n_cols = x2d.shape
    if n_rows == 0 or n_cols == 0:
        return
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    if n_rows >= 2**32:
        raise ValueError("fused_stats takes fewer than 2**32 rows per call; split the update")
    rows = row_absmax is not None
    if rows and (row_argmax is None or rowkey is None):
        raise ValueError("row_absmax, row_argmax and rowkey go together")
    if sample_abs_max is not None and (not rows or sample_oor is None):
        raise ValueError("per-sample peaks need the row outputs and sample_oor")
    if row_mask is not None:
        row_mask = row_mask.reshape(-1)
        if row_mask.dtype != torch.bool:
            row_mask = row_mask.to(torch.bool)
    if sample_ids is not None and sample_ids.dtype != torch.int64:
        sample_ids = sample_ids.to(torch.int64)

    esize = x2d.element_size()
    vec_elems = 16 // esize
    vec = (
        n_cols % vec_elems == 0
        and x2d.stride(0) % vec_elems == 0
        and x2d.data_ptr() % 16 == 0
    )
    channels = channel_abs_max is not None
    if channels and not channels_fit(n_cols, x2d.dtype):
        raise ValueError(f"{n_cols} channels of {x2d.dtype} do not fit the fused kernel's shared memory")
    dev_index = x2d.device.index if x2d.device.index is not None else torch.cuda.current_device()
    kernel = _kernel(dev_index, _DTYPE_CODE[x2d.dtype], vec, rows, channels)
    shmem = _SH_HIST_BYTES + (_channel_bytes(n_cols, x2d.dtype) if channels else 0)
    if shmem > 48 * 1024:
        _allow_shared(kernel, dev_index, _SH_HIST_BYTES + CHANNEL_MAX_BYTES)

    warps = _BLOCK // 32
    by_rows = -(-n_rows // warps)
    by_bytes = max(1, (n_rows * n_cols * esize) // _MIN_BYTES_PER_BLOCK)
    grid = max(1, min(_num_sms(dev_index) * _BLOCKS_PER_SM, by_rows, by_bytes))

    cc = _cuda_core()
    stream = _stream(torch.cuda.current_stream(x2d.device).cuda_stream)
    config = cc.LaunchConfig(grid=grid, block=_BLOCK, shmem_size=shmem)
    p = np.uintp  # pointer-sized kernel parameters
    cc.launch(
        stream, config, kernel,
        p(x2d.data_ptr()), np.int64(n_rows), np.int64(n_cols), np.int64(x2d.stride(0) * esize),
        p(_ptr(row_mask)),
        p(counts.data_ptr()), p(sums.data_ptr()), p(minmax.data_ptr()), p(abs_hist.data_ptr()),
        p(_ptr(row_absmax)), p(_ptr(row_argmax)), p(_ptr(rowkey)),
        p(_ptr(sample_ids)),
        p(_ptr(sample_abs_max)), np.int64(0 if sample_abs_max is None else sample_abs_max.numel()),
        p(_ptr(sample_oor)),
        p(_ptr(channel_abs_max)), np.int32(_REVERSE),
    )


def _channel_bytes(n_cols: int, dtype: torch.dtype) -> int:
    """Shared bytes of the channel maxima: one 32-bit word per channel, padded to 8 channels."""
    return -(-n_cols // 8) * 8 * 4


def channels_fit(n_cols: int, dtype: torch.dtype) -> bool:
    """Whether the fused kernel can keep ``n_cols`` channel maxima of ``dtype`` in shared memory."""
    return _channel_bytes(n_cols, dtype) <= CHANNEL_MAX_BYTES
