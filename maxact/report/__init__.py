"""maxact.report: an HTML report, static figures and summary.json from one or more results.

    python -m maxact.report RESULT... --out DIR [--pairs PAIRS.json]

``build_report`` is the same as a function. Results may be maxact ``stats.json`` files (with their
sidecar) or the paper code's ``*_activation_stats.json``; directories are searched for both.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

from maxact.analysis import DEFAULT_FORMATS, DEFAULT_POLICIES, SUN_T_RATIO, SUN_T_VAL, Pair, load_pairs
from maxact.results import discover_results, load_result

logger = logging.getLogger(__name__)

DEFAULT_PAIRS_RESOURCE = "paper_pairs.json"


def default_pairs_path() -> Path:
    """The shipped pairs of the paper's reference set (MoE vs dense, base vs instruct, generations, stages)."""
    return Path(str(resources.files("maxact.report").joinpath(DEFAULT_PAIRS_RESOURCE)))


def build_report(
    results: Sequence[str | Path],
    out_dir: str | Path,
    *,
    pairs: Sequence[Pair] | str | Path | None = None,
    title: str = "maxact activation report",
    t_val: float = SUN_T_VAL,
    t_ratio: float = SUN_T_RATIO,
    formats: Sequence[str] = DEFAULT_FORMATS,
    policies: Sequence[str] = DEFAULT_POLICIES,
    family_overrides: Mapping[str, str] | None = None,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """Write report.html, the figures (PNG and SVG) and summary.json into ``out_dir``; return the summary.

    ``pairs``: a list of :class:`Pair`, a PAIRS.json path, or None for the default pairs (applied
    only where both checkpoints are present).
    """
    from maxact.report import figures, html, interactive
    from maxact.report.summary import analyze, summary_dict

    paths = discover_results(results)
    if not paths:
        raise ValueError("no result files found")
    ckpts = [load_result(p) for p in paths]
    logger.info("loaded %d result(s)", len(ckpts))
    if pairs is None:
        pair_list, keep_missing = load_pairs(default_pairs_path()), False
    elif isinstance(pairs, (str, Path)):
        pair_list, keep_missing = load_pairs(pairs), True
    else:
        pair_list, keep_missing = list(pairs), True
    data = analyze(ckpts, pair_list, keep_missing_pairs=keep_missing, t_val=t_val, t_ratio=t_ratio,
                   formats=formats, policies=policies, family_overrides=family_overrides, repeats=repeats, seed=seed)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    static = figures.write_static(data, out)
    fragments = interactive.render_all(data)
    page = html.render_page(data, fragments, {k: [p.name for p in v] for k, v in static.items()},
                            interactive.plotly_js(), title=title, sources=[str(p) for p in paths])
    (out / "report.html").write_text(page, encoding="utf-8")
    summary = summary_dict(data)
    summary["figures"] = {k: [p.name for p in v] for k, v in static.items()}
    summary["sources"] = [str(p) for p in paths]
    with open(out / "summary.json", "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1, allow_nan=False)
    logger.info("wrote %s (%d figures)", out / "report.html", len(fragments))
    return summary
