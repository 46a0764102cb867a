"""Numpy helpers for the fixed 32768-bin |x| histogram.

Bin ``b`` holds the non-NaN values whose ``|x|`` has float32 bit pattern ``>> 16 == b``, i.e. ``|x|``
truncated to bfloat16. The value of a bin is the float32 with bits ``b << 16``: the exact value for
bfloat16 input, the lower edge of a bin of relative width <= 2**-7 otherwise. ``+-inf`` lands in
:data:`INF_BIN`; bins above it would be NaN patterns and stay empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HIST_BINS = 32768
INF_BIN = 0x7F80  # float32 bits of +inf (0x7F800000) >> 16


def bin_values() -> np.ndarray:
    """float32[HIST_BINS]: the value of each bin (float32 with bits ``b << 16``)."""
    return (np.arange(HIST_BINS, dtype=np.uint32) << np.uint32(16)).view(np.float32)


def bin_upper_edges() -> np.ndarray:
    """float32[HIST_BINS]: the smallest |x| above each bin (value of bin ``b + 1``; inf for the inf bin)."""
    upper = ((np.arange(HIST_BINS, dtype=np.uint64) + 1) << np.uint64(16)).astype(np.uint32).view(np.float32)
    upper = upper.copy()
    upper[INF_BIN:] = np.inf
    return upper


def _rank_of(n: int, q: np.ndarray) -> np.ndarray:
    """0-based order statistic that numpy's ``method="inverted_cdf"`` returns for ``n`` sorted values.

    Same float64 arithmetic as numpy (virtual index ``n * q - 1``, next integer unless it is exact),
    so the result matches ``np.quantile(values, q, method="inverted_cdf")`` bit for bit.
    """
    index = n * q - 1.0
    previous = np.floor(index)
    rank = np.where(index - previous == 0, previous, previous + 1)
    return np.clip(rank, 0, n - 1).astype(np.int64)


def quantile_from_hist(hist: np.ndarray, q: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Nearest-rank quantile (numpy ``inverted_cdf``) of the values counted in ``hist``.

    Each value is replaced by the value of its bin, so the answer is exact for bfloat16 input and
    otherwise the bfloat16 truncation of the exact quantile. An empty histogram gives NaN.
    ``q`` is a scalar (returns ``float``) or a sequence (returns ``np.ndarray`` of float64).
    """
    hist = np.asarray(hist, dtype=np.int64)
    if hist.shape != (HIST_BINS,):
        raise ValueError(f"histogram must have shape ({HIST_BINS},), got {hist.shape}")
    scalar = np.ndim(q) == 0
    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if np.any((qs < 0) | (qs > 1)) or np.any(np.isnan(qs)):
        raise ValueError(f"quantiles must lie in [0, 1], got {q!r}")
    n = int(hist.sum())
    if n == 0:
        out = np.full(qs.shape, np.nan)
    else:
        cumulative = np.cumsum(hist)
        # The value of rank r (0-based) sits in the first bin whose cumulative count exceeds r.
        bins = np.searchsorted(cumulative, _rank_of(n, qs), side="right")
        out = bin_values()[bins].astype(np.float64)
    return float(out[0]) if scalar else out
