"""Independent float64 statistics of captured activations, for checking a scan's stats.json.

Written from the semantics in DESIGN.md / CONTRACTS.md section 1 with numpy only: no maxact code.
"""

from __future__ import annotations

import numpy as np

HIST_BINS = 32768
QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999)
F32_TINY = float(np.finfo(np.float32).tiny)


def abs_bins(a: np.ndarray) -> np.ndarray:
    """Histogram bin of |x| for float32 values: float32 bits >> 16."""
    return (np.abs(a.astype(np.float32)).view(np.uint32) >> 16).astype(np.int64)


def bin_value(bins: np.ndarray) -> np.ndarray:
    return (bins.astype(np.uint32) << 16).view(np.float32)


def site_stats(x: np.ndarray, sample: np.ndarray, position: np.ndarray, *, topk: int, num_samples: int,
               track_tokens: bool, t_val: float = 100.0, t_ratio: float = 1000.0) -> dict:
    """x: float32 [rows, C] of the kept rows; sample / position: int64 [rows]."""
    x = np.asarray(x, dtype=np.float32)
    rows, channels = x.shape
    nan = np.isnan(x)
    finite = np.isfinite(x)
    x64 = x.astype(np.float64)
    fin = x64[finite]
    n_fin = fin.size
    out: dict = {
        "count": int((~nan).sum()),
        "nan_count": int(nan.sum()),
        "posinf_count": int(np.isposinf(x).sum()),
        "neginf_count": int(np.isneginf(x).sum()),
        "sum": float(fin.sum()),
        "sum_sq": float((fin * fin).sum()),
        "abs_sum": float(np.abs(fin).sum()),
    }
    out["mean"] = out["sum"] / n_fin if n_fin else np.nan
    out["rms"] = float(np.sqrt(out["sum_sq"] / n_fin)) if n_fin else np.nan
    out["abs_mean"] = out["abs_sum"] / n_fin if n_fin else np.nan
    out["std"] = float(np.sqrt(np.mean((fin - out["mean"]) ** 2))) if n_fin else np.nan
    vals = x[~nan]
    out["min"] = float(vals.min()) if vals.size else np.nan
    out["max"] = float(vals.max()) if vals.size else np.nan
    out["abs_max"] = float(np.abs(vals).max()) if vals.size else np.nan
    bins = abs_bins(vals)
    out["abs_hist"] = np.bincount(bins, minlength=HIST_BINS)
    qv = np.sort(bin_value(bins))
    out["quantiles"] = {q: float(np.quantile(qv, q, method="inverted_cdf")) if qv.size else np.nan
                        for q in QUANTILES}
    absx = np.where(nan, -np.inf, np.abs(x))
    out["channel_abs_max"] = np.maximum(absx.max(axis=0), 0).astype(np.float32) if rows else \
        np.zeros(channels, np.float32)
    sam = np.zeros(num_samples, dtype=np.float32)
    row_max = absx.max(axis=1) if rows else np.zeros(0)
    for s, m in zip(sample, row_max):
        if 0 <= s < num_samples and m > sam[s]:
            sam[s] = m
    out["sample_abs_max"] = sam
    out["topk"] = _topk(x, sample, position, topk)
    out["sun"] = _sun(x, sample, position, t_val, t_ratio) if track_tokens else None
    return out


def _topk(x, sample, position, k):
    r, c = np.nonzero(~np.isnan(x))
    a = np.abs(x[r, c])
    order = np.lexsort((c, position[r], sample[r], -a.astype(np.float64)))[:k]
    return [{"abs": float(a[i]), "value": float(x[r[i], c[i]]), "sample": int(sample[r[i]]),
             "position": int(position[r[i]]), "channel": int(c[i])} for i in order]


def _sun(x, sample, position, t_val, t_ratio):
    recs = []
    for i in range(x.shape[0]):
        row = x[i]
        ok = ~np.isnan(row)
        if not ok.any():
            continue
        a = np.abs(row[ok]).astype(np.float32)
        channels = np.nonzero(ok)[0]
        tmax = float(a.max())
        ch = int(channels[np.argmax(a)])          # first channel holding the max
        tmed = float(np.sort(a)[(a.size - 1) // 2])   # lower median
        ratio = tmax / max(tmed, F32_TINY)
        recs.append((tmax, tmed, ratio, int(sample[i]), int(position[i]), ch,
                     tmax > t_val and tmax > t_ratio * tmed))
    if not recs:
        return {"n_tokens": 0, "n_pass": 0}
    ratios = np.array([r[2] for r in recs])
    best_ratio = min(recs, key=lambda r: (-r[2], r[3], r[4], r[5]))
    peak = min(recs, key=lambda r: (-r[0], r[3], r[4], r[5]))
    return {
        "n_tokens": len(recs), "n_pass": int(sum(r[6] for r in recs)),
        "t_val": t_val, "t_ratio": t_ratio,
        "mean_ratio": float(ratios.mean()), "std_ratio": float(ratios.std()),
        "max_ratio": best_ratio[2], "max_ratio_abs": best_ratio[0], "max_ratio_median": best_ratio[1],
        "max_ratio_sample": best_ratio[3], "max_ratio_position": best_ratio[4],
        "max_ratio_channel": best_ratio[5],
        "peak_abs": peak[0], "peak_median": peak[1], "peak_ratio": peak[2], "peak_sample": peak[3],
        "peak_position": peak[4], "peak_channel": peak[5],
    }
