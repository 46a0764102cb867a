"""GPU checks of the compiled kernels, run by ``test_gpu.py`` in a fresh process (the CPU tests hold the
kernels in Triton's interpreter, which cannot take CUDA tensors). Prints one JSON line per check:
``{"check": name, "ok": bool, "detail": str}``. Usage: ``python -m tests.kernels.gpu_checks [--quick] [--fast-only] [TEXT ...]``
(with TEXT arguments, only the checks whose names contain one of them).
"""

from __future__ import annotations

import json
import sys
import traceback

import numpy as np
import torch

from maxact_kernels import ActivationStats
from maxact_kernels import triton_update

FULL = dict(track_tokens=True, track_channels=True, topk=16, num_samples=8)
EXACT = ("count", "min", "max", "abs_max", "nan_count", "posinf_count", "neginf_count", "abs_hist",
         "channel_abs_max", "sample_abs_max", "sample_id_out_of_range", "topk")


def make(shape, dtype, gen):
    """Many binades, signs, and NaN / +-inf / +-0 / subnormals sprinkled in."""
    x = torch.randn(shape, generator=gen, device="cuda") * torch.exp(torch.randn(shape, generator=gen, device="cuda") * 3)
    flat = x.view(-1)
    if flat.numel() > 16:
        idx = torch.randint(0, flat.numel(), (12,), generator=gen, device="cuda")
        flat[idx] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 7e5, -7e5, 1e-40, -3e-39,
                                  1e-8, 6e4, float("nan")], device="cuda")
    return x.to(dtype)


def ids(rows, per_sample):
    r = torch.arange(rows, device="cuda")
    return r // per_sample, r % per_sample


def diff(a: dict, b: dict, sum_rtol: float = 1e-6) -> list[str]:
    errs = []
    for key in EXACT:
        if key not in b:
            continue   # a feature the states do not track
        x, y = a[key], b[key]
        if isinstance(x, dict):
            bad = [k for k in x if not np.array_equal(x[k], y[k])]
            if bad:
                errs.append(f"{key}.{bad}: {x} vs {y}")
        elif not np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True):
            errs.append(f"{key}: {x if np.ndim(x) == 0 else 'arrays differ'} vs {y if np.ndim(y) == 0 else ''}")
    for key, scale in (("sum", "abs_sum"), ("sum_sq", "sum_sq"), ("abs_sum", "abs_sum")):
        if abs(a[key] - b[key]) > sum_rtol * abs(b[scale]):
            errs.append(f"{key}: {a[key]} vs {b[key]}")
    sa, sb = dict(a.get("sun", {})), dict(b.get("sun", {}))
    for key in ("mean_ratio", "std_ratio") if sb else ():
        u, v = sa.pop(key), sb.pop(key)
        if not (u is None and v is None) and not (np.isclose(u, v, rtol=1e-9) or (np.isnan(u) and np.isnan(v)) or u == v):
            errs.append(f"sun.{key}: {u} vs {v}")
    for key in sa:
        if not (sa[key] == sb[key] or (isinstance(sa[key], float) and np.isnan(sa[key]) and np.isnan(sb[key]))):
            errs.append(f"sun.{key}: {sa[key]} vs {sb[key]}")
    return errs


def check_exact(shape, dtype, masked, token_median, fast_hist: bool, features: str = "full") -> list[str]:
    """``features``: "full" (everything), "channels" (basic statistics and channel maxima, no row
    outputs), "basic"."""
    gen = torch.Generator(device="cuda").manual_seed(hash((shape, str(dtype), masked)) % 2**31)
    x = make(shape, dtype, gen)
    rows = x.numel() // shape[-1]
    mask = (torch.rand(rows, generator=gen, device="cuda") > 0.2) if masked else None
    sids, pos = ids(rows, max(1, rows // 6))
    kw = dict(FULL, token_median=token_median, sun_abs_threshold=20.0, sun_ratio_threshold=50.0)
    if features != "full":
        kw = dict(track_channels=features == "channels")
    tri = ActivationStats(shape[-1], device="cuda", backend="triton", **kw)
    ref = ActivationStats(shape[-1], device="cuda", backend="reference", **kw)
    saved = triton_update.use_cuda_hist
    if not fast_hist:
        triton_update.use_cuda_hist = lambda device: False
    try:
        # two updates (second a slice: row stride > width) exercise accumulation and strides
        for part in (x, x[..., : max(1, shape[-1] - (8 if shape[-1] % 16 == 0 else 3))]):
            c = part.shape[-1]
            if c != shape[-1]:
                tri = ActivationStats(c, device="cuda", backend="triton", **kw)
                ref = ActivationStats(c, device="cuda", backend="reference", **kw)
            half = max(1, rows // 2)
            second = part.reshape(-1, c)[:half]
            for st in (tri, ref):
                st.update(part, mask, sids, pos)
                st.update(second, None, sids[:half] + 4, None)  # some ids out of range, default positions
            errs = diff(tri.summary(), ref.summary())
            if errs:
                return errs
    finally:
        triton_update.use_cuda_hist = saved
    return []


def median_rows(rows: int, width: int, dtype, gen) -> torch.Tensor:
    """Rows for the median kernel: spread values plus rows of all NaN, all +-inf, inf and NaN among finite
    values, zeros and -0.0, subnormals, ties, and a single non-NaN value."""
    x = make((rows, width), torch.float32, gen)
    tiny = float(torch.finfo(dtype).tiny)
    specials = [
        torch.full((width,), float("nan")),
        torch.full((width,), float("inf")) * torch.where(torch.arange(width) % 2 == 0, 1.0, -1.0),
        torch.where(torch.arange(width) % 3 == 0, float("inf"), 1.5),
        torch.where(torch.arange(width) % 2 == 0, float("nan"), -2.0),
        torch.where(torch.arange(width) % 2 == 0, 0.0, -0.0),
        tiny * torch.arange(width) / (width + 1),  # subnormals and zero
        torch.where(torch.arange(width) % 4 == 0, 3.0, -3.0),
        torch.where(torch.arange(width) == width - 1, 7.0, float("nan")),
    ]
    for i, row in enumerate(specials[: rows]):
        x[i] = row.to(x.device)
    return x.to(dtype)


def check_median(dtype, width: int, max_vec: int, swar: int, max_grid: int = 0) -> list[str]:
    """``cuda_median.row_median`` against torch.nanmedian, all rows and listed rows, with masked rows.
    ``max_grid=1``: one block, so each row group walks many rows (the previous-median bracket holds for
    similar rows and fails after a special one)."""
    from maxact_kernels import cuda_median

    saved = cuda_median._MAX_VEC, cuda_median._SWAR, cuda_median._MAX_GRID
    cuda_median._MAX_VEC, cuda_median._SWAR, cuda_median._MAX_GRID = max_vec, swar, max_grid
    try:
        gen = torch.Generator(device="cuda").manual_seed(width * 7 + max_vec + swar)
        rows = 37 if not max_grid else 301
        full = median_rows(rows, width + 8, dtype, gen)
        if max_grid:  # similar rows with a special row now and then
            full[8:] = (torch.randn(rows - 8, width + 8, generator=gen, device="cuda") * 3).to(dtype)
            full[150] = full[3]
            full[200] = full[5]
        x = full[:, :width]  # row stride > width
        a = x.float().abs()
        has = ~torch.isnan(a).all(dim=1)
        has[-3:] = False  # "masked" rows
        amax = torch.where(has, torch.nan_to_num(a, nan=-1.0).amax(dim=1), -1.0)
        want = torch.where(has, torch.nanmedian(a, dim=1).values, -1.0)
        errs = []
        out = torch.full((rows,), -5.0, device="cuda")
        cuda_median.row_median(x, amax, out)
        if not torch.equal(out, want):
            bad = (out != want).nonzero().flatten().tolist()[:5]
            errs.append(f"all: rows {bad}: {out[bad].tolist()} vs {want[bad].tolist()}")
        # listed rows (candidate medians on a side stream): every third row with a token, one or two blocks;
        # no other row of out is written
        sel = has.nonzero().flatten()[::3]
        listed = torch.full((rows,), -9, dtype=torch.int32, device="cuda")
        listed[: sel.numel()] = sel.int()
        out.fill_(-5.0)
        cuda_median.row_median(x, amax, out, rows=listed, n_listed=torch.tensor([sel.numel()], dtype=torch.int32,
                               device="cuda"), blocks=2 if max_grid else 1)
        want_l = torch.full_like(want, -5.0)
        want_l[sel] = want[sel]
        if not torch.equal(out, want_l):
            bad = (out != want_l).nonzero().flatten().tolist()[:5]
            errs.append(f"listed: rows {bad}: {out[bad].tolist()} vs {want_l[bad].tolist()}")
        # rows the kernel selects: above a threshold (about half of them), or only those that tie the max
        top = int(amax.argmax())   # row 7 ties the top (a copy of its row)
        x[7] = x[top]
        has[7], amax[7] = True, amax[top]
        want = torch.where(has, torch.nanmedian(x.float().abs(), dim=1).values, -1.0)
        for t_val in (float(amax[has].median()), float("inf")):
            errs += check_select(x, amax, want, t_val, blocks=4 if max_grid else 1, tag=f"select t_val={t_val}")
        return errs
    finally:
        cuda_median._MAX_VEC, cuda_median._SWAR, cuda_median._MAX_GRID = saved


def check_select(x, amax, want, t_val: float, blocks: int, tag: str) -> list[str]:
    """``row_median(select=...)``: the listed rows (rising), their number, the token count and their medians
    (no other entry of out written), against torch."""
    from maxact_kernels import cuda_median

    rows = x.shape[0]
    out = torch.full((rows,), -5.0, device="cuda")
    listed = torch.full((rows,), -9, dtype=torch.int32, device="cuda")
    n = torch.full((1,), -9, dtype=torch.int32, device="cuda")
    params = torch.tensor([t_val, 0.0], dtype=torch.float64, device="cuda")
    tok = torch.tensor([5, 0], dtype=torch.int64, device="cuda")
    cuda_median.row_median(x, amax, out, rows=listed, n_listed=n, blocks=blocks, select=(params, tok))
    has = amax >= 0
    sel = (has & ((amax.double() > t_val) | (amax == amax.max()))).nonzero().flatten()
    errs = []
    if int(n[0]) != sel.numel() or not torch.equal(listed[: sel.numel()], sel.int()):
        errs.append(f"{tag}: listed {int(n[0])} rows {listed[:8].tolist()}... vs {sel.numel()} {sel[:8].tolist()}...")
    if int(tok[0]) != 5 + int(has.sum()) or int(tok[1]) != 0:
        errs.append(f"{tag}: token count {tok.tolist()} vs {5 + int(has.sum())}")
    want_l = torch.full_like(want, -5.0)
    want_l[sel] = want[sel]
    if not torch.equal(out, want_l):
        bad = (out != want_l).nonzero().flatten().tolist()[:5]
        errs.append(f"{tag}: rows {bad}: {out[bad].tolist()} vs {want_l[bad].tolist()}")
    return errs


def check_select_many(dtype, rows: int) -> list[str]:
    """``row_median(select=...)`` over more rows than one chunk of its selection (8192), a count that is not
    a multiple of 4, masked and all-NaN rows, many rows above the threshold."""
    gen = torch.Generator(device="cuda").manual_seed(rows)
    x = (torch.randn(rows, 264, generator=gen, device="cuda") * 3).to(dtype)
    x[rows // 2] = float("nan")   # a row without a token
    a = x.float().abs()
    has = ~torch.isnan(a).all(dim=1)
    has[torch.rand(rows, generator=gen, device="cuda") < 0.1] = False   # masked rows
    amax = torch.where(has, torch.nan_to_num(a, nan=-1.0).amax(dim=1), -1.0)
    want = torch.where(has, torch.nanmedian(a, dim=1).values, -1.0)
    errs = []
    for t_val, blocks in ((float(amax[has].quantile(0.9)), 4), (float(amax[has].quantile(0.1)), 1)):
        errs += check_select(x, amax, want, t_val, blocks, f"select rows={rows} t_val={t_val:.3g} blocks={blocks}")
    return errs


def check_side_streams(token_median: str) -> list[str]:
    """Updates whose top-k and token kernels run on side streams, unsettled between updates: inputs freed
    right after each update (and their memory refilled with NaN at once, which a missing ``record_stream``
    would let the side kernels read), row counts that grow (scratch replaced), two states sharing the side
    streams, and readers in between (``state_dict``, the ``state`` property), against the reference."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    kw = dict(FULL, token_median=token_median, sun_abs_threshold=20.0, sun_ratio_threshold=50.0)
    tri = [ActivationStats(1536, device="cuda", backend="triton", **kw) for _ in range(2)]
    ref = [ActivationStats(1536, device="cuda", backend="reference", **kw) for _ in range(2)]
    errs = []
    for i, rows in enumerate((300, 300, 1200, 700, 4100, 4100, 2500, 9000, 9000, 64)):
        x = make((rows, 1536), torch.bfloat16, gen)
        mask = torch.rand(rows, generator=gen, device="cuda") > 0.1
        sids, pos = ids(rows, 256)
        sids = sids + 4 * i
        for st in ref:
            st.update(x, mask, sids, pos)
        for st in tri:
            st.update(x.clone(), mask.clone(), sids.clone(), pos.clone())   # temporaries, freed right away
            torch.full((rows, 1536), float("nan"), dtype=torch.bfloat16, device="cuda")
            torch.full((rows,), -7, dtype=torch.int64, device="cuda")
        if i == 4:
            tri[0].state_dict()
        if i == 6 and int(tri[1].state.tok_counts[0]) != int(ref[1].state.tok_counts[0]):
            errs.append(f"state property after update {i}: tok_counts differ")
    for k, (a, b) in enumerate(zip(tri, ref)):
        errs += [f"state {k}: {e}" for e in diff(a.summary(), b.summary())]
    return errs


def check_no_sync(token_median: str) -> list[str]:
    """Updates (top-k compaction included) raise under sync debug mode "error" if anything syncs."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = make((512, 384), torch.bfloat16, gen)
    mask = torch.ones(512, dtype=torch.bool, device="cuda")
    sids, pos = ids(512, 128)
    errs = []
    for backend in ("triton", "reference"):
        st = ActivationStats(384, device="cuda", backend=backend, token_median=token_median, **FULL)
        st.update(x, mask, sids, pos)  # compile / first-call work outside the check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(20):
                st.update(x, mask, sids, pos)
        except RuntimeError as exc:
            errs.append(f"{backend}: {exc}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return errs


def main() -> int:
    checks = {}
    fast = triton_update.use_cuda_hist(torch.device("cuda"))
    quick = "--quick" in sys.argv  # fewer combinations (bf16 gets them all)
    fast_only = "--fast-only" in sys.argv  # with cuda-core: skip the Triton-histogram variants
    for shape in [(1, 1), (5, 123), (3, 4, 37), (1823, 781), (64, 12288), (300, 4096), (517, 1536), (9, 24),
                  (300, 2304)]:
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            full = not quick or dtype == torch.bfloat16
            for fast_hist in ((True, False) if fast and full and not fast_only else (fast,)):
                for masked, tm in ((False, "all"), (True, "candidates")) if full else ((True, "all"),):
                    name = f"exact {shape} {str(dtype)[6:]} mask={masked} {tm} cuda_hist={fast_hist}"
                    checks[name] = lambda s=shape, d=dtype, m=masked, t=tm, f=fast_hist: check_exact(s, d, m, t, f)
            for feat in ("channels", "basic"):   # no row outputs (the flat layout when unmasked)
                for masked in (False, True):
                    name = f"exact {shape} {str(dtype)[6:]} mask={masked} {feat} cuda_hist={fast}"
                    checks[name] = lambda s=shape, d=dtype, m=masked, f=feat: check_exact(s, d, m, "all", fast, f)
    for dtype in (torch.bfloat16, torch.float16):
        for width in (8, 16, 24, 640, 1536, 4096, 4104, 8192, 12288, 32768):
            for max_vec, swar, grid in ((16, 0, 0), (16, 1, 0), (2, 0, 0), (16, 0, 1), (2, 0, 1)):
                if max_vec == 2 and width > 4096:
                    continue  # more than 8 warps per row: not taken
                name = f"median {str(dtype)[6:]} width={width} max_vec={max_vec} swar={swar} grid={grid or 'auto'}"
                checks[name] = lambda d=dtype, w=width, m=max_vec, s=swar, g=grid: check_median(d, w, m, s, g)
    for dtype in (torch.bfloat16, torch.float16):
        for rows in (3, 8195, 20001):
            checks[f"median select {str(dtype)[6:]} rows={rows}"] = lambda d=dtype, r=rows: check_select_many(d, r)
    for tm in ("all", "candidates"):
        checks[f"no host sync {tm}"] = lambda t=tm: check_no_sync(t)
        checks[f"side streams {tm}"] = lambda t=tm: check_side_streams(t)
    wanted = [a for a in sys.argv[1:] if not a.startswith("--")]
    if wanted:
        checks = {k: v for k, v in checks.items() if any(w in k for w in wanted)}
    failed = 0
    print(json.dumps({"check": "cuda_hist available", "ok": True, "detail": str(fast)}), flush=True)
    for name, fn in checks.items():
        try:
            errs = fn()
        except Exception:
            errs = [traceback.format_exc(limit=8)]
        failed += bool(errs)
        print(json.dumps({"check": name, "ok": not errs, "detail": "; ".join(errs)[:2000]}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
