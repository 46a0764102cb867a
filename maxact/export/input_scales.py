"""``--format input-scales``: one static per-tensor activation scale per linear input, as safetensors.

``<module>.input_scale`` is a float32 scalar (shape ``[]``), the key static FP8 / INT8 checkpoints use
for a Linear's activation scale: symmetric, ``scale = clip / qmax`` (127 for INT8, 448 for FP8 E4M3),
so a tool quantizes ``q = round(x / scale)`` clamped to the format. The clip is the policy's, from the
scan's exact |x| histogram (:mod:`maxact.export.formats`).

Beside it, ``<out>.json`` holds each module's clip, scale, SQNR (dB) under that policy and format, the
share of values the clip saturates and the share of non-zero values that round to 0, plus the
modules that got no scale and why.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from maxact.analysis.quant import get_format
from maxact.export.formats import (ExportError, LinearInput, ScaleRow, atomic_write, linear_inputs, require_histograms,
                                   scale_row, source_fields, unusable_reason, write_json)
from maxact.results import Checkpoint

logger = logging.getLogger(__name__)

SCHEMA = "maxact.export.input_scales/1"
SCALE_SUFFIX = ".input_scale"


def sidecar_path(out: str | Path) -> Path:
    """``scales.safetensors`` -> ``scales.safetensors.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def scale_rows(sites: list[LinearInput], policy: str, dtype: str) -> tuple[dict[str, ScaleRow], dict[str, str]]:
    """(module -> usable scale row, module -> why it got none)."""
    rows: dict[str, ScaleRow] = {}
    skipped: dict[str, str] = {}
    for s in sites:
        row = scale_row(s.site, policy, dtype)
        if row.usable:
            rows[s.module] = row
        else:
            skipped[s.module] = unusable_reason(s.site, row)
    return rows, skipped


def export_input_scales(checkpoint: Checkpoint, out: str | Path, *, policy: str, dtype: str,
                        module_prefix: str = "") -> list[Path]:
    """Write ``out`` (safetensors) and ``<out>.json``; return both paths."""
    from safetensors.numpy import save_file

    sites = linear_inputs(checkpoint, module_prefix)
    require_histograms([s.site for s in sites], checkpoint)
    fmt = get_format(dtype)
    rows, skipped = scale_rows(sites, policy, fmt.name)
    for module, reason in skipped.items():
        logger.warning("%s: no input scale: %s", module, reason)
    if not rows:
        raise ExportError(f"{checkpoint.path}: no linear input has a usable scale "
                          f"({len(skipped)} skipped, e.g. {next(iter(skipped))}: {next(iter(skipped.values()))})")
    policy_name = next(iter(rows.values())).policy
    tensors = {m + SCALE_SUFFIX: np.array(r.scale, dtype=np.float32) for m, r in rows.items()}
    header = {"format": "pt", "producer": "maxact.export", "policy": policy_name, "dtype": fmt.name,
              "qmax": repr(fmt.qmax)}
    out = Path(out)
    atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=header))
    by_site = {s.module: s for s in sites}
    doc = {
        "schema": SCHEMA,
        **source_fields(checkpoint),
        "policy": policy_name,
        "dtype": fmt.name,
        "qmax": fmt.qmax,
        "scale_rule": "float32(clip / qmax)",
        "modules": {m: {"site": by_site[m].site.name, "layer": by_site[m].site.layer,
                        "fused_expert": by_site[m].fused_expert, "count": by_site[m].count, **r.as_dict()}
                    for m, r in rows.items()},
        "skipped": skipped,
    }
    side = sidecar_path(out)
    write_json(side, doc)
    worst = min(rows.items(), key=lambda kv: kv[1].sqnr_db if not math.isnan(kv[1].sqnr_db) else math.inf)
    logger.info("%d input scales (%s, %s); lowest SQNR %.2f dB at %s", len(rows), policy_name, fmt.name,
                worst[1].sqnr_db, worst[0])
    return [out, side]
