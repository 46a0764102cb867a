"""maxact.corpus: text or token corpora -> `TokenizedCorpus` for one tokenizer.

    from maxact.corpus import load_corpus
    corpus = load_corpus("builtin", tokenizer, max_seq_len=4096)   # the shipped corpus
    corpus = load_corpus("data.jsonl", tokenizer, skip_bad_lines=True)
    corpus = load_corpus("synthetic:5000:0", vocab_size=151936)     # 19.5M random ids, paper lengths

Formats: `maxact.corpus.readers`. Tokenization and its cache (special tokens: the tokenizer's own
default, never a second BOS): `maxact.corpus.tokenize`. The paper's recipe (`python -m maxact.corpus
build`): `maxact.corpus.recipe`. Synthetic ids: `maxact.corpus.synthetic`.

The shipped corpus (`maxact/corpus/data/builtin.jsonl`, see data/README.md) was written for this
project: 49 short documents, 7 in each of the recipe's categories (math/science, code, English web,
knowledge, Chinese, other languages, mixed), 17,588 tokens with the Gemma 3 tokenizer (BOS included),
in an interleaved category order so that any `max_samples` prefix is a mix.
"""

from .loader import DEFAULT_CORPUS, load_corpus
from .readers import builtin_path, open_source
from .recipe import RECIPE_QUOTAS, TARGET_LENGTHS, TARGET_WEIGHTS, build_recipe
from .synthetic import synthetic_corpus
from .tokenize import cache_root, tokenizer_identity
from .base import CorpusError, Sample, TokenizedCorpus

__all__ = [
    "CorpusError", "Sample", "TokenizedCorpus", "load_corpus", "synthetic_corpus", "build_recipe",
    "builtin_path", "open_source", "cache_root", "tokenizer_identity", "DEFAULT_CORPUS",
    "RECIPE_QUOTAS", "TARGET_LENGTHS", "TARGET_WEIGHTS",
]
