"""A model-card snippet from one result: YAML front-matter fields and a Markdown block.

    python -m maxact.card results/Qwen3-8B/stats.json

The fields say how large the activations get and where (M and its site), under which corpus and
protocol it was measured, the recommended per-tensor activation scale per clip policy (at the site
carrying M, with its SQNR), the range flags (float16, FP8) and, with per-sample peaks, a bootstrap
interval for M. Results without a histogram (the paper layout) get the scales they can support
(max-abs exactly, the 99.9 % percentile approximately) and say so.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Sequence

import yaml

from maxact import analysis as A
from maxact.results import Checkpoint, load_result

logger = logging.getLogger(__name__)

CARD_FORMATS = ("int8", "fp8_e4m3")
COMPONENT_WORDS = {"hidden": "hidden state (residual stream)", "attn": "attention output", "mlp": "MLP output",
                   "embedding": "embedding output", "final_norm": "final norm output"}


@dataclass
class Card:
    """The numbers of a model card; rendered by :func:`front_matter` and :func:`markdown`."""

    ckpt: Checkpoint
    carrier: A.Carrier
    sun: A.SunResult
    ranges: A.CheckpointRanges
    scales: list[dict] = field(default_factory=list)  # {format, policy, clip, scale, sqnr_db, exact}
    bootstrap: A.BootstrapCI | None = None
    has_histogram: bool = False


def _clean(v):
    """Plain python numbers for YAML (NaN -> None)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v
    v = float(v)
    return None if math.isnan(v) else v


def build_card(ckpt: Checkpoint, formats: Sequence[str] = CARD_FORMATS,
               policies: Sequence[str] = A.DEFAULT_POLICIES) -> Card:
    """Compute the card's numbers for one checkpoint."""
    carrier = A.global_max(ckpt)
    site = ckpt.sites[carrier.site]
    scales = []
    if site.abs_hist is not None:
        for row in A.quant_table(site.abs_hist, site.name, formats, policies):
            scales.append({"format": row.fmt, "policy": row.policy, "clip": row.clip, "scale": row.scale,
                           "sqnr_db": row.sqnr_db, "exact": True})
    else:
        # No histogram: max-abs is exact from the stored extremes; the 99.9 % clip only as good as the file's quantile.
        for fmt in formats:
            f = A.get_format(fmt)
            scales.append({"format": f.name, "policy": "max", "clip": carrier.M, "scale": carrier.M / f.qmax,
                           "sqnr_db": None, "exact": True})
            q999 = site.quantiles.get(0.999)
            if q999 is not None:
                scales.append({"format": f.name, "policy": "percentile:99.9", "clip": q999, "scale": q999 / f.qmax,
                               "sqnr_db": None, "exact": site.quantiles_exact})
    peaks = A.sample_peaks(ckpt)
    return Card(
        ckpt=ckpt,
        carrier=carrier,
        sun=A.sun_criterion(ckpt),
        ranges=A.checkpoint_ranges(ckpt, policies=("max",)),
        scales=scales,
        bootstrap=A.bootstrap_ci(peaks) if peaks is not None and peaks.peaks.size else None,
        has_histogram=site.abs_hist is not None,
    )


def _first_token(ckpt: Checkpoint) -> tuple[float, str | None] | None:
    """(M without position 0, its site) when the scan recorded it (massive activations like token 0)."""
    ft = ckpt.extra.get("first_token") or {}
    value = ft.get("global_max_abs_without_pos0")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value), ft.get("global_max_site_without_pos0")


def _corpus(ckpt: Checkpoint) -> dict:
    meta = ckpt.metadata
    corpus = dict(meta.get("corpus") or {})
    if ckpt.layout == "paper":
        corpus.setdefault("path", meta.get("data_path"))
        corpus.setdefault("num_samples", meta.get("num_samples"))
    return {k: v for k, v in corpus.items() if v is not None}


def _protocol(ckpt: Checkpoint) -> dict:
    meta = ckpt.metadata
    keys = ("dtype", "attn_implementation", "max_seq_len", "tokens_per_batch", "device", "maxact_version")
    out = {k: meta[k] for k in keys if meta.get(k) is not None}
    out["layout"] = ckpt.layout
    out["m_excludes"] = sorted(A.M_EXCLUDED_COMPONENTS)
    sun = meta.get("sun") or {}
    out["sun_thresholds"] = {"t_val": sun.get("t_val", A.SUN_T_VAL), "t_ratio": sun.get("t_ratio", A.SUN_T_RATIO)}
    return out


def front_matter(card: Card) -> dict:
    """The YAML front-matter fields, under one ``activation_range`` key."""
    ck, c = card.ckpt, card.carrier
    scales: dict = {}
    sqnr: dict = {}
    for s in card.scales:
        key = s["policy"] if s["exact"] else f"{s['policy']} (approximate)"
        scales.setdefault(s["format"], {})[key] = _clean(s["scale"])
        if s["sqnr_db"] is not None:
            sqnr.setdefault(s["format"], {})[s["policy"]] = _clean(round(s["sqnr_db"], 3))
    fields = {
        "tool": "maxact",
        "model": ck.name,
        "max_abs_activation": _clean(c.M),
        "max_abs_activation_signed": _clean(c.signed_value),
        "max_abs_activation_site": c.site,
        "max_abs_activation_component": c.component,
    }
    if card.bootstrap is not None:
        fields["max_abs_activation_bootstrap_ci"] = {"level": card.bootstrap.level,
                                                     "lower": _clean(card.bootstrap.lower),
                                                     "upper": _clean(card.bootstrap.upper)}
    first = _first_token(ck)
    if first is not None:
        fields["max_abs_activation_without_position_0"] = _clean(first[0])
    fields["sun_massive_activations"] = card.sun.passed
    corpus = _corpus(ck)
    if corpus:
        fields["corpus"] = corpus
    tokens = corpus.get("num_tokens")
    if tokens is not None:
        fields["tokens"] = tokens
    fields["protocol"] = _protocol(ck)
    fields["activation_scales"] = {"site": c.site, "scheme": "per-tensor symmetric, scale = clip / qmax", **scales}
    if sqnr:
        fields["activation_sqnr_db"] = sqnr
    r = card.ranges
    fields["range_flags"] = {
        "fp16_overflow": r.fp16_overflow,
        "sites_over_fp16": len(r.sites_over_fp16),
        "fp8_e4m3_unscaled_overflow": r.e4m3_unscaled_overflow,
        "fp8_e5m2_unscaled_overflow": r.e5m2_unscaled_overflow,
    }
    if not card.has_histogram:
        fields["note"] = ("no exact histogram in this result: SQNR and MSE clips unavailable, "
                          "percentile clips only as exact as the file's quantiles")
    return {"activation_range": fields}


def _num(v, digits: int = 6) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    v = float(v)
    if math.isinf(v):
        return "inf"
    if abs(v) >= 10 ** digits:
        return f"{round(v):,}"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.3e}"
    return f"{v:,.{digits}g}"


def markdown(card: Card) -> str:
    """The Markdown block for the card's body."""
    ck, c = card.ckpt, card.carrier
    corpus = _corpus(ck)
    proto = _protocol(ck)
    lines = ["## Activation range", ""]
    what = f"{corpus.get('num_samples', '?')} samples"
    if corpus.get("num_tokens") is not None:
        what += f", {int(corpus['num_tokens']):,} tokens"
    source = corpus.get("path") or "the scan corpus"
    dtype = proto.get("dtype", "dtype not recorded")
    tool = f"maxact {proto['maxact_version']}" if "maxact_version" in proto else (
        "maxact" if ck.layout == "maxact" else "the Max_act_llm code (published statistics)")
    lines.append(f"Measured with {tool} in a forward pass over {what} of `{source}` ({dtype}).")
    lines.append("M is the largest |x| over embedding, attention, MLP, hidden-state and final-norm outputs "
                 "(gate pre-activations and router logits excluded).")
    lines += ["", "| quantity | value |", "| --- | --- |"]
    lines.append(f"| M = max \\|x\\| | {_num(c.M)} (signed {_num(c.signed_value)}) |")
    lines.append(f"| carried by | `{c.site}`, {COMPONENT_WORDS.get(c.component, c.component)} |")
    first = _first_token(ck)
    if first is not None:
        lines.append(f"| M without position 0 | {_num(first[0])}" + (f" at `{first[1]}`" if first[1] else "") + " |")
    if card.bootstrap is not None:
        b = card.bootstrap
        lines.append(f"| bootstrap {b.level:.0%} interval of M | {_num(b.lower)} to {_num(b.upper)} "
                     f"({b.n_samples} samples) |")
    sun = {True: "yes", False: "no", None: "undetermined"}[card.sun.passed]
    lines.append(f"| massive activations (Sun et al. 2024, \\|x\\| > {card.sun.t_val:g} and > "
                 f"{card.sun.t_ratio:g} x token median) | {sun} |")
    lines += ["", f"Recommended per-tensor symmetric activation scales at `{c.site}` (scale = clip / qmax):", "",
              "| format | policy | clip | scale | SQNR (dB) |", "| --- | --- | --- | --- | --- |"]
    for s in card.scales:
        pol = s["policy"] + ("" if s["exact"] else " (approx.)")
        lines.append(f"| {s['format']} | {pol} | {_num(s['clip'])} | {_num(s['scale'])} | "
                     f"{_num(s['sqnr_db'], 4) if s['sqnr_db'] is not None else 'n/a'} |")
    if not card.has_histogram:
        lines += ["", "_This result has no exact |x| histogram, so SQNR and MSE-optimal clips are not available._"]
    flags = A.flag_messages(card.ranges)
    lines += ["", "Range flags:", ""]
    lines += [f"- {m}" for m in flags] or ["- none: M fits float16 and the FP8 E4M3 range."]
    return "\n".join(lines) + "\n"


def render(card: Card, part: str = "both") -> str:
    """``---``-delimited YAML fields and/or the Markdown block."""
    out = []
    if part in ("both", "yaml"):
        out.append("---\n" + yaml.safe_dump(front_matter(card), sort_keys=False, allow_unicode=True) + "---\n")
    if part in ("both", "markdown"):
        out.append(markdown(card))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m maxact.card",
        description="Print model-card fields (YAML front matter) and a Markdown block for one result.",
        epilog="example:\n  python -m maxact.card results/Qwen3-8B/stats.json > card_snippet.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("result", metavar="RESULT", help="maxact stats.json (or its directory) or a paper *_activation_stats.json")
    p.add_argument("--part", choices=("both", "yaml", "markdown"), default="both", help="what to print (default: both)")
    p.add_argument("--formats", default=",".join(CARD_FORMATS), metavar="LIST",
                   help="formats for the scales, comma-separated (default: %(default)s)")
    p.add_argument("--policies", default=",".join(A.DEFAULT_POLICIES), metavar="LIST",
                   help="clip policies, comma-separated (default: %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    card = build_card(load_result(args.result), [f for f in args.formats.split(",") if f],
                      [x for x in args.policies.split(",") if x])
    sys.stdout.write(render(card, args.part))
    return 0


if __name__ == "__main__":
    sys.exit(main())
