"""Kernel benchmarks: ActivationStats.update on bf16 activations, providers triton / reference / torch.

Each provider is first checked equal to the reference at the benchmarked size (exact fields bit for bit,
sums to 1e-6), then timed. Reported: read bandwidth (bytes of x per second) and its fraction of the
read+write bandwidth of a same-size device copy measured in the same run (DESIGN.md's convention).
``basic`` = moments, min/max, NaN/inf counts, exact histogram; ``full`` adds per-token max/median and
the Sun criterion, per-channel and per-sample maxima, top-16; ``full_candidates`` computes token medians
only for tokens that can pass. Also: the time of one update on [4096, 1536] (a scan makes ~150 per
forward) and zero host syncs per update (``torch.cuda.set_sync_debug_mode("error")``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maxact_kernels import HIST_BINS, ActivationStats

FEATURES = {
    "basic": {},
    "full": dict(track_tokens=True, track_channels=True, topk=16, num_samples=64),
    "full_candidates": dict(track_tokens=True, track_channels=True, topk=16, num_samples=64,
                            token_median="candidates"),
}
EXACT = ("count", "min", "max", "abs_max", "nan_count", "posinf_count", "neginf_count", "abs_hist")
EXACT_FULL = ("channel_abs_max", "sample_abs_max", "topk")


def activations(shape, device, seed=0) -> torch.Tensor:
    """bf16 like a residual stream: |x| mostly below ~20 (log-normal scales, many binades) and a massive
    activation (3000, channel 7) in the first token of every 4096 and in one token of every 1024."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape, generator=g, device=device) * torch.exp(0.5 * torch.randn(shape, generator=g, device=device))
    x[::4096, 7] = 3000.0
    x[517::1024, 7] = -1500.0
    return x.to(torch.bfloat16)


def rotating_updates(st, xs, *args):
    """A call that updates ``st`` with the next of ``xs`` (in turn, so that timed updates read past L2) and
    ``args`` (mask, sample ids, positions)."""
    turn = [0]

    def update():
        turn[0] = (turn[0] + 1) % len(xs)
        st.update(xs[turn[0]], *args)

    return update


def row_ids(rows, device, tokens_per_sample=4096):
    r = torch.arange(rows, device=device)
    return r // tokens_per_sample, r % tokens_per_sample


class TorchOps:
    """Plain torch ops (float32), the 'per-hook torch reductions' kind of baseline: basic statistics only."""

    def __init__(self, device):
        self.count = torch.zeros(4, dtype=torch.int64, device=device)
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.lo = torch.full((), float("inf"), device=device)
        self.hi = torch.full((), float("-inf"), device=device)
        self.hist = torch.zeros(HIST_BINS, dtype=torch.int64, device=device)

    def update(self, x, mask=None, sample_ids=None, positions=None):
        xf = x.float()
        nan = torch.isnan(xf)
        inf = torch.isinf(xf)
        fin = torch.where(nan | inf, 0.0, xf)
        self.count += torch.stack([(~nan).sum(), nan.sum(), (xf == float("inf")).sum(), (xf == float("-inf")).sum()])
        self.sums += torch.stack([fin.sum(), (fin * fin).sum(), fin.abs().sum()]).double()
        lo, hi = torch.aminmax(torch.where(nan, xf.nan_to_num(nan=float("inf")), xf))
        self.lo = torch.minimum(self.lo, lo + 0.0)
        self.hi = torch.maximum(self.hi, torch.where(nan, float("-inf"), xf).amax() + 0.0)
        keys = ((xf.abs() + 0.0).view(torch.int32) >> 16).reshape(-1).long()
        self.hist.index_add_(0, keys, (~nan).reshape(-1).long())

    def summary(self):
        c, s = self.count.cpu().numpy(), self.sums.cpu().numpy()
        lo, hi = float(self.lo), float(self.hi)
        return {"count": int(c[0]), "nan_count": int(c[1]), "posinf_count": int(c[2]), "neginf_count": int(c[3]),
                "sum": float(s[0]), "sum_sq": float(s[1]), "abs_sum": float(s[2]), "min": lo, "max": hi,
                "abs_max": max(-lo, hi), "abs_hist": self.hist.cpu().numpy()}


def make_provider(provider, c, device, features):
    if provider == "torch":
        return TorchOps(device)
    return ActivationStats(c, device=device, backend=provider, **FEATURES[features])


def assert_matches_reference(got: dict, want: dict, features: str) -> None:
    keys = EXACT + (EXACT_FULL if features != "basic" else ())
    for key in keys:
        a, b = got[key], want[key]
        if isinstance(b, dict):
            for k in b:
                assert np.array_equal(a[k], b[k]), f"{key}.{k} differs from the reference"
        else:
            assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True), f"{key} differs from the reference"
    for key, scale in (("sum", "abs_sum"), ("sum_sq", "sum_sq"), ("abs_sum", "abs_sum")):
        assert abs(got[key] - want[key]) <= 1e-6 * abs(want[scale]), f"{key}: {got[key]} vs {want[key]}"
    if features != "basic":
        for key in ("n_tokens", "n_pass", "peak_abs", "peak_median", "peak_sample", "peak_position", "max_ratio"):
            assert got["sun"][key] == want["sun"][key] or np.isnan(want["sun"][key]), f"sun.{key}"


def line(name, shape, ms, nbytes, copy_ms_, device):
    read_bw = nbytes / (ms * 1e-3) / 1e9
    copy_bw = 2 * nbytes / (copy_ms_ * 1e-3) / 1e9
    frac = read_bw / copy_bw
    text = (f"{name:44s} {str(list(shape)):15s} {ms * 1e3:10.1f} us  {read_bw:9.3f} GB/s  "
            f"{frac:6.3f} of copy ({copy_bw:.1f} GB/s r+w, {device})")
    return {"line": text, "name": name, "shape": list(shape), "ms": ms, "read_GBps": read_bw, "copy_GBps_rw": copy_bw,
            "fraction_of_copy": frac}


@pytest.mark.parametrize("shape", [(16384, 4096), (16384, 12288)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("features", list(FEATURES))
@pytest.mark.parametrize("provider", ["triton", "reference", "torch"])
@pytest.mark.parametrize("masked", [True, False], ids=["mask", "nomask"])
def test_update_bandwidth_gpu(benchmark, gpu, timers, copy_ms, report, shape, features, provider, masked):
    """``masked``: a row mask (all true) as a scanner passes one; without it the basic update reads the
    tensor flat (the CUDA kernel's faster layout), with it row by row."""
    if provider == "torch" and features != "basic":
        pytest.skip("the plain-torch-ops provider implements the basic statistics only")
    if not masked and (features != "basic" or provider == "reference"):
        pytest.skip("only the basic update reads differently without a mask")
    xs = [activations(shape, gpu, seed) for seed in range(3)]   # rotated while timing: > 2x the L2
    x = xs[0]
    mask = torch.ones(shape[0], dtype=torch.bool, device=gpu) if masked else None
    sids, pos = row_ids(shape[0], gpu)
    ref = make_provider("reference", shape[1], gpu, features)
    ref.update(x, mask, sids, pos)
    st = make_provider(provider, shape[1], gpu, features)
    st.update(x, mask, sids, pos)
    assert_matches_reference(st.summary(), ref.summary(), "basic" if provider == "torch" else features)
    del ref

    iters = 3 if provider == "reference" else 20

    def run():
        for _ in range(iters):
            st.update(x, mask, sids, pos)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    update = rotating_updates(st, xs, mask, sids, pos)
    ms = timers[0](update, iters=iters, repeats=3, finish=getattr(st, "settle", None))
    row = line(f"{provider}/{features}" + ("" if masked else " (no mask)"), shape, ms, x.numel() * x.element_size(),
               copy_ms(shape, x.dtype, gpu), torch.cuda.get_device_name())
    row["host_issue_us"] = 1e3 * timers[2](update, iters=iters)
    row["line"] += f", host {row['host_issue_us']:.0f} us to queue"
    benchmark.extra_info.update(row)
    report(row)


@pytest.mark.parametrize("features", ["basic", "full", "full_candidates"])
def test_small_update_time_gpu(benchmark, gpu, timers, copy_ms, report, features):
    """Per-update fixed cost: [4096, 1536] bf16 (a Qwen2.5-1.5B hidden state of 4096 tokens)."""
    shape = (4096, 1536)
    x = activations(shape, gpu)
    mask = torch.ones(shape[0], dtype=torch.bool, device=gpu)
    sids, pos = row_ids(shape[0], gpu)
    st = ActivationStats(shape[1], device=gpu, **FEATURES[features])

    def run():
        for _ in range(50):
            st.update(x, mask, sids, pos)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    ms = timers[0](lambda: st.update(x, mask, sids, pos), iters=50, finish=st.settle)
    row = line(f"triton/{features} (update time)", shape, ms, x.numel() * 2, copy_ms(shape, x.dtype, gpu),
               torch.cuda.get_device_name())
    # a scan overlaps this host time with the GPU's work on earlier layers; it is the floor when it cannot
    row["host_issue_us"] = 1e3 * timers[2](lambda: st.update(x, mask, sids, pos), iters=50)
    row["line"] += f", host {row['host_issue_us']:.0f} us to queue"
    benchmark.extra_info.update(row)
    report(row)


@pytest.mark.parametrize("features", ["full", "full_candidates"])
def test_no_host_sync_per_update_gpu(benchmark, gpu, features):
    """No update synchronises with the host (torch raises under sync debug mode "error")."""
    x = activations((4096, 1536), gpu)
    mask = torch.ones(4096, dtype=torch.bool, device=gpu)
    sids, pos = row_ids(4096, gpu, 1024)
    st = ActivationStats(1536, device=gpu, **FEATURES[features])
    st.update(x, mask, sids, pos)
    torch.cuda.synchronize()

    def run():
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(20):  # more than the top-k pending buffer holds: compaction included
                st.update(x, mask, sids, pos)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=2, iterations=1)


@pytest.mark.parametrize("features", ["basic", "full"])
def test_update_cpu_reference(benchmark, copy_ms, report, features):
    """Small CPU benchmark (reference backend, the CPU path of real scans), with its ratio to a CPU copy."""
    shape = (512, 256)
    cpu = torch.device("cpu")
    x = activations(shape, cpu)
    sids, pos = row_ids(shape[0], cpu, 128)
    st = ActivationStats(shape[1], device=cpu, backend="reference", **FEATURES[features])
    benchmark.pedantic(lambda: st.update(x, None, sids, pos), rounds=5, iterations=3, warmup_rounds=1)
    ms = benchmark.stats.stats.median * 1e3
    row = line(f"reference/{features} (cpu)", shape, ms, x.numel() * 2, copy_ms(shape, x.dtype, cpu), "cpu")
    benchmark.extra_info.update(row)
    report(row)
    out = st.summary()
    assert out["count"] % x.numel() == 0 and out["abs_max"] == x.float().abs().max().item()
