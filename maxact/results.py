"""Read activation statistics into one in-memory form (the read side of docs/CONTRACTS.md section 4).

Two layouts are understood:

* maxact: ``stats.json`` (``"schema": "maxact.stats/1"``) with its optional ``stats.safetensors``
  sidecar (exact |x| histograms, per-channel maxima, per-sample peaks, sample categories);
* the paper code's ``*_activation_stats.json`` (Max_act_llm): per-site mean/std/max/min, ``sun_*``
  fields and log-histogram quantiles, with flat site names that are mapped to maxact's dotted names.

``load_result(path)`` returns a :class:`Checkpoint` either way, so the analyses never look at the
layout. Sites are kept in forward order (embedding, then per layer attn, gate, router, mlp, hidden,
then final_norm), the order in which ties for the maximum are broken.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

logger = logging.getLogger(__name__)

MAXACT_SCHEMA_PREFIX = "maxact.stats/"
STATS_JSON = "stats.json"
SIDECAR = "stats.safetensors"
PAPER_SUFFIX = "_activation_stats.json"
_MAXACT_EXTRAS = ("first_token", "component_max_abs", "nonfinite", "coverage", "warnings", "experts",
                  "bootstrap_m", "range_flags")

# Forward order of components inside one layer: attention runs first, the gate projection and the
# router belong to the MLP block, the MLP output precedes the residual sum (hidden).
_COMPONENT_RANK = {
    "embedding": 0,
    "linear_input": 1,
    "attn": 2,
    "gate": 3,
    "router": 4,
    "mlp": 5,
    "module": 6,
    "hidden": 7,
    "final_norm": 8,
}

_PAPER_LAYER_KEY = re.compile(r"^layer_(\d+)_(hidden|attn_output|mlp_output|mlp_gate|router_logits|moe_gate)$")
_PAPER_COMPONENT = {
    "hidden": ("hidden", "hidden"),
    "attn_output": ("attn", "attn"),
    "mlp_output": ("mlp", "mlp"),
    "mlp_gate": ("gate", "gate"),
    "router_logits": ("router", "router"),
    "moe_gate": ("router", "router"),
}
# The paper code's log-histogram quantile keys (approximate: 512 log10 bins).
_PAPER_QUANTILES = {
    "abs_q25": 0.25,
    "abs_median": 0.5,
    "abs_q75": 0.75,
    "abs_q90": 0.9,
    "abs_q99": 0.99,
    "abs_q999": 0.999,
}


@dataclass
class SiteStats:
    """Statistics of one hooked site (one tensor class at one layer)."""

    name: str
    component: str
    layer: int | None
    count: float
    mean: float
    std: float
    rms: float
    abs_mean: float
    min: float
    max: float
    abs_max: float
    quantiles: dict[float, float] = field(default_factory=dict)
    # False for the paper layout, whose quantiles come from a 512-bin log histogram (~7 % error).
    quantiles_exact: bool = True
    sun: dict | None = None
    topk: list[dict] = field(default_factory=list)
    module: str | None = None
    num_channels: int | None = None
    nan_count: int = 0
    posinf_count: int = 0
    neginf_count: int = 0
    abs_hist: np.ndarray | None = None
    channel_abs_max: np.ndarray | None = None
    sample_abs_max: np.ndarray | None = None
    expert_tokens: list[int] | None = None  # router sites of a maxact scan: real tokens routed to each expert

    @property
    def signed_peak(self) -> float:
        """The signed value whose magnitude is ``abs_max`` (max if |max| >= |min|, else min)."""
        return self.max if abs(self.max) >= abs(self.min) else self.min


@dataclass
class SampleInfo:
    """Per-sample metadata of a maxact scan (sidecar ``samples/*``)."""

    count: int
    category_names: list[str]
    category: np.ndarray | None = None  # int32[N], index into category_names
    num_tokens: np.ndarray | None = None  # int64[N]
    corpus_index: np.ndarray | None = None  # int64[N]


@dataclass
class Checkpoint:
    """One model's activation statistics, whatever layout they were read from."""

    name: str
    path: Path
    layout: str  # "maxact" | "paper"
    model_type: str | None
    num_layers: int | None
    hidden_size: int | None
    metadata: dict
    sites: dict[str, SiteStats]
    samples: SampleInfo | None = None
    stored_global_max: float | None = None
    stored_global_site: str | None = None
    # Top-level extras of a maxact stats.json kept as written (first_token, coverage, warnings, ...).
    extra: dict = field(default_factory=dict)

    @property
    def has_histograms(self) -> bool:
        return any(s.abs_hist is not None for s in self.sites.values())

    @property
    def has_sample_peaks(self) -> bool:
        return any(s.sample_abs_max is not None for s in self.sites.values())

    def sites_of(self, component: str) -> list[SiteStats]:
        """Sites of one component, in forward order."""
        return [s for s in self.sites.values() if s.component == component]

    def depth_layers(self) -> int:
        """Number of decoder layers: the metadata's, or more when the file has extra layer sites."""
        seen = [s.layer for s in self.sites.values() if s.layer is not None]
        from_data = max(seen) + 1 if seen else 0
        declared = self.num_layers or 0
        if from_data > declared and declared:
            # Ling-mini files hold one layer beyond num_hidden_layers (an extra trailing block).
            logger.debug("%s: layer sites up to %d but num_layers=%d", self.name, from_data - 1, declared)
        return max(from_data, declared)


def forward_order_key(site: SiteStats) -> tuple:
    """Sort key placing sites in the order a forward pass produces them."""
    if site.component == "embedding":
        layer_rank = -1.0
    elif site.component == "final_norm":
        layer_rank = math.inf
    elif site.layer is None:
        layer_rank = math.inf
    else:
        layer_rank = float(site.layer)
    return (layer_rank, _COMPONENT_RANK.get(site.component, 99), site.name)


# ----------------------------------------------------------------------------------------------
# discovery
# ----------------------------------------------------------------------------------------------


def discover_results(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories into result files.

    A directory contributes every ``*_activation_stats.json`` and ``stats.json`` below it (sorted);
    a file is taken as given. Raises ``FileNotFoundError`` for a path that does not exist.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            hits = sorted(set(p.rglob("*" + PAPER_SUFFIX)) | set(p.rglob(STATS_JSON)))
            if not hits:
                logger.warning("no result files under %s", p)
            found.extend(hits)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(p)
    return found


def load_result(path: str | Path) -> Checkpoint:
    """Read one result (a maxact ``stats.json``, its directory, or a paper ``*_activation_stats.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATS_JSON
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    schema = str(data.get("schema", ""))
    if schema.startswith(MAXACT_SCHEMA_PREFIX):
        return _load_maxact(path, data)
    if "per_layer_stats" in data:
        return _load_paper(path, data)
    raise ValueError(f"{path}: neither a maxact stats.json (schema {MAXACT_SCHEMA_PREFIX}*) nor a paper result")


# ----------------------------------------------------------------------------------------------
# maxact layout
# ----------------------------------------------------------------------------------------------


def _float(v, default=math.nan) -> float:
    """JSON numbers, or the strings "inf"/"nan" some writers use, as float."""
    if v is None:
        return default
    return float(v)


def _load_sidecar(path: Path) -> dict[str, np.ndarray]:
    sidecar = path.with_name(SIDECAR)
    if not sidecar.exists():
        logger.info("%s: no sidecar %s; histograms, channel and per-sample peaks unavailable", path, SIDECAR)
        return {}
    from safetensors.numpy import load_file

    return load_file(str(sidecar))


def _load_maxact(path: Path, data: dict) -> Checkpoint:
    meta = dict(data.get("metadata") or {})
    tensors = _load_sidecar(path)
    sites: list[SiteStats] = []
    for name, s in (data.get("sites") or {}).items():
        quantiles = {float(q): _float(v) for q, v in (s.get("quantiles") or {}).items()}
        mx, mn = _float(s.get("max")), _float(s.get("min"))
        abs_max = s.get("abs_max")
        abs_max = _float(abs_max) if abs_max is not None else max(abs(mx), abs(mn))
        layer = s.get("layer")
        sites.append(
            SiteStats(
                name=name,
                component=str(s.get("component", "module")),
                layer=int(layer) if layer is not None else None,
                count=_float(s.get("count"), 0.0),
                mean=_float(s.get("mean")),
                std=_float(s.get("std")),
                rms=_float(s.get("rms")),
                abs_mean=_float(s.get("abs_mean")),
                min=mn,
                max=mx,
                abs_max=abs_max,
                quantiles=quantiles,
                quantiles_exact=True,
                sun=s.get("sun"),
                topk=list(s.get("topk") or []),
                module=s.get("module"),
                num_channels=s.get("num_channels"),
                nan_count=int(s.get("nan_count") or 0),
                posinf_count=int(s.get("posinf_count") or 0),
                neginf_count=int(s.get("neginf_count") or 0),
                abs_hist=tensors.get(f"{name}/abs_hist"),
                channel_abs_max=tensors.get(f"{name}/channel_abs_max"),
                sample_abs_max=tensors.get(f"{name}/sample_abs_max"),
                expert_tokens=[int(v) for v in s["expert_tokens"]] if s.get("expert_tokens") is not None else None,
            )
        )
    samples = None
    sdata = data.get("samples")
    if sdata is not None or "samples/category" in tensors:
        sdata = sdata or {}
        cat = tensors.get("samples/category")
        count = int(sdata.get("count", len(cat) if cat is not None else 0))
        samples = SampleInfo(
            count=count,
            category_names=list(sdata.get("category_names") or []),
            category=cat,
            num_tokens=tensors.get("samples/num_tokens"),
            corpus_index=tensors.get("samples/corpus_index"),
        )
    name = meta.get("model_name") or path.parent.name
    return Checkpoint(
        name=str(name),
        path=path,
        layout="maxact",
        model_type=meta.get("model_type"),
        num_layers=meta.get("num_layers"),
        hidden_size=meta.get("hidden_size"),
        metadata=meta,
        sites={s.name: s for s in sorted(sites, key=forward_order_key)},
        samples=samples,
        stored_global_max=_float(data.get("global_max_abs")) if data.get("global_max_abs") is not None else None,
        stored_global_site=data.get("global_max_site"),
        extra={k: data[k] for k in _MAXACT_EXTRAS if k in data},
    )


# ----------------------------------------------------------------------------------------------
# paper layout
# ----------------------------------------------------------------------------------------------


def paper_site_name(key: str) -> tuple[str, str, int | None]:
    """Map a paper-code site key to ``(maxact name, component, layer)``.

    ``embedding_output -> embedding``, ``layer_{i}_hidden -> layers.{i}.hidden``,
    ``layer_{i}_attn_output -> layers.{i}.attn``, ``layer_{i}_mlp_output -> layers.{i}.mlp``,
    ``layer_{i}_mlp_gate -> layers.{i}.gate``, ``layer_{i}_router_logits`` and
    ``layer_{i}_moe_gate -> layers.{i}.router``, ``final_layernorm -> final_norm``. Any other key
    keeps its name with component ``module`` (so it never counts towards M).
    """
    if key == "embedding_output":
        return "embedding", "embedding", None
    if key == "final_layernorm":
        return "final_norm", "final_norm", None
    m = _PAPER_LAYER_KEY.match(key)
    if m is None:
        return key, "module", None
    layer = int(m.group(1))
    suffix, component = _PAPER_COMPONENT[m.group(2)]
    return f"layers.{layer}.{suffix}", component, layer


def _paper_sun(entry: dict) -> dict | None:
    """The ``sun_*`` fields under maxact's key names (peak_token_median -> peak_median, ...)."""
    raw = {k[4:]: v for k, v in entry.items() if k.startswith("sun_")}
    if not raw:
        return None
    renames = {"peak_token_median": "peak_median", "peak_token_ratio": "peak_ratio"}
    return {renames.get(k, k): v for k, v in raw.items()}


def _load_paper(path: Path, data: dict) -> Checkpoint:
    sites: list[SiteStats] = []
    taken: set[str] = set()
    per_site = data["per_layer_stats"]
    # Some MoE files hold both router_logits and moe_gate for a layer; keep both, the second under
    # a distinct name (both are router outputs, excluded from M either way).
    keys = sorted(per_site, key=lambda k: (0 if k.endswith("router_logits") else 1, k))
    for key in keys:
        entry = per_site[key]
        if not entry:
            continue
        name, component, layer = paper_site_name(key)
        if name in taken:
            name = f"layers.{layer}.moe_gate" if layer is not None else key
        taken.add(name)
        mx, mn = _float(entry.get("max")), _float(entry.get("min"))
        quantiles = {q: _float(entry[k]) for k, q in _PAPER_QUANTILES.items() if k in entry}
        sites.append(
            SiteStats(
                name=name,
                component=component,
                layer=layer,
                count=_float(entry.get("count"), 0.0),
                mean=_float(entry.get("mean")),
                std=_float(entry.get("std")),
                rms=_float(entry.get("rms")),
                abs_mean=_float(entry.get("abs_mean")),
                min=mn,
                max=mx,
                abs_max=max(abs(mx), abs(mn)),
                quantiles=quantiles,
                quantiles_exact=False,
                sun=_paper_sun(entry),
                module=key,
            )
        )
    meta = {k: v for k, v in data.items() if k != "per_layer_stats"}
    loc = data.get("global_max_location")
    stored_site = None
    if isinstance(loc, str) and loc:
        stored_site = paper_site_name(loc.split(" ")[0])[0]
    gmax = data.get("global_max_activation")
    return Checkpoint(
        name=str(data.get("model_name") or path.name.removesuffix(PAPER_SUFFIX)),
        path=path,
        layout="paper",
        model_type=data.get("model_type"),
        num_layers=data.get("num_hidden_layers"),
        hidden_size=data.get("hidden_size"),
        metadata=meta,
        sites={s.name: s for s in sorted(sites, key=forward_order_key)},
        samples=None,
        stored_global_max=abs(float(gmax)) if gmax is not None else None,
        stored_global_site=stored_site,
    )
