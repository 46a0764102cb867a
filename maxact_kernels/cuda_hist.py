"""Exact |x| histogram fused with the basic statistics, in CUDA C++ compiled at run time.

Why CUDA C++ here: the exact 32768-bin histogram needs shared-memory atomics, which Triton does not
expose (a Triton histogram by global atomics runs at under 5% of copy bandwidth on an H100). This kernel
reads each element once and, in the same pass, updates

* the exact |x| histogram (bin = float32 bits of |x| >> 16, NaN excluded, inf in bin 32640),
* counts (non-NaN, NaN, +inf, -inf), sum / sum of squares / sum of |x| over finite values, min and max
  over non-NaN values,
* optionally per row: max |x| (a packed max per 16-byte vector, one warp reduction per row) and the
  per-sample peak (atomic max into ``sample_abs_max[sample_id]``, sent only when it beats what the block
  already sent for that sample: see ``sample_peak``); the channel that attains it is looked
  up afterwards in the rows of the token records alone (``triton_tokens.tokens_from_rows``),
* optionally the per-channel max |x| (up to 37888 channels in bf16/fp16, 18944 in fp32; wider tensors
  take a Triton pass).

Layout: one warp per row (so per-row maxima need no cross-warp traffic), 16-byte loads when the row
pitch and base pointer allow, a persistent grid of one 1024-thread block per SM, rows visited last to
first (the end of a tensor its producer just wrote is what L2 still holds); rows of whole chunks (32 x
UNROLL vectors) take no bounds tests, bf16 rows of whole warps one per slot. The basic update of a
contiguous tensor without a mask ignores rows and reads flat tiles (all threads of a block side by side),
the faster read pattern. What limits the kernel is the SM's MIO queue, which the histogram's one shared
atomic per element shares with the loads (docs/PERF_NOTES.md, kernel v9). The shared histogram covers
the 64 binades 2^-32 <= |x| < 2^32 (8192 bins, 32 KiB, cheap to zero and flush); anything else (zeros,
subnormals, |x| >= 2^32, inf) takes a rare path: a shared counter or a global atomic, exact and rare in
real activations.

The bf16/fp16 hot path costs about five instructions per element: a packed integer max and min of the
16-byte vector's |x| prove all eight elements finite and inside the window in a few instructions, then
each element is one shared atomic on its bin. For bf16 the window bin *is* the element's value, so the
squared and absolute sums are taken exactly (fp64) from the bins when a block flushes them, and the
signed sum runs on the tensor cores (one m16n8k16 MMA against a ones column per vector; exact products,
fp32 accumulation folded into fp64 every chunk). fp16 and fp32 sum in fp32 per vector, fp64 beyond.
Channel maxima live in shared memory as raw |x| bits (bf16/fp16: two channels per word, one 16-byte
shared load and four packed compares per vector), seeded from the global maxima; a vector under its
lane's least channel maximum skips them altogether. A record takes an atomicMax or a compare-and-swap
and marks its channel group, and only marked groups are raised in global memory when the block ends. Per-warp partial results are combined
in shared memory, so each block issues one set of global atomics.

Semantics are those of ``maxact_kernels.reference`` (see DESIGN.md); the state tensors are the ones
ActivationStats owns. Compiled once per (device, dtype, variant) through ``cuda.core`` (NVRTC) and
launched on torch's current stream, so no host synchronisation happens. On sm_90 the launch is a
programmatic dependent launch: it may be scheduled while the kernel before it on the stream finishes, and
waits for that kernel before it touches global memory; so back-to-back updates do not pay a whole kernel
boundary each (basic [16384, 4096] update 42.0 -> 40.6 µs on an H200, ``scripts/probe_pdl.py``).
"""

from __future__ import annotations

import functools
import os
import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

HIST_BINS = 32768
_BLOCK = int(os.environ.get("MAXACT_CUDA_BLOCK", 1024))
_BLOCKS_PER_SM = int(os.environ.get("MAXACT_CUDA_BLOCKS_PER_SM", 1))
# Below this many bytes per block the fixed cost (zeroing and flushing 8192 shared bins) dominates.
_MIN_BYTES_PER_BLOCK = int(os.environ.get("MAXACT_CUDA_MIN_BYTES_PER_BLOCK", 64 * 1024))
# 16-byte loads each lane has in flight while it processes the previous chunk (a register double
# buffer; a deeper shared-memory ring of cp.async copies measured no faster, see docs/PERF_NOTES.md).
_UNROLL = int(os.environ.get("MAXACT_CUDA_UNROLL", 2))
# Shared histogram increments as ATOMS.POPC.INC (0) or plain ATOMS.ADD (1): see hist_inc in the source.
_HIST_INC = int(os.environ.get("MAXACT_CUDA_HIST_INC", 0))
# The basic update of a contiguous unmasked tensor reads flat tiles instead of rows (0 turns it off).
_FLAT = int(os.environ.get("MAXACT_CUDA_FLAT", 1))
_WHOLE = 2   # the rows layout drops bounds tests: 2 on rows of whole warps or chunks, 1 chunks only, 0 none
# Visit rows last to first: the end of a tensor its producer just wrote is the part still in L2.
_REVERSE = int(os.environ.get("MAXACT_CUDA_REVERSE", 1))
# Launch with programmatic stream serialization on sm_90+ (0 turns it off): a pass queued right after
# another (back-to-back updates) is scheduled during the other's epilogue instead of after its end.
_PDL = int(os.environ.get("MAXACT_CUDA_PDL", 1))
# Shared bytes of the histogram window (WBINS + 8 words: dump slot, rare counts); channel maxima follow.
_SH_HIST_BYTES = (8192 + 8) * 4
_CH_DIRTY_BYTES = 160 * 4   # bitmap of raised channel groups, before the channel maxima
# Channel maxima are fused when they fit in this much shared memory (with the histogram, well inside the
# 227 KiB of one block per SM): 37888 bf16/fp16 channels (two per word) or 18944 fp32 channels.
CHANNEL_MAX_BYTES = 18944 * 4

_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}

# Shared with cuda_median's source.
LOAD_STREAMING_SRC = r"""
/* Activations are read once: keep them out of L1 (the load flavour made no measurable difference). */
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
    uint4 q;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(q.x), "=r"(q.y), "=r"(q.z), "=r"(q.w) : "l"(p));
    return q;
}
"""

_SOURCE = r"""
#ifndef MAXACT_MIN_BLOCKS
#define MAXACT_MIN_BLOCKS 1
#endif
#ifndef MAXACT_BLOCK
#define MAXACT_BLOCK 1024
#endif

typedef unsigned long long u64;
typedef long long i64;

#ifndef MAXACT_HIST_INC
#define MAXACT_HIST_INC 0
#endif

/* Programmatic dependent launch (sm_90+): a launch with programmatic stream serialization may start
   before the kernel ahead of it on the stream has finished. griddepcontrol.wait holds this grid until that
   kernel has completed and its writes are visible, so nothing before it may touch global memory;
   launch_dependents lets the next such launch be scheduled once every block of this grid has reached it.
   Both are no-ops on a plain launch. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MAXACT_GRID_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define MAXACT_LAUNCH_DEPENDENTS() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#else
#define MAXACT_GRID_WAIT() do {} while (0)
#define MAXACT_LAUNCH_DEPENDENTS() do {} while (0)
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
/* Rare counts live in shared words after the dump slot (a shared atomic when they happen), which keeps
   registers for the hot loop. */
#define SH_ZERO (WBINS + 1)   /* bin 0: zeros (and fp32 values below 2^-133) */
#define SH_NAN  (WBINS + 2)
#define SH_PINF (WBINS + 3)
#define SH_NINF (WBINS + 4)

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
    unsigned n;                 /* elements of valid rows, NaN included (lane 0 of each warp) */
    unsigned shb;               /* shared address of the histogram window, opaque to the compiler */
    unsigned cht;               /* CH: a lower bound of the shared maxima of every channel this thread
                                   visits, as |x| bits in the input's width (see lane_channel_floor),
                                   in both halves for 16-bit types (one packed compare per vector) */
};

/* One element. fs/fs2/fsa are fp32 partials of the current 16-byte vector. With HS (bf16), elements
   counted in the shared window add only to fs: their squares and |x| are summed from the window's exact
   bins when the block flushes it (a bf16 |x| is its bin's value), which is exact in fp64. */
template <bool ROWS, bool HS>
__device__ __forceinline__ void visit(float v, unsigned* sh, u64* ghist, Acc& a,
                                      float& fs, float& fs2, float& fsa,
                                      float& rmax) {
    const unsigned ab = __float_as_uint(v) & 0x7fffffffu;
    const float x = __uint_as_float(ab);
    a.mn = fminf(a.mn, v);
    a.mx = fmaxf(a.mx, v);
    if (ROWS) rmax = fmaxf(rmax, x);                  /* NaN never wins */
    const float vf = ab < 0x7f800000u ? v : 0.f;      /* sums skip inf and NaN */
    const unsigned w = (ab >> 16) - WLO;
    fs += vf;
    if (!HS || w >= WBINS) { fs2 = fmaf(vf, vf, fs2); fsa += fabsf(vf); }
    if (w < WBINS) {
        hist_inc(sh + w);
    } else if ((ab >> 16) == 0u) {
        atomicAdd(sh + SH_ZERO, 1u);
    } else if (ab > 0x7f800000u) {
        atomicAdd(sh + SH_NAN, 1u);
    } else {   /* subnormal, tiny, huge or inf: rare, straight to the global histogram */
        atomicAdd(ghist + (ab >> 16), 1ull);
        if (ab == 0x7f800000u) atomicAdd(sh + (v < 0.f ? SH_NINF : SH_PINF), 1u);
    }
}

__device__ __forceinline__ void atomic_max_float(float* addr, float v) {
    if (v >= 0.f) atomicMax((int*)addr, __float_as_int(v));
    else atomicMin((unsigned*)addr, __float_as_uint(v));
}
/* A float's bits as an unsigned integer with the same order (not for NaN), and back. */
__device__ __forceinline__ unsigned float_key(float f) {
    const unsigned u = __float_as_uint(f);
    return u ^ ((unsigned)((int)u >> 31) | 0x80000000u);
}
__device__ __forceinline__ float key_float(unsigned k) {
    return __uint_as_float(k ^ (((k >> 31) - 1u) | 0x80000000u));
}
__device__ __forceinline__ void atomic_min_float(float* addr, float v) {
    if (v >= 0.f) atomicMin((int*)addr, __float_as_int(v));
    else atomicMax((unsigned*)addr, __float_as_uint(v));
}

/*LOAD_STREAMING*/

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

/* Per-half unsigned max/min of two words of 16-bit halves: native on sm_90 (VIMNMX.U16x2). On |x| bits
   (sign cleared) integer order is value order, and NaN sorts above inf, so one packed max shows any
   non-finite element. */
__device__ __forceinline__ unsigned umax16x2(unsigned a, unsigned b) {
#if __CUDA_ARCH__ >= 900
    unsigned d; asm("max.u16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d;
#else
    return __vmaxu2(a, b);
#endif
}
__device__ __forceinline__ unsigned umin16x2(unsigned a, unsigned b) {
#if __CUDA_ARCH__ >= 900
    unsigned d; asm("min.u16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d;
#else
    return __vminu2(a, b);
#endif
}

/* Signed sum of bf16 vectors on the tensor cores: D = A x B + C with A the warp's 32 vectors (one
   m16n8k16 A fragment is exactly one 16-byte vector per lane) and B = 1/4 everywhere, so every column of
   D holds the row sums of A / 4; c[0] (row g, column 2t) and c[2] (row g + 8, column 2t) of lane 4g + t,
   summed over the 32 lanes, count each row sum / 4 four times: the total. Products and the
   power-of-two scaling are exact, accumulation is fp32, and the caller folds c[0] + c[2] into fp64 every
   chunk. This replaces eight unpacks and eight dependent fp32 adds per vector, and B is a constant
   (no per-lane column select). Must be reached by the whole warp. */
__device__ __forceinline__ void mma_sum_bf16(float c[4], const uint4 a) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%8}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(0x3e803e80u));
}

/* ---- per-channel max |x| in shared memory -------------------------------------------------------
   The raw bits of each channel's max |x| in the input's width: for bf16/fp16 two channels per 32-bit word
   (channel c in half c & 1 of word c >> 1), so the eight maxima of a 16-byte vector are one conflict-free
   16-byte shared load and four packed compares; for fp32 one word per channel. Bits of non-negative,
   non-NaN floats order like their values, so integer max is value max. The block starts from the global
   maxima (rounded towards zero, so they never exceed the truth), and each lane skips every vector whose
   max |x| is at most the least of its channels' maxima (lane_channel_floor): once the maxima are
   established almost no vector even compares. A record takes an atomicMax (fp32) or a compare-and-swap
   of the packed word (16-bit). */

/* Channel groups of 8 whose block maximum rose get a bit in a shared bitmap (CH_DIRTY_WORDS words before
   chw), so the end-of-block flush reads and raises only those: once the maxima settle, a block's flush
   touches no global memory. */
#define CH_DIRTY_WORDS 160   /* 160 * 32 groups * 8 channels = 40960 channels */
__device__ __forceinline__ void ch_mark(unsigned* chw, int ch) {
    atomicOr(chw - CH_DIRTY_WORDS + (ch >> 8), 1u << ((ch >> 3) & 31));
}
/* raise both halves of a packed word to at least those of v */
__device__ __forceinline__ void cas_max16x2(unsigned* p, unsigned old, unsigned v) {
    for (;;) {
        const unsigned nw = umax16x2(old, v);
        if (nw == old) return;
        const unsigned prev = atomicCAS(p, old, nw);
        if (prev == old) return;
        old = prev;
    }
}
/* one element's |x| bits (not NaN) at channel ch */
template <int DT> __device__ __forceinline__ void ch_max_elem(unsigned* chw, int ch, unsigned abits) {
    if (DT == 2) {
        if (abits > chw[ch]) { atomicMax(chw + ch, abits); ch_mark(chw, ch); }
    } else {
        const int sh = (ch & 1) * 16;
        const unsigned cur = chw[ch >> 1];
        if (abits > ((cur >> sh) & 0xffffu)) { cas_max16x2(chw + (ch >> 1), cur, abits << sh); ch_mark(chw, ch); }
    }
}

/* A 16-byte vector of bf16/fp16 at channels ch0..ch0+7 (ch0 a multiple of 8), packed |x| words aw[4]. */
__device__ __forceinline__ void ch_max_vec16(unsigned* chw, int ch0, const unsigned aw[4]) {
    const uint4 c = *(const uint4*)(chw + (ch0 >> 1));
    const unsigned cur[4] = {c.x, c.y, c.z, c.w};
    unsigned diff = 0u;
    #pragma unroll
    for (int k = 0; k < 4; ++k) diff |= umax16x2(aw[k], cur[k]) ^ cur[k];
    if (diff != 0u) {                          /* rare once the block has seen a few rows */
        #pragma unroll
        for (int k = 0; k < 4; ++k) cas_max16x2(chw + (ch0 >> 1) + k, cur[k], aw[k]);
        ch_mark(chw, ch0);
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
        ch_mark(chw, ch0);
    }
}

/* The least shared maximum over the channels of vectors lane, lane + 32, ... below nvec (one lane's channels in
   the rows path: a lane always visits the same vectors of a row) as |x| bits in the input's width, into
   floors[lane] (32 words, all ones before; the caller synchronises the block, then reads it): 16-byte vectors of
   bf16/fp16 hold 8 channels (4 packed words), of fp32 4 (4 words), so vector v's maxima are the 16 bytes at
   chw + 4 v either way. The block's warps split the vectors and combine by a shared atomic min: had every warp
   read all of its lane's vectors, the block would read the maxima 32 times over, a shared-memory-bound start
   of every pass (about 0.4 us per 1000 channels; scripts/probe_fused.py, H200). Shared maxima only rise, so
   the value stays a lower bound for the whole block: a vector whose max |x| does not exceed it needs no
   channel update. Once the global maxima are established (every update after a site's first few), almost
   no vector does. */
template <int DT>
__device__ __forceinline__ void lane_channel_floor(const unsigned* chw, unsigned* floors, int lane, int warp,
                                                   int nwarps, int nvec) {
    unsigned lo = 0xffffffffu;
    for (int v = lane + 32 * warp; v < nvec; v += 32 * nwarps) {
        const uint4 c = *(const uint4*)(chw + 4 * v);
        if (DT == 2) {
            lo = min(lo, min(min(c.x, c.y), min(c.z, c.w)));
        } else {
            const unsigned m = umin16x2(umin16x2(c.x, c.y), umin16x2(c.z, c.w));
            lo = min(lo, min(m & 0xffffu, m >> 16));
        }
    }
    if (lo != 0xffffffffu) atomicMin(floors + lane, lo);
}

/* The first channel of this lane's vector in the warp's slot vslot (vectors vslot .. vslot + 31 of a row). Only
   the rare paths that raise a channel maximum need it: the lane index comes from %laneid there (volatile, so
   not hoisted), because ptxas, short of registers, otherwise works the channel out ahead of every vector's
   test (six instructions a vector, among them an S2R of the thread index). */
template <int DT> __device__ __forceinline__ int vec_channel(int vslot) {
    unsigned lane;
    asm volatile("mov.u32 %0, %%laneid;" : "=r"(lane));
    return (vslot + (int)lane) * Elem<DT>::PER_VEC;
}

/* 4 * (w - WLO in each half) for a word of two bf16 |x| inside the window (see visit_vec16). In asm so
   that the compiler keeps one multiply-add per word rather than one per half. */
__device__ __forceinline__ unsigned window_offsets(unsigned w) {
    unsigned d;
    asm("mad.lo.u32 %0, %1, 4, %2;" : "=r"(d) : "r"(w), "n"(-(int)(WLO * 0x40004u)));
    return d;
}

/* One 16-byte vector of bf16 or fp16 whose eight |x| all lie in the shared window (the caller proved it
   from their packed min and max): the hot path. Each element costs one shared atomic on its window bin;
   for fp16 also its sum, square and |x| in fp32. For bf16 the signed sum is taken by the caller on the
   tensor cores (mma_sum_bf16) and the squares and |x| from the window's bins at the flush. Min and max
   stay packed (pmn/pmx); vmax is the packed |x| max of the vector. */
template <int DT, bool ROWS, bool CH>
__device__ __forceinline__ void visit_vec16(const unsigned wv[4], const unsigned aw[4], unsigned vmax,
                                            unsigned* sh, unsigned* chw, Acc& a, unsigned& pmn,
                                            unsigned& pmx, unsigned& rpk, int vslot) {
    constexpr int D = DT == 2 ? 0 : DT;   /* keeps the 16-bit helpers instantiable */
    #pragma unroll
    for (int k = 0; k < 4; ++k) { pmn = pmin<D>(pmn, wv[k]); pmx = pmax<D>(pmx, wv[k]); }
    float fs = 0.f, fs2 = 0.f, fsa = 0.f;
    unsigned* shw = sh - WLO;                  /* window bin b lives at shw[b] */
    #pragma unroll
    for (int j = 0; j < 8; ++j) {
        if (DT == 0) {                         /* bf16: the sums come from the MMA and the bins */
            /* Both halves' byte offsets into the window from one multiply-add: d = 4 * (aw - WLO in each
               half) cannot borrow across halves (both are >= WLO) and each half is < 4 * 8192, so the low
               offset is d's low 16 bits and the high one d >> 16 (three instructions per two bins). */
            const unsigned d = window_offsets(aw[j >> 1]);
            const unsigned off = (j & 1) ? (d >> 16) : (d & 0xffffu);
            /* a.shb: see its initialisation; ptxas still makes this add of 1 an ATOMS.POPC.INC (as
               hist_inc's default), and the MAXACT_HIST_INC variant does not reach this path */
            asm volatile("red.shared.add.u32 [%0], 1;" :: "r"(a.shb + off) : "memory");
        } else {
            const float v = unpack<D>(wv[j >> 1], j & 1);
            hist_inc(shw + (__float_as_uint(fabsf(v)) >> 16));
            fs += v; fs2 = fmaf(v, v, fs2); fsa += fabsf(v);
        }
    }
    if (DT != 0) { a.s += (double)fs; a.s2 += (double)fs2; a.sa += (double)fsa; }
    /* the row's max |x| stays packed (one instruction per vector); finish_row unpacks it. Where it lies is
       found later, only for the rows that need it (cuda_median) */
    if (ROWS) rpk = umax16x2(rpk, vmax);
    /* a vector whose max |x| is at most every one of this thread's channel maxima (a.cht, in both halves)
       raises none of them */
    if (CH && umax16x2(vmax, a.cht) != a.cht) ch_max_vec16(chw, vec_channel<DT>(vslot), aw);
}

/* One 16-byte vector of fp32 with no inf or NaN. Every element does one shared atomic: its window bin,
   or the dump slot WBINS (never flushed) when outside the window; the elements outside the window are
   redone once per vector: zeros on the shared zero count, the rest on the global histogram. */
template <bool ROWS, bool CH>
__device__ __forceinline__ void visit_vec32(const unsigned wv[4], unsigned* sh, u64* ghist, unsigned* chw,
                                            Acc& a, float& rmax, int vslot) {
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
        rare |= !in;
        a.mn = fminf(a.mn, v[j]); a.mx = fmaxf(a.mx, v[j]);
        vm = fmaxf(vm, fabsf(v[j]));
    }
    a.s += (double)fs; a.s2 += (double)fs2; a.sa += (double)fsa;
    if (rare) {
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (bn[j] - WLO >= WBINS) {
                if (bn[j] == 0u) atomicAdd(sh + SH_ZERO, 1u);
                else atomicAdd(ghist + bn[j], 1ull);
            }
        }
    }
    if (ROWS) rmax = fmaxf(rmax, vm);
    if (CH && __float_as_uint(vm) > a.cht) ch_max_vec32(chw, vec_channel<2>(vslot), aw);
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

/* One loaded 16-byte vector, the lane's in the warp's slot of vectors vslot .. vslot + 31 of its row: the fast
   path, or element by element.
   bf16/fp16: the vector's packed |x| max and min decide it in a few integer instructions. Each half h
   of (vmax + (0x8000 - HI)) has its top bit set iff h >= HI, and of (vmin + (0x8000 - LO)) iff h >= LO
   (no carry crosses halves since h <= 0x7fff), so the whole vector is finite and inside the window
   [LO, HI) iff the combined top bits are clear. Returns true when the vector's signed sum is left to the
   caller's MMA (the bf16 fast path); otherwise it was summed here, and a bf16 q is zeroed (so that an
   MMA over q adds nothing). */
template <int DT, bool ROWS, bool CH>
__device__ __forceinline__ bool process_vec(uint4& q, int vslot, unsigned* sh, u64* hist, unsigned* chw,
                                            Acc& a, unsigned& pmn, unsigned& pmx,
                                            float& rmax, unsigned& rpk) {
    constexpr int PER_WORD = (DT == 2) ? 1 : 2;
    const unsigned wv[4] = {q.x, q.y, q.z, q.w};
    if (DT == 2) {
        unsigned nonfinite = 0u;
        #pragma unroll
        for (int k = 0; k < 4; ++k) nonfinite |= (wv[k] & 0x7f800000u) == 0x7f800000u;
        if (nonfinite == 0u) {
            visit_vec32<ROWS, CH>(wv, sh, hist, chw, a, rmax, vslot);
            return false;
        }
    } else {
        unsigned aw[4];
        #pragma unroll
        for (int k = 0; k < 4; ++k) aw[k] = wv[k] & 0x7fff7fffu;
        const unsigned vmax = umax16x2(umax16x2(aw[0], aw[1]), umax16x2(aw[2], aw[3]));
        const unsigned vmin = umin16x2(umin16x2(aw[0], aw[1]), umin16x2(aw[2], aw[3]));
        constexpr unsigned LO = DT == 0 ? (unsigned)WLO : 1u;                 /* fp16: any non-zero */
        constexpr unsigned HI = DT == 0 ? (unsigned)(WLO + WBINS) : 0x7c00u;  /* fp16: finite */
        constexpr unsigned ADD_HI = (0x8000u - HI) * 0x10001u;
        constexpr unsigned ADD_LO = (0x8000u - LO) * 0x10001u;
        if ((((vmax + ADD_HI) | ~(vmin + ADD_LO)) & 0x80008000u) == 0u) {
            visit_vec16<DT, ROWS, CH>(wv, aw, vmax, sh, chw, a, pmn, pmx, rpk, vslot);
            return DT == 0;                    /* bf16: its signed sum is the caller's MMA */
        }
    }
    float fs = 0.f, fs2 = 0.f, fsa = 0.f;
    const int ch0 = CH ? vec_channel<DT>(vslot) : 0;
    #pragma unroll
    for (int k = 0; k < 4; ++k) {
        #pragma unroll
        for (int h = 0; h < PER_WORD; ++h) {
            visit<ROWS, DT == 0>(unpack<DT>(wv[k], h), sh, hist, a, fs, fs2, fsa, rmax);
            const unsigned ab = abits_of<DT>(wv[k], h);
            if (CH && ab <= NanAbove<DT>::V) ch_max_elem<DT>(chw, ch0 + k * PER_WORD + h, ab);
        }
    }
    a.s += (double)fs; a.s2 += (double)fs2; a.sa += (double)fsa;
    if (DT == 0) {   /* volatile: zeroed here, on the rare path, not by selects on every vector */
        asm volatile("mov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\tmov.b32 %2, 0;\n\tmov.b32 %3, 0;"
                     : "=r"(q.x), "=r"(q.y), "=r"(q.z), "=r"(q.w));
    }
    return false;
}

/* The signed sums of a warp's bf16 vectors q (zero where summed otherwise) on the tensor cores, into fp64.
   The whole warp must call it. */
template <int UNROLL>
__device__ __forceinline__ void mma_fold(Acc& a, const uint4 (&q)[UNROLL]) {
    __syncwarp();
    float macc[4] = {0.f, 0.f, 0.f, 0.f};
    #pragma unroll
    for (int u = 0; u < UNROLL; ++u) mma_sum_bf16(macc, q[u]);
    a.s += (double)macc[0] + (double)macc[2];
}

/* Per-sample peaks: the rows of one sample are mostly the rows of a few blocks at once, and one global atomic
   max per row, all on the same few words of one L2 slice, cost a [16384, 4096] pass about 3 us (one sample
   per 4096 rows; scripts/probe_fused.py, H200). So each block remembers, per sample id modulo SCACHE, a value
   that the sample's global peak will reach once this block's atomics land (tag = the id, value = the largest
   |x| it sent), and a row at or under it sends nothing. Entries are one 64-bit word (id << 32 | |x| bits),
   written whole, so a warp reads another's entry entire or not at all; either is a valid bound. */
#define SCACHE 64
__device__ __forceinline__ void sample_peak(u64* scache, i64 sid, float rmax, float* sample_max) {
    volatile u64* e = scache + ((unsigned)sid & (SCACHE - 1));
    const u64 seen = *e;
    const bool same = (unsigned)(seen >> 32) == (unsigned)sid;
    const float sent = __uint_as_float((unsigned)seen);
    if (same && rmax <= sent) return;
    atomicMax((int*)(sample_max + sid), __float_as_int(rmax));
    *e = ((u64)(unsigned)sid << 32) | __float_as_uint(same ? fmaxf(rmax, sent) : rmax);
}

/* End of a row: the warp's max |x| (rmax from the element path and fp32, rpk the packed max of the 16-bit
   fast path, 0 when no vector took it: its |x| are never 0), then lane 0 writes the row max (-1: no
   non-NaN value) and the per-sample peak (sid: the row's sample id, loaded by the caller ahead of time;
   ids below n_samples < 2^32, so the cache's 32-bit tag is the whole id). */
template <int DT>
__device__ __forceinline__ void finish_row(i64 row, int lane, float rmax, unsigned rpk,
                                           float* row_absmax, i64 sid, float* sample_max, i64 n_samples,
                                           i64* sample_oor, u64* scache) {
    if (DT != 2 && rpk != 0u) {
        const unsigned hi = max(rpk & 0xffffu, rpk >> 16);
        rmax = fmaxf(rmax, DT == 0 ? __uint_as_float(hi << 16) : half_to_float((unsigned short)hi));
    }
    /* as int, -1.f is negative and every |x| (+0 to inf) orders as its value: one REDUX */
    rmax = __int_as_float(__reduce_max_sync(0xffffffffu, __float_as_int(rmax)));
    if (lane == 0) {
        row_absmax[row] = rmax;
        if (sample_max != nullptr && rmax >= 0.f) {
            if (sid >= 0 && sid < n_samples) sample_peak(scache, sid, rmax, sample_max);
            else atomicAdd((u64*)sample_oor, 1ull);
        }
    }
}

#define SH_HIST_WORDS (WBINS + 8)   /* window bins, the dump slot, the rare counts, padding to 16 bytes */

template <int DT, bool VEC, bool ROWS, bool CH, int UNROLL, bool FLAT, int WHOLE>
__global__ void __launch_bounds__(MAXACT_BLOCK, MAXACT_MIN_BLOCKS) maxact_fused_stats(
    const char* __restrict__ x, i64 n_rows, i64 n_cols, i64 row_stride_bytes,
    const unsigned char* __restrict__ mask,           /* [n_rows] or null */
    i64* __restrict__ counts,                          /* [4] non-NaN, NaN, +inf, -inf */
    double* __restrict__ sums,                         /* [3] */
    float* __restrict__ minmax,                        /* [2] */
    u64* __restrict__ hist,                            /* [32768] */
    float* __restrict__ row_absmax,                    /* [n_rows] when ROWS: max |x|, -1 none */
    const i64* __restrict__ sample_ids,                /* [n_rows] or null */
    float* __restrict__ sample_max, i64 n_samples, i64* __restrict__ sample_oor,
    float* __restrict__ channel_max,                   /* [n_cols] when CH */
    int reverse)                                       /* visit rows last to first (hot in L2 first) */
{
    extern __shared__ __align__(16) unsigned smem[];
    unsigned* sh = smem;                               /* [SH_HIST_WORDS] */
    unsigned* chw = sh + SH_HIST_WORDS + CH_DIRTY_WORDS;     /* channel maxima (CH), after their bitmap */
    for (int i = threadIdx.x; i < SH_HIST_WORDS + (CH ? CH_DIRTY_WORDS : 0); i += blockDim.x) sh[i] = 0u;
    __shared__ u64 scache[SCACHE];   /* per-sample peaks already sent (sample_peak); tag ~0: empty */
    if (ROWS && threadIdx.x < SCACHE) scache[threadIdx.x] = ~0ull;
    __shared__ unsigned floors[32];  /* CH: each lane's channel floor (lane_channel_floor) */
    if (CH && threadIdx.x < 32) floors[threadIdx.x] = 0xffffffffu;
    /* Launched with programmatic stream serialization, this grid may be resident while the kernel before
       it (the previous update's pass, or the producer of x) finishes: only shared memory is touched above. */
    MAXACT_GRID_WAIT();
    if (CH) {
        /* Start from the global maxima, rounded towards zero in the input's width. Items of 8 channels (one
           16-byte vector of bf16/fp16 maxima in shared memory), and a thread's loads of BATCH items all in
           flight before it stores any: a loop of load-then-store paid one L2 round trip per item, at the
           start of every pass (0.55 us per 1000 channels; scripts/probe_fused.py, H200). */
        constexpr int BATCH = 4;
        const int ngrp = (int)((n_cols + 7) >> 3);
        const bool vec4 = (n_cols & 7) == 0 && ((size_t)channel_max & 15) == 0;
        auto bits = [&](float g) -> unsigned {
            if (DT == 2 || DT == 0) return DT == 2 ? __float_as_uint(g) : __float_as_uint(g) >> 16;
            unsigned short h;
            asm("cvt.rz.f16.f32 %0, %1;" : "=h"(h) : "f"(g));
            return h;
        };
        for (int g0 = threadIdx.x; g0 < ngrp; g0 += BATCH * blockDim.x) {
            float f[BATCH][8];
            #pragma unroll
            for (int b = 0; b < BATCH; ++b) {
                const int g = g0 + b * blockDim.x;
                if (vec4 && g < ngrp) {
                    const float4 lo = ((const float4*)channel_max)[2 * g], hi = ((const float4*)channel_max)[2 * g + 1];
                    f[b][0] = lo.x; f[b][1] = lo.y; f[b][2] = lo.z; f[b][3] = lo.w;
                    f[b][4] = hi.x; f[b][5] = hi.y; f[b][6] = hi.z; f[b][7] = hi.w;
                } else {
                    #pragma unroll
                    for (int k = 0; k < 8; ++k) f[b][k] = g < ngrp && 8 * g + k < n_cols ? channel_max[8 * g + k] : 0.f;
                }
            }
            #pragma unroll
            for (int b = 0; b < BATCH; ++b) {
                const int g = g0 + b * blockDim.x;
                if (g >= ngrp) break;
                if (DT == 2) {
                    *(uint4*)(chw + 8 * g) = make_uint4(bits(f[b][0]), bits(f[b][1]), bits(f[b][2]), bits(f[b][3]));
                    *(uint4*)(chw + 8 * g + 4) = make_uint4(bits(f[b][4]), bits(f[b][5]), bits(f[b][6]), bits(f[b][7]));
                } else {
                    *(uint4*)(chw + 4 * g) = make_uint4(bits(f[b][0]) | (bits(f[b][1]) << 16), bits(f[b][2]) | (bits(f[b][3]) << 16),
                                                        bits(f[b][4]) | (bits(f[b][5]) << 16), bits(f[b][6]) | (bits(f[b][7]) << 16));
                }
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
    a.n = 0u;
    a.cht = 0u;   /* every vector checks the channel maxima, unless the rows path below knows better */
    /* Kept in a register: left to itself the compiler recomputes the shared window's address for every
       vector, with an S2UR that queues behind the atomics in the MIO pipe. */
    asm volatile("mov.b32 %0, %1;" : "=r"(a.shb) : "r"((unsigned)__cvta_generic_to_shared(sh)));
    /* packed running min/max of the finite fast path: +inf / -inf in both halves */
    unsigned pmn = DT == 1 ? 0x7c007c00u : 0x7f807f80u;
    unsigned pmx = DT == 1 ? 0xfc00fc00u : 0xff80ff80u;

    const i64 step = (i64)gridDim.x * nwarps;
    /* masked rows get -1 row outputs and are skipped; returns the first valid row at or after r */
    auto phys = [&](i64 r) { return reverse ? n_rows - 1 - r : r; };
    auto next_valid = [&](i64 r) {
        while (r < n_rows && mask != nullptr && mask[phys(r)] == 0) {
            if (ROWS && lane == 0) row_absmax[phys(r)] = -1.f;
            r += step;
        }
        return r;
    };
    float rmax = -1.f;   /* ROWS: the row's max |x| so far, -1 none (element path, fp32) */
    unsigned rpk = 0u;   /* ROWS: the packed max |x| of the 16-bit fast path, 0 none */
    if (FLAT) {
        /* The basic update of a contiguous tensor without a mask (no row outputs, no channel maxima): rows
           do not matter, so each block reads tiles of blockDim x UNROLL vectors, all its threads side by
           side. That read pattern measured 0.87-0.90 of copy where warp-per-row measured 0.82
           (scripts/gpu_read_ceiling.py, H200). Whole rounds of tiles go round-robin to the blocks
           (interleaved: measured faster than a contiguous range per block), through a register double
           buffer with no bounds tests; what is left after the last whole round, less than a tile per block,
           is split evenly, so that no block is a tile behind the others at the end. (Flat tiles that follow
           rows, for masks, channel and row maxima, measured slower than rows: docs/PERF_NOTES.md, v12.) */
        const i64 nvec = n_rows * n_cols / PV;
        const int bd = blockDim.x;
        const i64 tile = (i64)bd * UNROLL;
        const unsigned ntiles = (unsigned)(nvec / tile / gridDim.x * gridDim.x);   /* whole rounds */
        const i64 rem = nvec - (i64)ntiles * tile;
        const i64 m0 = reverse ? rem : 0;                      /* rounds in [m0, m0 + ntiles * tile) */
        const i64 r0 = reverse ? 0 : (i64)ntiles * tile;       /* the rest in [r0, r0 + rem) */
        /* tiles blockIdx.x, + gridDim.x, ... (from the end when reverse): a pointer that steps and a
           32-bit count keep 64-bit index arithmetic out of the loop */
        const i64 step = reverse ? -(i64)gridDim.x * tile : (i64)gridDim.x * tile;
        const uint4* xv = (const uint4*)x + threadIdx.x;
        const uint4* p = xv + m0 + (reverse ? (i64)ntiles - 1 - blockIdx.x : (i64)blockIdx.x) * tile;
        auto load = [&](uint4 (&q)[UNROLL]) {
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) q[u] = load_streaming(p + u * bd);
            p += step;
        };
        auto eat = [&](uint4 (&q)[UNROLL]) {
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) process_vec<DT, false, false>(q[u], 0, sh, hist, chw, a, pmn, pmx, rmax, rpk);
            if (DT == 0) mma_fold<UNROLL>(a, q);
        };
        uint4 qa[UNROLL], qb[UNROLL];
        unsigned k = blockIdx.x;   /* 2^32 tiles would be over 2^42 elements */
        if (k < ntiles) {
            load(qa);
            for (;;) {
                k += gridDim.x;
                bool more = k < ntiles;
                if (more) load(qb);
                eat(qa);
                if (!more) break;
                k += gridDim.x;
                more = k < ntiles;
                if (more) load(qa);
                eat(qb);
                if (!more) break;
            }
        }
        /* this block's share of the rest, whole multiples of 8 vectors, with bounds tests */
        const i64 lo = r0 + ((rem * blockIdx.x / gridDim.x) & ~7LL);
        const i64 hi = blockIdx.x + 1 == gridDim.x ? r0 + rem : r0 + ((rem * (blockIdx.x + 1) / gridDim.x) & ~7LL);
        for (i64 base = lo; base < hi; base += tile) {   /* block-uniform: the MMA needs whole warps */
            /* every load in flight before the first is used (the shared atomics fence the compiler) */
            bool in[UNROLL];
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                in[u] = base + u * bd + threadIdx.x < hi;
                qa[u] = in[u] ? load_streaming(xv + base + u * bd) : make_uint4(0u, 0u, 0u, 0u);
            }
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                if (in[u]) process_vec<DT, false, false>(qa[u], 0, sh, hist, chw, a, pmn, pmx, rmax, rpk);
            }
            if (DT == 0) mma_fold<UNROLL>(a, qa);
        }
        if (blockIdx.x == 0 && threadIdx.x == 0) atomicAdd((u64*)counts, (u64)(n_rows * n_cols));
    } else if (VEC) {
        /* Software-pipelined over (row, chunk): the next chunk's UNROLL 16-byte loads, possibly of the
           warp's next row, are in flight while the current chunk is processed, so short rows (1-4K
           channels) do not stall the warp at every row start. Two register sets take turns (qa, qb)
           instead of copying, and indices inside a row are 32-bit (a row has < 2^31 vectors). */
        const int nvec = (int)(n_cols / PV);
        constexpr int CHUNK = 32 * UNROLL;
        const int cpr = (nvec + CHUNK - 1) / CHUNK;
        i64 row = next_valid((i64)blockIdx.x * nwarps + warp);
        int c = 0;   /* the chunk of the current row */
        /* the next load: its address (lane included) and how many vectors remain in its row from it */
        const uint4* lp = nullptr;
        int lrem = 0;
        /* Loaded when a row starts and used when it ends, so that no row boundary waits on a dependent
           global load: the next row's mask byte (a masked row then takes next_valid's walk) and this
           row's sample id. */
        unsigned mnext = 1u;
        i64 sid_cur = -1, sid_next = -1;
        auto start_row = [&](i64 r) {
            lp = (const uint4*)(x + phys(r) * row_stride_bytes) + lane;
            lrem = nvec - lane;
            if (mask != nullptr && r + step < n_rows) mnext = mask[phys(r + step)];
            if (ROWS && sample_ids != nullptr) sid_next = sample_ids[phys(r)];
        };
        auto load = [&](uint4 (&q)[UNROLL]) {
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                if (WHOLE == 1 || (WHOLE == 2 && u == 0) || 32 * u < lrem) q[u] = load_streaming(lp + 32 * u);
            }
            lp += CHUNK;
            lrem -= CHUNK;
        };
        /* processes the chunk in cur (loaded for row/c as they are on entry), after putting the next
           chunk's loads in flight into nxt; false when there is no next chunk */
        auto step_chunk = [&](uint4 (&cur)[UNROLL], uint4 (&nxt)[UNROLL]) -> bool {
            const i64 cur_row = row;
            const int cur_c = c;
            if (++c == cpr) {
                c = 0;
                sid_cur = sid_next;
                row += step;
                if (mnext == 0u) row = next_valid(row);
                if (row < n_rows) start_row(row);
            }
            const bool more = row < n_rows;
            if (more) load(nxt);
            const int v0 = cur_c * CHUNK + lane;
            uint4 msum[UNROLL];   /* the fast-path vectors, summed by the whole warp on the tensor cores */
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                if (WHOLE) {
                    /* WHOLE 1: no lane past the row's end; 2: the whole warp's slot is in the row or none of
                       it, slot 0 always. A vector summed on the rare path comes back zeroed. */
                    if (WHOLE == 1 || u == 0 || v0 - lane + 32 * u < nvec) {
                        process_vec<DT, ROWS, CH>(cur[u], v0 - lane + 32 * u, sh, hist, chw, a, pmn, pmx, rmax, rpk);
                        msum[u] = cur[u];
                    } else {
                        msum[u] = make_uint4(0u, 0u, 0u, 0u);
                    }
                    continue;
                }
                msum[u] = make_uint4(0u, 0u, 0u, 0u);
                if (v0 + 32 * u < nvec && process_vec<DT, ROWS, CH>(cur[u], v0 - lane + 32 * u, sh, hist, chw, a,
                                                                   pmn, pmx, rmax, rpk))
                    msum[u] = cur[u];
            }
            if (DT == 0) mma_fold<UNROLL>(a, msum);
            if (cur_c == cpr - 1) {
                if (lane == 0) a.n += (unsigned)n_cols;
                if (ROWS) finish_row<DT>(phys(cur_row), lane, rmax, rpk, row_absmax, sid_cur, sample_max, n_samples,
                                         sample_oor, scache);
                rmax = -1.f; rpk = 0u;
            }
            return more;
        };
        /* A lane visits the same vectors of every row, so its channel floor holds for the whole block. (Warps
           used to start each row at their own chunk, to race less on shared maxima: with the floor almost
           no vector races, and dropping the rotation took the channel maxima from 11.4 to 2.1 us of a
           [16384, 4096] pass, scripts/gpu_check_cuda_hist.py on the H200: fewer registers and spills.) */
        if (CH) {
            lane_channel_floor<DT>(chw, floors, lane, warp, nwarps, nvec);
            __syncthreads();   /* VEC is uniform: the whole block is here */
            a.cht = floors[lane] * (DT == 2 ? 1u : 0x10001u);
        }
        uint4 qa[UNROLL], qb[UNROLL];
        if (row < n_rows) {
            start_row(row);
            load(qa);
            while (step_chunk(qa, qb) && step_chunk(qb, qa)) {}
        }
    } else {
        for (i64 row = next_valid((i64)blockIdx.x * nwarps + warp); row < n_rows; row = next_valid(row + step)) {
            const char* rp = x + phys(row) * row_stride_bytes;
            for (i64 c = lane; c < n_cols; c += 32) {
                float fs = 0.f, fs2 = 0.f, fsa = 0.f;
                const float v = load_scalar<DT>(rp, c);
                visit<ROWS, DT == 0>(v, sh, hist, a, fs, fs2, fsa, rmax);
                a.s += (double)fs; a.s2 += (double)fs2; a.sa += (double)fsa;
                if (CH) {
                    const unsigned ab = DT == 2 ? (__float_as_uint(v) & 0x7fffffffu)
                                                : ((const unsigned short*)rp)[c] & 0x7fffu;
                    if (ab <= NanAbove<DT>::V) ch_max_elem<DT>(chw, (int)c, ab);
                }
            }
            if (lane == 0) a.n += (unsigned)n_cols;
            if (ROWS) finish_row<DT>(phys(row), lane, rmax, rpk, row_absmax,
                                     sample_ids != nullptr ? sample_ids[phys(row)] : (i64)-1,
                                     sample_max, n_samples, sample_oor, scache);
            rmax = -1.f; rpk = 0u;
        }
    }

    /* This block reads no more of x: the next pass may be scheduled (it waits for this grid's end before
       it reads or writes global memory), so its launch and shared-memory set-up overlap this epilogue. */
    MAXACT_LAUNCH_DEPENDENTS();
    if (DT != 2) {   /* fold the packed min/max of the finite fast path */
        a.mn = fminf(a.mn, fminf(unpack<DT == 2 ? 0 : DT>(pmn, 0), unpack<DT == 2 ? 0 : DT>(pmn, 1)));
        a.mx = fmaxf(a.mx, fmaxf(unpack<DT == 2 ? 0 : DT>(pmx, 0), unpack<DT == 2 ? 0 : DT>(pmx, 1)));
    }
    __syncthreads();   /* every shared atomic has landed */
    /* flush the window; for bf16 also its exact squared and absolute sums (bin value = the element), which
       join the thread's own sums before the reductions below */
    for (int i = threadIdx.x; i < WBINS; i += blockDim.x) {
        const unsigned c = sh[i];
        if (c) {
            atomicAdd(hist + WLO + i, (u64)c);
            if (DT == 0) {
                const double v = (double)__uint_as_float((unsigned)(WLO + i) << 16);
                a.sa = fma((double)c, v, a.sa);
                a.s2 = fma((double)c * v, v, a.s2);
            }
        }
    }
    /* warp reductions: fp64 sums by shuffles; min, max and count in one instruction each (REDUX), min and
       max as order-preserving integers (never NaN here: fminf/fmaxf skip it) */
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        a.s += __shfl_down_sync(0xffffffffu, a.s, off);
        a.s2 += __shfl_down_sync(0xffffffffu, a.s2, off);
        a.sa += __shfl_down_sync(0xffffffffu, a.sa, off);
    }
    const unsigned mn_key = __reduce_min_sync(0xffffffffu, float_key(a.mn));
    const unsigned mx_key = __reduce_max_sync(0xffffffffu, float_key(a.mx));
    const unsigned n_warp = __reduce_add_sync(0xffffffffu, a.n);
    /* warp partials to shared, then one thread per block takes the global atomics (same-address global
       atomics from every warp queue up in L2 at the end of the kernel) */
    __shared__ double part_d[3][MAXACT_BLOCK / 32];
    __shared__ unsigned part_u[3][MAXACT_BLOCK / 32];
    if (lane == 0) {
        part_d[0][warp] = a.s; part_d[1][warp] = a.s2; part_d[2][warp] = a.sa;
        part_u[0][warp] = mn_key; part_u[1][warp] = mx_key; part_u[2][warp] = n_warp;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0, s2 = 0.0, sa = 0.0;
        unsigned mnk = 0xffffffffu, mxk = 0u, n = 0u;
        for (int w = 0; w < nwarps; ++w) {
            s += part_d[0][w]; s2 += part_d[1][w]; sa += part_d[2][w];
            mnk = min(mnk, part_u[0][w]); mxk = max(mxk, part_u[1][w]); n += part_u[2][w];
        }
        if (n > 0u || FLAT) {   /* FLAT: block 0 counted every element */
            if (n > 0u) atomicAdd((u64*)counts + 0, (u64)n);   /* NaN included: taken off below */
            atomicAdd(sums + 0, s);
            if (s2 != 0.0 || sa != 0.0) { atomicAdd(sums + 1, s2); atomicAdd(sums + 2, sa); }
            /* a block that saw only NaN still holds +inf / -inf here, which change nothing */
            atomic_min_float(minmax + 0, key_float(mnk) + 0.f);   /* + 0.f turns -0.0 into 0 */
            atomic_max_float(minmax + 1, key_float(mxk) + 0.f);
        }
        const unsigned nnan = sh[SH_NAN], npinf = sh[SH_PINF], nninf = sh[SH_NINF], nzero = sh[SH_ZERO];
        if (nnan) { atomicAdd((u64*)counts + 0, (u64)(-(i64)nnan)); atomicAdd((u64*)counts + 1, (u64)nnan); }
        if (npinf) atomicAdd((u64*)counts + 2, (u64)npinf);
        if (nninf) atomicAdd((u64*)counts + 3, (u64)nninf);
        if (nzero) atomicAdd(hist, (u64)nzero);
    }
    if (CH) {   /* only raised channels whose block max beats the global one (as last seen) take an atomic */
        /* a thread per group of 8 channels (its bit in the bitmap), not per channel: the block's last work,
           and the SM's next pass cannot start before it is done */
        const int ngrp = (int)((n_cols + 7) >> 3);
        for (int g = threadIdx.x; g < ngrp; g += blockDim.x) {
            if (!((chw[g / 32 - CH_DIRTY_WORDS] >> (g & 31)) & 1u)) continue;
            for (int c = 8 * g; c < min(8 * g + 8, (int)n_cols); ++c) {
                const unsigned bits = DT == 2 ? chw[c] : (chw[c >> 1] >> ((c & 1) * 16)) & 0xffffu;
                float v;
                if (DT == 2) v = __uint_as_float(bits);
                else if (DT == 0) v = __uint_as_float(bits << 16);
                else v = half_to_float((unsigned short)bits);
                if (v > *(volatile float*)(channel_max + c)) atomicMax((int*)(channel_max + c), __float_as_int(v));
            }
        }
    }
}
"""

_SOURCE = _SOURCE.replace("/*LOAD_STREAMING*/\n", LOAD_STREAMING_SRC.lstrip("\n"))


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
    return (f"#define MAXACT_MIN_BLOCKS {_BLOCKS_PER_SM}\n#define MAXACT_BLOCK {_BLOCK}\n"
            f"#define MAXACT_HIST_INC {_HIST_INC}\n" + _SOURCE)


def _compile(cc, source: str, arch: str, name: str, target: str = "cubin"):
    """NVRTC-compile one instantiation of ``source`` (``target`` "cubin" or "ptx")."""
    opts = cc.ProgramOptions(std="c++17", arch=arch)
    prog = cc.Program(source, code_type="c++", options=opts)
    return prog.compile(target, name_expressions=(name,))


def kernel_name(dtype_code: int, vec: bool, rows: bool, channels: bool, flat: bool = False, whole: int = 0) -> str:
    """``flat``: flat tiles ignoring rows (else a warp per row); ``whole``, for the rows layout: 1 rows of
    whole chunks (32 x UNROLL vectors), with no bounds tests, 2 rows of whole warps (32 vectors), with a test
    per slot only."""
    b = lambda f: "true" if f else "false"  # noqa: E731
    return (f"maxact_fused_stats<{dtype_code}, {b(vec)}, {b(rows)}, {b(channels)}, {_UNROLL}, {b(flat)}, "
            f"{int(whole)}>")


@functools.lru_cache(maxsize=None)
def _kernel(device_index: int, dtype_code: int, vec: bool, rows: bool, channels: bool, flat: bool = False,
            whole: int = 0):
    cc = _cuda_core()
    dev = cc.Device(device_index)
    dev.set_current()
    major, minor = torch.cuda.get_device_capability(device_index)
    name = kernel_name(dtype_code, vec, rows, channels, flat, whole)
    kernel = _compile(cc, _source(), f"sm_{major}{minor}", name).get_kernel(name)
    attrs = kernel.attributes
    logger.info("compiled %s for sm_%d%d: %d registers, %d bytes local memory",
                name, major, minor, attrs.num_regs, attrs.local_size_bytes)
    return kernel


_SHARED_ALLOWED: dict = {}   # kernel -> dynamic shared bytes it is opted in to


def _allow_shared(kernel, device_index: int, nbytes: int) -> None:
    """Opt ``kernel`` in to at least ``nbytes`` of dynamic shared memory (needed above 48 KiB)."""
    key = (kernel, device_index)
    if _SHARED_ALLOWED.get(key, 48 * 1024) >= nbytes:
        return
    from cuda.bindings import driver

    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    (err,) = driver.cuKernelSetAttribute(attr, nbytes, kernel.handle, device_index)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuKernelSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, {nbytes}) failed: {err}")
    _SHARED_ALLOWED[key] = nbytes


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
    sample_ids: torch.Tensor | None = None,
    sample_abs_max: torch.Tensor | None = None,
    sample_oor: torch.Tensor | None = None,
    channel_abs_max: torch.Tensor | None = None,
    spare_sms: int = 0,
) -> None:
    """Accumulate one [rows, channels] tensor into the state tensors, on torch's current stream.

    Reads ``x2d`` once (rows * channels * itemsize bytes) and writes only the small state tensors.
    ``counts`` int64[4], ``sums`` float64[3], ``minmax`` float32[2], ``abs_hist`` int64[32768] are
    accumulated into. ``row_absmax`` (float32[rows]), when given, is overwritten with each row's max |x|
    (-1 for masked rows and rows with no non-NaN value); which channel holds it is looked up later, in
    the few rows that need one (the token records: ``triton_tokens.tokens_from_rows``).
    ``sample_abs_max`` (float32[N], values >= 0) takes an atomic max per row at ``sample_ids[row]``;
    ids outside [0, N) are counted in ``sample_oor``. ``channel_abs_max`` (float32[C], values >= 0)
    takes the per-channel max |x| (only when :func:`channels_fit`). ``spare_sms``: SMs left to kernels of
    other streams (each block of this kernel holds a whole SM's registers, so a kernel queued beside it
    otherwise waits for it to end, and delays the next pass by as long as it holds an SM).
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
    if sample_abs_max is not None and (not rows or sample_oor is None):
        raise ValueError("per-sample peaks need row_absmax and sample_oor")
    if sample_abs_max is not None and sample_abs_max.numel() >= 2**32 - 1:
        raise ValueError("fused_stats keeps fewer than 2**32 - 1 per-sample peaks (the kernel tags them with 32 bits)")
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
    # the basic update of a whole contiguous tensor reads it flat, ignoring rows (the faster read pattern)
    flat = bool(_FLAT and vec and not rows and not channels and row_mask is None and x2d.stride(0) == n_cols)
    # the rows layout on rows of whole chunks skips its bounds tests, on rows of whole warps most of them
    whole = _whole(n_cols // vec_elems, x2d.dtype) if vec and not flat else 0
    kernel = _kernel(dev_index, _DTYPE_CODE[x2d.dtype], vec, rows, channels, flat, whole)
    shmem = _SH_HIST_BYTES + (_CH_DIRTY_BYTES + _channel_bytes(n_cols, x2d.dtype) if channels else 0)
    _allow_shared(kernel, dev_index, shmem)

    warps = _BLOCK // 32
    by_rows = n_rows * n_cols if flat else -(-n_rows // warps)
    by_bytes = max(1, (n_rows * n_cols * esize) // _MIN_BYTES_PER_BLOCK)
    grid = max(1, min(_num_sms(dev_index) * _BLOCKS_PER_SM - spare_sms, by_rows, by_bytes))

    cc = _cuda_core()
    stream = _stream(torch.cuda.current_stream(x2d.device).cuda_stream)
    config = _launch_config(cc, grid, shmem, _PDL and _supports_pdl(dev_index))
    p = np.uintp  # pointer-sized kernel parameters
    cc.launch(
        stream, config, kernel,
        p(x2d.data_ptr()), np.int64(n_rows), np.int64(n_cols), np.int64(x2d.stride(0) * esize),
        p(_ptr(row_mask)),
        p(counts.data_ptr()), p(sums.data_ptr()), p(minmax.data_ptr()), p(abs_hist.data_ptr()),
        p(_ptr(row_absmax)),
        p(_ptr(sample_ids)),
        p(_ptr(sample_abs_max)), np.int64(0 if sample_abs_max is None else sample_abs_max.numel()),
        p(_ptr(sample_oor)),
        p(_ptr(channel_abs_max)), np.int32(_REVERSE),
    )


@functools.lru_cache(maxsize=None)
def _supports_pdl(device_index: int) -> bool:
    """Programmatic dependent launch needs sm_90+ and a cuda-core whose LaunchConfig takes it."""
    if torch.cuda.get_device_capability(device_index)[0] < 9:
        return False
    try:
        _cuda_core().LaunchConfig(grid=1, block=32, programmatic_stream_serialization=True)
    except TypeError:
        return False
    return True


def _launch_config(cc, grid: int, shmem: int, pdl: bool):
    if pdl:
        return cc.LaunchConfig(grid=grid, block=_BLOCK, shmem_size=shmem, programmatic_stream_serialization=True)
    return cc.LaunchConfig(grid=grid, block=_BLOCK, shmem_size=shmem)


def _whole(row_vectors: int, dtype: torch.dtype) -> int:
    """The rows layout's ``WHOLE``: 1 rows of whole chunks, 2 rows of whole warps (bf16: for fp16 and fp32
    ptxas spilled more there than with the bounds tests), 0 others."""
    if row_vectors % (32 * _UNROLL) == 0:
        return 1 if _WHOLE else 0
    return 2 if _WHOLE >= 2 and row_vectors % 32 == 0 and dtype == torch.bfloat16 else 0


def _channel_bytes(n_cols: int, dtype: torch.dtype) -> int:
    """Shared bytes of the channel maxima: 16 (bf16/fp16) or 32 (fp32) bits per channel, padded to 8."""
    return -(-n_cols // 8) * 8 * (4 if dtype == torch.float32 else 2)


def channels_fit(n_cols: int, dtype: torch.dtype) -> bool:
    """Whether the fused kernel can keep ``n_cols`` channel maxima of ``dtype`` in shared memory."""
    return _channel_bytes(n_cols, dtype) <= CHANNEL_MAX_BYTES
