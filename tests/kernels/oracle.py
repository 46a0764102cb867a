"""Independent numpy float64 statement of the semantics (DESIGN.md, CONTRACTS.md section 1).

Written from the definitions, element by element where that is clearer, sharing no code with
``maxact_kernels``: it is what both backends are tested against. One call = one update.
"""

from __future__ import annotations

import math

import numpy as np
import torch

TINY = float(np.finfo(np.float32).tiny)


def as_float32(x: torch.Tensor) -> np.ndarray:
    """[R, C] float32 values of ``x`` (any dtype converts exactly), -0.0 turned into 0.0."""
    c = x.shape[-1]
    v = x.detach().to(torch.float32).reshape(-1, c).numpy().copy()
    v[v == 0] = 0.0
    return v


def oracle_summary(
    x: torch.Tensor,
    mask=None,
    sample_ids=None,
    positions=None,
    *,
    topk: int = 0,
    num_samples: int = 0,
    t_val: float = 100.0,
    t_ratio: float = 1000.0,
    token_median: str = "all",
) -> dict:
    """What ``ActivationStats(...).update(x, ...)`` followed by ``summary()`` must return."""
    v = as_float32(x)
    n_rows, n_cols = v.shape
    rows = np.ones(n_rows, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    sid = np.full(n_rows, -1, np.int64) if sample_ids is None else np.asarray(sample_ids, np.int64).reshape(-1)
    pos = np.arange(n_rows, dtype=np.int64) if positions is None else np.asarray(positions, np.int64).reshape(-1)

    present = v[rows]
    flat = present.reshape(-1)
    is_nan = np.isnan(flat)
    vals = flat[~is_nan]
    finite = vals[np.isfinite(vals)].astype(np.float64)
    n_fin = finite.size
    s, s2, sa = math.fsum(finite), math.fsum(finite * finite), math.fsum(np.abs(finite))
    nan = float("nan")
    out = {
        "count": int(vals.size),
        "sum": s,
        "sum_sq": s2,
        "abs_sum": sa,
        "mean": s / n_fin if n_fin else nan,
        "std": math.sqrt(max(s2 / n_fin - (s / n_fin) ** 2, 0.0)) if n_fin else nan,
        "rms": math.sqrt(s2 / n_fin) if n_fin else nan,
        "abs_mean": sa / n_fin if n_fin else nan,
        "min": float(vals.min()) if vals.size else nan,
        "max": float(vals.max()) if vals.size else nan,
        "abs_max": float(np.abs(vals).max()) if vals.size else nan,
        "nan_count": int(is_nan.sum()),
        "posinf_count": int((vals == np.inf).sum()),
        "neginf_count": int((vals == -np.inf).sum()),
        "abs_hist": np.bincount(np.abs(vals).view(np.uint32) >> 16, minlength=32768).astype(np.int64),
    }

    absv = np.abs(v)
    # per channel: max over present rows of non-NaN |x|, 0 if none
    chan = np.zeros(n_cols, np.float32)
    for c in range(n_cols):
        col = absv[rows, c]
        col = col[~np.isnan(col)]
        if col.size:
            chan[c] = col.max()
    out["channel_abs_max"] = chan

    # per row (token): max, first argmax, lower median over non-NaN |x|
    tokens = []
    for r in range(n_rows):
        if not rows[r]:
            continue
        a = absv[r]
        ok = ~np.isnan(a)
        if not ok.any():
            continue
        tmax = a[ok].max()
        arg = int(np.flatnonzero(ok & (a == tmax))[0])
        tmed = np.sort(a[ok])[(ok.sum() - 1) // 2]
        tokens.append((r, np.float32(tmax), np.float32(tmed), arg))

    smax = np.zeros(num_samples, np.float32)
    oor = 0
    for r, tmax, _, _ in tokens:
        if 0 <= sid[r] < num_samples:
            smax[sid[r]] = max(smax[sid[r]], tmax)
        else:
            oor += 1
    out["sample_abs_max"] = smax
    out["sample_id_out_of_range"] = oor

    out["sun"] = _sun(tokens, sid, pos, t_val, t_ratio, token_median)
    out["topk"] = _topk(v, rows, sid, pos, topk)
    return out


def _ratio(tmax: float, tmed: float) -> float:
    if math.isinf(tmax) and math.isinf(tmed):
        return 1.0
    return float(tmax) / max(float(tmed), TINY)


def _sun(tokens, sid, pos, t_val, t_ratio, token_median) -> dict:
    n_tokens = len(tokens)
    # candidates mode: the max-ratio token is sought among tokens whose max exceeds t_val only
    ratio_scope = [t for t in tokens if float(t[1]) > t_val] if token_median == "candidates" else tokens
    n_pass = sum(1 for _, tmax, tmed, _ in tokens if float(tmax) > t_val and float(tmax) > t_ratio * float(tmed))
    nan = float("nan")
    out = {"n_tokens": n_tokens, "n_pass": n_pass, "t_val": t_val, "t_ratio": t_ratio, "median_scope": token_median}
    if token_median == "all":
        ratios = [_ratio(t[1], t[2]) for t in tokens]
        mean = math.fsum(ratios) / n_tokens if n_tokens else nan
        with np.errstate(invalid="ignore"):
            var = math.fsum(r * r for r in ratios) / n_tokens - mean * mean if n_tokens else nan
        out["mean_ratio"] = mean
        out["std_ratio"] = math.sqrt(max(var, 0.0)) if not math.isnan(var) else nan
    else:
        out["mean_ratio"] = out["std_ratio"] = None

    def best(key, scope):
        if not scope:
            return None
        return min(scope, key=lambda t: (-key(t), sid[t[0]], pos[t[0]], t[0]))

    for prefix, key, scope in (("max_ratio", lambda t: _ratio(t[1], t[2]), ratio_scope),
                               ("peak", lambda t: float(t[1]), tokens)):
        t = best(key, scope)
        if t is None:
            vals = dict(abs=nan, median=nan, sample=-1, position=-1, channel=-1, key=nan)
        else:
            r, tmax, tmed, arg = t
            vals = dict(abs=float(tmax), median=float(tmed), sample=int(sid[r]), position=int(pos[r]),
                        channel=arg, key=key(t))
        if prefix == "max_ratio":
            out.update(max_ratio=vals["key"], max_ratio_abs=vals["abs"], max_ratio_median=vals["median"])
        else:
            out.update(peak_abs=vals["abs"], peak_median=vals["median"],
                       peak_ratio=_ratio(vals["abs"], vals["median"]) if t is not None else nan)
        out.update({f"{prefix}_sample": vals["sample"], f"{prefix}_position": vals["position"],
                    f"{prefix}_channel": vals["channel"]})
    return out


def _topk(v, rows, sid, pos, k) -> dict:
    entries = []
    for r in np.flatnonzero(rows):
        for c in range(v.shape[1]):
            if not np.isnan(v[r, c]):
                entries.append((-abs(float(v[r, c])), int(sid[r]), int(pos[r]), c, r))
    entries.sort()
    entries = entries[:k]
    return {
        "abs": np.array([-e[0] for e in entries], np.float32),
        "value": np.array([v[e[4], e[3]] for e in entries], np.float32),
        "sample": np.array([e[1] for e in entries], np.int64),
        "position": np.array([e[2] for e in entries], np.int64),
        "channel": np.array([e[3] for e in entries], np.int64),
    }
