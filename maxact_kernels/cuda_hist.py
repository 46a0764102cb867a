"""Exact |x| histogram fused with the basic statistics, in CUDA C++ compiled at run time.

Why CUDA C++ here: the exact 32768-bin histogram needs shared-memory atomics, which Triton does not
expose (a Triton histogram by global atomics runs at under 5% of copy bandwidth on an H100). This kernel
reads each element once and, in the same pass, updates

* the exact |x| histogram (bin = float32 bits of |x| >> 16, NaN excluded, inf in bin 32640),
* counts (non-NaN, NaN, +inf, -inf), sum / sum of squares / sum of |x| over finite values
  (fp32 inside a 16-byte vector, fp64 per thread and across blocks), min and max over non-NaN values,
* optionally per row: max |x|, the first channel attaining it, the packed top-k row key, and the
  per-sample peak (atomic max into ``sample_abs_max[sample_id]``).

Layout: one warp per row (so per-row maxima need no cross-warp traffic), 16-byte loads when the row
pitch and base pointer allow, a persistent grid of at most two 512-thread blocks per SM. The shared
histogram covers the 64 binades 2^-32 <= |x| < 2^32 (8192 bins, 32 KiB: no opt-in shared memory, cheap
to zero and flush), plus one counter for exact zeros; anything else (subnormals, |x| >= 2^32, inf) goes
straight to the global histogram with a global atomic: exact, and rare in real activations.

Semantics are those of ``maxact_kernels.reference`` (see DESIGN.md); the state tensors are the ones
ActivationStats owns. Compiled once per (device, dtype, variant) through ``cuda.core`` (NVRTC) and
launched on torch's current stream, so no host synchronisation happens.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

HIST_BINS = 32768
_BLOCK = 512
_BLOCKS_PER_SM = 2
# Below this many bytes per block the fixed cost (zeroing and flushing 8192 shared bins) dominates.
_MIN_BYTES_PER_BLOCK = 256 * 1024

_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}

_SOURCE = r"""
typedef unsigned long long u64;
typedef long long i64;

#define WLO   12160   /* first windowed bin: exponent field 95, i.e. |x| = 2^-32 */
#define WBINS 8192    /* 64 binades x 128 mantissa bins: 2^-32 <= |x| < 2^32 */

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
    float mn, mx;               /* non-NaN values */
    unsigned n, nnan, npinf, nninf;
};

/* One element. fs/fs2/fsa are fp32 partials of the current 16-byte vector. */
__device__ __forceinline__ void visit(float v, unsigned* sh, u64* ghist, Acc& a,
                                      float& fs, float& fs2, float& fsa,
                                      float& rmax, int& rarg, int ch) {
    unsigned ab = __float_as_uint(v) & 0x7fffffffu;
    a.n += 1;
    if (ab > 0x7f800000u) { a.nnan += 1; return; }
    unsigned b = ab >> 16;
    unsigned w = b - WLO;
    if (w < WBINS) atomicAdd(sh + w, 1u);
    else if (ab == 0u) atomicAdd(sh + WBINS, 1u);
    else atomicAdd(ghist + b, 1ull);
    float x = __uint_as_float(ab);
    if (ab == 0x7f800000u) {
        if (v < 0.f) a.nninf += 1; else a.npinf += 1;
    } else {
        fs += v; fs2 = fmaf(v, v, fs2); fsa += x;
    }
    a.mn = fminf(a.mn, v);
    a.mx = fmaxf(a.mx, v);
    if (x > rmax) { rmax = x; rarg = ch; }      /* strict: keeps the first channel of a tie */
}

__device__ __forceinline__ void atomic_max_float(float* addr, float v) {
    if (v >= 0.f) atomicMax((int*)addr, __float_as_int(v));
    else atomicMin((unsigned*)addr, __float_as_uint(v));
}
__device__ __forceinline__ void atomic_min_float(float* addr, float v) {
    if (v >= 0.f) atomicMin((int*)addr, __float_as_int(v));
    else atomicMax((unsigned*)addr, __float_as_uint(v));
}

template <int DT, bool VEC, bool ROWS>
__global__ void __launch_bounds__(512, 2) maxact_fused_stats(
    const char* __restrict__ x, i64 n_rows, i64 n_cols, i64 row_stride_bytes,
    const unsigned char* __restrict__ mask,           /* [n_rows] or null */
    i64* __restrict__ counts,                          /* [4] non-NaN, NaN, +inf, -inf */
    double* __restrict__ sums,                         /* [3] */
    float* __restrict__ minmax,                        /* [2] */
    u64* __restrict__ hist,                            /* [32768] */
    float* __restrict__ row_absmax, int* __restrict__ row_argmax, i64* __restrict__ rowkey,
    const i64* __restrict__ sample_ids,                /* [n_rows] or null */
    float* __restrict__ sample_max, i64 n_samples, i64* __restrict__ sample_oor)
{
    __shared__ unsigned sh[WBINS + 1];
    for (int i = threadIdx.x; i < WBINS + 1; i += blockDim.x) sh[i] = 0u;
    __syncthreads();

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    constexpr int PV = Elem<DT>::PER_VEC;
    constexpr int WORDS_PER_ELEM_PAIR = (DT == 2) ? 1 : 2;   /* elements per 32-bit word */

    Acc a;
    a.s = 0.0; a.s2 = 0.0; a.sa = 0.0;
    a.mn = __int_as_float(0x7f800000); a.mx = __int_as_float(0xff800000);
    a.n = 0u; a.nnan = 0u; a.npinf = 0u; a.nninf = 0u;

    for (i64 row = (i64)blockIdx.x * nwarps + warp; row < n_rows; row += (i64)gridDim.x * nwarps) {
        if (mask != nullptr && mask[row] == 0) {
            if (ROWS && lane == 0) { row_absmax[row] = -1.f; row_argmax[row] = -1; rowkey[row] = -1; }
            continue;
        }
        const char* rp = x + row * row_stride_bytes;
        float rmax = -1.f;
        int rarg = -1;
        if (VEC) {
            const uint4* vp = (const uint4*)rp;
            const i64 nvec = n_cols / PV;
            for (i64 v = lane; v < nvec; v += 32) {
                uint4 q = vp[v];
                unsigned wv[4] = {q.x, q.y, q.z, q.w};
                float fs = 0.f, fs2 = 0.f, fsa = 0.f;
                const int ch0 = (int)(v * PV);
                #pragma unroll
                for (int k = 0; k < 4; ++k) {
                    #pragma unroll
                    for (int h = 0; h < WORDS_PER_ELEM_PAIR; ++h) {
                        visit(unpack<DT>(wv[k], h), sh, hist, a, fs, fs2, fsa, rmax, rarg,
                              ch0 + k * WORDS_PER_ELEM_PAIR + h);
                    }
                }
                a.s += (double)fs; a.s2 += (double)fs2; a.sa += (double)fsa;
            }
        } else {
            for (i64 c = lane; c < n_cols; c += 32) {
                float fs = 0.f, fs2 = 0.f, fsa = 0.f;
                visit(load_scalar<DT>(rp, c), sh, hist, a, fs, fs2, fsa, rmax, rarg, (int)c);
                a.s += (double)fs; a.s2 += (double)fs2; a.sa += (double)fsa;
            }
        }
        if (ROWS) {
            /* warp arg-max: larger value wins, the smaller channel breaks ties */
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
    }
    if (lane == 0 && a.n > 0u) {
        atomicAdd((u64*)counts + 0, (u64)(a.n - a.nnan));
        if (a.nnan) atomicAdd((u64*)counts + 1, (u64)a.nnan);
        if (a.npinf) atomicAdd((u64*)counts + 2, (u64)a.npinf);
        if (a.nninf) atomicAdd((u64*)counts + 3, (u64)a.nninf);
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
    if (threadIdx.x == 0 && sh[WBINS]) atomicAdd(hist, (u64)sh[WBINS]);
}
"""


class _TorchStream:
    """Hands torch's current CUDA stream to cuda.core through the __cuda_stream__ protocol."""

    def __init__(self, handle: int):
        self._handle = handle

    def __cuda_stream__(self):
        return (0, self._handle)


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


@functools.lru_cache(maxsize=None)
def _kernel(device_index: int, dtype_code: int, vec: bool, rows: bool):
    cc = _cuda_core()
    dev = cc.Device(device_index)
    dev.set_current()
    major, minor = torch.cuda.get_device_capability(device_index)
    opts = cc.ProgramOptions(std="c++17", arch=f"sm_{major}{minor}")
    name = f"maxact_fused_stats<{dtype_code}, {'true' if vec else 'false'}, {'true' if rows else 'false'}>"
    prog = cc.Program(_SOURCE, code_type="c++", options=opts)
    module = prog.compile("cubin", name_expressions=(name,))
    logger.debug("compiled %s for sm_%d%d", name, major, minor)
    return module.get_kernel(name)


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
) -> None:
    """Accumulate one [rows, channels] tensor into the state tensors, on torch's current stream.

    Reads ``x2d`` once (rows * channels * itemsize bytes) and writes only the small state tensors.
    ``counts`` int64[4], ``sums`` float64[3], ``minmax`` float32[2], ``abs_hist`` int64[32768] are
    accumulated into. When ``row_absmax`` is given, ``row_argmax`` (int32) and ``rowkey`` (int64) must be
    too: they are overwritten for every row (-1 for masked rows and rows with no non-NaN value).
    ``sample_abs_max`` (float32[N], values >= 0) takes an atomic max per row at ``sample_ids[row]``;
    ids outside [0, N) are counted in ``sample_oor``.
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
    dev_index = x2d.device.index if x2d.device.index is not None else torch.cuda.current_device()
    kernel = _kernel(dev_index, _DTYPE_CODE[x2d.dtype], vec, rows)

    warps = _BLOCK // 32
    by_rows = -(-n_rows // warps)
    by_bytes = max(1, (n_rows * n_cols * esize) // _MIN_BYTES_PER_BLOCK)
    grid = max(1, min(_num_sms(dev_index) * _BLOCKS_PER_SM, by_rows, by_bytes))

    cc = _cuda_core()
    stream = _TorchStream(torch.cuda.current_stream(x2d.device).cuda_stream)
    config = cc.LaunchConfig(grid=grid, block=_BLOCK)
    p = ctypes.c_void_p
    cc.launch(
        stream, config, kernel,
        p(x2d.data_ptr()), np.int64(n_rows), np.int64(n_cols), np.int64(x2d.stride(0) * esize),
        p(_ptr(row_mask)),
        p(counts.data_ptr()), p(sums.data_ptr()), p(minmax.data_ptr()), p(abs_hist.data_ptr()),
        p(_ptr(row_absmax)), p(_ptr(row_argmax)), p(_ptr(rowkey)),
        p(_ptr(sample_ids)),
        p(_ptr(sample_abs_max)), np.int64(0 if sample_abs_max is None else sample_abs_max.numel()),
        p(_ptr(sample_oor)),
    )
