"""The scan's one progress bar: tokens/s and ETA every batch, running M at each sync point."""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


class Progress:
    """A tqdm bar counted in tokens (tokens/s, ETA); ``show_m`` adds the running M to its postfix.

    Advancing never touches the device; the loop calls ``show_m`` only at its sync points.
    Disabled (no output at all) with ``enabled=False``, e.g. ``-q`` or ranks other than 0.
    """

    def __init__(self, total_tokens: int, *, initial_tokens: int = 0, enabled: bool = True,
                 desc: str = "scan", world_size: int = 1):
        self._bar: Any = None
        self._world = world_size
        self._post: dict[str, str] = {}
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_tokens, initial=initial_tokens, unit="tok", unit_scale=True,
                             desc=desc, dynamic_ncols=True, file=sys.stderr, smoothing=0.1)

    def advance(self, tokens: int) -> None:
        """Count tokens of this rank; under data parallelism the bar extrapolates to all ranks."""
        if self._bar is not None:
            self._bar.update(tokens * self._world)

    def set_done(self, tokens: int) -> None:
        """Set the exact token count (all ranks), known at sync points."""
        if self._bar is not None:
            self._bar.update(tokens - self._bar.n)

    def set_ranks(self, base_tokens: int, ranks: list[list[float]]) -> None:
        """At a sync point of a data-parallel scan: ``ranks[r] = [tokens, loop seconds]`` of rank r.

        Sets the exact token count (``base_tokens`` from resumed runs plus every rank's) and shows
        each rank's tokens/s, so a slow rank is visible while the scan runs.
        """
        self.set_done(base_tokens + int(sum(r[0] for r in ranks)))
        if self._bar is not None:
            self._post["rank tok/s"] = rank_rates_text([tok / sec if sec > 0 else 0.0 for tok, sec in ranks])
            self._bar.set_postfix(self._post, refresh=False)

    def show_m(self, m: float, site: str | None = None) -> None:
        if self._bar is not None:
            self._post["M"] = f"{m:.4g}"
            if site:
                self._post["at"] = site
            else:
                self._post.pop("at", None)
            self._bar.set_postfix(self._post, refresh=False)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            log.info(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _si(x: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def rank_rates_text(rates: list[float]) -> str:
    """Tokens/s of every rank, compact: all of them up to 8 ranks, else min / median / max."""
    if len(rates) <= 8:
        return " ".join(_si(r) for r in rates)
    order = sorted(range(len(rates)), key=lambda r: rates[r])
    lo, mid, hi = order[0], order[len(order) // 2], order[-1]
    return f"min {_si(rates[lo])} (rank {lo}) median {_si(rates[mid])} max {_si(rates[hi])} (rank {hi})"
