"""Where each top-k activation comes from: the token, a few tokens of context, the corpus record.

Computed once at the end of the scan, on the host, from the corpus the scan ran over (never in the
forward loop): a top-k entry's (sample id, position) indexes the sample's token ids directly, since
positions count from the start of the truncated sample. Text is decoded with the model's tokenizer;
without one (random models, pre-tokenized corpora) the token ids are kept and the text is None.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

log = logging.getLogger(__name__)

#: Tokens of context kept before and after the top-k token.
CONTEXT_BEFORE = 4
CONTEXT_AFTER = 2
#: Marks the top-k token inside the decoded context.
MARK_OPEN, MARK_CLOSE = "\u27e6", "\u27e7"   # ⟦ ⟧


class Decoder:
    """Token ids -> text with the tokenizer, cached (the same few tokens recur across sites)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer if callable(getattr(tokenizer, "decode", None)) else None
        self._cache: dict[tuple[int, ...], str | None] = {}
        self._warned = False

    def __call__(self, ids: Sequence[int]) -> str | None:
        if self.tokenizer is None:
            return None
        key = tuple(int(i) for i in ids)
        if key not in self._cache:
            try:
                # Special tokens stay visible: a peak on <bos> must read as such.
                self._cache[key] = str(self.tokenizer.decode(list(key), skip_special_tokens=False))
            except Exception as exc:  # noqa: BLE001 - undecodable ids: keep the ids, say why once
                if not self._warned:
                    log.warning("provenance: the tokenizer cannot decode token ids (%s); text left out", exc)
                    self._warned = True
                self._cache[key] = None
        return self._cache[key]


def token_record(corpus: Any, decode: Decoder, sample: int, position: int,
                 before: int = CONTEXT_BEFORE, after: int = CONTEXT_AFTER) -> dict[str, Any]:
    """Token id, decoded token, context ids and text, and the corpus record of one (sample, position).

    ``context`` is the decoded window with the token marked ``⟦token⟧``; ``context_start`` is the
    position of ``context_ids[0]``. Out-of-range locations (which a scan never produces) give nulls.
    """
    rec: dict[str, Any] = {"token_id": None, "token": None, "context_ids": [], "context_start": None,
                           "context": None, "corpus_index": None, "source": None}
    if not 0 <= sample < corpus.num_samples:
        return rec
    s = corpus[sample]
    rec["corpus_index"] = int(s.corpus_index)
    try:
        rec["source"] = corpus.locate(sample)
    except Exception:  # noqa: BLE001 - a location string is a convenience, never worth failing a scan
        rec["source"] = None
    ids = s.input_ids
    if not 0 <= position < len(ids):
        return rec
    lo, hi = max(0, position - before), min(len(ids), position + after + 1)
    window = [int(i) for i in ids[lo:hi]]
    rec.update(token_id=int(ids[position]), context_ids=window, context_start=lo)
    token = decode([int(ids[position])])
    if token is not None:
        head, tail = decode(window[: position - lo]), decode(window[position - lo + 1:])
        rec["token"] = token
        rec["context"] = f"{head or ''}{MARK_OPEN}{token}{MARK_CLOSE}{tail or ''}"
    return rec


def topk_provenance(topk: dict[str, Any] | None, site: str, layer: int | None, corpus: Any,
                    decode: Decoder) -> list[dict[str, Any]]:
    """One provenance record per top-k entry of a site, in the entries' order."""
    if not topk or not len(topk.get("abs", ())):
        return []
    out = []
    for sample, position in zip(topk["sample"], topk["position"]):
        rec = {"site": site, "layer": layer}
        rec.update(token_record(corpus, decode, int(sample), int(position)))
        out.append(rec)
    return out


def annotate(sites: dict[str, Any], corpus: Any, tokenizer: Any) -> None:
    """Attach ``provenance`` to every SiteResult with top-k entries (in place)."""
    decode = Decoder(tokenizer)
    for site in sites.values():
        site.provenance = topk_provenance(site.summary.get("topk"), site.name, site.layer, corpus, decode)
