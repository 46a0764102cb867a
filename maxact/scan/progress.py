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

    def show_m(self, m: float, site: str | None = None) -> None:
        if self._bar is not None:
            post = {"M": f"{m:.4g}"}
            if site:
                post["at"] = site
            self._bar.set_postfix(post, refresh=False)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            log.info(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
