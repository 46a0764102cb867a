"""report.html: one self-contained page (plotly's JavaScript inline, no network) with the figures
and the tables (carriers, pairs, quantization, range flags, stability, top tokens and channels,
MoE coverage)."""

from __future__ import annotations

import datetime as _dt
import html
import math
from importlib import resources
from string import Template
from typing import Iterable, Sequence

from maxact import __version__
from maxact.analysis import FP16_MAX, get_format
from maxact.analysis.ranges import UNDERFLOW_FLAG
from maxact.report.summary import CheckpointAnalysis, ReportData

FIGURE_TEXT = {
    "m_per_checkpoint": ("Global maximum M per checkpoint",
                         "M = max |x| over embedding, attention, MLP, hidden-state and final-norm sites (gate and "
                         "router excluded), log axis, coloured by family; x marks checkpoints failing the Sun "
                         "criterion; the dashed line is the float16 maximum."),
    "depth_heatmap": ("Hidden-state peaks over normalized depth",
                      "log10 of the per-layer hidden-state peak, each checkpoint resampled onto layer / (L - 1)."),
    "trajectories": ("Layerwise trajectories",
                     "Per-layer peak |x| of each component against normalized depth (menu: component; legend: "
                     "toggle a family)."),
    "sun_scatter": ("Peak |x| against local ratio",
                    "Each point is a checkpoint's largest hidden-state token: its peak |x| and the ratio to the "
                    "median |x| of the same token. Dashed lines: the Sun thresholds."),
    "pair_ratios": ("Matched comparisons", "M(b) / M(a) for each pair."),
    "sqnr_by_policy": ("Quantization error by policy",
                       "Per-tensor symmetric SQNR at the carrier site, computed exactly from the |x| histogram."),
    "stability": ("Stability of M",
                  "M of category-proportional random subsamples divided by M of the whole corpus."),
}


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _n(v, digits: int = 6) -> str:
    """Number for a table cell: thousands separators, up to ``digits`` significant digits."""
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    v = float(v)
    if math.isnan(v):
        return "&ndash;"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e12):
        return f"{v:.{digits - 2}e}"
    if abs(v) >= 10 ** digits:
        return f"{round(v):,}"
    return f"{v:,.{digits}g}"


def _id(v) -> str:
    """An index or id: a plain integer, no separators."""
    return "&ndash;" if v is None else str(int(v))


def _pct(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "&ndash;"
    return f"{100 * v:.3g} %"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] = (),
          row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; cells are given already escaped/formatted."""
    num = list(numeric) + [False] * (len(headers) - len(numeric))
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="num">{c}</td>' if num[j] else f"<td>{c}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _sun_cell(passed: bool | None) -> str:
    if passed is None:
        return '<span class="note">undetermined</span>'
    return '<span class="ok">pass</span>' if passed else '<span class="flag">fail</span>'


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------


def overview_section(data: ReportData) -> str:
    rows, classes = [], []
    for i, a in enumerate(data.checkpoints, 1):
        c = a.carrier
        ci = (f"{_n(a.bootstrap.lower)} &ndash; {_n(a.bootstrap.upper)}" if a.bootstrap else "&ndash;")
        flag = '<span class="flag">&gt; fp16</span>' if a.ranges.fp16_overflow else ""
        rows.append([
            str(i), _e(a.name), _e(a.family) + (" (MoE)" if a.moe else ""), _n(c.M), _n(c.signed_value),
            f"<code>{_e(c.site)}</code>", _e(c.component), _sun_cell(a.sun.passed), _n(a.sun.peak_ratio, 4),
            _n(a.half_max_depth, 3), ci, flag,
        ])
        classes.append("fail" if a.sun.passed is False else "")
    counts = ", ".join(f"{_e(k)}: {v}" for k, v in data.carrier_counts.items())
    n_hidden = data.carrier_counts.get("hidden", 0)
    n_pass = sum(1 for a in data.checkpoints if a.sun.passed)
    intro = (
        f"<p>{len(data.checkpoints)} checkpoint(s). The hidden state (residual stream) carries M in "
        f"{n_hidden} of {len(data.checkpoints)}; carriers by component: {counts}. "
        f"{n_pass} pass the Sun criterion (|x| &gt; {data.t_val:g} and |x| &gt; {data.t_ratio:g} &times; the "
        "token's median |x|, at any hidden-state site).</p>"
        '<p class="note">Carrier: the first site in forward order holding M. Half-max depth: normalized depth at '
        "which the hidden-state peak first reaches half its maximum over layers (small = jump-and-plateau, "
        "large = gradual accumulation). Bootstrap interval: exact 95 % percentile interval of M over resampled "
        "corpus samples (needs per-sample peaks).</p>"
    )
    return intro + table(
        ["#", "checkpoint", "family", "M", "signed", "carrier site", "component", "Sun", "peak ratio",
         "half-max depth", "bootstrap 95 %", "flags"],
        rows, numeric=[True, False, False, True, True, False, False, False, True, True, True, False],
        row_classes=classes,
    )


def figure_block(name: str, fragment: str, static: Sequence[str]) -> str:
    title, caption = FIGURE_TEXT.get(name, (name, ""))
    links = " ".join(f'<a href="{_e(p)}">{_e(p.rsplit(".", 1)[-1].upper())}</a>' for p in static)
    return (f'<figure class="maxact-figure" id="figure-{_e(name)}" data-figure="{_e(name)}">'
            f"<h3>{_e(title)}</h3>{fragment}<figcaption>{_e(caption)} {links}</figcaption></figure>")


def pairs_section(data: ReportData) -> str:
    if not data.pairs:
        return '<p class="note">No pairs (give --pairs PAIRS.json, or include checkpoints of the default pairs).</p>'
    rows = [[_e(p["label"]), _e(p["a"]), _e(p["b"]), _n(p["M_a"]), _n(p["M_b"]),
             _n(p["ratio"], 3) + ("x" if p["ratio"] is not None else "")] for p in data.pairs]
    return table(["comparison", "a", "b", "M(a)", "M(b)", "M(b) / M(a)"], rows,
                 numeric=[False, False, False, True, True, True])


def _quant_table(rows) -> str:
    return table(
        ["format", "policy", "clip", "scale", "SQNR (dB)", "saturated", "flushed to 0"],
        [[_e(r.fmt), _e(r.policy), _n(r.clip), _n(r.scale), _n(r.sqnr_db, 4), _pct(r.saturated_fraction),
          _pct(r.underflow_fraction)] for r in rows],
        numeric=[False, False, True, True, True, True, True],
    )


def _site_sqnr_table(a: CheckpointAnalysis, fmt: str, policies: Sequence[str]) -> str:
    rows = []
    for site, qrows in a.quant.items():
        by = {r.policy: r for r in qrows if r.fmt == fmt}
        rows.append([f"<code>{_e(site)}</code>"] + [_n(by[p].sqnr_db, 4) if p in by else "&ndash;" for p in policies]
                    + [_n(by["max"].clip) if "max" in by else "&ndash;"])
    return table(["site"] + [f"SQNR {p}" for p in policies] + ["max |x|"], rows,
                 numeric=[False] + [True] * (len(policies) + 1))


def quant_section(data: ReportData) -> str:
    parts = ['<p class="note">Per-tensor symmetric quantization, scale = clip / qmax (INT8 127, INT4 7, FP8 E4M3 '
             "448). SQNR = 10 log10(&Sigma;x&sup2; / &Sigma;(x &minus; Q(x))&sup2;) over every value of the site, "
             "computed from the exact |x| histogram (one bin per bf16 value). Policies: max |x|, nearest-rank "
             "percentiles, and the MSE-optimal clip searched over the histogram's values.</p>"]
    withq = [a for a in data.checkpoints if a.quant]
    for a in withq:
        parts.append(f"<h3>{_e(a.name)}: carrier site <code>{_e(a.carrier.site)}</code></h3>")
        parts.append(_quant_table(a.carrier_quant))
        parts.append(f"<details><summary>INT8 SQNR at every site ({len(a.quant)})</summary>"
                     f"{_site_sqnr_table(a, 'int8', data.policies)}</details>")
    without = [a for a in data.checkpoints if not a.quant]
    if without:
        int8, e4m3 = get_format("int8"), get_format("fp8_e4m3")
        rows = []
        for a in without:
            site = a.ckpt.sites[a.carrier.site]
            q999 = site.quantiles.get(0.999)
            rows.append([_e(a.name), f"<code>{_e(a.carrier.site)}</code>", _n(a.carrier.M / int8.qmax),
                         _n(a.carrier.M / e4m3.qmax),
                         (_n(q999 / int8.qmax, 4) + ("" if site.quantiles_exact else " (approx.)")) if q999 else "&ndash;"])
        parts.append(
            "<h3>Results without a histogram</h3>"
            '<p class="note">These files carry no exact |x| histogram (the paper layout keeps max, min and quantiles '
            "from a 512-bin log histogram), so SQNR and MSE clips cannot be computed; the max-abs scales below are "
            "exact, the 99.9 % one is only as good as the file's quantile.</p>"
        )
        parts.append(table(["checkpoint", "carrier site", "INT8 scale (max)", "FP8 E4M3 scale (max)",
                            "INT8 scale (99.9 %)"], rows, numeric=[False, False, True, True, True]))
    return "".join(parts)


def ranges_section(data: ReportData) -> str:
    rows, notes = [], []
    for a in data.checkpoints:
        r = a.ranges
        over = r.sites_over_fp16
        rows.append([_e(a.name), _n(r.M), '<span class="flag">yes</span>' if r.fp16_overflow else "no",
                     str(len(over)), "yes" if r.e4m3_unscaled_overflow else "no",
                     "yes" if r.e5m2_unscaled_overflow else "no"])
        if over:
            notes.append(f"<details><summary>{_e(a.name)}: {len(over)} site(s) above the float16 maximum</summary>"
                         + ", ".join(f"<code>{_e(s)}</code>" for s in over) + "</details>")
        scaled = [s for s in r.sites if any(x.policy == "max" and x.underflow_fraction > UNDERFLOW_FLAG
                                            for x in s.scaled)]
        if scaled:
            items = []
            for s in scaled[:20]:
                fl = ", ".join(f"{x.fmt} {_pct(x.underflow_fraction)}" for x in s.scaled
                               if x.policy == "max" and x.underflow_fraction > UNDERFLOW_FLAG)
                items.append(f"<li><code>{_e(s.site)}</code>: {fl} of the non-zero values flushed to 0</li>")
            notes.append(f"<h3>{_e(a.name)}: FP8 underflow with the max-abs scale</h3><ul class=\"flags\">"
                         + "".join(items) + "</ul>")
    intro = (f'<p class="note">float16 overflows above {FP16_MAX:g}; FP8 E4M3 holds |x| &le; 448 and E5M2 &le; 57344 '
             "before a per-tensor scale is applied; once a scale maps the clip to the format's maximum, the peak "
             "stretches the scale and small values can flush to 0 (listed below when above 0.1 %, from the "
             "histogram). The quantization tables give saturated and flushed shares per policy.</p>")
    return intro + table(["checkpoint", "M", "M > fp16 max", "sites > fp16 max", "M > E4M3 (448)",
                          "M > E5M2 (57344)"], rows, numeric=[False, True, False, True, False, False]) + "".join(notes)


def stability_section(data: ReportData) -> str:
    withs = [a for a in data.checkpoints if a.stability]
    if not withs:
        return ('<p class="note">No per-sample peaks in these results (the paper layout has none; maxact scans '
                "store them in the sidecar as <code>{site}/sample_abs_max</code>).</p>")
    rows = []
    for a in withs:
        for r in a.stability:
            rows.append([_e(a.name), str(r.size), str(r.repeats), _n(r.mean), _n(r.std), _pct(r.cv), _n(r.min),
                         _n(r.max), _n(r.full_M)])
    boot = [[_e(a.name), _n(a.bootstrap.M), _n(a.bootstrap.lower), _n(a.bootstrap.upper), str(a.bootstrap.n_samples)]
            for a in withs if a.bootstrap]
    return (
        '<p class="note">M of category-proportional random subsamples (the paper\'s 1,000 and 2,000 of 5,000 '
        "scaled to the corpus), from the per-sample peaks: no model re-run.</p>"
        + table(["checkpoint", "samples", "repeats", "mean M", "std", "CV", "min", "max", "corpus M"], rows,
                numeric=[False] + [True] * 8)
        + "<h3>Bootstrap interval for M</h3>"
        '<p class="note">Exact percentile bootstrap over samples; the upper end is M itself by construction.</p>'
        + table(["checkpoint", "M", "95 % lower", "95 % upper", "samples"], boot, numeric=[False, True, True, True, True])
    )


def _token_text(row: dict) -> str:
    tok = row.get("token")
    ctx = row.get("context")
    if isinstance(ctx, (list, tuple)):
        ctx = "".join(str(t) for t in ctx)
    parts = []
    if tok is not None:
        parts.append(f"<code>{_e(repr(str(tok)))}</code>")
    if ctx:
        parts.append(f'<span class="note">{_e(ctx)}</span>')
    elif row.get("context_ids") and row.get("context_start") is not None:
        # No tokenizer (random model, pre-tokenized corpus): the ids around the token, the token in brackets.
        at = int(row.get("position", -1)) - int(row["context_start"])
        ids = [f"[{t}]" if i == at else str(t) for i, t in enumerate(row["context_ids"])]
        parts.append(f'<span class="note">ids {_e(" ".join(ids))}</span>')
    return " ".join(parts) or "&ndash;"


def tokens_section(data: ReportData) -> str:
    withs = [a for a in data.checkpoints if a.top_tokens or a.top_channels]
    if not withs:
        return '<p class="note">No top-k entries or channel maxima in these results (maxact scans only).</p>'
    parts = []
    for a in withs:
        parts.append(f"<h3>{_e(a.name)}</h3>")
        if a.top_tokens:
            rows = [[str(i), _n(t.get("abs")), _n(t.get("value")), f"<code>{_e(t['site'])}</code>",
                     _id(t.get("layer")), _id(t.get("sample")), _id(t.get("position")), _id(t.get("channel")),
                     _id(t.get("token_id")), _token_text(t), _id(t.get("corpus_index")),
                     _e(t["source"]) if t.get("source") else "&ndash;", _id(t.get("entries"))]
                    for i, t in enumerate(a.top_tokens, 1)]
            parts.append('<p class="note">Each token (sample, position) holding top-k values, once, with its '
                         "largest entry; the context shows up to 4 tokens before and 2 after, the token marked "
                         "&#x27e6;&hellip;&#x27e7; (token ids when the model has no tokenizer). Corpus index: the "
                         "record in the corpus source.</p>")
            parts.append(table(["#", "|x|", "value", "site", "layer", "sample", "position", "channel", "token id",
                                "token and context", "corpus index", "source", "top-k entries"], rows,
                               numeric=[True, True, True, False, True, True, True, True, True, False, True, False,
                                        True]))
        if a.top_channels:
            rows = [[_id(c["channel"]), _n(c["abs_max"]), f"<code>{_e(c['site'])}</code>", _n(c["top1_sites"])]
                    for c in a.top_channels]
            parts.append("<p>Hidden-state channels holding the peaks:</p>"
                         + table(["channel", "max |x|", "first site at max", "sites where top-1"], rows,
                                 numeric=[True, True, False, True]))
    return "".join(parts)


def _heat_cell(n: int, top: int, min_tokens: int) -> str:
    """One expert's count as a coloured cell: white to blue on a log scale, red under the threshold."""
    if n < 0:
        return '<td class="num"></td>'
    if n < min_tokens:
        style = "background:#f4c7c3"
    else:
        share = math.log1p(n) / math.log1p(max(top, 1))
        light = int(round(97 - 52 * share))   # lightness 97 % (few) .. 45 % (most)
        style = f"background:hsl(207,70%,{light}%)" + (";color:#fff" if light < 62 else "")
    return f'<td class="num" style="{style}">{n:,}</td>'


def experts_section(data: ReportData) -> str:
    withs = [a for a in data.checkpoints if a.experts is not None]
    if not withs:
        return ('<p class="note">No MoE expert counts in these results (maxact scans of MoE models record the '
                "tokens routed to each expert at every router site).</p>")
    parts = ['<p class="note">Real tokens routed to each expert (the router\'s top-k; padding excluded). Experts '
             "that received fewer than the scan's <code>--min-expert-tokens</code> have statistics, and "
             "quantization scales, resting on too few tokens to be trusted.</p>"]
    for a in withs:
        cov = a.experts
        starved = cov.starved
        parts.append(f"<h3>{_e(a.name)}: {len(cov.layers)} router layer(s), "
                     f"{sum(lay.num_experts for lay in cov.layers):,} experts, "
                     f"{len(starved)} under {cov.min_tokens} tokens</h3>")
        rows = [[_id(lay.layer), f"<code>{_e(lay.site)}</code>", str(lay.num_experts), _n(lay.min), _n(lay.median),
                 _n(lay.max), str(len(lay.starved(cov.min_tokens))),
                 ", ".join(str(e) for e in lay.starved(cov.min_tokens)[:16])
                 + (" &hellip;" if len(lay.starved(cov.min_tokens)) > 16 else "")]
                for lay in cov.layers]
        classes = ["fail" if lay.starved(cov.min_tokens) else "" for lay in cov.layers]
        parts.append(table(["layer", "router site", "experts", "min tokens", "median", "max tokens",
                            f"under {cov.min_tokens}", "starved experts"], rows,
                           numeric=[True, False, True, True, True, True, True, False], row_classes=classes))
        m = cov.matrix()
        top = int(m.max(initial=0))
        head = "".join(f"<th>{e}</th>" for e in range(m.shape[1]))
        body = "".join(f"<tr><th>{_id(lay.layer) if lay.layer is not None else _e(lay.site)}</th>"
                       + "".join(_heat_cell(int(n), top, cov.min_tokens) for n in m[i]) + "</tr>"
                       for i, lay in enumerate(cov.layers))
        parts.append(f"<details><summary>Tokens per expert (rows: layers, columns: experts)</summary>"
                     f'<table class="heat"><thead><tr><th>layer</th>{head}</tr></thead><tbody>{body}</tbody>'
                     "</table></details>")
    return "".join(parts)


SECTIONS = (
    ("overview", "Carriers"),
    ("figures", "Figures"),
    ("pairs", "Pairs"),
    ("quantization", "Quantization"),
    ("ranges", "Range flags"),
    ("stability", "Stability"),
    ("tokens", "Tokens and channels"),
    ("experts", "MoE coverage"),
)


def render_page(data: ReportData, fragments: dict[str, str], static: dict[str, Sequence[str]],
                plotly_js: str, title: str = "maxact activation report", sources: Sequence[str] = ()) -> str:
    """The whole page as a string."""
    figs = "".join(figure_block(name, frag, static.get(name, ())) for name, frag in fragments.items())
    body = {
        "overview": overview_section(data),
        "figures": figs,
        "pairs": pairs_section(data),
        "quantization": quant_section(data),
        "ranges": ranges_section(data),
        "stability": stability_section(data),
        "tokens": tokens_section(data),
        "experts": experts_section(data),
    }
    sections = "".join(f'<section id="{k}"><h2>{_e(t)}</h2>{body[k]}</section>' for k, t in SECTIONS)
    nav = "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in SECTIONS)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"{len(data.checkpoints)} checkpoint(s) &middot; generated {stamp} by maxact {_e(__version__)}"
    if sources:
        subtitle += f" &middot; from {len(sources)} file(s)"
    template = Template(resources.files("maxact.report").joinpath("templates/report.html").read_text("utf-8"))
    # plotly.js must not close the script element early; it contains no "</script>" but guard anyway.
    return template.substitute(title=_e(title), subtitle=subtitle, nav=nav, body=sections, version=_e(__version__),
                               plotly_js=plotly_js.replace("</script>", "<\\/script>"))
