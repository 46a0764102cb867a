"""MoE coverage: how many tokens each expert of each layer received during a scan.

An expert routed only a handful of calibration tokens has statistics (and quantization scales) that
rest on those few tokens; quantization pipelines tend to miss this silently. A maxact scan counts,
at every router site, the real tokens routed to each expert from the router's own top-k
(``sites[router]["expert_tokens"]`` in stats.json); the paper layout has no such counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maxact.results import Checkpoint

DEFAULT_MIN_EXPERT_TOKENS = 16


@dataclass(frozen=True)
class ExpertLayer:
    """Routed-token counts of one router site."""

    site: str
    layer: int | None
    tokens: tuple[int, ...]

    @property
    def num_experts(self) -> int:
        return len(self.tokens)

    @property
    def min(self) -> int:
        return min(self.tokens, default=0)

    @property
    def max(self) -> int:
        return max(self.tokens, default=0)

    @property
    def median(self) -> float:
        return float(np.median(self.tokens)) if self.tokens else float("nan")

    def starved(self, min_tokens: int) -> list[int]:
        """Experts of this layer routed fewer than ``min_tokens`` tokens."""
        return [e for e, n in enumerate(self.tokens) if n < min_tokens]


@dataclass(frozen=True)
class ExpertCoverage:
    """Routed-token counts of every router site of a checkpoint, and the threshold used."""

    checkpoint: str
    min_tokens: int
    layers: tuple[ExpertLayer, ...]

    @property
    def starved(self) -> list[dict]:
        """``[{site, layer, expert, tokens}]`` of every expert under the threshold, in forward order."""
        return [{"site": lay.site, "layer": lay.layer, "expert": e, "tokens": lay.tokens[e]}
                for lay in self.layers for e in lay.starved(self.min_tokens)]

    def matrix(self) -> np.ndarray:
        """[layers, max experts] int64 counts (-1 where a layer has fewer experts)."""
        width = max((lay.num_experts for lay in self.layers), default=0)
        out = np.full((len(self.layers), width), -1, dtype=np.int64)
        for i, lay in enumerate(self.layers):
            out[i, : lay.num_experts] = lay.tokens
        return out


def _threshold(ckpt: Checkpoint) -> int:
    """The scan's ``--min-expert-tokens`` (stats.json ``experts`` or the recorded config), else 16."""
    block = ckpt.extra.get("experts") or {}
    if isinstance(block.get("min_expert_tokens"), int):
        return block["min_expert_tokens"]
    cfg = ckpt.metadata.get("config") or {}
    value = cfg.get("min_expert_tokens")
    return int(value) if isinstance(value, int) else DEFAULT_MIN_EXPERT_TOKENS


def expert_coverage(ckpt: Checkpoint, min_tokens: int | None = None) -> ExpertCoverage | None:
    """Routed-token counts per router site (forward order); None when the result has none."""
    layers = tuple(ExpertLayer(s.name, s.layer, tuple(int(v) for v in s.expert_tokens))
                   for s in ckpt.sites.values() if s.expert_tokens is not None)
    if not layers:
        return None
    return ExpertCoverage(ckpt.name, _threshold(ckpt) if min_tokens is None else int(min_tokens), layers)
