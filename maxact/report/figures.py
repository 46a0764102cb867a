"""Static figures (matplotlib, no pyplot state): each is written as PNG and SVG.

Every function takes the :class:`ReportData` and returns a ``matplotlib.figure.Figure`` or None when
the data for it is absent (no histograms, no per-sample peaks, no pairs).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from maxact.analysis import FP16_MAX, family_sort_key
from maxact.report.summary import TRAJECTORY_COMPONENTS, ReportData

# Colour-blind-safe qualitative palette (Okabe-Ito, then Tableau) in family order.
PALETTE = ("#0072B2", "#56B4E9", "#009E73", "#E69F00", "#D55E00", "#CC79A7", "#332288", "#999933",
           "#882255", "#44AA99", "#117733", "#AA4499")
HEATMAP_BINS = 41  # normalized-depth grid of the heatmap: 0, 0.025, ..., 1
COMPONENT_TITLES = {"hidden": "hidden state (residual stream)", "attn": "attention output",
                    "mlp": "MLP / MoE output", "gate": "gate pre-activation"}


def family_colors(data: ReportData) -> dict[str, str]:
    """A fixed colour per family present, in the paper's family order."""
    fams = sorted({a.family for a in data.checkpoints}, key=family_sort_key)
    return {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(fams)}


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.svg``; return their paths."""
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def m_per_checkpoint(data: ReportData) -> Figure:
    """M per checkpoint on a log axis, coloured by family, x over checkpoints failing Sun."""
    colors = family_colors(data)
    n = len(data.checkpoints)
    fig = Figure(figsize=(max(6.0, 0.42 * n + 2.0), 4.6))
    ax = fig.add_subplot()
    x = np.arange(n)
    ms = np.array([a.carrier.M for a in data.checkpoints], dtype=np.float64)
    ms[~np.isfinite(ms)] = np.nan  # an inf M (overflow in the model) cannot be drawn on a log axis
    ax.bar(x, ms, color=[colors[a.family] for a in data.checkpoints], edgecolor="none")
    fails = [i for i, a in enumerate(data.checkpoints) if a.sun.passed is False]
    ax.scatter(x[fails], ms[fails] * 1.6, marker="x", color="black", s=30, zorder=3)
    ax.set_yscale("log")
    ax.axhline(FP16_MAX, color="0.4", lw=0.8, ls="--")
    ax.text(n - 0.5, FP16_MAX * 1.15, "float16 max", ha="right", va="bottom", fontsize=7, color="0.3")
    ax.set_xticks(x, [a.name for a in data.checkpoints], rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("M = max |x|")
    ax.set_title("Global maximum activation per checkpoint")
    handles = [Line2D([], [], color=c, lw=6, label=f) for f, c in colors.items()]
    if fails:
        handles.append(Line2D([], [], color="black", marker="x", ls="", label="fails Sun criterion"))
    ax.legend(handles=handles, fontsize=7, ncol=2, loc="upper left", frameon=False)
    ax.grid(axis="y", which="major", alpha=0.3)
    return fig


def depth_heatmap(data: ReportData) -> Figure:
    """log10 hidden-state peak over normalized depth, one row per checkpoint."""
    from maxact.analysis import depth_profile

    grid = np.linspace(0.0, 1.0, HEATMAP_BINS)
    rows = np.array([depth_profile(a.ckpt, grid) for a in data.checkpoints])
    n = len(data.checkpoints)
    fig = Figure(figsize=(7.5, max(2.5, 0.26 * n + 1.4)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(rows), aspect="auto", cmap="magma", interpolation="nearest",
                   extent=(-0.5 / (HEATMAP_BINS - 1), 1 + 0.5 / (HEATMAP_BINS - 1), n - 0.5, -0.5))
    ax.set_yticks(np.arange(n), [a.name for a in data.checkpoints], fontsize=7)
    ax.set_xlabel("normalized depth  layer / (L - 1)")
    ax.set_title("Hidden-state peak |x| by depth")
    cb = fig.colorbar(im, ax=ax, pad=0.02)
    cb.set_label("log10 peak |x|")
    return fig


def trajectories(data: ReportData) -> Figure:
    """Layerwise peak |x| against normalized depth, one panel per component."""
    colors = family_colors(data)
    comps = [c for c in TRAJECTORY_COMPONENTS if any(a.trajectories[c].peaks.size for a in data.checkpoints)]
    cols = 2 if len(comps) > 1 else 1
    rows = math.ceil(len(comps) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows + 0.6))
    for k, comp in enumerate(comps):
        ax = fig.add_subplot(rows, cols, k + 1)
        for a in data.checkpoints:
            t = a.trajectories[comp]
            if t.peaks.size:
                ax.plot(t.depth, np.maximum(t.peaks, 1e-3), color=colors[a.family], lw=1.0, alpha=0.85)
        ax.set_yscale("log")
        ax.set_title(COMPONENT_TITLES.get(comp, comp), fontsize=9)
        ax.set_xlabel("normalized depth", fontsize=8)
        ax.set_ylabel("peak |x|", fontsize=8)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, lw=2, label=f) for f, c in colors.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), fontsize=7, frameon=False)
    fig.suptitle("Layerwise peak |x|")
    fig.subplots_adjust(bottom=0.16 if rows == 1 else 0.1, hspace=0.45, wspace=0.25)
    return fig


def sun_scatter(data: ReportData) -> Figure | None:
    """Peak |x| against the local ratio (peak / median of its token), with the Sun thresholds."""
    pts = [a for a in data.checkpoints if a.sun.site is not None and np.isfinite(a.sun.peak_ratio)]
    if not pts:
        return None
    colors = family_colors(data)
    fig = Figure(figsize=(6.8, 5.0))
    ax = fig.add_subplot()
    for a in pts:
        marker = "o" if a.sun.passed else ("X" if a.sun.passed is False else "s")
        ax.scatter(a.sun.peak_ratio, a.sun.peak_abs, color=colors[a.family], marker=marker, s=36,
                   edgecolor="black", linewidth=0.4, zorder=3)
        ax.annotate(a.name, (a.sun.peak_ratio, a.sun.peak_abs), fontsize=5.5, xytext=(3, 2),
                    textcoords="offset points", color="0.25")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvline(data.t_ratio, color="0.4", ls="--", lw=0.8)
    ax.axhline(data.t_val, color="0.4", ls="--", lw=0.8)
    ax.set_xlabel("local ratio of the peak token  (peak |x| / median |x|)")
    ax.set_ylabel("peak |x| (hidden state)")
    ax.set_title(f"Sun criterion: |x| > {data.t_val:g} and ratio > {data.t_ratio:g}")
    handles = [Line2D([], [], color=c, marker="o", ls="", label=f) for f, c in colors.items()]
    handles += [Line2D([], [], color="black", marker="X", ls="", label="fails")]
    ax.legend(handles=handles, fontsize=7, loc="lower right", frameon=False)
    ax.grid(alpha=0.3, which="major")
    return fig


def pair_ratios(data: ReportData) -> Figure | None:
    """M(b) / M(a) per pair on a log axis."""
    pairs = [p for p in data.pairs if p["ratio"] is not None and p["ratio"] > 0 and math.isfinite(p["ratio"])]
    if not pairs:
        return None
    fig = Figure(figsize=(7.0, 0.32 * len(pairs) + 1.3))
    ax = fig.add_subplot()
    y = np.arange(len(pairs))
    r = np.array([p["ratio"] for p in pairs])
    ax.barh(y, r, color=["#0072B2" if v >= 1 else "#D55E00" for v in r], left=0)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(y, [f"{p['b']} / {p['a']}" for p in pairs], fontsize=7)
    ax.invert_yaxis()
    for yi, p in zip(y, pairs):
        ax.text(p["ratio"], yi, f" {p['ratio']:.3g}x", va="center", fontsize=7)
    ax.set_xlabel("M(b) / M(a)")
    ax.set_title("Matched comparisons")
    return fig


def sqnr_by_policy(data: ReportData) -> Figure | None:
    """SQNR at each checkpoint's carrier site, per format and clip policy (histogram results only)."""
    withq = [a for a in data.checkpoints if a.carrier_quant]
    if not withq:
        return None
    fmts, pols = data.formats, data.policies
    fig = Figure(figsize=(max(6.0, 1.6 * len(withq) * len(fmts) / 2 + 2), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / len(pols)
    labels, base = [], 0
    for a in withq:
        rows = {(r.fmt, r.policy): r.sqnr_db for r in a.carrier_quant}
        for fmt in fmts:
            for j, pol in enumerate(pols):
                v = rows.get((fmt, pol), np.nan)
                ax.bar(base + (j - (len(pols) - 1) / 2) * width, v if np.isfinite(v) else 0, width,
                       color=PALETTE[j % len(PALETTE)], label=pol if base == 0 else None)
            labels.append(f"{a.name}\n{fmt}")
            base += 1
    ax.set_xticks(np.arange(base), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("SQNR (dB) at the carrier site")
    ax.set_title("Per-tensor quantization by clip policy")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def stability(data: ReportData) -> Figure | None:
    """M of category-proportional subsamples relative to the full-corpus M."""
    withs = [a for a in data.checkpoints if a.stability]
    if not withs:
        return None
    fig = Figure(figsize=(max(5.0, 1.2 * len(withs) + 2), 3.8))
    ax = fig.add_subplot()
    for i, a in enumerate(withs):
        for j, row in enumerate(a.stability):
            rel = np.array(row.maxima) / row.full_M
            x = i + (j - (len(a.stability) - 1) / 2) * 0.25
            ax.scatter(np.full(rel.size, x), rel, s=14, color=PALETTE[j % len(PALETTE)],
                       label=f"{row.size} samples" if i == 0 else None)
            ax.errorbar(x + 0.06, row.mean / row.full_M, yerr=row.std / row.full_M, color="black", capsize=2, lw=0.8)
    ax.axhline(1.0, color="0.4", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(withs)), [a.name for a in withs], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("M(subsample) / M(corpus)")
    ax.set_title("Stability of M under subsampling")
    ax.legend(fontsize=7, frameon=False)
    return fig


STATIC_FIGURES = {
    "m_per_checkpoint": m_per_checkpoint,
    "depth_heatmap": depth_heatmap,
    "trajectories": trajectories,
    "sun_scatter": sun_scatter,
    "pair_ratios": pair_ratios,
    "sqnr_by_policy": sqnr_by_policy,
    "stability": stability,
}


def write_static(data: ReportData, out_dir: Path) -> dict[str, list[Path]]:
    """Render every static figure that has data; return stem -> written files."""
    written = {}
    for stem, make in STATIC_FIGURES.items():
        fig = make(data)
        if fig is not None:
            written[stem] = save(fig, out_dir, stem)
    return written
