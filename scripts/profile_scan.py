"""Where a scan's GPU time goes: per-kernel CUDA time of the bare forward and of the hooked scan.

    PYTHONPATH=. python3 scripts/profile_scan.py OUT_DIR [ARCH ROWS_OF_4096 BATCHES] ...

For each architecture (default: Qwen2.5-1.5B x 8 rows and Qwen3-8B x 4 rows, random init, bf16, sdpa)
runs the bare forward and the scan once each under ``torch.profiler`` (after a warm-up) and prints the
kernels maxact added, grouped by name, as a share of the bare forward's GPU time. Writes
``profile_<arch>.json`` with the full tables.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from maxact.scan import ScanConfig  # noqa: E402
from maxact.scan.bench import prepare, time_bare, time_scan  # noqa: E402


def kernel_times(fn) -> dict[str, float]:
    """Total CUDA kernel time (microseconds) per kernel name while ``fn`` runs."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            out[ev.name[:90]] += ev.time_range.elapsed_us()
    return dict(out)


def family(name: str) -> str:
    """Coarse label for a kernel name (maxact's own kernels by their function names)."""
    for key in ("maxact_fused_stats", "_rows_kernel", "_finalize", "_tokens", "_topk", "_median",
                "_channel", "index_select", "gather", "copy", "fill", "gemm", "flash", "attention",
                "elementwise", "reduce"):
        if key in name.lower():
            return key
    return "other"


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    args = sys.argv[2:]
    cases = [(args[i], int(args[i + 1]), int(args[i + 2])) for i in range(0, len(args), 3)] or [
        ("random:qwen2.5-1.5b", 8, 4), ("random:qwen3-8b", 4, 4)]
    for arch, rows, batches in cases:
        cfg = ScanConfig(model=arch, corpus=f"synthetic:{rows * batches}:0", max_seq_len=4096,
                         tokens_per_batch=rows * 4096, dtype="bfloat16", progress=False)
        session = prepare(cfg, batches)
        bare_t = time_bare(session)
        scan_t = time_scan(session)
        bare = kernel_times(lambda: time_bare(session, 0))
        scan = kernel_times(lambda: time_scan(session, 0))
        bare_total, scan_total = sum(bare.values()), sum(scan.values())
        added = {k: v - bare.get(k, 0.0) for k, v in scan.items() if v - bare.get(k, 0.0) > 1.0}
        fam: dict[str, float] = defaultdict(float)
        for k, v in added.items():
            fam[family(k)] += v
        print(f"\n== {arch}: {len(session.specs)} sites; wall {bare_t.tokens_per_s:,.0f} -> "
              f"{scan_t.tokens_per_s:,.0f} tok/s ({scan_t.tokens_per_s / bare_t.tokens_per_s:.3f}x); "
              f"GPU kernel time bare {bare_total / 1e3:.1f} ms, scan {scan_total / 1e3:.1f} ms "
              f"(+{100 * (scan_total - bare_total) / bare_total:.1f}%)")
        for k, v in sorted(fam.items(), key=lambda kv: -kv[1]):
            print(f"  {k:24s} {v / 1e3:8.2f} ms  {100 * v / bare_total:5.2f}% of bare")
        for k, v in sorted(added.items(), key=lambda kv: -kv[1])[:14]:
            print(f"    {v / 1e3:8.2f} ms  {k}")
        (out_dir / f"profile_{arch.split(':')[-1]}.json").write_text(json.dumps(
            {"arch": arch, "bare_tok_s": bare_t.tokens_per_s, "scan_tok_s": scan_t.tokens_per_s,
             "bare_kernels_us": bare, "scan_kernels_us": scan}, indent=1))
        del session
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
