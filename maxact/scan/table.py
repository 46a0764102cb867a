"""The short text table printed at the end of a scan."""

from __future__ import annotations

import math

from maxact.scan.result import FLOAT16_MAX, FP8_E4M3_MAX, FP8_E5M2_MAX, M_COMPONENTS, ScanResult


def fmt(value: float) -> str:
    """Compact number: up to 6 significant digits, exponent for very large or small magnitudes."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value != 0 and (abs(value) >= 1e7 or abs(value) < 1e-3):
        return f"{value:.4e}"
    return f"{value:.6g}"


def range_flags(m: float) -> list[str]:
    """Which formats M overflows (raw values, before any scaling)."""
    flags = []
    for name, limit in (("float16", FLOAT16_MAX), ("fp8-e5m2", FP8_E5M2_MAX), ("fp8-e4m3", FP8_E4M3_MAX)):
        if not math.isnan(m) and m > limit:
            flags.append(f"{name} (max {fmt(limit)})")
    return flags


def _overall(result: ScanResult) -> tuple[float, object]:
    """Largest |a| over every site (used when no M-eligible site was hooked, e.g. linear inputs)."""
    best, where = math.nan, None
    for s in result.sites.values():
        if not math.isnan(s.abs_max) and (where is None or s.abs_max > best):
            best, where = s.abs_max, s
    return best, where


def carrier_line(result: ScanResult) -> str:
    m, site = result.global_max
    label = "M"
    if site is None:
        m, site = _overall(result)
        label = "no M-eligible site; max |a| over all sites"
        if site is None:
            return "M = -  (no site saw a value)"
    where = ""
    top = site.summary.get("topk")
    if top is not None and len(top["abs"]):
        where = (f"; sample {int(top['sample'][0])}, position {int(top['position'][0])}, "
                 f"channel {int(top['channel'][0])}")
    return f"{label} = {fmt(m)} at {site.name} (value {fmt(site.signed_max)}{where})"


def render(result: ScanResult) -> str:
    """Multi-line summary: M, its carrier, per-component maxima, range flags, NaN/inf, coverage."""
    lines = [carrier_line(result)]
    ft = result.first_token_summary()
    if ft["global_max_site_without_pos0"] is not None:
        lines.append(f"M without position 0 = {fmt(ft['global_max_abs_without_pos0'])} at "
                     f"{ft['global_max_site_without_pos0']}; position 0 alone: "
                     f"{fmt(ft['global_max_abs_pos0'])}"
                     + (f" (first {ft['skip_first_tokens']} positions skipped)"
                        if ft["skip_first_tokens"] else ""))
    lines.append("")
    lines.append(f"{'component':<13}{'max |a|':>12}  {'in M':<5} site")
    for comp, (value, where) in result.component_maxima().items():
        lines.append(f"{comp:<13}{fmt(value):>12}  {'yes' if comp in M_COMPONENTS else 'no':<5} {where}")
    lines.append("")
    m = result.global_max_abs
    if math.isnan(m):
        m = _overall(result)[0]
    over = range_flags(m)
    lines.append("range: max |a| exceeds " + ", ".join(over) if over else "range: max |a| fits float16 and FP8 E4M3")
    if "float16" in " ".join(over) or _has_inf(result):
        lines.append("  float16 cannot hold these activations: run (and scan) this model in bfloat16")
    bad = result.nonfinite_sites()
    if bad:
        lines.append(f"NaN/inf in {len(bad)} site(s):")
        for s in bad[:10]:
            sm = s.summary
            lines.append(f"  {s.name}: nan {int(sm['nan_count'])}, +inf {int(sm['posinf_count'])}, "
                         f"-inf {int(sm['neginf_count'])}")
        if len(bad) > 10:
            lines.append(f"  ... and {len(bad) - 10} more (stats.json: nonfinite)")
    else:
        lines.append("NaN/inf: none")
    lines.extend(_expert_lines(result))
    missing = result.never_fired()
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... (+{len(missing) - 8})" if len(missing) > 8 else "")
        lines.append(f"hooks that never fired: {shown}")
    return "\n".join(lines)


def _has_inf(result: ScanResult) -> bool:
    return any(int(s.summary["posinf_count"]) + int(s.summary["neginf_count"]) > 0 for s in result.m_sites)


def _expert_lines(result: ScanResult) -> list[str]:
    """MoE coverage: routed-token range and the experts under --min-expert-tokens (none for dense models)."""
    counts = [n for s in result.sites.values() for n in (s.expert_tokens or ())]
    if not counts:
        return []
    n = int(getattr(result.config, "min_expert_tokens", 0))
    routers = sum(1 for s in result.sites.values() if s.expert_tokens)
    starved = result.starved_experts(n)
    line = (f"MoE: {len(counts)} experts in {routers} router layer(s), {min(counts):,} to {max(counts):,} "
            f"tokens each; ")
    if not starved:
        return [line + f"none under {n}"]
    shown = ", ".join(f"{e['site']} expert {e['expert']} ({e['tokens']})" for e in starved[:8])
    more = f" ... (+{len(starved) - 8})" if len(starved) > 8 else ""
    return [line + f"{len(starved)} under {n}: {shown}{more}"]
