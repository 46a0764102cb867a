"""Shared test helpers: verbose comparisons and activation-like test data."""

from __future__ import annotations

import math

import numpy as np
import torch

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _fmt_mismatch(name: str, actual: np.ndarray, expected: np.ndarray, bad: np.ndarray, limit: int = 8) -> str:
    idx = np.argwhere(bad)
    lines = [f"{name}: {len(idx)} of {bad.size} elements differ (shape {actual.shape})"]
    for i in idx[:limit]:
        i = tuple(int(v) for v in i)
        lines.append(f"  at {i}: actual {actual[i]!r} expected {expected[i]!r}")
    a_nan, e_nan = np.isnan(actual) if actual.dtype.kind == "f" else None, None
    if actual.dtype.kind == "f" and expected.dtype.kind == "f":
        e_nan = np.isnan(expected)
        if not np.array_equal(a_nan, e_nan):
            lines.append(f"  NaN positions differ: actual {np.argwhere(a_nan)[:limit].tolist()} "
                         f"expected {np.argwhere(e_nan)[:limit].tolist()}")
        a_inf, e_inf = np.isinf(actual), np.isinf(expected)
        if not np.array_equal(a_inf, e_inf):
            lines.append(f"  inf positions differ: actual {np.argwhere(a_inf)[:limit].tolist()} "
                         f"expected {np.argwhere(e_inf)[:limit].tolist()}")
    return "\n".join(lines)


def assert_verbose_equal(actual, expected, name: str = "value") -> None:
    """Exact equality (NaN equals NaN, -0.0 equals 0.0) with a report of the first differing elements."""
    if isinstance(actual, dict) or isinstance(expected, dict):
        assert set(actual) == set(expected), f"{name}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_verbose_equal(actual[key], expected[key], f"{name}.{key}")
        return
    if actual is None or expected is None or isinstance(actual, str):
        assert actual == expected, f"{name}: actual {actual!r} expected {expected!r}"
        return
    a = np.asarray(actual)
    e = np.asarray(expected)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != expected {e.shape}"
    if a.dtype.kind == "f" or e.dtype.kind == "f":
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        bad = ~((a64 == e64) | (np.isnan(a64) & np.isnan(e64)))
    else:
        bad = a != e
    assert not bad.any(), _fmt_mismatch(name, a, e, np.asarray(bad))


def assert_verbose_allclose(actual, expected, *, atol: float = 0.0, rtol: float = 0.0, name: str = "value") -> None:
    """|actual - expected| <= atol + rtol * |expected| elementwise; NaN and inf must match in place and sign."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != expected {e.shape}"
    both_nan = np.isnan(a) & np.isnan(e)
    same_inf = np.isinf(a) & (a == e)
    with np.errstate(invalid="ignore"):
        close = np.abs(a - e) <= atol + rtol * np.abs(e)
    bad = ~(both_nan | same_inf | close)
    assert not bad.any(), _fmt_mismatch(f"{name} (atol={atol}, rtol={rtol})", a, e, bad)


def assert_close_scalar(actual: float, expected: float, *, scale: float, rtol: float, name: str) -> None:
    """|actual - expected| <= rtol * scale (scale: e.g. sum of |terms|, so cancellation is allowed for)."""
    if math.isnan(expected) or math.isinf(expected):
        assert (math.isnan(actual) and math.isnan(expected)) or actual == expected, f"{name}: {actual} vs {expected}"
        return
    assert abs(actual - expected) <= rtol * scale, (
        f"{name}: actual {actual!r} expected {expected!r} (diff {abs(actual - expected):.3e} > {rtol} x {scale:.3e})"
    )


def make_values(shape, dtype: torch.dtype, rng: np.random.Generator, *, specials: bool = True) -> torch.Tensor:
    """Activation-like data: log-uniform magnitudes from subnormals to 7e5, random signs, and (optionally)
    NaN, +-inf, 0, -0.0 and dtype subnormals sprinkled in. Returned on the CPU in ``dtype``."""
    n = int(np.prod(shape))
    mag = 10.0 ** rng.uniform(-5.0, math.log10(7e5), size=n)
    values = np.where(rng.random(n) < 0.5, -mag, mag)
    if specials and n:
        sub = float(torch.finfo(dtype).tiny) * 0.25  # subnormal of this dtype
        pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, sub, -sub, 7e5, -7e5, 1e-40], dtype=np.float64)
        k = max(1, n // 12)
        where = rng.choice(n, size=k, replace=False)
        values[where] = rng.choice(pool, size=k)
    return torch.from_numpy(values.astype(np.float32)).to(dtype).reshape(shape)


def make_ties(shape, dtype: torch.dtype, rng: np.random.Generator) -> torch.Tensor:
    """Values from a tiny set (many exact ties, including of the maximum) with a few NaN."""
    pool = np.array([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 3.0, np.nan], dtype=np.float32)
    return torch.from_numpy(rng.choice(pool, size=shape).astype(np.float32)).to(dtype)
