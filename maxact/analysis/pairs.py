"""Matched comparisons: the ratio M(b) / M(a) for pairs of checkpoints (MoE vs dense, base vs
instruct, one generation vs the next, one training stage vs the next)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """Checkpoint ``b`` compared with ``a``; ``label`` names the contrast."""

    a: str
    b: str
    label: str = ""


def load_pairs(path: str | Path) -> list[Pair]:
    """Read a PAIRS.json: a list of ``{"a": name, "b": name, "label": text}``."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{a, b, label}}")
    pairs = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "a" not in item or "b" not in item:
            raise ValueError(f"{path}: entry {i} needs 'a' and 'b'")
        pairs.append(Pair(str(item["a"]), str(item["b"]), str(item.get("label", ""))))
    return pairs


def pair_ratios(maxima: Mapping[str, float], pairs: Sequence[Pair], keep_missing: bool = True) -> list[dict]:
    """``{a, b, label, ratio, M_a, M_b}`` per pair, ratio = M(b) / M(a).

    A pair naming a checkpoint not in ``maxima`` gets ratio None (and a warning) when
    ``keep_missing``, else it is dropped quietly (for default pair lists applied to any result set).
    """
    out = []
    for p in pairs:
        ma, mb = maxima.get(p.a), maxima.get(p.b)
        if ma is None or mb is None:
            if keep_missing:
                missing = [n for n, m in ((p.a, ma), (p.b, mb)) if m is None]
                logger.warning("pair %r: no result for %s", p.label or f"{p.a} / {p.b}", ", ".join(missing))
                out.append({"a": p.a, "b": p.b, "label": p.label, "ratio": None, "M_a": ma, "M_b": mb})
            continue
        ratio = mb / ma if ma > 0 else math.inf
        out.append({"a": p.a, "b": p.b, "label": p.label, "ratio": ratio, "M_a": ma, "M_b": mb})
    return out
