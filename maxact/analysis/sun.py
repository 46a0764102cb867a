"""The massive-activation criterion of Sun et al. (2024), per site and per checkpoint.

A token's coordinate is massive when |x| > t_val and |x| > t_ratio x median|x| over the token's
channels. A checkpoint passes when any hidden-state site holds such a coordinate (the paper's rule;
other components can be added). The scan counted passing tokens (``n_pass``) at its own thresholds and
kept two witnesses: the peak token (largest |x|, with its median) and the token with the largest local
ratio. At other thresholds the verdict is decided from those fields when they suffice, else left
undetermined (None) rather than guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from maxact.results import Checkpoint, SiteStats

SUN_T_VAL = 100.0
SUN_T_RATIO = 1000.0


@dataclass(frozen=True)
class SunResult:
    """A checkpoint's verdict and its representative point for the peak-vs-local-ratio scatter."""

    checkpoint: str
    passed: bool | None  # None: the stored fields cannot decide at these thresholds
    t_val: float
    t_ratio: float
    n_pass: int | None  # tokens passing, summed over sites; only at the scan's own thresholds
    site: str | None  # representative site: the one holding the largest peak token
    peak_abs: float
    peak_median: float
    peak_ratio: float  # local ratio of the peak token
    max_ratio: float  # largest local ratio of any token at any considered site
    max_ratio_abs: float


def _ratio(value: float, median: float) -> float:
    return value / median if median > 0 else math.inf


def _token_passes(value: float, median: float, t_val: float, t_ratio: float) -> bool:
    return value > t_val and value > t_ratio * median


def site_passes(sun: dict, t_val: float = SUN_T_VAL, t_ratio: float = SUN_T_RATIO) -> bool | None:
    """Whether a site holds a token passing at (t_val, t_ratio); None when undecidable from the fields."""
    peak, peak_med = float(sun.get("peak_abs", math.nan)), float(sun.get("peak_median", math.nan))
    mr_abs, mr_med = float(sun.get("max_ratio_abs", math.nan)), float(sun.get("max_ratio_median", math.nan))
    max_ratio = float(sun.get("max_ratio", math.nan))
    # Either witness token passing proves a pass.
    if _token_passes(peak, peak_med, t_val, t_ratio) or _token_passes(mr_abs, mr_med, t_val, t_ratio):
        return True
    # No token exceeds the largest |x| or the largest ratio: those bound every token.
    if peak <= t_val or max_ratio <= t_ratio:
        return False
    stored_val, stored_ratio = sun.get("t_val"), sun.get("t_ratio")
    n_pass = sun.get("n_pass")
    if n_pass is None or stored_val is None or stored_ratio is None:
        return None
    n_pass, stored_val, stored_ratio = float(n_pass), float(stored_val), float(stored_ratio)
    if n_pass > 0 and t_val <= stored_val and t_ratio <= stored_ratio:
        return True  # looser thresholds keep every stored pass
    if n_pass == 0 and t_val >= stored_val and t_ratio >= stored_ratio:
        return False  # stricter thresholds cannot add passes
    return None


def sun_criterion(
    ckpt: Checkpoint,
    t_val: float = SUN_T_VAL,
    t_ratio: float = SUN_T_RATIO,
    components: Sequence[str] = ("hidden",),
) -> SunResult:
    """The Sun criterion for a checkpoint over the sites of ``components`` (hidden states by default)."""
    sites: list[SiteStats] = [s for s in ckpt.sites.values() if s.component in components and s.sun]
    if not sites:
        return SunResult(ckpt.name, None, t_val, t_ratio, None, None, *([math.nan] * 5))
    verdicts = [site_passes(s.sun, t_val, t_ratio) for s in sites]
    if any(v is True for v in verdicts):
        passed: bool | None = True
    elif all(v is False for v in verdicts):
        passed = False
    else:
        passed = None
    n_pass = None
    if all(float(s.sun.get("t_val", math.nan)) == t_val and float(s.sun.get("t_ratio", math.nan)) == t_ratio
           and s.sun.get("n_pass") is not None for s in sites):
        n_pass = int(sum(float(s.sun["n_pass"]) for s in sites))
    rep = max(sites, key=lambda s: float(s.sun.get("peak_abs", -math.inf)))  # first wins ties
    mr = max(sites, key=lambda s: float(s.sun.get("max_ratio", -math.inf)))
    peak, med = float(rep.sun.get("peak_abs", math.nan)), float(rep.sun.get("peak_median", math.nan))
    return SunResult(
        checkpoint=ckpt.name,
        passed=passed,
        t_val=t_val,
        t_ratio=t_ratio,
        n_pass=n_pass,
        site=rep.name,
        peak_abs=peak,
        peak_median=med,
        peak_ratio=float(rep.sun.get("peak_ratio", _ratio(peak, med))),
        max_ratio=float(mr.sun.get("max_ratio", math.nan)),
        max_ratio_abs=float(mr.sun.get("max_ratio_abs", math.nan)),
    )
