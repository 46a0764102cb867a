"""What every export format shares: reading the result, picking the linear-input sites, the per-tensor
scale of a (policy, format) pair with its exact error figures, and strict JSON output.

Scales are float32, as every quantization tool stores them: ``scale = float32(clip / qmax)``, and the
SQNR, saturated and underflow shares reported beside a scale are computed with that float32 scale
(what a tool loading the file actually applies), exactly, from the site's |x| histogram
(:mod:`maxact.analysis.quant`).

Clips: ``max`` takes the site's exact ``abs_max`` from ``stats.json`` (the histogram holds |x| truncated
to bf16, which for float32 activations lies up to 2^-8 below the true maximum, and a ``max`` scale must
not saturate the maximum); ``percentile:P`` is the nearest-rank value over the histogram (exact for bf16
activations, the bf16-truncated |x| otherwise); ``mse`` the histogram bin value minimizing the squared
error for the format.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maxact.analysis import quant
from maxact.results import STATS_JSON, Checkpoint, SiteStats, load_result

logger = logging.getLogger(__name__)

#: ``--format`` values.
EXPORT_FORMATS = ("smoothquant", "input-scales", "json")
#: ``--dtype`` of ``input-scales`` -> the format name of :mod:`maxact.analysis.quant`.
SCALE_DTYPES = {"int8": "int8", "fp8-e4m3": "fp8_e4m3"}
#: What the ``json`` format tabulates for every site.
ALL_DTYPES = ("int8", "int4", "fp8_e4m3", "fp8_e5m2")
ALL_POLICIES = ("max", "percentile:99.9", "percentile:99.99", "mse")
DEFAULT_POLICY = "max"
DEFAULT_DTYPE = "int8"
INPUT_SUFFIX = ".input"
LINEAR_INPUT = "linear_input"
SCAN_HINT = "scan with --sites linear-inputs (or --sites all)"


class ExportError(ValueError):
    """Bad input a user can fix; the message is one line, fit for a CLI (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class LinearInput:
    """One linear-input site of a scan, under the module name the export writes.

    ``fused_expert`` marks the inputs of fused-expert parameters (3-D ``gate_up_proj``-like weights,
    no ``nn.Linear``): ``{experts}.{param}`` (every routed token) and ``{experts}.{e}.{param}`` (the
    tokens routed to expert e).
    """

    module: str  # export name: prefix + site name minus ".input"
    site: SiteStats
    fused_expert: bool

    @property
    def count(self) -> int:
        return int(self.site.count)


@dataclass(frozen=True)
class ScaleRow:
    """A per-tensor symmetric scale for one (site, policy, format) and what it costs."""

    policy: str
    dtype: str
    clip: float
    scale: float  # float32 value, as written
    sqnr_db: float
    saturated_fraction: float
    underflow_fraction: float

    @property
    def usable(self) -> bool:
        """A scale a tool can apply: finite and positive."""
        return math.isfinite(self.scale) and self.scale > 0

    def as_dict(self) -> dict[str, Any]:
        return {"clip": self.clip, "scale": self.scale, "sqnr_db": self.sqnr_db,
                "saturated_fraction": self.saturated_fraction, "underflow_fraction": self.underflow_fraction}


# ----------------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------------


def parse_policy(policy: str) -> str:
    """Canonical policy (``max``, ``percentile:P``, ``mse``); ExportError on anything else."""
    try:
        return quant.normalize_policy(policy)
    except ValueError as exc:
        raise ExportError(f"--policy: {exc}") from None


def parse_dtype(dtype: str) -> str:
    """``int8`` / ``fp8-e4m3`` (also ``fp8_e4m3``) -> the quant module's format name."""
    key = dtype.strip().lower().replace("_", "-")
    if key not in SCALE_DTYPES:
        raise ExportError(f"--dtype: unknown {dtype!r}; use {' or '.join(SCALE_DTYPES)}")
    return SCALE_DTYPES[key]


def load(result: str | os.PathLike) -> Checkpoint:
    """Read a scan result (its directory or its ``stats.json``); ExportError when it is not one."""
    path = Path(result)
    if not path.exists():
        raise ExportError(f"result not found: {path}")
    if path.is_dir() and not (path / STATS_JSON).is_file():
        raise ExportError(f"no {STATS_JSON} in {path}: not a maxact result directory")
    try:
        checkpoint = load_result(path)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    if checkpoint.layout != "maxact":
        raise ExportError(f"{path} is a paper-code result without histograms; {SCAN_HINT} using maxact")
    return checkpoint


def module_of(site_name: str) -> str:
    """``layers.0.mlp.up_proj.input`` -> ``layers.0.mlp.up_proj``."""
    return site_name[: -len(INPUT_SUFFIX)] if site_name.endswith(INPUT_SUFFIX) else site_name


def linear_inputs(checkpoint: Checkpoint, module_prefix: str = "") -> list[LinearInput]:
    """The linear-input sites in forward order; ExportError when the scan has none."""
    sites = [s for s in checkpoint.sites.values() if s.component == LINEAR_INPUT]
    if not sites:
        raise ExportError(f"{checkpoint.path}: no linear-input sites; {SCAN_HINT}")
    out = []
    for s in sites:
        name = module_of(s.name)
        # nn.Linear sites record their own module; a fused-expert site records the experts module.
        fused = s.module is not None and s.module != name
        out.append(LinearInput(module=module_prefix + name, site=s, fused_expert=fused))
    return out


def require_histograms(sites: list[SiteStats], checkpoint: Checkpoint) -> None:
    missing = [s.name for s in sites if s.abs_hist is None]
    if missing:
        raise ExportError(f"{checkpoint.path}: no |x| histogram for {len(missing)} site(s) (e.g. {missing[0]}); "
                          "the stats.safetensors sidecar is missing or incomplete")


# ----------------------------------------------------------------------------------------------
# scales
# ----------------------------------------------------------------------------------------------


def policy_clip(site: SiteStats, policy: str, dtype: str) -> float:
    """The clip a policy picks for a site (see the module docstring for ``max``)."""
    p = quant.normalize_policy(policy)
    if p == "max" and site.abs_max is not None and not math.isnan(site.abs_max):
        return float(site.abs_max)
    return float(quant.clip_for_policy(site.abs_hist, p, dtype))


def scale_row(site: SiteStats, policy: str, dtype: str) -> ScaleRow:
    """Clip, float32 scale and the exact SQNR / saturated / underflow shares of that scale."""
    fmt = quant.get_format(dtype)
    p = quant.normalize_policy(policy)
    clip = policy_clip(site, p, fmt.name)
    with np.errstate(over="ignore", invalid="ignore"):
        scale = float(np.float32(clip / fmt.qmax)) if not math.isnan(clip) else math.nan
    hist = site.abs_hist
    if not (math.isfinite(scale) and scale > 0):
        # No usable scale (site never fired, all zeros, or an inf maximum): no error figures either.
        return ScaleRow(p, fmt.name, clip, scale, math.nan, quant.saturated_fraction(hist, clip), math.nan)
    return ScaleRow(p, fmt.name, clip, scale, quant.sqnr(hist, scale, fmt),
                    quant.saturated_fraction(hist, clip), quant.underflow_fraction(hist, scale, fmt))


def unusable_reason(site: SiteStats, row: ScaleRow) -> str:
    """Why a site gets no scale, in a few words."""
    if site.count == 0:
        return "the hook never received a token"
    if math.isinf(row.clip):
        return "its clip is inf (the site saw inf values)"
    if math.isnan(row.clip) or row.clip == 0:
        return "every value is 0 or NaN"
    return f"clip {row.clip!r} gives no finite positive float32 scale"


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------


def json_value(value: Any) -> Any:
    """Plain, strict JSON: NaN -> null, +-inf -> "inf" / "-inf", numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    return value


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_name)`` then move the file into place (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, doc: dict[str, Any]) -> None:
    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(json_value(doc), fh, indent=1, allow_nan=False)
            fh.write("\n")

    atomic_write(path, dump)


def source_fields(checkpoint: Checkpoint) -> dict[str, Any]:
    """Where the numbers come from: the result file and the scan's model and corpus."""
    md = checkpoint.metadata
    corpus = md.get("corpus") or {}
    return {"source": str(checkpoint.path), "model_name": checkpoint.name, "model_path": md.get("model_path"),
            "model_type": checkpoint.model_type, "model_dtype": md.get("dtype"),
            "corpus": {k: corpus.get(k) for k in ("path", "hash", "num_samples", "num_tokens")},
            "maxact_version": md.get("maxact_version")}
