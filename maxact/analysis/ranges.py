"""Range flags: whether activations fit float16, and what FP8 does to them after a per-tensor scale.

* float16: any |x| above 65504 overflows an fp16 inference to inf (per site, and M overall);
* FP8 without a scale: |x| above 448 (E4M3) or 57344 (E5M2) does not fit the format at all;
* FP8 with the recommended per-tensor scale s = clip / fmt_max of a policy: the share of values
  saturated (|x| > clip) and the share of non-zero values flushed to 0 (|x| / s below half the
  smallest subnormal). Needs the exact histogram; the paper layout gets the unscaled flags only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from maxact.analysis import quant
from maxact.analysis.carriers import M_EXCLUDED_COMPONENTS, global_max
from maxact.results import Checkpoint, SiteStats

FP16_MAX = 65504.0
FP8_E4M3_MAX = quant.FORMATS["fp8_e4m3"].qmax
FP8_E5M2_MAX = quant.FORMATS["fp8_e5m2"].qmax
RANGE_FORMATS = ("fp8_e4m3", "fp8_e5m2")
RANGE_POLICIES = ("max", "percentile:99.99", "mse")
# A flush-to-zero share above this is worth a flag (a per-mille of the values lost entirely).
UNDERFLOW_FLAG = 1e-3


@dataclass(frozen=True)
class ScaledRange:
    """One format under one policy's per-tensor scale."""

    fmt: str
    policy: str
    clip: float
    scale: float
    saturated_fraction: float
    underflow_fraction: float


@dataclass(frozen=True)
class SiteRange:
    """Range flags of one site."""

    site: str
    component: str
    abs_max: float
    fp16_overflow: bool
    fp16_overflow_count: int | None  # values with |x| > 65504 (from the histogram)
    e4m3_unscaled_overflow: bool
    e5m2_unscaled_overflow: bool
    scaled: tuple[ScaledRange, ...] = ()

    @property
    def flagged(self) -> bool:
        return self.fp16_overflow or any(r.underflow_fraction > UNDERFLOW_FLAG for r in self.scaled)


@dataclass(frozen=True)
class CheckpointRanges:
    """Range flags of a checkpoint: M overall and every site."""

    checkpoint: str
    M: float
    fp16_overflow: bool
    e4m3_unscaled_overflow: bool
    e5m2_unscaled_overflow: bool
    sites: tuple[SiteRange, ...] = field(default_factory=tuple)

    @property
    def sites_over_fp16(self) -> list[str]:
        return [s.site for s in self.sites if s.fp16_overflow]


def site_range(
    site: SiteStats, formats: Sequence[str] = RANGE_FORMATS, policies: Sequence[str] = RANGE_POLICIES
) -> SiteRange:
    """Range flags of one site; the scaled part only when the site has its histogram."""
    hist = site.abs_hist
    over_count = None
    scaled: list[ScaledRange] = []
    if hist is not None:
        over_count = int(np.asarray(hist)[quant.bin_values() > FP16_MAX].sum())
        for fmt in formats:
            f = quant.get_format(fmt)
            for policy in policies:
                clip = quant.clip_for_policy(hist, policy, f)
                scale = clip / f.qmax
                scaled.append(
                    ScaledRange(f.name, quant.normalize_policy(policy), clip, scale,
                                quant.saturated_fraction(hist, clip), quant.underflow_fraction(hist, scale, f))
                )
    return SiteRange(
        site=site.name,
        component=site.component,
        abs_max=float(site.abs_max),
        fp16_overflow=bool(site.abs_max > FP16_MAX),
        fp16_overflow_count=over_count,
        e4m3_unscaled_overflow=bool(site.abs_max > FP8_E4M3_MAX),
        e5m2_unscaled_overflow=bool(site.abs_max > FP8_E5M2_MAX),
        scaled=tuple(scaled),
    )


def checkpoint_ranges(
    ckpt: Checkpoint, formats: Sequence[str] = RANGE_FORMATS, policies: Sequence[str] = RANGE_POLICIES
) -> CheckpointRanges:
    """Range flags for M and for every site of a checkpoint."""
    m = global_max(ckpt).M
    return CheckpointRanges(
        checkpoint=ckpt.name,
        M=m,
        fp16_overflow=m > FP16_MAX,
        e4m3_unscaled_overflow=m > FP8_E4M3_MAX,
        e5m2_unscaled_overflow=m > FP8_E5M2_MAX,
        sites=tuple(site_range(s, formats, policies) for s in ckpt.sites.values()),
    )


def flag_messages(ranges: CheckpointRanges, max_names: int = 4) -> list[str]:
    """Plain-language flags for a report or model card (empty when nothing needs saying)."""
    msgs = []
    over = ranges.sites_over_fp16
    if ranges.fp16_overflow:
        msgs.append(
            f"M = {ranges.M:,.6g} exceeds the float16 maximum (65504) at {len(over)} site(s): "
            "float16 inference overflows to inf; use bfloat16 or rescale."
        )
    uncounted = [s.site for s in ranges.sites if s.fp16_overflow and s.component in M_EXCLUDED_COMPONENTS]
    if uncounted:
        msgs.append(f"{len(uncounted)} site(s) outside M (gate, router or linear inputs) exceed the float16 maximum: "
                    f"{_names(uncounted, max_names)}.")
    if ranges.e5m2_unscaled_overflow:
        msgs.append("M exceeds the FP8 E5M2 range (57344): FP8 activations need a per-tensor scale.")
    elif ranges.e4m3_unscaled_overflow:
        msgs.append("M exceeds the FP8 E4M3 range (448): E4M3 activations need a per-tensor scale.")
    formats = dict.fromkeys(r.fmt for s in ranges.sites for r in s.scaled)
    for fmt in formats:
        hits = [(r.underflow_fraction, s.site) for s in ranges.sites for r in s.scaled
                if r.fmt == fmt and r.policy == "max" and r.underflow_fraction > UNDERFLOW_FLAG]
        if hits:
            worst, site = max(hits)
            msgs.append(
                f"With the max-abs per-tensor scale, {fmt} flushes more than {UNDERFLOW_FLAG:.1%} of the non-zero "
                f"values to 0 at {len(hits)} site(s) (worst {site}: {worst:.2%}): the peak stretches the scale "
                "past the format's dynamic range."
            )
    return msgs


def _names(names: Sequence[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
