"""``python -m maxact.scan``: measure where and how large a model's activations get.

Parses the command line into a frozen ScanConfig, runs ``maxact.scan.scan(config)``, prints the end
table. Heavy imports (torch, transformers) happen after parsing, so ``--help`` is instant.
Exit codes: 0 done, 2 bad input (one-line message), 130 interrupted (state checkpointed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from maxact.scan.config import (ATTN_IMPLEMENTATIONS, BACKENDS, DTYPES, EXPORT_FORMATS,
                                TOKEN_MEDIAN_MODES, ScanConfig)
from maxact.scan.errors import ScanError, ScanInterrupted

log = logging.getLogger("maxact.scan")

EPILOG = """\
examples:
  python -m maxact.scan
      scan the demo model (Gemma 3 270M, extra 'demo') on the shipped corpus
  python -m maxact.scan --model Qwen/Qwen3-8B --corpus data/eval_5k.jsonl --out results/qwen3-8b
  python -m maxact.scan --model ./gemma-3-4b --sites linear-inputs --topk 64 --export max-act-llm
  python -m maxact.scan --model ./big-model --device-map auto --checkpoint-every 200
  python -m maxact.scan --model ./big-model --device-map auto --checkpoint-every 200 --resume
  torchrun --nproc-per-node 2 -m maxact.scan --model ./qwen3-8b --corpus synthetic:5000:0
  torchrun --nproc-per-node 4 -m maxact.scan --model ./qwen2.5-72b --device-map auto --gpus-per-replica 2
      (docs/SCALING.md: multi-node with Slurm, checkpoints and resume under torchrun)

outputs (in --out): stats.json (schema maxact.stats/1, docs/STATS_FORMAT.md), stats.safetensors
(exact |x| histograms, per-channel and per-sample maxima), <model>_activation_stats.json with
--export max-act-llm. exit codes: 0 done, 2 bad input, 130 interrupted after a checkpoint.
"""


def build_parser() -> argparse.ArgumentParser:
    d = ScanConfig()
    p = argparse.ArgumentParser(
        prog="python -m maxact.scan",
        description="Scan an LLM over a corpus and record exact activation statistics per hook site "
                    "(M = max|a| and its carrier, per-site moments, quantiles, Sun criterion, top-k).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)

    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="SPEC", default=d.model,
                   help="HF model directory, hub id, .gguf file, random:<arch> (random init), or 'demo' "
                        f"(default: {d.model})")
    g.add_argument("--dtype", metavar="DTYPE", choices=DTYPES, default=d.dtype,
                   help=f"compute dtype: {', '.join(DTYPES)} (default: {d.dtype})")
    g.add_argument("--attn", metavar="IMPL", choices=ATTN_IMPLEMENTATIONS, default=d.attn,
                   help=f"attention backend: {', '.join(ATTN_IMPLEMENTATIONS)} (default: {d.attn})")
    g.add_argument("--device", metavar="DEV", default=d.device,
                   help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    g.add_argument("--device-map", metavar="MAP", default=d.device_map,
                   help="'auto' spreads one model over the visible GPUs (default: off)")
    g.add_argument("--gpus-per-replica", metavar="K", type=int, default=d.gpus_per_replica,
                   help="torchrun with --device-map auto: each process is one replica spread over K GPUs of "
                        "its node (--nproc-per-node = GPUs per node / K) (default: one GPU per process; "
                        "all visible GPUs without torchrun)")
    g.add_argument("--dist-timeout", metavar="SECONDS", type=float, default=d.dist_timeout_s,
                   help="torchrun: a collective waiting longer than this fails the job (a dead or hung rank) "
                        f"(default: {d.dist_timeout_s:g})")
    g.add_argument("--trust-remote-code", action="store_true", default=d.trust_remote_code,
                   help="allow model code from the checkpoint (e.g. BailingMoe / Ling) (default: off)")
    g.add_argument("--sites", metavar="SITES", default=d.sites,
                   help="paper (the six component classes + MoE routers), linear-inputs (input of "
                        "every nn.Linear), all, or a regex over module names (default: paper)")

    g = p.add_argument_group("corpus")
    g.add_argument("--corpus", metavar="SPEC", default=d.corpus,
                   help="builtin, a JSONL/Parquet file, a folder of .txt files, a datasets name, or "
                        f"synthetic:N:SEED (default: {d.corpus})")
    g.add_argument("--max-samples", metavar="N", type=int, default=d.max_samples,
                   help="use only the first N samples (default: all)")
    g.add_argument("--skip-bad-lines", action="store_true", default=d.skip_bad_lines,
                   help="skip and count malformed corpus lines instead of stopping (default: stop)")
    g.add_argument("--seed", metavar="N", type=int, default=d.seed,
                   help=f"seed for random models and synthetic corpora (default: {d.seed})")

    g = p.add_argument_group("batching")
    g.add_argument("--tokens-per-batch", metavar="N", type=int, default=d.tokens_per_batch,
                   help=f"token budget of one batch, padding included (default: {d.tokens_per_batch})")
    g.add_argument("--max-seq-len", metavar="N", type=int, default=d.max_seq_len,
                   help=f"truncate samples to N tokens (default: {d.max_seq_len})")
    g.add_argument("--skip-first-tokens", metavar="N", type=int, default=d.skip_first_tokens,
                   help="leave positions < N of every sample out of all statistics; M with and "
                        f"without position 0 is recorded either way (default: {d.skip_first_tokens})")

    g = p.add_argument_group("statistics")
    g.add_argument("--topk", metavar="K", type=int, default=d.topk,
                   help=f"largest |a| kept per site with sample/position/channel (default: {d.topk})")
    g.add_argument("--no-channels", dest="track_channels", action="store_false",
                   help="do not keep per-channel maxima (default: kept)")
    g.add_argument("--no-tokens", dest="track_tokens", action="store_false",
                   help="do not compute per-token max/median and the Sun criterion (default: computed)")
    g.add_argument("--token-median", metavar="MODE", choices=TOKEN_MEDIAN_MODES, default=d.token_median,
                   help="'candidates': per-token median only where the token max can pass the criterion "
                        "(and each batch's peak token): same n_pass and peak token, max/mean ratio over those "
                        "tokens; 'all': every token, as the paper's code (slower) "
                        f"(default: {d.token_median})")
    g.add_argument("--sun-t-val", metavar="X", type=float, default=d.sun_t_val,
                   help=f"Sun criterion absolute threshold (default: {d.sun_t_val:g})")
    g.add_argument("--sun-t-ratio", metavar="X", type=float, default=d.sun_t_ratio,
                   help=f"Sun criterion max/median ratio threshold (default: {d.sun_t_ratio:g})")
    g.add_argument("--min-expert-tokens", metavar="N", type=int, default=d.min_expert_tokens,
                   help="warn about MoE experts that received fewer than N tokens (their statistics "
                        f"cannot be trusted) (default: {d.min_expert_tokens})")

    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", default=d.out,
                   help="output directory (default: results/<model-name>/)")
    g.add_argument("--export", metavar="FORMAT", choices=EXPORT_FORMATS, action="append", default=[],
                   help="also write max-act-llm: the paper code's <model>_activation_stats.json "
                        "(repeatable; default: none)")
    g.add_argument("--checkpoint-every", metavar="N", type=int, default=d.checkpoint_every,
                   help="checkpoint the state every N batches (also on SIGINT/SIGTERM) (default: 0 = "
                        "only on a signal)")
    g.add_argument("--resume", action="store_true", default=d.resume,
                   help="continue from the checkpoint in --out (default: start afresh)")
    g.add_argument("-q", "--quiet", action="count", default=0, help="less logging; no progress bar")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")

    g = p.add_argument_group("performance")
    g.add_argument("--backend", metavar="NAME", choices=BACKENDS, default=d.backend,
                   help=f"statistics kernels: {', '.join(BACKENDS)} (default: {d.backend})")
    g.add_argument("--sync-every", metavar="N", type=int, default=d.sync_every,
                   help="batches between the progress bar's one host sync that shows running M "
                        f"(default: {d.sync_every})")
    g.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                   help="run even when the estimated peak memory exceeds the free memory "
                        "(default: refuse, naming a --tokens-per-batch that fits)")
    return p


def config_from_args(args: argparse.Namespace) -> ScanConfig:
    """argparse namespace -> validated ScanConfig (ScanError on an impossible combination)."""
    return ScanConfig(
        model=args.model, dtype=args.dtype, attn=args.attn, device=args.device,
        device_map=args.device_map, gpus_per_replica=args.gpus_per_replica, dist_timeout_s=args.dist_timeout,
        trust_remote_code=args.trust_remote_code, sites=args.sites,
        corpus=args.corpus, max_samples=args.max_samples, skip_bad_lines=args.skip_bad_lines,
        seed=args.seed, tokens_per_batch=args.tokens_per_batch, max_seq_len=args.max_seq_len,
        skip_first_tokens=args.skip_first_tokens, topk=args.topk, track_channels=args.track_channels,
        track_tokens=args.track_tokens, token_median=args.token_median, sun_t_val=args.sun_t_val,
        sun_t_ratio=args.sun_t_ratio, backend=args.backend, out=args.out,
        export=tuple(dict.fromkeys(args.export)), checkpoint_every=args.checkpoint_every,
        resume=args.resume, sync_every=args.sync_every, progress=args.quiet == 0,
        min_expert_tokens=args.min_expert_tokens, memory_check=args.memory_check)


def setup_logging(verbose: int, quiet: int) -> None:
    level = logging.INFO - 10 * verbose + 10 * quiet
    if int(os.environ.get("RANK", "0")) > 0:   # torchrun: only rank 0 reports progress
        level = max(level, logging.WARNING)
    logging.basicConfig(level=max(logging.DEBUG, min(level, logging.ERROR)),
                        format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m maxact.scan`` and the ``maxact-scan`` script; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        config = config_from_args(args)
        from maxact.scan.replicas import narrow_visible_gpus

        narrow_visible_gpus(config.gpus_per_replica)   # before anything starts CUDA
        from maxact.scan.runner import scan   # heavy imports only after parsing

        result = scan(config)
    except ScanError as exc:
        print(f"error: {_rank_label()}{exc}", file=sys.stderr)
        return exc.exit_code
    except ScanInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:   # before the loop (loading) or a second Ctrl-C: nothing to save
        print("interrupted", file=sys.stderr)
        return ScanInterrupted.exit_code
    if result is not None:   # None on ranks other than 0 of a torchrun scan
        print(result.table())
    return 0


def _rank_label() -> str:
    """``rank R: `` under torchrun, so the failing rank of a job is named in its error line."""
    return f"rank {os.environ.get('RANK', '0')}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
