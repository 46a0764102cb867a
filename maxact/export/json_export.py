"""``--format json``: every site's amax and the per-tensor quantization outcome of every policy and
format, for any other tool.

Sites: every site of the scan that has a histogram (linear inputs and, with ``--sites all``, the
paper's residual, attention, MLP, gate and router sites), in forward order. For each, ``amax`` (exact
max |x| from stats.json), the counts, and under ``quant[dtype][policy]`` the clip, the float32 scale,
SQNR in dB, the saturated share and the underflow share, for dtypes int8, int4, fp8_e4m3, fp8_e5m2
and policies max, percentile:99.9, percentile:99.99, mse. Strict JSON: NaN is null, inf is "inf".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from maxact.analysis.quant import get_format
from maxact.export.formats import (ALL_DTYPES, ALL_POLICIES, INPUT_SUFFIX, LINEAR_INPUT, ExportError, module_of,
                                   scale_row, source_fields, write_json)
from maxact.results import Checkpoint, SiteStats

logger = logging.getLogger(__name__)

SCHEMA = "maxact.export.quant/1"


def site_entry(site: SiteStats, module_prefix: str, dtypes=ALL_DTYPES, policies=ALL_POLICIES) -> dict[str, Any]:
    """One site's record: identity, amax, counts and the (dtype x policy) table."""
    entry: dict[str, Any] = {"component": site.component, "layer": site.layer}
    if site.component == LINEAR_INPUT and site.name.endswith(INPUT_SUFFIX):
        name = module_of(site.name)
        entry["module"] = module_prefix + name
        entry["fused_expert"] = site.module is not None and site.module != name
    else:
        entry["module"] = site.module
    entry.update(num_channels=site.num_channels, count=int(site.count), amax=site.abs_max,
                 nan_count=site.nan_count, inf_count=site.posinf_count + site.neginf_count)
    entry["quant"] = {get_format(d).name: {p: scale_row(site, p, d).as_dict() for p in policies} for d in dtypes}
    return entry


def export_json(checkpoint: Checkpoint, out: str | Path, *, module_prefix: str = "") -> list[Path]:
    """Write the table of every site with a histogram to ``out``; return the path."""
    sites = [s for s in checkpoint.sites.values() if s.abs_hist is not None]
    if not sites:
        raise ExportError(f"{checkpoint.path}: no |x| histograms (the stats.safetensors sidecar is missing)")
    no_hist = len(checkpoint.sites) - len(sites)
    if no_hist:
        logger.warning("%d site(s) without a histogram left out", no_hist)
    if not any(s.component == LINEAR_INPUT for s in sites):
        logger.warning("no linear-input sites: the table holds the scan's other sites only "
                       "(scan with --sites linear-inputs for per-Linear scales)")
    doc = {
        "schema": SCHEMA,
        **source_fields(checkpoint),
        "dtypes": {get_format(d).name: {"qmax": get_format(d).qmax} for d in ALL_DTYPES},
        "policies": list(ALL_POLICIES),
        "scale_rule": "float32(clip / qmax)",
        "sites": {s.name: site_entry(s, module_prefix) for s in sites},
    }
    out = Path(out)
    write_json(out, doc)
    logger.info("quantization table of %d sites x %d dtypes x %d policies", len(sites), len(ALL_DTYPES),
                len(ALL_POLICIES))
    return [out]
