"""Independent computations of what maxact.export writes, from raw activations, with numpy and the
value grids of torch's float8 dtypes only (no maxact code): channel maxima, clips by policy, scales,
SQNR, saturated shares.

The scan's histogram holds |x| truncated to bf16 (float32 bits >> 16 << 16); percentile and mse
clips and every SQNR are therefore defined on the truncated values (identical to the raw ones for
bf16 activations), while the ``max`` clip is the exact max |x|.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

QMAX = {"int8": 127.0, "int4": 7.0, "fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}
_TORCH_FP8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def truncated_abs(x: np.ndarray) -> np.ndarray:
    """|x| with the low 16 bits of its float32 pattern cleared (NaN dropped), float64, flat."""
    a = np.abs(np.asarray(x, dtype=np.float32)).ravel()
    a = a[~np.isnan(a)]
    return ((a.view(np.uint32) >> 16) << 16).view(np.float32).astype(np.float64)


def channel_max(x: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(x, dtype=np.float32)).max(axis=0)


def exact_max(x: np.ndarray) -> float:
    return float(np.abs(np.asarray(x, dtype=np.float32)).max())


def nearest_rank(x: np.ndarray, percent: float) -> float:
    """The value of rank ceil(p/100 * n) (1-based) among the sorted truncated |x|."""
    t = np.sort(truncated_abs(x))
    rank = max(1, math.ceil(Fraction(str(percent)) * t.size / 100))
    return float(t[rank - 1])


def fp8_grid(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(values ascending, their 8-bit codes) of every finite non-negative FP8 number, read from torch's
    float8 dtypes by bit pattern."""
    codes = torch.arange(128, dtype=torch.uint8)          # sign bit 0
    values = codes.view(_TORCH_FP8[dtype]).to(torch.float64).numpy()
    keep = np.isfinite(values)
    order = np.argsort(values[keep], kind="stable")
    return values[keep][order], codes.numpy()[keep][order]


def round_to_grid(y: np.ndarray, dtype: str) -> np.ndarray:
    """Nearest FP8 value of each y in [0, qmax], ties to the even code (round to nearest even).
    Rounds the float64 y once (torch's float64 -> float8 cast goes through float32 and can round twice)."""
    grid, codes = fp8_grid(dtype)
    hi = np.clip(np.searchsorted(grid, y, side="left"), 1, grid.size - 1)
    lo = hi - 1
    d_lo, d_hi = y - grid[lo], grid[hi] - y
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (codes[hi] % 2 == 0))
    return np.where(take_hi, grid[hi], grid[lo])


def quantize(t: np.ndarray, scale: float, dtype: str) -> np.ndarray:
    """Symmetric per-tensor fake quantization of non-negative values: integers by numpy's rint
    (half to even), FP8 by nearest value on the grid of torch's float8 dtype (ties to even)."""
    qmax = QMAX[dtype]
    y = np.minimum(t / scale, qmax)
    if dtype in _TORCH_FP8:
        q = round_to_grid(y, dtype)
    else:
        q = np.minimum(np.rint(y), qmax)
    return q * scale


def sqnr_db(x: np.ndarray, scale: float, dtype: str) -> float:
    t = truncated_abs(x)
    noise = float(((t - quantize(t, scale, dtype)) ** 2).sum())
    signal = float((t * t).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def saturated(x: np.ndarray, clip: float) -> float:
    t = truncated_abs(x)
    return float((t > clip).mean())


def mse_error(x: np.ndarray, clip: float, dtype: str) -> float:
    """sum (|x| - Q(|x|))^2 over the truncated values with scale = clip / qmax (float64)."""
    t = truncated_abs(x)
    return float(((t - quantize(t, clip / QMAX[dtype], dtype)) ** 2).sum())


def best_mse_error(x: np.ndarray, dtype: str) -> float:
    """Brute force: the least squared error over every distinct non-zero truncated |x| as the clip."""
    cands = np.unique(truncated_abs(x))
    return min(mse_error(x, float(c), dtype) for c in cands[cands > 0])


def f32_scale(clip: float, dtype: str) -> float:
    return float(np.float32(clip / QMAX[dtype]))
