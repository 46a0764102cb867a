"""Run every analysis over a set of checkpoints once, and turn the outcome into ``summary.json``.

The figures, the HTML page and the JSON all read the same :class:`ReportData`, so a number shown
on the page is the number in the file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from maxact import analysis as A
from maxact.results import Checkpoint

logger = logging.getLogger(__name__)

TRAJECTORY_COMPONENTS = ("hidden", "attn", "mlp", "gate")
SUMMARY_SCHEMA = "maxact.report/1"


@dataclass
class CheckpointAnalysis:
    """Everything the report shows about one checkpoint."""

    ckpt: Checkpoint
    family: str
    moe: bool
    carrier: A.Carrier
    sun: A.SunResult
    trajectories: dict[str, A.Trajectory]
    half_max_depth: float
    peak_depth: float
    component_peaks: dict[str, tuple[float, str]]
    ranges: A.CheckpointRanges
    quant: dict[str, list[A.QuantRow]] = field(default_factory=dict)  # site -> rows (histogram sites)
    sample_peaks: A.SamplePeaks | None = None
    stability: list[A.StabilityRow] = field(default_factory=list)
    bootstrap: A.BootstrapCI | None = None
    top_tokens: list[dict] = field(default_factory=list)
    top_channels: list[dict] = field(default_factory=list)
    experts: A.ExpertCoverage | None = None  # MoE scans: tokens routed to each expert per layer

    @property
    def name(self) -> str:
        return self.ckpt.name

    @property
    def carrier_quant(self) -> list[A.QuantRow]:
        return self.quant.get(self.carrier.site, [])


@dataclass
class ReportData:
    """The analyses of all checkpoints plus the cross-checkpoint ones (pairs, carrier counts)."""

    checkpoints: list[CheckpointAnalysis]
    pairs: list[dict]
    carrier_counts: dict[str, int]
    t_val: float
    t_ratio: float
    formats: tuple[str, ...]
    policies: tuple[str, ...]

    def by_name(self) -> dict[str, CheckpointAnalysis]:
        return {c.name: c for c in self.checkpoints}


def unique_names(ckpts: Sequence[Checkpoint]) -> None:
    """Give checkpoints sharing a model name distinct names (``name (2)``), in place."""
    seen: dict[str, int] = {}
    for c in ckpts:
        n = seen.get(c.name, 0) + 1
        seen[c.name] = n
        if n > 1:
            logger.warning("two results named %r; the one from %s is shown as %r", c.name, c.path, f"{c.name} ({n})")
            c.name = f"{c.name} ({n})"


def analyze_checkpoint(
    ckpt: Checkpoint,
    *,
    t_val: float = A.SUN_T_VAL,
    t_ratio: float = A.SUN_T_RATIO,
    formats: Sequence[str] = A.DEFAULT_FORMATS,
    policies: Sequence[str] = A.DEFAULT_POLICIES,
    family_overrides: Mapping[str, str] | None = None,
    repeats: int = 5,
    seed: int = 0,
) -> CheckpointAnalysis:
    """All per-checkpoint analyses of the report."""
    quant = {
        s.name: A.quant_table(s.abs_hist, s.name, formats, policies)
        for s in ckpt.sites.values()
        if s.abs_hist is not None
    }
    peaks = A.sample_peaks(ckpt)
    stab, boot = [], None
    if peaks is not None and peaks.peaks.size:
        stab = A.stability(peaks, repeats=repeats, seed=seed)
        boot = A.bootstrap_ci(peaks)
        if peaks.sites_missing:
            logger.warning("%s: %d M sites lack per-sample peaks; stability covers the other %d",
                           ckpt.name, len(peaks.sites_missing), len(peaks.sites_used))
    return CheckpointAnalysis(
        ckpt=ckpt,
        family=A.family_of(ckpt.name, ckpt.model_type, family_overrides),
        moe=A.is_moe(ckpt.name, ckpt.model_type),
        carrier=A.global_max(ckpt),
        sun=A.sun_criterion(ckpt, t_val, t_ratio),
        trajectories={c: A.layerwise_peaks(ckpt, c) for c in TRAJECTORY_COMPONENTS},
        half_max_depth=A.half_max_depth(ckpt),
        peak_depth=A.peak_depth(ckpt),
        component_peaks=A.component_peaks(ckpt),
        ranges=A.checkpoint_ranges(ckpt),
        quant=quant,
        sample_peaks=peaks,
        stability=stab,
        bootstrap=boot,
        top_tokens=A.top_tokens(ckpt, k=20),
        top_channels=A.top_channels(ckpt, k=10),
        experts=A.expert_coverage(ckpt),
    )


def analyze(
    ckpts: Sequence[Checkpoint],
    pairs: Sequence[A.Pair] = (),
    *,
    keep_missing_pairs: bool = True,
    t_val: float = A.SUN_T_VAL,
    t_ratio: float = A.SUN_T_RATIO,
    formats: Sequence[str] = A.DEFAULT_FORMATS,
    policies: Sequence[str] = A.DEFAULT_POLICIES,
    family_overrides: Mapping[str, str] | None = None,
    repeats: int = 5,
    seed: int = 0,
) -> ReportData:
    """Analyze checkpoints, ordered by family (the paper's order) then M."""
    unique_names(ckpts)
    per = [
        analyze_checkpoint(c, t_val=t_val, t_ratio=t_ratio, formats=formats, policies=policies,
                           family_overrides=family_overrides, repeats=repeats, seed=seed)
        for c in ckpts
    ]
    per.sort(key=lambda a: (A.family_sort_key(a.family), a.carrier.M, a.name))
    maxima = {a.name: a.carrier.M for a in per}
    return ReportData(
        checkpoints=per,
        pairs=A.pair_ratios(maxima, pairs, keep_missing=keep_missing_pairs),
        carrier_counts=A.carrier_counts(a.carrier for a in per),
        t_val=t_val,
        t_ratio=t_ratio,
        formats=tuple(A.get_format(f).name for f in formats),
        policies=tuple(A.normalize_policy(p) for p in policies),
    )


# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------


def _num(v):
    """JSON-safe number: NaN -> None, +-inf -> "inf"/"-inf" strings, numpy scalars -> python."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _quant_rows(rows: Sequence[A.QuantRow]) -> list[dict]:
    return [
        {"format": r.fmt, "policy": r.policy, "clip": r.clip, "scale": r.scale,
         "sqnr_db": r.sqnr_db, "saturated_fraction": r.saturated_fraction,
         "underflow_fraction": r.underflow_fraction}
        for r in rows
    ]


def checkpoint_summary(a: CheckpointAnalysis) -> dict:
    """The JSON record of one checkpoint."""
    c, ck = a.carrier, a.ckpt
    out = {
        "M": c.M,
        "M_signed": c.signed_value,
        "carrier_site": c.site,
        "carrier_component": c.component,
        "carrier_layer": c.layer,
        "sun_pass": a.sun.passed,
        "family": a.family,
        "moe": a.moe,
        "layout": ck.layout,
        "path": str(ck.path),
        "model_type": ck.model_type,
        "num_layers": ck.depth_layers(),
        "sun": {
            "t_val": a.sun.t_val, "t_ratio": a.sun.t_ratio, "n_pass": a.sun.n_pass, "site": a.sun.site,
            "peak_abs": a.sun.peak_abs, "peak_median": a.sun.peak_median,
            "peak_ratio": a.sun.peak_ratio, "max_ratio": a.sun.max_ratio,
        },
        "half_max_depth": a.half_max_depth,
        "peak_depth": a.peak_depth,
        "component_peaks": {k: {"abs_max": v, "site": s} for k, (v, s) in a.component_peaks.items()},
        "range_flags": {
            "fp16_overflow": a.ranges.fp16_overflow,
            "fp8_e4m3_unscaled_overflow": a.ranges.e4m3_unscaled_overflow,
            "fp8_e5m2_unscaled_overflow": a.ranges.e5m2_unscaled_overflow,
            "sites_over_fp16": a.ranges.sites_over_fp16,
            "messages": A.flag_messages(a.ranges),
        },
        "has_histograms": ck.has_histograms,
        "has_sample_peaks": a.sample_peaks is not None,
    }
    if ck.stored_global_max is not None and ck.stored_global_max != c.M:
        out["stored_global_max"] = ck.stored_global_max
    if a.quant:
        out["quantization"] = {"carrier_site": c.site, "carrier": _quant_rows(a.carrier_quant),
                               "sites": {s: _quant_rows(rows) for s, rows in a.quant.items()}}
    if a.stability:
        out["stability"] = [
            {"size": r.size, "repeats": r.repeats, "maxima": [m for m in r.maxima], "mean": r.mean,
             "std": r.std, "cv": r.cv, "min": r.min, "max": r.max, "full_M": r.full_M}
            for r in a.stability
        ]
    if a.bootstrap is not None:
        b = a.bootstrap
        out["bootstrap_ci"] = {"level": b.level, "lower": b.lower, "upper": b.upper,
                               "M": b.M, "n_samples": b.n_samples}
    if a.top_tokens:
        out["top_tokens"] = a.top_tokens
    if a.top_channels:
        out["top_channels"] = a.top_channels
    if a.experts is not None:
        out["expert_coverage"] = {
            "min_expert_tokens": a.experts.min_tokens,
            "layers": [{"site": lay.site, "layer": lay.layer, "tokens": list(lay.tokens)} for lay in a.experts.layers],
            "starved": a.experts.starved,
        }
    return out


def jsonable(obj):
    """Strict-JSON copy: numpy types to python, NaN to null, +-inf to "inf"/"-inf" strings."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_, int, float, np.integer, np.floating)):
        return _num(obj)
    return obj


def summary_dict(data: ReportData) -> dict:
    """The content of ``summary.json`` (strict JSON: no NaN or inf literals)."""
    return jsonable({
        "schema": SUMMARY_SCHEMA,
        "sun_thresholds": {"t_val": data.t_val, "t_ratio": data.t_ratio},
        "checkpoints": {a.name: checkpoint_summary(a) for a in data.checkpoints},
        "carrier_counts": data.carrier_counts,
        "pairs": data.pairs,
    })
