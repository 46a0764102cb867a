"""How fast can one pass read a bf16 tensor on this GPU, by load scheme, with and without the shared-memory
histogram? Probe kernels (not maxact's), timed against a device copy in the same run, beside the fused
kernel of maxact_kernels.cuda_hist. Tells which load scheme a faster fused kernel should be built on.

Usage: python scripts/gpu_read_ceiling.py [OUT_DIR]

Kernels (one 1024-thread block per SM unless noted; "x" = xor of the loaded words, "h" = + one shared
atomic per element on its bin, as the fused kernel's hot path):
  flat<U>       each thread loads U independent 16-byte vectors, then consumes them (grid-stride tiles)
  pipe<U>       the same with a register double buffer: the next tile's U loads fly while this one is consumed
  rows<U>       warp per row, register double buffer of U vectors per lane (the fused kernel's scheme)
  tma<S,B>      a ring of S shared-memory stages of B bytes filled by the bulk copy engine
                (cp.async.bulk, one thread issues, mbarrier completion); all warps consume each stage
"""

import functools
import json
import os
import sys

import numpy as np
import torch
import triton.testing

from maxact_kernels import cuda_hist as ch

SOURCE = r"""
typedef unsigned long long u64;
#define WLO 12160
#define WBINS 8192

__device__ __forceinline__ uint4 ldg(const uint4* p) {
    uint4 q;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(q.x), "=r"(q.y), "=r"(q.z), "=r"(q.w) : "l"(p));
    return q;
}

/* MODE 0: xor of the words; MODE 1: one shared atomic per bf16 element on its window bin (wrapped into
   the window, so the address pattern is the real one for values inside it) */
template <int MODE> __device__ __forceinline__ void consume(const uint4 q, unsigned& acc, unsigned* sh) {
    if (MODE == 0) { acc ^= q.x ^ q.y ^ q.z ^ q.w; return; }
    const unsigned w[4] = {q.x, q.y, q.z, q.w};
    #pragma unroll
    for (int k = 0; k < 4; ++k) {
        atomicAdd(sh + (((w[k] & 0x7fffu) - WLO) & (WBINS - 1)), 1u);
        atomicAdd(sh + ((((w[k] >> 16) & 0x7fffu) - WLO) & (WBINS - 1)), 1u);
    }
}

template <int MODE> __device__ __forceinline__ void hist_zero(unsigned* sh) {
    if (MODE == 1) for (int i = threadIdx.x; i < WBINS; i += blockDim.x) sh[i] = 0u;
    __syncthreads();
}
template <int MODE> __device__ __forceinline__ void finish(unsigned acc, unsigned* sh, unsigned* out, u64* ghist) {
    if (acc == 0x9e3779b9u) out[0] = acc;          /* keeps the loads alive */
    if (MODE == 1) {
        __syncthreads();
        for (int i = threadIdx.x; i < WBINS; i += blockDim.x) if (sh[i]) atomicAdd(ghist + WLO + i, (u64)sh[i]);
    }
}

template <int U, int MODE>
__global__ void __launch_bounds__(1024, 1) flat(const uint4* x, long long nvec, unsigned* out, u64* ghist) {
    extern __shared__ __align__(16) unsigned sh[];
    hist_zero<MODE>(sh);
    unsigned acc = 0u;
    const long long tile = (long long)blockDim.x * U;
    for (long long b = blockIdx.x * tile + threadIdx.x; b < nvec; b += gridDim.x * tile) {
        uint4 q[U];
        #pragma unroll
        for (int u = 0; u < U; ++u) q[u] = b + u * blockDim.x < nvec ? ldg(x + b + u * blockDim.x) : make_uint4(0, 0, 0, 0);
        #pragma unroll
        for (int u = 0; u < U; ++u) consume<MODE>(q[u], acc, sh);
    }
    finish<MODE>(acc, sh, out, ghist);
}

template <int U, int MODE>
__global__ void __launch_bounds__(1024, 1) pipe(const uint4* x, long long nvec, unsigned* out, u64* ghist) {
    extern __shared__ __align__(16) unsigned sh[];
    hist_zero<MODE>(sh);
    unsigned acc = 0u;
    const long long tile = (long long)blockDim.x * U, stride = gridDim.x * tile;
    long long b = blockIdx.x * tile + threadIdx.x;
    auto load = [&](uint4 (&q)[U], long long at) {
        #pragma unroll
        for (int u = 0; u < U; ++u) q[u] = at + u * blockDim.x < nvec ? ldg(x + at + u * blockDim.x) : make_uint4(0, 0, 0, 0);
    };
    auto eat = [&](uint4 (&q)[U]) {
        #pragma unroll
        for (int u = 0; u < U; ++u) consume<MODE>(q[u], acc, sh);
    };
    uint4 qa[U], qb[U];
    if (b - threadIdx.x < nvec) {
        load(qa, b);
        for (;;) {
            b += stride; const bool m1 = b - threadIdx.x < nvec; if (m1) load(qb, b); eat(qa); if (!m1) break;
            b += stride; const bool m2 = b - threadIdx.x < nvec; if (m2) load(qa, b); eat(qb); if (!m2) break;
        }
    }
    finish<MODE>(acc, sh, out, ghist);
}

/* warp per row, row stride nvec_row vectors; the fused kernel's scheme without its statistics */
template <int U, int MODE>
__global__ void __launch_bounds__(1024, 1) rows(const uint4* x, long long n_rows, int nvec_row, unsigned* out, u64* ghist) {
    extern __shared__ __align__(16) unsigned sh[];
    hist_zero<MODE>(sh);
    unsigned acc = 0u;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const long long step = (long long)gridDim.x * nw;
    for (long long r = (long long)blockIdx.x * nw + warp; r < n_rows; r += step) {
        const uint4* p = x + r * nvec_row + lane;
        uint4 qa[U], qb[U];
        #pragma unroll
        for (int u = 0; u < U; ++u) qa[u] = 32 * u + lane < nvec_row ? ldg(p + 32 * u) : make_uint4(0, 0, 0, 0);
        for (int c = 32 * U; ; c += 64 * U) {
            #pragma unroll
            for (int u = 0; u < U; ++u) qb[u] = c + 32 * u + lane < nvec_row ? ldg(p + c + 32 * u) : make_uint4(0, 0, 0, 0);
            #pragma unroll
            for (int u = 0; u < U; ++u) consume<MODE>(qa[u], acc, sh);
            if (c >= nvec_row) break;
            #pragma unroll
            for (int u = 0; u < U; ++u) qa[u] = c + 32 * (U + u) + lane < nvec_row ? ldg(p + c + 32 * (U + u)) : make_uint4(0, 0, 0, 0);
            #pragma unroll
            for (int u = 0; u < U; ++u) consume<MODE>(qb[u], acc, sh);
            if (c + 32 * U >= nvec_row) break;
        }
    }
    finish<MODE>(acc, sh, out, ghist);
}

__device__ __forceinline__ unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    asm volatile("{\n.reg .pred P1;\nWAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 "@!P1 bra WAIT;\n}\n" :: "r"(bar), "r"(parity) : "memory");
}
/* one thread: expect B bytes on bar, then copy them from global src to shared dst in 16 KiB pieces */
template <int B> __device__ __forceinline__ void bulk_load(unsigned dst, const char* src, unsigned bar) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(B) : "memory");
    #pragma unroll
    for (int o = 0; o < B; o += 16384) {
        const int n = B - o < 16384 ? B - o : 16384;
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                     :: "r"(dst + o), "l"(src + o), "r"(n), "r"(bar) : "memory");
    }
}

/* nbytes a multiple of B; chunk c of B bytes goes to block c % gridDim.x */
template <int S, int B, int MODE>
__global__ void __launch_bounds__(1024, 1) tma(const char* x, long long nbytes, unsigned* out, u64* ghist) {
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned* sh = (unsigned*)(smem + S * B);
    __shared__ __align__(8) u64 full[S], empty[S];
    const int lane = threadIdx.x & 31;
    const long long nchunks = nbytes / B;
    const int mine = (int)((nchunks - blockIdx.x + gridDim.x - 1) / gridDim.x);
    if (threadIdx.x == 0) {
        for (int s = 0; s < S; ++s) { mbar_init(smem_addr(&full[s]), 1); mbar_init(smem_addr(&empty[s]), blockDim.x >> 5); }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    hist_zero<MODE>(sh);   /* includes the __syncthreads that publishes the barriers */
    if (threadIdx.x == 0)
        for (int s = 0; s < S && s < mine; ++s)
            bulk_load<B>(smem_addr(smem + s * B), x + (blockIdx.x + (long long)s * gridDim.x) * B, smem_addr(&full[s]));
    unsigned acc = 0u;
    for (int it = 0; it < mine; ++it) {
        const int s = it % S;
        const unsigned par = (it / S) & 1;
        mbar_wait(smem_addr(&full[s]), par);
        const uint4* v = (const uint4*)(smem + s * B);
        #pragma unroll
        for (int i = threadIdx.x; i < B / 16; i += 1024) consume<MODE>(v[i], acc, sh);
        __syncwarp();
        if (lane == 0) mbar_arrive(smem_addr(&empty[s]));
        if (threadIdx.x == 0 && it + S < mine) {
            mbar_wait(smem_addr(&empty[s]), par);
            bulk_load<B>(smem_addr(smem + s * B), x + (blockIdx.x + (long long)(it + S) * gridDim.x) * B, smem_addr(&full[s]));
        }
    }
    finish<MODE>(acc, sh, out, ghist);
}
"""

dev = torch.device("cuda")
out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
cc = ch._cuda_core()
cdev = cc.Device(torch.cuda.current_device())
cdev.set_current()
major, minor = torch.cuda.get_device_capability()
arch = f"sm_{major}{minor}"
n_sm = torch.cuda.get_device_properties(0).multi_processor_count
stream = ch._stream(torch.cuda.current_stream().cuda_stream)
p = np.uintp


@functools.lru_cache(maxsize=None)
def kernel(name):
    return ch._compile(cc, SOURCE, arch, name).get_kernel(name)


def bench(fn):
    return triton.testing.do_bench(fn, warmup=30, rep=200, return_mode="median")


results = {}
out_word = torch.zeros(4, dtype=torch.int32, device=dev)
ghist = torch.zeros(32768, dtype=torch.int64, device=dev)
for shape in [(16384, 4096), (16384, 12288)]:
    xs = [torch.randn(shape, device=dev).to(torch.bfloat16) for _ in range(2)]
    dst = torch.empty_like(xs[0])
    nbytes = xs[0].numel() * 2
    nvec = nbytes // 16
    i = [0]

    def nxt():
        i[0] ^= 1
        return xs[i[0]]

    t_copy = bench(lambda: dst.copy_(nxt()))
    copy_rw = 2 * nbytes / t_copy / 1e9
    frac = lambda t: (nbytes / t / 1e9) / copy_rw  # noqa: E731
    row = {"copy_us": t_copy * 1e3, "copy_TBps_rw": copy_rw}
    print(f"{shape}: copy {t_copy*1e3:.1f} us ({copy_rw:.2f} TB/s r+w)", flush=True)

    def report(label, t):
        row[label] = {"us": t * 1e3, "frac": frac(t)}
        print(f"  {label:28s} {t*1e3:8.1f} us  {frac(t):.3f} of copy", flush=True)

    report("torch sum(float32)", bench(lambda: nxt().sum(dtype=torch.float32)))
    report("torch amax", bench(lambda: nxt().amax()))
    st = dict(counts=torch.zeros(4, dtype=torch.int64, device=dev), sums=torch.zeros(3, dtype=torch.float64, device=dev),
              minmax=torch.tensor([float("inf"), -float("inf")], device=dev),
              abs_hist=torch.zeros(32768, dtype=torch.int64, device=dev))
    report("fused v8 basic", bench(lambda: ch.fused_stats(nxt(), None, **st)))

    hist_bytes = 8192 * 4
    for mode in (0, 1):
        tag = "x" if mode == 0 else "h"
        for u in (2, 4, 8):
            for kind in ("flat", "pipe"):
                if kind == "pipe" and u == 8:
                    continue
                k = kernel(f"{kind}<{u}, {mode}>")
                ch._allow_shared(k, 0, hist_bytes)
                cfg = cc.LaunchConfig(grid=n_sm, block=1024, shmem_size=hist_bytes)
                report(f"{kind}<{u}> {tag}", bench(lambda: cc.launch(stream, cfg, k, p(nxt().data_ptr()), np.int64(nvec),
                                                                  p(out_word.data_ptr()), p(ghist.data_ptr()))))
        for u in (2, 4):
            k = kernel(f"rows<{u}, {mode}>")
            ch._allow_shared(k, 0, hist_bytes)
            cfg = cc.LaunchConfig(grid=n_sm, block=1024, shmem_size=hist_bytes)
            report(f"rows<{u}> {tag}", bench(lambda: cc.launch(stream, cfg, k, p(nxt().data_ptr()), np.int64(shape[0]),
                                                            np.int32(shape[1] // 8), p(out_word.data_ptr()),
                                                            p(ghist.data_ptr()))))
        for s, b in ((4, 16384), (6, 16384), (8, 16384), (3, 32768), (4, 32768), (5, 32768)):
            if nbytes % b:
                continue
            k = kernel(f"tma<{s}, {b}, {mode}>")
            smem = s * b + hist_bytes
            ch._allow_shared(k, 0, smem)
            cfg = cc.LaunchConfig(grid=n_sm, block=1024, shmem_size=smem)
            report(f"tma<{s},{b // 1024}K> {tag}", bench(lambda: cc.launch(stream, cfg, k, p(nxt().data_ptr()), np.int64(nbytes),
                                                                        p(out_word.data_ptr()), p(ghist.data_ptr()))))
    # the histogram probes must see every element once: check one tma and one flat launch against torch
    x = xs[0]
    bins = ((x.view(torch.int16).to(torch.int32) & 0x7fff) - 12160) & 8191
    want = torch.bincount(bins.view(-1).long(), minlength=8192)
    for name, launch_args in ((f"tma<4, 32768, 1>", 4 * 32768), ("flat<4, 1>", 0)):
        k = kernel(name)
        ghist.zero_()
        cfg = cc.LaunchConfig(grid=n_sm, block=1024, shmem_size=launch_args + hist_bytes)
        cc.launch(stream, cfg, k, p(x.data_ptr()), np.int64(nbytes if "tma" in name else nvec),
                  p(out_word.data_ptr()), p(ghist.data_ptr()))
        got = ghist[12160:12160 + 8192]
        ok = bool(torch.equal(got, want))
        row[f"check {name}"] = ok
        print(f"  check {name}: {'exact' if ok else 'MISMATCH'}", flush=True)
    results[str(shape)] = row

json.dump(results, open(os.path.join(out_dir, "read_ceiling.json"), "w"), indent=1)
