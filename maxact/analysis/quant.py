"""Per-tensor symmetric quantization error, exactly, from the |x| histogram.

The histogram (32768 bins) counts |x| by ``float32 bits >> 16``; a bin's value is the float32 with
bits ``b << 16``, i.e. the bf16 value, exact for bf16 data. A symmetric quantizer is odd, Q(-v) =
-Q(v), so the error of +v and -v is the same and every sum over the tensor is a sum over bins
weighted by counts: SQNR for any scale, format and policy comes from the histogram alone.

Formats (per-tensor scale s = clip / qmax, Q(x) = s * q(x / s)):

* ``int8``: round half to even, clamp to [-127, 127];  ``int4``: same on [-7, 7];
* ``fp8_e4m3``: round to nearest even on the E4M3 grid (bias 7, 3 mantissa bits, subnormals down to
  2^-9), saturating at 448;  ``fp8_e5m2``: E5M2 grid (bias 15, 2 bits, subnormals to 2^-16), 57344.

SQNR dB = 10 log10(sum x^2 / sum (x - Q(x))^2) over the finite values (inf and NaN are left out,
as in every sum of the scan). Policies choose the clip: ``max`` (max |x|), ``percentile:P`` (nearest
rank over the histogram, numpy's inverted_cdf) and ``mse`` (the clip among the histogram's bin
values that minimizes the squared error, found by exact search with pruning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

HIST_BINS = 32768
_INF_BIN = 0x7F80  # float32 +inf >> 16; bins at and above it are not finite


@dataclass(frozen=True)
class QuantFormat:
    """A symmetric per-tensor format: integer levels or a saturating minifloat."""

    name: str
    qmax: float
    kind: str  # "int" | "float"
    mantissa_bits: int = 0
    min_exp: int = 0  # exponent of the smallest normal

    @property
    def zero_cut(self) -> float:
        """|y| (scaled) at or below which a value quantizes to 0 (the tie goes to even, i.e. 0)."""
        if self.kind == "int":
            return 0.5
        return 2.0 ** (self.min_exp - self.mantissa_bits - 1)


FORMATS: dict[str, QuantFormat] = {
    "int8": QuantFormat("int8", 127.0, "int"),
    "int4": QuantFormat("int4", 7.0, "int"),
    "fp8_e4m3": QuantFormat("fp8_e4m3", 448.0, "float", mantissa_bits=3, min_exp=-6),
    "fp8_e5m2": QuantFormat("fp8_e5m2", 57344.0, "float", mantissa_bits=2, min_exp=-14),
}
DEFAULT_FORMATS = ("int8", "int4", "fp8_e4m3")
DEFAULT_POLICIES = ("max", "percentile:99.9", "percentile:99.99", "mse")


def get_format(fmt: str | QuantFormat) -> QuantFormat:
    """Look a format up by name (``int8``, ``int4``, ``fp8_e4m3``/``fp8-e4m3``, ``fp8_e5m2``)."""
    if isinstance(fmt, QuantFormat):
        return fmt
    key = fmt.lower().replace("-", "_")
    if key not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return FORMATS[key]


def normalize_policy(policy: str) -> str:
    """Canonical policy name: ``max``, ``percentile:P`` or ``mse`` (accepts max_abs, pP, clip_qQ)."""
    p = policy.strip().lower()
    if p in ("max", "max_abs", "maxabs", "absmax"):
        return "max"
    if p == "mse":
        return "mse"
    if p.startswith("percentile:"):
        value = float(p.split(":", 1)[1])
    elif p.startswith("p") and p[1:].replace(".", "", 1).isdigit():
        value = float(p[1:])
    elif p.startswith("clip_q"):
        value = float(p[len("clip_q"):]) * 100.0
    else:
        raise ValueError(f"unknown policy {policy!r}; use max, percentile:P or mse")
    if not 0.0 < value <= 100.0:
        raise ValueError(f"percentile out of (0, 100]: {policy!r}")
    return f"percentile:{value:g}"


def bin_values() -> np.ndarray:
    """float64 value of each of the 32768 bins (bins >= 0x7F80 are inf/NaN)."""
    bits = np.arange(HIST_BINS, dtype=np.uint32) << np.uint32(16)
    with np.errstate(invalid="ignore"):  # the NaN bit patterns above inf
        return bits.view(np.float32).astype(np.float64)


_BIN_VALUES = bin_values()


def _nonempty(abs_hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, counts) of the finite non-empty bins, ascending, as float64."""
    hist = np.asarray(abs_hist)
    if hist.shape != (HIST_BINS,):
        raise ValueError(f"abs_hist must have shape ({HIST_BINS},), got {hist.shape}")
    idx = np.flatnonzero(hist[:_INF_BIN])
    return _BIN_VALUES[idx], hist[idx].astype(np.float64)


def quantize(values: np.ndarray, scale: float, fmt: str | QuantFormat) -> np.ndarray:
    """Q(v) for non-negative values (float64), per-tensor symmetric with the given scale."""
    f = get_format(fmt)
    v = np.asarray(values, dtype=np.float64)
    if not scale > 0 or not math.isfinite(scale):
        return np.zeros_like(v)
    y = v / scale
    if f.kind == "int":
        q = np.minimum(np.rint(y), f.qmax)
    else:
        y = np.minimum(y, f.qmax)
        # Grid spacing 2^(e - m) for y in [2^e, 2^(e+1)), e >= min_exp; subnormals below.
        _, exp = np.frexp(y)  # y = frac * 2^exp, frac in [0.5, 1): e = exp - 1
        e = np.maximum(exp.astype(np.int64) - 1, f.min_exp)
        step = np.ldexp(1.0, e - f.mantissa_bits)
        q = np.minimum(np.rint(y / step) * step, f.qmax)
    return q * scale


def _error_sums(values: np.ndarray, counts: np.ndarray, clips: np.ndarray, f: QuantFormat) -> np.ndarray:
    """sum count * (v - Q(v))^2 for each candidate clip, exactly.

    Values above the clip saturate to it; values at or below the scaled zero cut become 0; only the
    values in between need the grid (a bounded window of bins), which keeps the search cheap.
    """
    sq = counts * values * values
    prefix_sq = np.concatenate(([0.0], np.cumsum(sq)))
    out = np.empty(len(clips))
    for i, clip in enumerate(clips):
        scale = clip / f.qmax
        if not scale > 0:
            out[i] = prefix_sq[-1]
            continue
        lo = np.searchsorted(values, f.zero_cut * scale, side="right")  # v <= cut -> 0
        hi = np.searchsorted(values, clip, side="left")  # v >= clip -> clip
        tail = values[hi:] - clip
        err = prefix_sq[lo] + np.dot(counts[hi:], tail * tail)
        mid_v = values[lo:hi]
        if mid_v.size:
            d = mid_v - quantize(mid_v, scale, f)
            err += np.dot(counts[lo:hi], d * d)
        out[i] = err
    return out


def sqnr(abs_hist: np.ndarray, scale: float, fmt: str | QuantFormat = "int8") -> float:
    """SQNR in dB of per-tensor symmetric quantization with ``scale`` (= clip / qmax).

    inf when the error is 0, NaN when the tensor has no non-zero finite value.
    """
    f = get_format(fmt)
    values, counts = _nonempty(abs_hist)
    signal = float(np.dot(counts, values * values))
    if signal == 0.0:
        return math.nan
    d = values - quantize(values, scale, f)
    noise = float(np.dot(counts, d * d))
    return math.inf if noise == 0.0 else 10.0 * math.log10(signal / noise)


def percentile_clip(abs_hist: np.ndarray, percent: float) -> float:
    """Nearest-rank percentile of |x| from the histogram (inf included, NaN excluded).

    The value of rank ceil(p/100 * N) (1-based, at least 1), as numpy's ``inverted_cdf``.
    """
    hist = np.asarray(abs_hist, dtype=np.int64)
    total = int(hist.sum())
    if total == 0:
        return math.nan
    rank = max(1, min(total, _ceil_rank(percent, total)))
    b = int(np.searchsorted(np.cumsum(hist), rank, side="left"))
    return float(_BIN_VALUES[b])


def _ceil_rank(percent: float, total: int) -> int:
    """ceil(percent / 100 * total) in exact rational arithmetic (99.9 % of 10,000 is 9,990, not 9,991)."""
    return math.ceil(Fraction(str(percent)) * total / 100)


def max_abs(abs_hist: np.ndarray) -> float:
    """Largest |x| in the histogram (inf if it holds an inf), NaN when empty."""
    nz = np.flatnonzero(np.asarray(abs_hist))
    return float(_BIN_VALUES[nz[-1]]) if nz.size else math.nan


def mse_clip(abs_hist: np.ndarray, fmt: str | QuantFormat = "int8") -> float:
    """The clip among the histogram's finite bin values minimizing sum (x - Q(x))^2.

    Exact search with pruning: the error above a clip, sum_{v > c} n (v - c)^2, is a lower bound of
    the total error for clip c, so candidates whose bound already exceeds the best error found on a
    coarse pass are skipped; the rest are evaluated exactly. Ties go to the larger clip (fewer
    saturated values).
    """
    f = get_format(fmt)
    values, counts = _nonempty(abs_hist)
    if values.size == 0 or values[-1] == 0.0:
        return math.nan
    cands = values[values > 0]
    # Lower bound: saturation error of each candidate, by suffix sums over the bins above it.
    suf_n = np.concatenate((np.cumsum(counts[::-1])[::-1], [0.0]))
    suf_v = np.concatenate((np.cumsum((counts * values)[::-1])[::-1], [0.0]))
    suf_vv = np.concatenate((np.cumsum((counts * values * values)[::-1])[::-1], [0.0]))
    above = np.searchsorted(values, cands, side="right")
    bound = suf_vv[above] - 2.0 * cands * suf_v[above] + cands * cands * suf_n[above]
    # The expansion cancels when v ~ c: widen by a slack relative to its largest term so rounding
    # can never prune a candidate that should be evaluated.
    bound = np.maximum(bound - 1e-12 * (suf_vv[above] + cands * cands * suf_n[above]), 0.0)
    # Coarse pass: ~64 candidates spread over the ones whose bound is below the max-clip error.
    best_err = float(_error_sums(values, counts, cands[-1:], f)[0])
    live = np.flatnonzero(bound <= best_err)
    coarse = live[np.unique(np.linspace(0, live.size - 1, min(64, live.size)).astype(np.int64))]
    coarse_err = _error_sums(values, counts, cands[coarse], f)
    best_err = min(best_err, float(coarse_err.min()))
    live = np.flatnonzero(bound <= best_err)
    errs = _error_sums(values, counts, cands[live], f)
    best = float(errs.min())
    winners = live[errs == best]
    return float(cands[winners[-1]])


def clip_for_policy(abs_hist: np.ndarray, policy: str, fmt: str | QuantFormat = "int8") -> float:
    """The clip (largest represented |x|) a policy chooses; ``mse`` depends on the format."""
    p = normalize_policy(policy)
    if p == "max":
        return max_abs(abs_hist)
    if p == "mse":
        return mse_clip(abs_hist, fmt)
    return percentile_clip(abs_hist, float(p.split(":", 1)[1]))


def scale_for_policy(abs_hist: np.ndarray, policy: str, fmt: str | QuantFormat = "int8") -> float:
    """Recommended per-tensor scale = clip / qmax of the format."""
    return clip_for_policy(abs_hist, policy, fmt) / get_format(fmt).qmax


def saturated_fraction(abs_hist: np.ndarray, clip: float) -> float:
    """Share of the non-NaN values with |x| > clip (they saturate to the clip)."""
    hist = np.asarray(abs_hist, dtype=np.float64)
    total = hist.sum()
    if total == 0 or not math.isfinite(clip):
        return 0.0 if total else math.nan
    return float(hist[_BIN_VALUES > clip].sum() / total)


def underflow_fraction(abs_hist: np.ndarray, scale: float, fmt: str | QuantFormat) -> float:
    """Share of the non-zero finite values that quantize to 0 with this scale."""
    f = get_format(fmt)
    values, counts = _nonempty(abs_hist)
    nonzero = values > 0
    total = counts[nonzero].sum()
    if total == 0:
        return math.nan
    return float(counts[nonzero & (values <= f.zero_cut * scale)].sum() / total)


@dataclass(frozen=True)
class QuantRow:
    """One (format, policy) outcome for one site."""

    site: str
    fmt: str
    policy: str
    clip: float
    scale: float
    sqnr_db: float
    saturated_fraction: float
    underflow_fraction: float


def quant_table(
    abs_hist: np.ndarray,
    site: str = "",
    formats: Sequence[str] = DEFAULT_FORMATS,
    policies: Sequence[str] = DEFAULT_POLICIES,
) -> list[QuantRow]:
    """Every (format, policy) for one histogram: clip, scale, SQNR and saturated/underflow shares."""
    rows = []
    for fmt in formats:
        f = get_format(fmt)
        for policy in policies:
            p = normalize_policy(policy)
            clip = clip_for_policy(abs_hist, p, f)
            scale = clip / f.qmax
            rows.append(
                QuantRow(site, f.name, p, clip, scale, sqnr(abs_hist, scale, f),
                         saturated_fraction(abs_hist, clip), underflow_fraction(abs_hist, scale, f))
            )
    return rows
