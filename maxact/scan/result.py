"""What a finished scan hands back: per-site summaries plus the figures derived from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Components that M is taken over (DESIGN.md): gate, router, linear inputs and regex modules are not.
M_COMPONENTS = ("embedding", "hidden", "attn", "mlp", "final_norm")
#: Order of components in tables and exports.
COMPONENT_ORDER = ("embedding", "attn", "gate", "router", "mlp", "hidden", "final_norm",
                   "linear_input", "module")

FLOAT16_MAX = 65504.0
FP8_E4M3_MAX = 448.0
FP8_E5M2_MAX = 57344.0


@dataclass
class SiteResult:
    """One site's finished statistics.

    ``summary`` is ``ActivationStats.summary()`` of everything the site saw (all kept positions);
    ``first_token`` (M-eligible sites only) splits its ``abs_max`` into position 0 and the rest;
    ``calls`` counts the tensors the hook delivered (0 = the hook never fired).
    """

    name: str
    component: str
    layer: int | None
    module: str
    num_channels: int
    summary: dict[str, Any]
    quantiles: dict[float, float]
    calls: int
    first_token: dict[str, float] | None = None
    expert_tokens: list[int] | None = None     # router sites: real tokens routed to each expert
    # One record per top-k entry (site, layer, token id and text, context, corpus record), added at
    # the end of the scan by maxact.scan.provenance; None when not computed.
    provenance: list[dict[str, Any]] | None = None

    @property
    def abs_max(self) -> float:
        return float(self.summary["abs_max"])

    @property
    def in_m(self) -> bool:
        return self.component in M_COMPONENTS

    @property
    def signed_max(self) -> float:
        """The signed value whose |.| is abs_max (the max when max >= -min, else the min)."""
        mx, mn = float(self.summary["max"]), float(self.summary["min"])
        if math.isnan(mx):
            return math.nan
        return mx if mx >= -mn else mn

    @property
    def nonfinite(self) -> int:
        s = self.summary
        return int(s["nan_count"]) + int(s["posinf_count"]) + int(s["neginf_count"])


@dataclass
class SampleTable:
    """Per-sample facts, index = sample id (corpus order after --max-samples)."""

    category: np.ndarray            # int32[N], index into category_names (-1: none)
    category_names: list[str]
    num_tokens: np.ndarray          # int64[N], tokens after truncation to --max-seq-len
    corpus_index: np.ndarray        # int64[N], record index in the corpus source

    @property
    def count(self) -> int:
        return int(self.num_tokens.shape[0])


def _max_over(sites: list[SiteResult], key) -> tuple[float, SiteResult | None]:
    best, where = -math.inf, None
    for s in sites:
        v = key(s)
        if not math.isnan(v) and v > best:   # strict: ties go to the earliest site in forward order
            best, where = v, s
    return (best if where is not None else math.nan), where


@dataclass
class ScanResult:
    """Returned by ``maxact.scan.scan(config)``; ``stats.json`` is its serialised form."""

    config: Any                                   # ScanConfig
    metadata: dict[str, Any]
    sites: dict[str, SiteResult]                  # in forward (discovery) order
    samples: SampleTable
    out_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)

    # -- M and its carrier ------------------------------------------------------------------------
    @property
    def m_sites(self) -> list[SiteResult]:
        return [s for s in self.sites.values() if s.in_m]

    @property
    def global_max(self) -> tuple[float, SiteResult | None]:
        """(M, carrier site) over the M-eligible sites."""
        return _max_over(self.m_sites, lambda s: s.abs_max)

    @property
    def global_max_abs(self) -> float:
        return self.global_max[0]

    @property
    def global_max_site(self) -> str | None:
        site = self.global_max[1]
        return site.name if site else None

    @property
    def global_max_value(self) -> float:
        site = self.global_max[1]
        return site.signed_max if site else math.nan

    def first_token_summary(self) -> dict[str, Any]:
        """M with and without position 0 (exact: position 0 is kept in its own small state)."""
        tracked = [s for s in self.m_sites if s.first_token is not None]
        with_m, with_site = _max_over(tracked, lambda s: s.first_token["abs_max_with_pos0"])
        wo_m, wo_site = _max_over(tracked, lambda s: s.first_token["abs_max_without_pos0"])
        p0_m, p0_site = _max_over(tracked, lambda s: s.first_token["abs_max_pos0"])
        return {
            "skip_first_tokens": int(self.config.skip_first_tokens),
            "global_max_abs_with_pos0": with_m,
            "global_max_site_with_pos0": with_site.name if with_site else None,
            "global_max_abs_without_pos0": wo_m,
            "global_max_site_without_pos0": wo_site.name if wo_site else None,
            "global_max_abs_pos0": p0_m,
            "global_max_site_pos0": p0_site.name if p0_site else None,
        }

    def component_maxima(self) -> dict[str, tuple[float, str]]:
        """Largest |a| per component and the site holding it."""
        out: dict[str, tuple[float, str]] = {}
        for comp in COMPONENT_ORDER:
            members = [s for s in self.sites.values() if s.component == comp]
            value, where = _max_over(members, lambda s: s.abs_max)
            if where is not None:
                out[comp] = (value, where.name)
        return out

    def table(self) -> str:
        """The end-of-scan text table (M, carrier, per-component maxima, range flags, NaN/inf)."""
        from maxact.scan.table import render

        return render(self)

    def never_fired(self) -> list[str]:
        """Requested sites whose hook never received a tensor (hook coverage)."""
        return [s.name for s in self.sites.values() if s.calls == 0]

    def nonfinite_sites(self) -> list[SiteResult]:
        return [s for s in self.sites.values() if s.nonfinite > 0]

    def starved_experts(self, min_tokens: int) -> list[dict[str, Any]]:
        """MoE experts routed fewer than ``min_tokens`` real tokens: ``[{site, layer, expert, tokens}]``,
        in forward order (their per-expert statistics rest on too few tokens to be trusted)."""
        out = []
        for s in self.sites.values():
            for expert, n in enumerate(s.expert_tokens or ()):
                if n < min_tokens:
                    out.append({"site": s.name, "layer": s.layer, "expert": expert, "tokens": int(n)})
        return out
