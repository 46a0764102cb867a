"""Model family and architecture kind from a checkpoint's model name and ``model_type``."""

from __future__ import annotations

import re
from typing import Mapping

# Display order of the paper's eight families; others follow alphabetically.
FAMILY_ORDER = ("Qwen2.5", "Qwen2.5-VL", "Qwen3", "Qwen3.5", "Gemma2", "Gemma3", "Ling", "GPT-OSS")

# The paper counts gemma-2b (model_type "gemma") as the 2B member of its Gemma2 family; keep that
# grouping so the reference figures read as the paper's. Users add their own through ``overrides``.
PAPER_FAMILY_OVERRIDES: dict[str, str] = {"gemma-2b": "Gemma2"}

# (pattern on the lower-cased model name, family); first match wins, so specific names come first.
_NAME_RULES = (
    (r"qwen2\.5-vl|qwen2_5_vl", "Qwen2.5-VL"),
    (r"qwen3\.5|qwen3_5", "Qwen3.5"),
    (r"qwen3", "Qwen3"),
    (r"qwen2\.5", "Qwen2.5"),
    (r"gemma-?3", "Gemma3"),
    (r"gemma-?2-", "Gemma2"),
    (r"(^|[/_\-\s])ling([-_]|$)", "Ling"),
    (r"gpt-oss|gpt_oss", "GPT-OSS"),
)
_TYPE_RULES = {
    "qwen2_5_vl": "Qwen2.5-VL",
    "qwen3_5": "Qwen3.5",
    "qwen3_5_moe": "Qwen3.5",
    "qwen3_5_text": "Qwen3.5",
    "qwen3": "Qwen3",
    "qwen3_moe": "Qwen3",
    "qwen2": "Qwen2.5",
    "gemma3": "Gemma3",
    "gemma3_text": "Gemma3",
    "gemma2": "Gemma2",
    "gemma": "Gemma",
    "bailing_moe": "Ling",
    "bailing_moe_v2": "Ling",
    "gpt_oss": "GPT-OSS",
}
_MOE_TYPES = {"qwen3_moe", "qwen3_5_moe", "qwen2_moe", "bailing_moe", "bailing_moe_v2", "gpt_oss", "mixtral"}


def family_of(name: str, model_type: str | None = None, overrides: Mapping[str, str] | None = None) -> str:
    """Family of a checkpoint: explicit override, then the model name, then ``model_type``.

    The name is tried before ``model_type`` because one type covers several families (``qwen2`` is
    both Qwen2 and Qwen2.5). Unknown models get their ``model_type`` (or "other").
    """
    table = dict(PAPER_FAMILY_OVERRIDES)
    table.update(overrides or {})
    if name in table:
        return table[name]
    lowered = name.lower()
    for pattern, family in _NAME_RULES:
        if re.search(pattern, lowered):
            return family
    if model_type and model_type in _TYPE_RULES:
        return _TYPE_RULES[model_type]
    return model_type or "other"


def is_moe(name: str, model_type: str | None = None) -> bool:
    """True for mixture-of-experts checkpoints (by ``model_type`` or an ``-A<n>B`` name)."""
    if model_type and model_type in _MOE_TYPES:
        return True
    return re.search(r"-a\d+(\.\d+)?b\b", name.lower()) is not None


def family_sort_key(family: str) -> tuple[int, str]:
    """Sort key putting the paper's families first, in the paper's order."""
    try:
        return (FAMILY_ORDER.index(family), family)
    except ValueError:
        return (len(FAMILY_ORDER), family)
