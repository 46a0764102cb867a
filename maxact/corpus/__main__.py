"""`python -m maxact.corpus`: build the paper's corpus from a labelled source, write synthetic ids,
or summarize a corpus."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EPILOG = """examples:
  python -m maxact.corpus build --source labelled.jsonl --out eval_5k.jsonl --seed 0
  python -m maxact.corpus build --source texts/ --out small.jsonl --total 500 --category-map '{"news": "english_web"}'
  python -m maxact.corpus synthetic --num-samples 5000 --vocab-size 151936 --out synthetic.jsonl
  python -m maxact.corpus info builtin --tokenizer Qwen/Qwen2.5-1.5B
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m maxact.corpus", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", required=True, metavar="{build,synthetic,info}")

    b = sub.add_parser("build", help="draw the paper's category quotas and target lengths from a labelled text source")
    b.add_argument("--source", required=True, metavar="SRC",
                   help="category-labelled text: JSONL / Parquet with text+category, a folder of <category>/*.txt, a dataset")
    b.add_argument("--out", required=True, metavar="OUT.jsonl", help="output JSONL (text, category, max_tokens, ...)")
    b.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    b.add_argument("--total", type=int, default=5000, metavar="N", help="samples to draw; quotas scale (default 5000)")
    b.add_argument("--category-map", metavar="JSON",
                   help="JSON object or file mapping source categories to recipe buckets (extends the default table)")
    b.add_argument("--strict", action="store_true", help="fail instead of warning when a bucket is short")
    b.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed records")

    s = sub.add_parser("synthetic", help="write random token ids with the paper's length distribution as JSONL")
    s.add_argument("--out", required=True, metavar="OUT.jsonl", help="output JSONL ({input_ids, category})")
    s.add_argument("--num-samples", type=int, default=5000, metavar="N", help="samples (default 5000)")
    s.add_argument("--vocab-size", type=int, required=True, metavar="V", help="ids are drawn from [0, V)")
    s.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    s.add_argument("--max-seq-len", type=int, default=4096, metavar="T", help="length cap (default 4096)")

    i = sub.add_parser("info", help="load a corpus and print samples, tokens and categories")
    i.add_argument("corpus", nargs="?", default="builtin", metavar="SPEC", help="corpus spec (default builtin)")
    i.add_argument("--tokenizer", metavar="PATH", help="tokenizer for text corpora (AutoTokenizer.from_pretrained)")
    i.add_argument("--max-seq-len", type=int, default=4096, metavar="T", help="length cap (default 4096)")
    i.add_argument("--max-samples", type=int, default=None, metavar="N", help="first N samples only")
    i.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed records")
    return p


def _category_map(arg: str | None) -> dict | None:
    from .base import CorpusError

    if arg is None:
        return None
    text = Path(arg).read_text(encoding="utf-8") if Path(arg).is_file() else arg
    try:
        table = json.loads(text)
    except ValueError as e:
        raise CorpusError(f"--category-map: not a JSON object or file ({e})") from e
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise CorpusError("--category-map: expected a JSON object {source_category: bucket}")
    return table


def _build(args) -> None:
    from .recipe import build_recipe, write_jsonl

    res = build_recipe(args.source, seed=args.seed, total=args.total, category_map=_category_map(args.category_map),
                       strict=args.strict, skip_bad_lines=args.skip_bad_lines)
    write_jsonl(res.records, args.out)
    print(f"{'bucket':<16} {'quota':>6} {'drawn':>6}")
    for bucket, quota in res.quotas.items():
        print(f"{bucket:<16} {quota:>6} {res.drawn[bucket]:>6}")
    print(f"wrote {len(res.records)} records to {args.out}"
          + (f" (skipped {res.num_empty} empty, {res.num_bad} bad; unmapped: {res.unmapped})"
             if res.num_empty or res.num_bad or res.unmapped else ""))


def _synthetic(args) -> None:
    from .recipe import write_jsonl
    from .synthetic import synthetic_corpus

    corpus = synthetic_corpus(args.num_samples, vocab_size=args.vocab_size, seed=args.seed,
                              max_seq_len=args.max_seq_len)
    write_jsonl(({"input_ids": s.input_ids.tolist(), "category": s.category} for s in corpus.samples), args.out)
    print(f"wrote {corpus.num_samples} samples, {corpus.num_tokens} tokens to {args.out}")


def _info(args) -> None:
    from .loader import load_corpus

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    corpus = load_corpus(args.corpus, tokenizer, max_seq_len=args.max_seq_len, max_samples=args.max_samples,
                         skip_bad_lines=args.skip_bad_lines)
    lengths = corpus.lengths()
    codes = corpus.category_codes()
    print(f"corpus {corpus.source}  hash {corpus.hash}")
    print(f"{'category':<18} {'samples':>8} {'tokens':>10}")
    for k, name in enumerate(corpus.category_names):
        print(f"{name:<18} {int((codes == k).sum()):>8} {int(lengths[codes == k].sum()):>10}")
    if (codes < 0).any():
        print(f"{'(none)':<18} {int((codes < 0).sum()):>8} {int(lengths[codes < 0].sum()):>10}")
    print(f"{'total':<18} {corpus.num_samples:>8} {corpus.num_tokens:>10}")
    if corpus.num_samples:
        print(f"length min / mean / max: {lengths.min()} / {lengths.mean():.1f} / {lengths.max()}")
    print(f"skipped: {corpus.num_empty} empty, {corpus.num_bad_lines} bad; truncated: {corpus.num_truncated}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from .base import CorpusError

    try:
        {"build": _build, "synthetic": _synthetic, "info": _info}[args.command](args)
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
