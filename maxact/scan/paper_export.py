"""``--export max-act-llm``: the paper code's ``<model>_activation_stats.json`` layout.

Keys follow the files published with the paper (see shared/reference/max_act_llm/ beside the checkout): top-level
``model_name, model_path, model_type, num_hidden_layers, hidden_size, data_path, num_samples,
max_seq_len, global_max_activation, global_max_location, per_layer_stats``; per site ``mean, std,
abs_mean, rms, max, min, count`` and, for residual-type sites, the Sun-criterion fields ``sun_*``
and the |x| quantiles ``abs_median, abs_q25 ... abs_q999, abs_hist_count, abs_hist_zero_frac``.
Differences from the paper's numbers are deliberate: quantiles here are exact (the paper's came from
a 512-bin log histogram), and ``abs_hist_zero_frac`` is the share of |x| in histogram bin 0 (zeros
and float32 subnormals) rather than of values below the paper's 1e-8 clamp.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from maxact.scan.result import ScanResult, SiteResult

# Model types whose MoE router the paper's code recorded as `router_logits` (others: `moe_gate`).
_ROUTER_LOGITS_TYPES = {"gpt_oss"}
_RESIDUAL = {"embedding", "hidden", "attn", "mlp", "final_norm"}
# (paper key, ActivationStats sun key)
_SUN_FIELDS = (("sun_peak_abs", "peak_abs"), ("sun_peak_token_median", "peak_median"),
               ("sun_peak_token_ratio", "peak_ratio"), ("sun_max_ratio", "max_ratio"),
               ("sun_max_ratio_abs", "max_ratio_abs"), ("sun_max_ratio_median", "max_ratio_median"),
               ("sun_mean_ratio", "mean_ratio"), ("sun_std_ratio", "std_ratio"),
               ("sun_n_tokens", "n_tokens"), ("sun_n_pass", "n_pass"), ("sun_t_val", "t_val"),
               ("sun_t_ratio", "t_ratio"))
_QUANTILE_FIELDS = (("abs_median", 0.5), ("abs_q25", 0.25), ("abs_q75", 0.75), ("abs_q90", 0.9),
                    ("abs_q99", 0.99), ("abs_q999", 0.999))


def paper_key(site: SiteResult, model_type: str) -> str | None:
    """Our site name -> the paper's per_layer_stats key (None: the paper has no such site)."""
    comp, i = site.component, site.layer
    if comp == "embedding":
        return "embedding_output"
    if comp == "final_norm":
        return "final_layernorm"
    suffix = {"hidden": "hidden", "attn": "attn_output", "mlp": "mlp_output", "gate": "mlp_gate",
              "router": "router_logits" if model_type in _ROUTER_LOGITS_TYPES else "moe_gate"}.get(comp)
    if suffix is None or i is None:
        return None
    return f"layer_{i}_{suffix}"


def paper_location(site: SiteResult, model_type: str) -> str:
    """``"layer_16_hidden (max)"``: which site and which extreme carries M."""
    side = "max" if site.signed_max >= 0 else "min"
    return f"{paper_key(site, model_type)} ({side})"


def site_stats(site: SiteResult) -> dict[str, Any]:
    s = site.summary
    out: dict[str, Any] = {k: float(s[k]) for k in ("mean", "std", "abs_mean", "rms", "max", "min")}
    out["count"] = float(s["count"])      # the paper wrote counts as floats
    if site.component not in _RESIDUAL:
        return out
    sun = s.get("sun")
    if sun is not None:
        for paper, ours in _SUN_FIELDS:
            value = sun.get(ours)     # mean/std ratio are None under --token-median candidates
            out[paper] = float(value) if value is not None else math.nan
    for paper, q in _QUANTILE_FIELDS:
        out[paper] = float(site.quantiles.get(q, math.nan))
    count = int(s["count"])
    out["abs_hist_count"] = float(count)
    out["abs_hist_zero_frac"] = float(s["abs_hist"][0]) / count if count else math.nan
    return out


def paper_document(result: ScanResult) -> dict[str, Any]:
    md = result.metadata
    model_type = md.get("model_type", "")
    per_layer: dict[str, Any] = {}
    for site in sorted(result.sites.values(), key=_paper_order):
        key = paper_key(site, model_type)
        if key is not None:
            per_layer[key] = site_stats(site)
    _, carrier = result.global_max
    return {
        "model_name": md.get("model_name"),
        "model_path": md.get("model_path"),
        "model_type": model_type,
        "num_hidden_layers": md.get("num_layers"),
        "hidden_size": md.get("hidden_size"),
        "data_path": md.get("corpus", {}).get("path"),
        "num_samples": md.get("corpus", {}).get("num_samples"),
        "max_seq_len": md.get("max_seq_len"),
        "global_max_activation": float(result.global_max_value),
        "global_max_location": paper_location(carrier, model_type) if carrier else None,
        "per_layer_stats": per_layer,
    }


# The paper's files list a layer's sites in hook-firing order: attention, gate/router, MLP, hidden.
_LAYER_ORDER = {"attn": 0, "gate": 1, "router": 2, "mlp": 3, "hidden": 4}


def _paper_order(site: SiteResult) -> tuple:
    if site.component == "embedding":
        return (0, 0, 0)
    if site.component == "final_norm":
        return (2, 0, 0)
    return (1, site.layer if site.layer is not None else -1, _LAYER_ORDER.get(site.component, 9))


def export_paper(result: ScanResult, out_dir: Path) -> Path:
    """Write ``<out_dir>/<model_name>_activation_stats.json``; return its path."""
    path = Path(out_dir) / f"{result.metadata.get('model_name', 'model')}_activation_stats.json"
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(paper_document(result), fh, indent=2, allow_nan=True)
        fh.write("\n")
    return path
