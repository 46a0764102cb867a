"""Interactive figures for report.html (plotly; its JavaScript is embedded once in the page).

Same content as the static figures, plus hover details and family toggles: a family is one legend
entry, so clicking it hides or shows all of that family's checkpoints.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from maxact.analysis import FP16_MAX, depth_profile
from maxact.report.figures import COMPONENT_TITLES, HEATMAP_BINS, PALETTE, family_colors
from maxact.report.summary import TRAJECTORY_COMPONENTS, ReportData

_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=60), font=dict(size=11))


def to_div(fig: go.Figure, div_id: str) -> str:
    """HTML fragment for one figure; the plotly library itself is added once by the page."""
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def plotly_js() -> str:
    """The plotly.js bundle shipped with the plotly package, for inline embedding (no CDN)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _fmt(v: float) -> str:
    return f"{v:,.6g}" if v is not None and math.isfinite(v) else str(v)


def m_per_checkpoint(data: ReportData) -> go.Figure:
    colors = family_colors(data)
    names = [a.name for a in data.checkpoints]
    fig = go.Figure()
    for fam, color in colors.items():
        members = [a for a in data.checkpoints if a.family == fam]
        fig.add_bar(
            x=[a.name for a in members], y=[a.carrier.M for a in members], name=fam, marker_color=color,
            legendgroup=fam,
            customdata=[[a.carrier.site, a.carrier.component, str(a.sun.passed)] for a in members],
            hovertemplate="%{x}<br>M = %{y:,.6g}<br>site %{customdata[0]} (%{customdata[1]})"
                          "<br>Sun pass: %{customdata[2]}<extra></extra>",
        )
    fails = [a for a in data.checkpoints if a.sun.passed is False]
    if fails:
        fig.add_scatter(x=[a.name for a in fails], y=[a.carrier.M * 1.6 for a in fails], mode="markers",
                        marker=dict(symbol="x", color="black", size=9), name="fails Sun criterion",
                        hoverinfo="skip")
    fig.add_hline(y=FP16_MAX, line_dash="dash", line_color="gray", annotation_text="float16 max",
                  annotation_position="top left")
    ms = [a.carrier.M for a in data.checkpoints if 0 < a.carrier.M < math.inf]
    # Log-axis bars grow from the bottom of the range: start a decade under the smallest M.
    lo = math.floor(math.log10(min(ms))) - 1 if ms else 0
    hi = math.log10(max(ms + [FP16_MAX]) * 4)
    fig.update_layout(title="Global maximum activation M per checkpoint", yaxis_type="log",
                      yaxis_range=[lo, hi], yaxis_title="M = max |x|", barmode="overlay", **_LAYOUT)
    fig.update_xaxes(categoryorder="array", categoryarray=names, tickangle=-50)
    return fig


def depth_heatmap(data: ReportData) -> go.Figure:
    grid = np.linspace(0.0, 1.0, HEATMAP_BINS)
    z = [[None if not np.isfinite(v) else float(v) for v in depth_profile(a.ckpt, grid)] for a in data.checkpoints]
    fig = go.Figure(go.Heatmap(
        z=z, x=grid, y=[a.name for a in data.checkpoints], colorscale="Magma",
        colorbar=dict(title="log10 peak"), hovertemplate="%{y}<br>depth %{x:.3f}<br>log10 peak %{z:.2f}<extra></extra>",
    ))
    fig.update_layout(title="Hidden-state peak |x| by normalized depth", xaxis_title="layer / (L - 1)",
                      height=max(320, 22 * len(data.checkpoints) + 140), **_LAYOUT)
    fig.update_yaxes(autorange="reversed")
    return fig


def trajectories(data: ReportData) -> go.Figure:
    """One trace per (component, checkpoint); a menu switches component, the legend toggles families."""
    colors = family_colors(data)
    comps = [c for c in TRAJECTORY_COMPONENTS if any(a.trajectories[c].peaks.size for a in data.checkpoints)]
    fig = go.Figure()
    owner = []
    for comp in comps:
        shown: set[str] = set()
        for a in data.checkpoints:
            t = a.trajectories[comp]
            if not t.peaks.size:
                continue
            fig.add_scatter(
                x=t.depth, y=np.maximum(t.peaks, 1e-3), mode="lines", name=a.family, legendgroup=a.family,
                showlegend=a.family not in shown, line=dict(color=colors[a.family], width=1.4),
                visible=comp == comps[0], customdata=np.stack([t.layers], axis=-1),
                hovertemplate=f"{a.name}<br>layer %{{customdata[0]}}<br>peak %{{y:,.6g}}<extra></extra>",
            )
            shown.add(a.family)
            owner.append(comp)
    buttons = [
        dict(label=COMPONENT_TITLES.get(c, c), method="update",
             args=[{"visible": [o == c for o in owner]}, {"title": f"Layerwise peak |x|: {COMPONENT_TITLES.get(c, c)}"}])
        for c in comps
    ]
    fig.update_layout(
        title=f"Layerwise peak |x|: {COMPONENT_TITLES.get(comps[0], comps[0])}" if comps else "Layerwise peak |x|",
        xaxis_title="normalized depth", yaxis_title="peak |x|", yaxis_type="log",
        updatemenus=[dict(buttons=buttons, x=0.5, xanchor="left", y=1.12, yanchor="bottom")] if len(comps) > 1 else [],
        **_LAYOUT,
    )
    return fig


def sun_scatter(data: ReportData) -> go.Figure | None:
    pts = [a for a in data.checkpoints if a.sun.site is not None and np.isfinite(a.sun.peak_ratio)]
    if not pts:
        return None
    colors = family_colors(data)
    fig = go.Figure()
    for fam, color in colors.items():
        members = [a for a in pts if a.family == fam]
        if not members:
            continue
        fig.add_scatter(
            x=[a.sun.peak_ratio for a in members], y=[a.sun.peak_abs for a in members], mode="markers+text",
            name=fam, legendgroup=fam, text=[a.name for a in members], textposition="top right",
            textfont=dict(size=8, color="#555"),
            marker=dict(color=color, size=10, line=dict(width=0.6, color="black"),
                        symbol=["circle" if a.sun.passed is not None else "square" for a in members]),
            customdata=[[a.sun.site, a.sun.peak_median, str(a.sun.passed)] for a in members],
            hovertemplate="%{text}<br>peak %{y:,.6g} at %{customdata[0]}<br>median %{customdata[1]:.4g}"
                          "<br>ratio %{x:,.4g}<br>pass: %{customdata[2]}<extra></extra>",
        )
    fails = [a for a in pts if a.sun.passed is False]
    if fails:
        # A separate overlay so the family legend keeps plain circles and "fails" has its own entry.
        fig.add_scatter(x=[a.sun.peak_ratio for a in fails], y=[a.sun.peak_abs for a in fails], mode="markers",
                        name="fails Sun criterion", hoverinfo="skip",
                        marker=dict(symbol="x-thin", size=14, line=dict(width=2, color="black")))
    fig.add_vline(x=data.t_ratio, line_dash="dash", line_color="gray")
    fig.add_hline(y=data.t_val, line_dash="dash", line_color="gray")
    fig.update_layout(title=f"Sun criterion (|x| > {data.t_val:g}, ratio > {data.t_ratio:g}); x = fails",
                      xaxis_type="log", yaxis_type="log", xaxis_title="local ratio of the peak token",
                      yaxis_title="peak |x| (hidden state)", height=560, **_LAYOUT)
    return fig


def pair_ratios(data: ReportData) -> go.Figure | None:
    pairs = [p for p in data.pairs if p["ratio"] is not None and p["ratio"] > 0 and math.isfinite(p["ratio"])]
    if not pairs:
        return None
    labels = [f"{p['b']} / {p['a']}" for p in pairs]
    fig = go.Figure(go.Bar(
        x=[p["ratio"] for p in pairs], y=labels, orientation="h",
        marker_color=["#0072B2" if p["ratio"] >= 1 else "#D55E00" for p in pairs],
        text=[f"{p['ratio']:.3g}x" for p in pairs], textposition="outside",
        customdata=[[p["label"], p["M_a"], p["M_b"]] for p in pairs],
        hovertemplate="%{customdata[0]}<br>M(b) = %{customdata[2]:,.6g}<br>M(a) = %{customdata[1]:,.6g}"
                      "<br>ratio %{x:.4g}<extra></extra>",
    ))
    fig.update_layout(title="Matched comparisons: M(b) / M(a)", xaxis_type="log",
                      height=max(300, 26 * len(pairs) + 120), **_LAYOUT)
    fig.update_yaxes(autorange="reversed")
    return fig


def sqnr_by_policy(data: ReportData) -> go.Figure | None:
    withq = [a for a in data.checkpoints if a.carrier_quant]
    if not withq:
        return None
    fig = go.Figure()
    for j, pol in enumerate(data.policies):
        xs, ys = [], []
        for a in withq:
            for r in a.carrier_quant:
                if r.policy == pol:
                    xs.append(f"{a.name} | {r.fmt}")
                    ys.append(r.sqnr_db if math.isfinite(r.sqnr_db) else None)
        fig.add_bar(x=xs, y=ys, name=pol, marker_color=PALETTE[j % len(PALETTE)],
                    hovertemplate="%{x}<br>" + pol + ": %{y:.2f} dB<extra></extra>")
    fig.update_layout(title="SQNR at the carrier site by format and clip policy", barmode="group",
                      yaxis_title="SQNR (dB)", **_LAYOUT)
    return fig


def stability(data: ReportData) -> go.Figure | None:
    withs = [a for a in data.checkpoints if a.stability]
    if not withs:
        return None
    fig = go.Figure()
    sizes = sorted({r.size for a in withs for r in a.stability})
    for j, size in enumerate(sizes):
        xs, ys = [], []
        for a in withs:
            for r in a.stability:
                if r.size == size:
                    xs += [a.name] * len(r.maxima)
                    ys += [m / r.full_M for m in r.maxima]
        fig.add_box(x=xs, y=ys, name=f"{size} samples", boxpoints="all", marker_color=PALETTE[j % len(PALETTE)])
    fig.add_hline(y=1.0, line_dash="dash", line_color="gray")
    fig.update_layout(title="M of category-proportional subsamples / M of the corpus", boxmode="group",
                      yaxis_title="ratio", **_LAYOUT)
    return fig


INTERACTIVE_FIGURES = {
    "m_per_checkpoint": m_per_checkpoint,
    "depth_heatmap": depth_heatmap,
    "trajectories": trajectories,
    "sun_scatter": sun_scatter,
    "pair_ratios": pair_ratios,
    "sqnr_by_policy": sqnr_by_policy,
    "stability": stability,
}


def render_all(data: ReportData) -> dict[str, str]:
    """figure name -> HTML fragment, for the figures that have data."""
    out = {}
    for name, make in INTERACTIVE_FIGURES.items():
        fig = make(data)
        if fig is not None:
            out[name] = to_div(fig, f"fig-{name}")
    return out
