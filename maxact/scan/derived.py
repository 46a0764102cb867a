"""Figures of ``stats.json`` derived from the per-site summaries: the bootstrap interval for M, the
range flags, and MoE expert coverage.

The bootstrap and the range flags use maxact.analysis's array-level functions (the closed-form
bootstrap of a maximum, the exact-histogram quantization helpers), so ``stats.json``, the report and
the model card give the same numbers. This is the one place the scanner reaches into maxact.analysis;
those functions read plain arrays, never a results file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from maxact.scan.result import ScanResult

BOOTSTRAP_LEVEL = 0.95
#: Formats and per-tensor scale policy of the scaled range flags (the max-abs scale saturates
#: nothing, so what it flushes to 0 is the cost of the peak: the card's choice too).
RANGE_FORMATS = ("fp8_e4m3", "fp8_e5m2")
RANGE_POLICIES = ("max",)


def sample_peaks(result: ScanResult) -> np.ndarray | None:
    """Per-sample M: max over the M-eligible sites of each sample's max |x| (None without them)."""
    arrays = [np.asarray(s.summary["sample_abs_max"], dtype=np.float64) for s in result.m_sites
              if s.summary.get("sample_abs_max") is not None]
    if not arrays:
        return None
    n = max(a.size for a in arrays)
    peaks = np.zeros(n, dtype=np.float64)
    for a in arrays:
        peaks[: a.size] = np.maximum(peaks[: a.size], a)
    return peaks


def bootstrap_m(result: ScanResult, level: float = BOOTSTRAP_LEVEL) -> dict[str, Any] | None:
    """Exact percentile bootstrap interval of M over the corpus samples (None without per-sample peaks)."""
    from maxact.analysis.stability import bootstrap_ci

    peaks = sample_peaks(result)
    if peaks is None or peaks.size == 0:
        return None
    ci = bootstrap_ci(peaks, level)
    return {"level": ci.level, "lower": ci.lower, "upper": ci.upper, "M": ci.M, "n_samples": ci.n_samples,
            "method": "exact percentile bootstrap of the maximum over per-sample peaks"}


@dataclass(frozen=True)
class _HistSite:
    """What maxact.analysis.ranges.site_range reads of a site."""

    name: str
    component: str
    abs_max: float
    abs_hist: np.ndarray | None


def site_ranges(result: ScanResult) -> dict[str, Any]:
    """Site name -> maxact.analysis SiteRange (float16, unscaled FP8, and FP8 after the max-abs scale)."""
    from maxact.analysis.ranges import site_range

    return {name: site_range(_HistSite(name, s.component, s.abs_max, s.summary.get("abs_hist")),
                             RANGE_FORMATS, RANGE_POLICIES)
            for name, s in result.sites.items()}


def site_range_entry(r: Any) -> dict[str, Any]:
    """The ``range`` object of one site in stats.json."""
    return {"fp16_overflow": r.fp16_overflow, "fp16_overflow_count": r.fp16_overflow_count,
            "fp8_e4m3_unscaled_overflow": r.e4m3_unscaled_overflow,
            "fp8_e5m2_unscaled_overflow": r.e5m2_unscaled_overflow,
            "scaled": [{"format": x.fmt, "policy": x.policy, "clip": x.clip, "scale": x.scale,
                        "saturated_fraction": x.saturated_fraction, "underflow_fraction": x.underflow_fraction}
                       for x in r.scaled]}


def range_flags(result: ScanResult, ranges: dict[str, Any]) -> dict[str, Any]:
    """Top-level ``range_flags``: M against float16 and FP8, the sites over float16, and the
    sites where the max-abs FP8 scale flushes a noticeable share of values to 0, with messages."""
    from maxact.analysis.ranges import (FP8_E4M3_MAX, FP8_E5M2_MAX, FP16_MAX, UNDERFLOW_FLAG,
                                        CheckpointRanges, flag_messages)

    m = float(result.global_max_abs)
    over = lambda limit: bool(m > limit)   # noqa: E731 - NaN (no M site) compares False
    ck = CheckpointRanges(checkpoint=str(result.metadata.get("model_name", "")), M=m,
                          fp16_overflow=over(FP16_MAX), e4m3_unscaled_overflow=over(FP8_E4M3_MAX),
                          e5m2_unscaled_overflow=over(FP8_E5M2_MAX), sites=tuple(ranges.values()))
    underflow = [{"site": r.site, "format": x.fmt, "underflow_fraction": x.underflow_fraction}
                 for r in ranges.values() for x in r.scaled
                 if x.policy == "max" and x.underflow_fraction > UNDERFLOW_FLAG]
    return {"M": m, "fp16_max": FP16_MAX, "fp8_e4m3_max": FP8_E4M3_MAX, "fp8_e5m2_max": FP8_E5M2_MAX,
            "fp16_overflow": ck.fp16_overflow, "fp8_e4m3_unscaled_overflow": ck.e4m3_unscaled_overflow,
            "fp8_e5m2_unscaled_overflow": ck.e5m2_unscaled_overflow, "sites_over_fp16": ck.sites_over_fp16,
            "underflow_flag": UNDERFLOW_FLAG, "fp8_underflow_max_scale": underflow,
            "messages": flag_messages(ck)}


def expert_coverage(result: ScanResult) -> dict[str, Any] | None:
    """Top-level ``experts``: the threshold and the experts under it (None for a dense model)."""
    routers = {name: s.expert_tokens for name, s in result.sites.items() if s.expert_tokens is not None}
    if not routers:
        return None
    n = int(getattr(result.config, "min_expert_tokens", 0))
    counts = [c for v in routers.values() for c in v]
    return {"min_expert_tokens": n, "routers": len(routers), "experts": len(counts),
            "min_tokens": int(min(counts)) if counts else None, "under_min": result.starved_experts(n)}
