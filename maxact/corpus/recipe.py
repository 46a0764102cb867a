"""The paper's evaluation-corpus recipe: category quotas and target lengths.

The paper draws 5,000 samples: 850 math/science, 850 code, 850 English web, 850 knowledge
(encyclopedia, books, Q&A), 400 Chinese, 300 other (low-resource) languages and 900 more English or
mixed web; each is cut to 256 / 512 / 1024 / 2048 / 4096 tokens with proportions 1 / 1 / 2 / 3 / 93 %.

`build_recipe` applies it to any category-labelled text source:
1. each record's category is mapped to a recipe bucket (`DEFAULT_CATEGORY_MAP`, extended or
   overridden by a user map; names are compared lower-case with "-" and " " read as "_");
   records of unmapped categories are left out and reported;
2. quotas scale to `total` by largest remainder (ties go to the earlier bucket), so they sum to it;
3. buckets are filled in recipe order by drawing without replacement with `numpy.random.Generator`
   (seeded); the "mixed_web" bucket draws from mixed and English web records that "english_web" did
   not take; a bucket with too few records takes all it has (a warning, or an error with strict=True);
4. target lengths come in exactly the recipe proportions (largest remainder over the drawn samples)
   and are assigned in a random order; they are stored as "max_tokens": the cut happens at
   tokenization time, per tokenizer, so the text is the same for every model family;
5. the output order is a seeded shuffle, so any prefix of the file is a roughly proportional mix.
Same source + same seed + same total gives the same file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .readers import BadRecords, open_source
from .base import CorpusError

logger = logging.getLogger(__name__)

RECIPE_QUOTAS: dict[str, int] = {
    "math_science": 850,
    "code": 850,
    "english_web": 850,
    "knowledge": 850,
    "chinese": 400,
    "other_languages": 300,
    "mixed_web": 900,
}
RECIPE_TOTAL = sum(RECIPE_QUOTAS.values())  # 5000
TARGET_LENGTHS = (256, 512, 1024, 2048, 4096)
TARGET_WEIGHTS = (1, 1, 2, 3, 93)  # percent
# Buckets that may also fill a bucket beyond its own records (in this order, after their own draw).
EXTRA_POOLS: dict[str, tuple[str, ...]] = {"mixed_web": ("english_web",)}

# Source category name (normalized) -> recipe bucket. RedPajama's subsets, common domain labels and
# ISO 639-1 codes; extend or override it with a user map.
DEFAULT_CATEGORY_MAP: dict[str, str] = {
    **{k: "math_science" for k in ("math_science", "math", "mathematics", "science", "stem", "arxiv",
                                   "physics", "chemistry", "biology", "statistics", "proof_pile",
                                   "open_web_math")},
    **{k: "code" for k in ("code", "github", "python", "c", "cpp", "javascript", "java", "rust", "go",
                           "programming", "source_code", "the_stack")},
    **{k: "english_web" for k in ("english_web", "web", "en_web", "english", "en", "c4", "common_crawl",
                                  "commoncrawl", "cc", "refinedweb", "fineweb")},
    **{k: "knowledge" for k in ("knowledge", "wikipedia", "wiki", "encyclopedia", "book", "books",
                                "stackexchange", "stack_exchange", "qa", "q&a", "question_answering",
                                "reference")},
    **{k: "chinese" for k in ("chinese", "zh", "zh_cn", "zh_tw", "zho", "chinese_web", "zh_web")},
    **{k: "other_languages" for k in ("other_languages", "low_resource", "multilingual", "es", "spanish",
                                      "de", "german", "fr", "french", "ja", "japanese", "sw", "swahili",
                                      "hi", "hindi", "ko", "korean", "ar", "arabic", "ru", "russian",
                                      "pt", "portuguese", "it", "italian", "id", "indonesian", "vi",
                                      "vietnamese", "tr", "turkish", "bn", "bengali", "yo", "yoruba",
                                      "am", "amharic", "ta", "tamil", "ur", "urdu", "th", "thai")},
    **{k: "mixed_web" for k in ("mixed_web", "mixed", "web_mixed", "code_mixed", "mixed_language")},
}


def normalize_category(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def category_table(user_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """DEFAULT_CATEGORY_MAP updated with a user map; every target must be a recipe bucket."""
    table = dict(DEFAULT_CATEGORY_MAP)
    for src, bucket in (user_map or {}).items():
        if bucket not in RECIPE_QUOTAS:
            raise CorpusError(f"category map: {src!r} -> {bucket!r} is not a recipe bucket "
                              f"({', '.join(RECIPE_QUOTAS)})")
        table[normalize_category(src)] = bucket
    return table


def largest_remainder(weights: Mapping[str, float] | list[float], total: int) -> list[int]:
    """Integer counts proportional to weights summing exactly to total (ties: earlier first)."""
    w = np.asarray(list(weights.values()) if isinstance(weights, Mapping) else weights, dtype=np.float64)
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(np.int64)
    remainder = exact - counts
    short = total - int(counts.sum())
    order = np.lexsort((np.arange(len(w)), -remainder))  # largest remainder, then earlier
    counts[order[:short]] += 1
    return counts.tolist()


def scale_quotas(total: int = RECIPE_TOTAL) -> dict[str, int]:
    """The recipe's category quotas scaled to `total` samples."""
    if total < 1:
        raise CorpusError(f"total must be >= 1, got {total}")
    return dict(zip(RECIPE_QUOTAS, largest_remainder(RECIPE_QUOTAS, total)))


def assign_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    """n target lengths in exactly the recipe proportions (largest remainder), in a random order."""
    counts = largest_remainder(list(TARGET_WEIGHTS), n) if n else [0] * len(TARGET_LENGTHS)
    lengths = np.repeat(np.array(TARGET_LENGTHS, dtype=np.int64), counts)
    return rng.permutation(lengths)


def interleave_categories(n: int, quotas: Mapping[str, int] | None = None) -> list[str]:
    """n category labels in recipe proportions, spread evenly so any prefix stays proportional."""
    names = list(quotas or RECIPE_QUOTAS)
    counts = largest_remainder(quotas or RECIPE_QUOTAS, n) if n else [0] * len(names)
    # The k-th item of a category with c items sits at "time" (k + 0.5) / c; sorting by time (then by
    # category order) gives a smooth weighted round robin.
    times = np.concatenate([(np.arange(c) + 0.5) / c for c in counts if c] or [np.zeros(0)])
    cats = np.concatenate([np.full(c, i) for i, c in enumerate(counts) if c] or [np.zeros(0, dtype=np.int64)])
    order = np.lexsort((cats, times))
    return [names[i] for i in cats[order].tolist()]


@dataclass
class RecipeResult:
    """Records of a built corpus, and what the source could not supply."""

    records: list[dict]
    quotas: dict[str, int]
    drawn: dict[str, int]
    shortfall: dict[str, int] = field(default_factory=dict)
    unmapped: dict[str, int] = field(default_factory=dict)
    num_empty: int = 0
    num_bad: int = 0


def _read_pools(source: str, table: Mapping[str, str], skip_bad_lines: bool):
    """Pass 1: (record index, source label) of every usable record, grouped by recipe bucket."""
    reader = open_source(source)
    on_bad = BadRecords(skip_bad_lines)
    pools: dict[str, list[tuple[int, str]]] = {b: [] for b in RECIPE_QUOTAS}
    unmapped: dict[str, int] = {}
    num_empty = 0
    for rec in reader.records(on_bad):
        if rec.text is None and rec.input_ids is not None:
            raise CorpusError(f"{reader.source}: record {rec.index} has input_ids but no text; the recipe needs text")
        if rec.is_empty:
            num_empty += 1
            continue
        bucket = table.get(normalize_category(rec.category)) if rec.category is not None else None
        if bucket is None:
            label = rec.category if rec.category is not None else "<none>"
            unmapped[label] = unmapped.get(label, 0) + 1
            continue
        pools[bucket].append((rec.index, rec.category))
    return reader, pools, unmapped, num_empty, on_bad.count


def _draw(pools: dict[str, list[tuple[int, str]]], quotas: Mapping[str, int], rng: np.random.Generator):
    """Fill buckets in recipe order; returns [(bucket, record index, label)] and the count drawn."""
    taken: dict[str, set[int]] = {b: set() for b in RECIPE_QUOTAS}
    chosen: list[tuple[str, int, str]] = []
    drawn: dict[str, int] = {}
    for bucket, quota in quotas.items():
        # Candidates: this bucket's records, then leftovers of its extra pools, in source order.
        cands = [(bucket, i) for i in range(len(pools[bucket])) if i not in taken[bucket]]
        for extra in EXTRA_POOLS.get(bucket, ()):
            cands += [(extra, i) for i in range(len(pools[extra])) if i not in taken[extra]]
        k = min(quota, len(cands))
        picks = sorted(rng.choice(len(cands), size=k, replace=False).tolist()) if k else []
        for j in picks:
            pool, i = cands[j]
            taken[pool].add(i)
            chosen.append((bucket, *pools[pool][i]))
        drawn[bucket] = k
    return chosen, drawn


def build_recipe(source: str, *, seed: int = 0, total: int = RECIPE_TOTAL,
                 category_map: Mapping[str, str] | None = None, strict: bool = False,
                 skip_bad_lines: bool = False) -> RecipeResult:
    """Draw the paper's category quotas and target lengths from a category-labelled text source.

    The source is read twice (labels, then the chosen texts), so it need not fit in memory.
    """
    table = category_table(category_map)
    quotas = scale_quotas(total)
    reader, pools, unmapped, num_empty, num_bad = _read_pools(source, table, skip_bad_lines)
    if unmapped:
        logger.warning("left out records of unmapped categories: %s (map them with --category-map)",
                       ", ".join(f"{k} ({v})" for k, v in sorted(unmapped.items())))
    rng = np.random.default_rng(seed)
    chosen, drawn = _draw(pools, quotas, rng)
    shortfall = {b: quotas[b] - drawn[b] for b in quotas if drawn[b] < quotas[b]}
    if shortfall:
        msg = "source too small for the recipe; short by " + ", ".join(f"{b} {n}" for b, n in shortfall.items())
        if strict:
            raise CorpusError(f"{reader.source}: {msg}")
        logger.warning("%s: %s", reader.source, msg)
    lengths = assign_lengths(len(chosen), rng)
    order = rng.permutation(len(chosen))
    wanted = {index for _, index, _ in chosen}
    texts = {rec.index: rec.text for rec in reader.records(BadRecords(True)) if rec.index in wanted}
    records = []
    for j in order.tolist():
        bucket, index, label = chosen[j]
        records.append({"text": texts[index], "category": bucket, "source_category": label,
                        "source_index": index, "max_tokens": int(lengths[j])})
    return RecipeResult(records=records, quotas=quotas, drawn=drawn, shortfall=shortfall,
                        unmapped=unmapped, num_empty=num_empty, num_bad=num_bad)


def write_jsonl(records: Iterable[dict], out: str | os.PathLike) -> Path:
    """Write records as JSONL (UTF-8, one object a line) atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
