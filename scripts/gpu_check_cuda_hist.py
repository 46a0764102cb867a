"""Device check of the CUDA C++ fused statistics kernel: exactness against float64 torch, then speed
against a device-to-device copy measured in the same run.
Usage: python scripts/gpu_check_cuda_hist.py [OUT_DIR [VARIANT,...|none]] (variants: see VARIANTS below; the
exactness cases run for the first variant, for each with CHECK_EVERY_VARIANT=1, for none with NO_CHECKS=1;
TIME_SHAPES=N times only the first N shapes)"""

import json
import logging
logging.basicConfig(level=logging.INFO)
import os
import sys

import torch
import triton.testing

from maxact_kernels import cuda_hist as ch

torch.manual_seed(0)
dev = torch.device("cuda")
out_dir = sys.argv[1] if len(sys.argv) > 1 else "."


def make(shape, dtype, specials=True, wide=True):
    x = torch.randn(shape, device=dev, dtype=torch.float32)
    if wide == "ties":                                             # row and channel maxima tie everywhere
        x = torch.randint(1, 5, shape, device=dev).float() * (torch.randint(0, 2, shape, device=dev) * 2 - 1)
    elif wide:
        x = x * torch.exp(torch.randn(shape, device=dev) * 3)      # many binades: slow paths too
    else:
        x = x * 3.0                                                # every vector on the fast path
    if specials and x.numel() > 16:
        flat = x.view(-1)
        idx = torch.randint(0, flat.numel(), (12,), device=dev)
        vals = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 7e5, -7e5,
                             1e-40, -3e-39, 1e-8, 6e4, float("nan")], device=dev)
        flat[idx] = vals
    return x.to(dtype)


def state(n_rows, n_cols=1, n_samples=64):
    return dict(
        counts=torch.zeros(4, dtype=torch.int64, device=dev),
        sums=torch.zeros(3, dtype=torch.float64, device=dev),
        minmax=torch.tensor([float("inf"), -float("inf")], device=dev),
        abs_hist=torch.zeros(32768, dtype=torch.int64, device=dev),
        row_absmax=torch.empty(n_rows, device=dev),
        sample_abs_max=torch.zeros(n_samples, device=dev),
        sample_oor=torch.zeros(1, dtype=torch.int64, device=dev),
        channel_abs_max=torch.zeros(n_cols, device=dev),
    )


def expected(x2d, mask, sample_ids, n_samples):
    xf = x2d.float()
    valid = mask if mask is not None else torch.ones(x2d.shape[0], dtype=torch.bool, device=dev)
    v = xf[valid]
    nan = torch.isnan(v)
    fin = torch.isfinite(v)
    a = v.abs()
    bins = (a[~nan].view(torch.int32) >> 16).long()
    d = v[fin].double()
    vv = v[~nan]
    rowa = torch.where(torch.isnan(xf), torch.full_like(xf, -1.0), xf.abs())
    rmax = rowa.max(dim=1).values
    rmax = torch.where(valid, rmax, torch.full_like(rmax, -1.0))
    smax = torch.zeros(n_samples, device=dev)
    ok = valid & (rmax >= 0)
    inside = (sample_ids >= 0) & (sample_ids < n_samples)
    smax.scatter_reduce_(0, sample_ids[ok & inside], rmax[ok & inside], reduce="amax")
    oor = int((ok & ~inside).sum())
    cmax = torch.where(torch.isnan(xf) | ~valid[:, None], 0.0, xf.abs()).amax(dim=0) if xf.shape[0] else None
    return dict(
        cmax=cmax,
        counts=[int((~nan).sum()), int(nan.sum()), int((v == float("inf")).sum()), int((v == -float("inf")).sum())],
        sums=[d.sum().item(), (d * d).sum().item(), d.abs().sum().item()],
        minmax=[(vv.min() + 0.0).item() if vv.numel() else float("inf"), (vv.max() + 0.0).item() if vv.numel() else -float("inf")],
        hist=torch.bincount(bins, minlength=32768),
        rmax=rmax, smax=smax, oor=oor,
    )


def check(shape, dtype, masked, noncontig=False, specials=True, wide=True, basic=False):
    """Errors of one update against float64 torch; ``basic``: no row outputs or channel maxima (the flat
    kernel when the input is contiguous and unmasked)."""
    x = make(shape, dtype, specials, wide)
    if noncontig:
        x = x[:, 1:]                     # row pitch != width, unaligned base: scalar path
    x2d = x
    n = x2d.shape[0]
    mask = (torch.rand(n, device=dev) > 0.3) if masked else None
    # runs of 37 rows over 64 samples (a warp's rows mostly share a sample), or, for a third of the shapes,
    # runs of 3 rows over 1000 samples, whose ids share the kernel's 64 cache entries (sample_peak); some
    # ids outside [0, n_samples)
    n_samples = 1000 if (n + x2d.shape[1]) % 3 == 0 else 64
    if n_samples == 64:
        sids = (torch.arange(n, device=dev) // 37) % 70 - 3
    else:
        sids = (torch.arange(n, device=dev) // 3 * 67) % 1006 - 3
    st = state(n, x2d.shape[1], n_samples)
    # a prior channel max (some channels above this tensor's maxima) exercises the shared start values;
    # non-zero everywhere half the time, so that lanes' channel floors are too and most vectors skip the check
    c = x2d.shape[1]
    prior = torch.rand(c, device=dev) * 3 * (1 + 9 * (torch.rand(c, device=dev) > 0.8))
    if (shape[0] + c) % 2:
        prior = torch.where(torch.rand(c, device=dev) > 0.5, prior, 0.0)
    st["channel_abs_max"].copy_(prior)
    fit_ch = ch.channels_fit(x2d.shape[1], x2d.dtype)
    fit = fit_ch and not basic
    e = expected(x2d, mask, sids, n_samples)
    if basic:
        ch.fused_stats(x2d, mask, st["counts"], st["sums"], st["minmax"], st["abs_hist"],
                       channel_abs_max=st["channel_abs_max"] if basic == "channels" and fit_ch else None)
        errs = compare(st, e)
        if basic == "channels" and fit_ch and not torch.equal(st["channel_abs_max"], torch.maximum(prior, e["cmax"])):
            errs.append("channel_abs_max (no rows)")
        return errs
    ch.fused_stats(x2d, mask, st["counts"], st["sums"], st["minmax"], st["abs_hist"],
                   row_absmax=st["row_absmax"],
                   sample_ids=sids, sample_abs_max=st["sample_abs_max"], sample_oor=st["sample_oor"],
                   channel_abs_max=st["channel_abs_max"] if fit else None)
    errs = compare(st, e)
    if fit and not torch.equal(st["channel_abs_max"], torch.maximum(prior, e["cmax"])):
        errs.append(f"channel_abs_max differs in {(st['channel_abs_max'] != torch.maximum(prior, e['cmax'])).sum().item()}")
    if not torch.equal(st["row_absmax"], e["rmax"]): errs.append("row_absmax")
    if not torch.equal(st["sample_abs_max"], e["smax"]): errs.append("sample_abs_max")
    if int(st["sample_oor"]) != e["oor"]: errs.append(f"sample_oor {int(st['sample_oor'])} vs {e['oor']}")
    return errs


def compare(st, e):
    """Errors of the basic statistics in state ``st`` against the expected ``e``."""
    errs = []
    if st["counts"].tolist() != e["counts"]: errs.append(f"counts {st['counts'].tolist()} vs {e['counts']}")
    for i, (got, want) in enumerate(zip(st["sums"].tolist(), e["sums"])):
        if abs(got - want) > 1e-6 * max(e["sums"][2] if i == 0 else abs(want), 1e-30):
            errs.append(f"sum[{i}] {got} vs {want}")
    if st["minmax"].tolist() != e["minmax"]: errs.append(f"minmax {st['minmax'].tolist()} vs {e['minmax']}")
    if not torch.equal(st["abs_hist"], e["hist"]): errs.append(f"hist differs in {(st['abs_hist'] != e['hist']).sum().item()} bins")
    return errs


results = {"device": torch.cuda.get_device_name(), "checks": {}, "timing": {}}


def run_checks(label):
    checks = {}
    for shape in [(1, 1), (5, 123), (7, 8), (1823, 781), (300, 4096), (64, 12288), (2, 1000008), (4099, 24),
                  (2000, 2048), (1537, 768), (300, 2304)]:
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for masked in (False, True):
                cases = [(False, True, True), (True, True, True), (False, False, True), (False, False, False),
                         (False, False, "ties")]
                for nc, sp, wide in (cases if shape[1] > 1 else cases[:1]):
                    key = f"{shape} {str(dtype)[6:]} mask={masked} noncontig={nc} specials={sp} wide={wide}"
                    try:
                        errs = check(shape, dtype, masked, nc, sp, wide)
                    except Exception as exc:  # report every failure, keep checking the others
                        errs = [f"{type(exc).__name__}: {exc}"]
                    checks[key] = errs
                    if not nc:   # the same input as a basic update
                        for basic in (True, "channels"):
                            try:
                                errs = check(shape, dtype, masked, nc, sp, wide, basic=basic)
                            except Exception as exc:
                                errs = [f"{type(exc).__name__}: {exc}"]
                            checks[key + (" basic" if basic is True else " channels only")] = errs
    bad = {k: v for k, v in checks.items() if v}
    print(f"{label}: exactness {len(checks) - len(bad)} / {len(checks)} cases pass", flush=True)
    for k, v in list(bad.items())[:20]:
        print("  FAIL", k, v[:3])
    results["checks"][label] = checks


# speed: rotate over several inputs so the 50 MB L2 does not serve repeats
def bench(fn):
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")

def time_shapes(label):
    shapes = [(16384, 4096), (16384, 12288), (4096, 1536), (32768, 1536), (32768, 8960)]
    for shape in shapes[:int(os.environ.get("TIME_SHAPES", len(shapes)))]:
        xs = [make(shape, torch.bfloat16, specials=False) for _ in range(3)]
        dst = torch.empty_like(xs[0])
        nbytes = xs[0].numel() * 2
        i = [0]
        def nxt():
            i[0] = (i[0] + 1) % 3
            return xs[i[0]]
        t_copy = bench(lambda: dst.copy_(nxt()))
        copy_bw = 2 * nbytes / t_copy / 1e9       # TB/s... in GB/ms -> bytes read + written
        st = state(shape[0], shape[1])
        t_basic = bench(lambda: ch.fused_stats(nxt(), None, st["counts"], st["sums"], st["minmax"], st["abs_hist"]))
        mask = torch.ones(shape[0], dtype=torch.bool, device=dev)
        t_mbasic = bench(lambda: ch.fused_stats(nxt(), mask, st["counts"], st["sums"], st["minmax"], st["abs_hist"]))
        sids = torch.arange(shape[0], device=dev) // 4096 % 64      # samples of 4096 tokens
        rows_kw = dict(row_absmax=st["row_absmax"],
                       sample_ids=sids, sample_abs_max=st["sample_abs_max"], sample_oor=st["sample_oor"])
        t_rows = bench(lambda: ch.fused_stats(nxt(), mask, st["counts"], st["sums"], st["minmax"], st["abs_hist"], **rows_kw))
        t_full = bench(lambda: ch.fused_stats(nxt(), mask, st["counts"], st["sums"], st["minmax"], st["abs_hist"],
                                              channel_abs_max=st["channel_abs_max"], **rows_kw))
        t_amax = bench(lambda: nxt().abs().amax())
        read_bw = lambda t: nbytes / t / 1e9
        row = {"copy_ms": t_copy, "copy_TBps_rw": copy_bw, "basic_ms": t_basic, "rows_ms": t_rows, "full_ms": t_full,
               "basic_frac_of_copy": read_bw(t_basic) / copy_bw, "masked_basic_ms": t_mbasic,
               "masked_basic_frac_of_copy": read_bw(t_mbasic) / copy_bw,
               "rows_frac_of_copy": read_bw(t_rows) / copy_bw,
               "full_frac_of_copy": read_bw(t_full) / copy_bw}
        results["timing"][f"{label} {shape}"] = row
        print(f"{label:10s} {str(shape):15s} copy {t_copy*1e3:7.1f} us ({copy_bw:.2f} TB/s) | basic {t_basic*1e3:7.1f} us "
              f"{row['basic_frac_of_copy']:.3f} | masked {t_mbasic*1e3:7.1f} {row['masked_basic_frac_of_copy']:.3f} | "
              f"+rows/samples {t_rows*1e3:7.1f} {row['rows_frac_of_copy']:.3f} | "
              f"+channels {t_full*1e3:7.1f} {row['full_frac_of_copy']:.3f} | torch abs().amax {t_amax*1e3:7.1f}", flush=True)


VARIANTS = {"default": {}, "fwd-order": {"_REVERSE": 0}, "unroll4": {"_UNROLL": 4},
            "atoms-add": {"_HIST_INC": 1}, "512x2": {"_BLOCK": 512, "_BLOCKS_PER_SM": 2},
            "no-flat": {"_FLAT": 0}, "no-whole": {"_WHOLE": 0}, "whole-chunks": {"_WHOLE": 1},
            "768": {"_BLOCK": 768}, "768-u3": {"_BLOCK": 768, "_UNROLL": 3}, "768-u4": {"_BLOCK": 768, "_UNROLL": 4}}
# argv[2]: comma-separated timing variants (default "default"); "none" checks exactness only
labels = sys.argv[2].split(",") if len(sys.argv) > 2 else ["default"]
if labels == ["none"]:
    run_checks("default")
for label in ([] if labels == ["none"] else labels):
    saved = {k: getattr(ch, k) for k in VARIANTS[label]}
    for k, v in VARIANTS[label].items():
        setattr(ch, k, v)
    ch._kernel.cache_clear()
    if (label == labels[0] or os.environ.get("CHECK_EVERY_VARIANT")) and not os.environ.get("NO_CHECKS"):
        run_checks(label)
    time_shapes(label)
    for k, v in saved.items():
        setattr(ch, k, v)
    ch._kernel.cache_clear()
x = torch.ones(16384, 4096, device=dev, dtype=torch.bfloat16)
st = state(16384)
lognormal = torch.randn(16384, 4096, device=dev) * torch.exp(0.5 * torch.randn(16384, 4096, device=dev))
lognormal[::4096, 7] = 3000.0                   # benchmarks/test_kernels.py's activations
for name, x in [("constant", torch.ones(16384, 4096, device=dev, dtype=torch.bfloat16)),
                ("randn", torch.randn(16384, 4096, device=dev).to(torch.bfloat16)),
                ("randn*16", (torch.randn(16384, 4096, device=dev) * 16).to(torch.bfloat16)),
                ("lognormal", lognormal.to(torch.bfloat16)),
                ("wide", make((16384, 4096), torch.bfloat16, specials=False))]:
    t = bench(lambda: ch.fused_stats(x, None, st["counts"], st["sums"], st["minmax"], st["abs_hist"]))
    print(f"data {name:9s} [16384,4096] basic {t*1e3:7.1f} us")
json.dump(results, open(os.path.join(out_dir, "cuda_hist_check.json"), "w"), indent=1)
