"""M = max |x| over a checkpoint's sites, the site and component carrying it, and what holds the peaks.

M is taken over every site except gate pre-activations, router logits, linear-layer inputs and
regex-selected module outputs (the paper code's rule). When several sites share M (the residual
stream often carries one value through many layers), the carrier is the first in forward order:
where the value first appears.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from maxact.results import Checkpoint, SiteStats, forward_order_key

M_EXCLUDED_COMPONENTS = frozenset({"gate", "router", "linear_input", "module"})
COMPONENTS = ("embedding", "attn", "mlp", "hidden", "final_norm", "gate", "router", "linear_input", "module")


@dataclass(frozen=True)
class Carrier:
    """A checkpoint's global maximum |x| and where it sits."""

    checkpoint: str
    M: float
    signed_value: float
    site: str
    component: str
    layer: int | None


def m_sites(ckpt: Checkpoint, exclude: Iterable[str] = M_EXCLUDED_COMPONENTS) -> list[SiteStats]:
    """Sites that count towards M, in forward order."""
    excluded = frozenset(exclude)
    return [s for s in ckpt.sites.values() if s.component not in excluded]


def global_max(ckpt: Checkpoint, exclude: Iterable[str] = M_EXCLUDED_COMPONENTS) -> Carrier:
    """M and its carrier (first site in forward order holding it). Raises ValueError with no site."""
    sites = [s for s in m_sites(ckpt, exclude) if not np.isnan(s.abs_max)]
    if not sites:
        raise ValueError(f"{ckpt.name}: no site counts towards M")
    best = max(s.abs_max for s in sites)
    first = min((s for s in sites if s.abs_max == best), key=forward_order_key)
    return Carrier(ckpt.name, float(best), float(first.signed_peak), first.name, first.component, first.layer)


def carrier_counts(carriers: Iterable[Carrier]) -> dict[str, int]:
    """How many checkpoints each component carries M in, in component order."""
    counts = Counter(c.component for c in carriers)
    ordered = [c for c in COMPONENTS if counts[c]] + sorted(c for c in counts if c not in COMPONENTS)
    return {comp: counts[comp] for comp in ordered}


def component_peaks(ckpt: Checkpoint) -> dict[str, tuple[float, str]]:
    """Largest |x| of each component (gate and router included) and the first site holding it."""
    out: dict[str, tuple[float, str]] = {}
    for site in ckpt.sites.values():  # forward order: the first holder wins ties
        if np.isnan(site.abs_max):
            continue
        best = out.get(site.component)
        if best is None or site.abs_max > best[0]:
            out[site.component] = (float(site.abs_max), site.name)
    return out


def top_entries(ckpt: Checkpoint, k: int = 20, components: Sequence[str] | None = None) -> list[dict]:
    """The k largest top-k entries over all sites (or the given components), merged.

    Each entry is the scan's own record (abs, value, sample, position, channel, and token fields when
    the scanner stored them) plus ``site``, ``component``, ``layer`` and, when the sidecar has it,
    ``corpus_index``. Ordered by (abs desc, sample, position, channel, forward order of the site).
    """
    rows = []
    for rank, site in enumerate(ckpt.sites.values()):
        if components is not None and site.component not in components:
            continue
        if components is None and site.component in M_EXCLUDED_COMPONENTS:
            continue
        for e in site.topk:
            row = dict(e)
            row.update(site=site.name, component=site.component, layer=site.layer, _rank=rank)
            _attach_corpus_index(ckpt, row)
            rows.append(row)
    rows.sort(
        key=lambda r: (-float(r["abs"]), int(r.get("sample", -1)), int(r.get("position", -1)),
                       int(r.get("channel", -1)), r["_rank"])
    )
    for r in rows:
        del r["_rank"]
    return rows[:k]


def top_tokens(ckpt: Checkpoint, k: int = 20) -> list[dict]:
    """Tokens (sample, position) holding the largest values, each once, with the count of
    (site, channel) top-k entries it holds; the row is its largest entry."""
    merged = top_entries(ckpt, k=10**9)
    seen: dict[tuple[int, int], dict] = {}
    for row in merged:
        key = (int(row.get("sample", -1)), int(row.get("position", -1)))
        if key in seen:
            seen[key]["entries"] += 1
            continue
        seen[key] = dict(row, entries=1)
    return list(seen.values())[:k]


def top_channels(ckpt: Checkpoint, k: int = 10, components: Sequence[str] = ("hidden",)) -> list[dict]:
    """Channels with the largest per-channel max |x| over the given components' sites.

    Each row: ``channel``, ``abs_max`` (over those sites), ``site`` (first holding it) and
    ``top1_sites`` (number of sites where this channel holds the site's max). Empty without the
    sidecar's ``channel_abs_max``.
    """
    sites = [s for s in ckpt.sites.values() if s.component in components and s.channel_abs_max is not None]
    if not sites:
        return []
    width = max(len(s.channel_abs_max) for s in sites)
    best = np.zeros(width, dtype=np.float64)
    where = np.full(width, -1, dtype=np.int64)
    top1 = np.zeros(width, dtype=np.int64)
    for i, s in enumerate(sites):
        cmax = np.zeros(width)
        cmax[: len(s.channel_abs_max)] = s.channel_abs_max
        newer = cmax > best  # strict: the first site keeps ties
        best[newer] = cmax[newer]
        where[newer] = i
        top1[int(np.argmax(cmax))] += 1
    order = np.lexsort((np.arange(width), -best))[:k]
    return [
        {"channel": int(c), "abs_max": float(best[c]), "site": sites[where[c]].name if where[c] >= 0 else None,
         "top1_sites": int(top1[c])}
        for c in order
        if best[c] > 0
    ]


def _attach_corpus_index(ckpt: Checkpoint, row: dict) -> None:
    if "corpus_index" in row or ckpt.samples is None or ckpt.samples.corpus_index is None:
        return
    sample = int(row.get("sample", -1))
    if 0 <= sample < len(ckpt.samples.corpus_index):
        row["corpus_index"] = int(ckpt.samples.corpus_index[sample])
