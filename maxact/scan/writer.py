"""Write a ScanResult as ``stats.json`` (schema ``maxact.stats/1``) and ``stats.safetensors``.

Layout: docs/CONTRACTS.md section 4, documented field by field in docs/STATS_FORMAT.md. Both files are
written to a temporary name and moved into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from maxact.scan import derived
from maxact.scan.result import ScanResult, SiteResult

SCHEMA = "maxact.stats/1"
STATS_JSON = "stats.json"
SIDECAR = "stats.safetensors"

# summary() scalars copied into every site entry, in this order.
_SCALARS = ("count", "sum", "sum_sq", "abs_sum", "mean", "std", "rms", "abs_mean", "min", "max",
            "abs_max", "nan_count", "posinf_count", "neginf_count")
_INT_SCALARS = {"count", "nan_count", "posinf_count", "neginf_count"}


def plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples -> plain JSON types (floats stay floats, NaN stays NaN)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def quantile_key(q: float) -> str:
    """0.25 -> "0.25", 0.9999 -> "0.9999" (shortest round-trip text)."""
    return repr(float(q))


def topk_records(topk: dict[str, np.ndarray] | None,
                 provenance: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Columnar top-k arrays -> a list of {abs, value, sample, position, channel} records, each
    extended by its provenance record (site, layer, token, context, corpus record) when given."""
    if not topk:
        return []
    n = len(topk["abs"])
    out = [{"abs": float(topk["abs"][i]), "value": float(topk["value"][i]),
            "sample": int(topk["sample"][i]), "position": int(topk["position"][i]),
            "channel": int(topk["channel"][i])} for i in range(n)]
    if provenance:
        for rec, extra in zip(out, provenance):
            rec.update(plain(extra))
    return out


def site_entry(site: SiteResult, site_range: Any = None) -> dict[str, Any]:
    s = site.summary
    entry: dict[str, Any] = {"component": site.component, "layer": site.layer, "module": site.module,
                             "num_channels": site.num_channels, "calls": site.calls}
    for key in _SCALARS:
        if key in s:
            entry[key] = int(s[key]) if key in _INT_SCALARS else float(s[key])
    entry["quantiles"] = {quantile_key(q): float(v) for q, v in site.quantiles.items()}
    entry["sun"] = plain(s["sun"]) if s.get("sun") is not None else None
    entry["topk"] = topk_records(s.get("topk"), site.provenance)
    entry["first_token"] = plain(site.first_token) if site.first_token is not None else None
    if site.expert_tokens is not None:
        entry["expert_tokens"] = [int(v) for v in site.expert_tokens]
    if "sample_id_out_of_range" in s:
        entry["sample_id_out_of_range"] = int(s["sample_id_out_of_range"])
    if site_range is not None:
        entry["range"] = plain(derived.site_range_entry(site_range))
    return entry


def nonfinite_report(result: ScanResult) -> list[dict[str, Any]]:
    """Sites that saw NaN or inf, with counts and where the inf values sit (from their top-k)."""
    out = []
    for site in result.nonfinite_sites():
        s = site.summary
        inf_at = [r for r in topk_records(s.get("topk")) if math.isinf(r["abs"])]
        out.append({"site": site.name, "nan_count": int(s["nan_count"]),
                    "posinf_count": int(s["posinf_count"]), "neginf_count": int(s["neginf_count"]),
                    "inf_locations": inf_at})
    return out


def stats_document(result: ScanResult) -> dict[str, Any]:
    """The whole ``stats.json`` object."""
    ranges = derived.site_ranges(result)
    return {
        "schema": SCHEMA,
        "metadata": plain(result.metadata),
        "global_max_abs": float(result.global_max_abs),
        "global_max_value": float(result.global_max_value),
        "global_max_site": result.global_max_site,
        "first_token": plain(result.first_token_summary()),
        "component_max_abs": {c: {"abs_max": float(v), "site": where}
                              for c, (v, where) in result.component_maxima().items()},
        "nonfinite": nonfinite_report(result),
        "coverage": {"requested": len(result.sites), "never_fired": result.never_fired()},
        "warnings": list(result.warnings),
        "bootstrap_m": plain(derived.bootstrap_m(result)),
        "range_flags": plain(derived.range_flags(result, ranges)),
        "experts": plain(derived.expert_coverage(result)),
        "sites": {name: site_entry(site, ranges.get(name)) for name, site in result.sites.items()},
        "samples": {"count": result.samples.count, "category_names": list(result.samples.category_names)},
        "sidecar": SIDECAR,
    }


def sidecar_tensors(result: ScanResult) -> dict[str, np.ndarray]:
    """Arrays of the safetensors sidecar, keyed as in CONTRACTS.md section 4."""
    tensors: dict[str, np.ndarray] = {}
    for name, site in result.sites.items():
        s = site.summary
        tensors[f"{name}/abs_hist"] = np.ascontiguousarray(s["abs_hist"], dtype=np.int64)
        if s.get("channel_abs_max") is not None:
            tensors[f"{name}/channel_abs_max"] = np.ascontiguousarray(s["channel_abs_max"], dtype=np.float32)
        if s.get("sample_abs_max") is not None:
            tensors[f"{name}/sample_abs_max"] = np.ascontiguousarray(s["sample_abs_max"], dtype=np.float32)
    smp = result.samples
    tensors["samples/category"] = np.ascontiguousarray(smp.category, dtype=np.int32)
    tensors["samples/num_tokens"] = np.ascontiguousarray(smp.num_tokens, dtype=np.int64)
    tensors["samples/corpus_index"] = np.ascontiguousarray(smp.corpus_index, dtype=np.int64)
    return tensors


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_results(result: ScanResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``stats.json`` and ``stats.safetensors`` into ``out_dir``; return both paths."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, side_path = out_dir / STATS_JSON, out_dir / SIDECAR
    doc = stats_document(result)

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            # allow_nan: empty sites have NaN means; Python's json reads NaN/Infinity back as floats.
            json.dump(doc, fh, indent=1, allow_nan=True)
            fh.write("\n")

    _atomic_write(side_path, lambda tmp: save_file(sidecar_tensors(result), tmp,
                                                    metadata={"schema": SCHEMA}))
    _atomic_write(json_path, write_json)
    return json_path, side_path
