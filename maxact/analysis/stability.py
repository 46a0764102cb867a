"""How stable M is under the choice of corpus samples, from the saved per-sample peaks (no re-run).

The per-sample peak of sample i is max over the M sites of that sample's max |x| (sidecar
``{site}/sample_abs_max``). M of any subset of samples is the max of their per-sample peaks, which
is what a scan of that subset alone would report. Two checks are offered:

* the paper's: category-proportional random subsamples (1,000 and 2,000 of 5,000, i.e. 20 % and
  40 % of the corpus, 5 repeats each), with mean and coefficient of variation of their M;
* a bootstrap percentile interval for M. The bootstrap distribution of a maximum is known in
  closed form, P(M* <= x_(j)) = (#{x <= x_(j)} / N)^N, so the interval is exact (no Monte Carlo).
  Its upper end is the observed M by construction: it says how far M falls when the few samples
  that carry it are left out, not how much larger unseen text could push it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from maxact.analysis.carriers import M_EXCLUDED_COMPONENTS
from maxact.results import Checkpoint

# The paper's subsample sizes as fractions of its 5,000-sample corpus.
PAPER_FRACTIONS = (1000 / 5000, 2000 / 5000)


@dataclass(frozen=True)
class SamplePeaks:
    """Per-sample M of a checkpoint and the categories of its samples."""

    checkpoint: str
    peaks: np.ndarray  # float64[N]
    category: np.ndarray  # int64[N]
    category_names: tuple[str, ...]
    sites_used: tuple[str, ...]
    sites_missing: tuple[str, ...]  # M sites without per-sample peaks (M of subsets may miss them)

    @property
    def M(self) -> float:
        return float(self.peaks.max()) if self.peaks.size else math.nan


@dataclass(frozen=True)
class StabilityRow:
    """M over repeated category-proportional subsamples of one size."""

    size: int
    repeats: int
    maxima: tuple[float, ...]
    mean: float
    std: float  # sample standard deviation (ddof=1)
    cv: float  # std / mean
    min: float
    max: float
    full_M: float


@dataclass(frozen=True)
class BootstrapCI:
    """Percentile bootstrap interval for M."""

    M: float
    lower: float
    upper: float
    level: float
    n_samples: int


def sample_peaks(ckpt: Checkpoint, exclude: Iterable[str] = M_EXCLUDED_COMPONENTS) -> SamplePeaks | None:
    """Per-sample M from the sidecar's ``{site}/sample_abs_max``; None when no M site has them."""
    excluded = frozenset(exclude)
    eligible = [s for s in ckpt.sites.values() if s.component not in excluded]
    used = [s for s in eligible if s.sample_abs_max is not None]
    if not used:
        return None
    n = max(len(s.sample_abs_max) for s in used)
    peaks = np.zeros(n, dtype=np.float64)
    for s in used:
        peaks[: len(s.sample_abs_max)] = np.maximum(peaks[: len(s.sample_abs_max)], s.sample_abs_max)
    if ckpt.samples is not None and ckpt.samples.category is not None:
        category = np.asarray(ckpt.samples.category, dtype=np.int64)[:n]
        names = tuple(ckpt.samples.category_names) or tuple(str(c) for c in range(int(category.max(initial=-1)) + 1))
        if (category < 0).any():  # unlabelled samples (-1) form a category of their own
            category = np.where(category < 0, len(names), category)
            names = names + ("unlabelled",)
    else:
        category = np.zeros(n, dtype=np.int64)
        names = ("all",)
    return SamplePeaks(
        checkpoint=ckpt.name,
        peaks=peaks,
        category=category,
        category_names=names,
        sites_used=tuple(s.name for s in used),
        sites_missing=tuple(s.name for s in eligible if s.sample_abs_max is None),
    )


def default_sizes(num_samples: int) -> tuple[int, ...]:
    """The paper's subsample sizes scaled to the corpus: 20 % and 40 % of the samples (at least 1)."""
    return tuple(max(1, round(f * num_samples)) for f in PAPER_FRACTIONS)


def proportional_allocation(category: np.ndarray, size: int) -> np.ndarray:
    """Samples to draw per category so the subsample keeps the corpus proportions.

    Largest remainder: floor shares first, then one more to the categories with the largest
    fractional parts (lower category index first on ties). Sums to ``size``.
    """
    counts = np.bincount(np.asarray(category, dtype=np.int64))
    total = int(counts.sum())
    if not 0 < size <= total:
        raise ValueError(f"subsample size {size} outside [1, {total}]")
    exact = counts * size / total
    alloc = np.floor(exact).astype(np.int64)
    short = size - int(alloc.sum())
    order = np.lexsort((np.arange(len(counts)), -(exact - alloc)))
    alloc[order[:short]] += 1
    return alloc


def subsample_indices(category: np.ndarray, size: int, repeats: int, seed: int = 0) -> list[np.ndarray]:
    """``repeats`` category-proportional random subsamples (sorted sample indices), seeded."""
    category = np.asarray(category, dtype=np.int64)
    alloc = proportional_allocation(category, size)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(category == c) for c in range(len(alloc))]
    draws = []
    for _ in range(repeats):
        picked = [rng.choice(m, size=k, replace=False) for m, k in zip(members, alloc) if k]
        draws.append(np.sort(np.concatenate(picked)))
    return draws


def stability(
    peaks: SamplePeaks, sizes: Sequence[int] | None = None, repeats: int = 5, seed: int = 0
) -> list[StabilityRow]:
    """M of category-proportional subsamples: one row per size, ``repeats`` draws each."""
    n = peaks.peaks.size
    rows = []
    for i, size in enumerate(sizes or default_sizes(n)):
        maxima = np.array(
            [peaks.peaks[idx].max() for idx in subsample_indices(peaks.category, size, repeats, seed + i)]
        )
        mean = float(maxima.mean())
        std = float(maxima.std(ddof=1)) if repeats > 1 else 0.0
        rows.append(
            StabilityRow(
                size=int(size),
                repeats=int(repeats),
                maxima=tuple(float(m) for m in maxima),
                mean=mean,
                std=std,
                cv=std / mean if mean > 0 else math.nan,
                min=float(maxima.min()),
                max=float(maxima.max()),
                full_M=peaks.M,
            )
        )
    return rows


def bootstrap_ci(peaks: np.ndarray | SamplePeaks, level: float = 0.95) -> BootstrapCI:
    """Exact percentile bootstrap interval for the maximum of the per-sample peaks.

    The q-quantile of the resampled max is the smallest observed x with (#{y <= x} / N)^N >= q.
    """
    x = np.sort(np.asarray(peaks.peaks if isinstance(peaks, SamplePeaks) else peaks, dtype=np.float64))
    n = x.size
    if n == 0:
        return BootstrapCI(math.nan, math.nan, math.nan, level, 0)
    # Count of values <= x_(j), ties included, and the bootstrap CDF of the max there (in logs).
    at_or_below = np.searchsorted(x, x, side="right")
    log_cdf = n * np.log(at_or_below / n)
    alpha = (1.0 - level) / 2.0

    def quantile(q: float) -> float:
        return float(x[int(np.argmax(log_cdf >= math.log(q)))])

    return BootstrapCI(float(x[-1]), quantile(alpha), quantile(1.0 - alpha), level, n)


def bootstrap_maxima(peaks: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Monte Carlo bootstrap replicates of the maximum (for checking :func:`bootstrap_ci`)."""
    x = np.asarray(peaks, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return np.array([x[rng.integers(0, x.size, x.size)].max() for _ in range(n_boot)])
