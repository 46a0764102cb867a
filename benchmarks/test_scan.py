"""Scan throughput against the bare forward, measured on the same batches in the same process.

    pytest benchmarks/test_scan.py --benchmark-only -s

On a GPU: random-initialised Qwen2.5-1.5B and Qwen3-8B architectures (bf16, sdpa, 4096-token rows),
maxact with its default statistics, and (issue 8) a ``--sites linear-inputs`` scan against plain forward
pre-hooks that keep each nn.Linear's per-input-channel max |x| (what SmoothQuant-style calibration does).
Without a GPU those skip with the reason, and a tiny CPU model still runs so the harness is exercised.
Every ratio printed is to the bare forward timed in the same test.
"""

from __future__ import annotations

import pytest
import torch

from maxact.scan import ScanConfig
from maxact.scan.bench import Throughput, prepare, time_bare, time_scan

GPU_CASES = {
    # name: (architecture, rows of 4096 tokens per batch, batches timed)
    "qwen2.5-1.5b": ("random:qwen2.5-1.5b", 8, 10),
    "qwen3-8b": ("random:qwen3-8b", 4, 8),
}


def _report(name: str, bare: Throughput, rows: dict[str, Throughput]) -> None:
    print(f"\n{name}: bare {bare.tokens_per_s:,.0f} tok/s")
    for label, t in rows.items():
        print(f"  {label:28s} {t.tokens_per_s:12,.0f} tok/s  {t.tokens_per_s / bare.tokens_per_s:.3f}x bare")


def time_plain_amax_hooks(session, warmup: int = 1) -> Throughput:
    """Bare forward plus one forward pre-hook per nn.Linear doing ``max(buf, amax(|x|, rows))``: the
    usual way calibration tools collect per-input-channel maxima (padding rows included, as they do)."""
    handles = []
    for module in session.model.model.modules():
        if isinstance(module, torch.nn.Linear):
            buf = torch.zeros(module.in_features, device=session.device, dtype=torch.float32)

            def hook(mod, args, buf=buf):
                x = args[0].reshape(-1, buf.numel())
                torch.maximum(buf, x.abs().amax(dim=0).float(), out=buf)

            handles.append(module.register_forward_pre_hook(hook))
    try:
        return time_bare(session, warmup)
    finally:
        for h in handles:
            h.remove()


def _gpu_config(arch: str, rows: int, batches: int, **kw) -> ScanConfig:
    # a few spare samples: the timed batches are the first `batches`, all full 4096-token rows
    return ScanConfig(model=arch, corpus=f"synthetic:{rows * batches + 8}:0", max_seq_len=4096,
                      tokens_per_batch=rows * 4096, device="cuda", dtype="bfloat16", attn="sdpa",
                      progress=False, **kw)


def _prepare_full_rows(config: ScanConfig, batches: int):
    """The issue's setting: `batches` batches of full 4096-token sequences (no short tail batches, whose
    fixed per-hook cost would measure launch overhead rather than the scan)."""
    session = prepare(config, batches)
    shapes = {(b.batch_size, b.seq_len, b.num_tokens) for b in session.batches}
    rows = config.tokens_per_batch // 4096
    assert len(session.batches) == batches and shapes == {(rows, 4096, rows * 4096)}, shapes
    return session


@pytest.mark.parametrize("name", list(GPU_CASES))
def test_scan_vs_bare_gpu(benchmark, gpu, name):
    arch, rows, batches = GPU_CASES[name]
    session = _prepare_full_rows(_gpu_config(arch, rows, batches), batches)
    bare = time_bare(session)
    scanned = benchmark.pedantic(time_scan, args=(session,), rounds=1, iterations=1)
    bare_again = time_bare(session)
    _report(name, bare, {"maxact (defaults)": scanned, "bare again": bare_again})
    assert scanned.tokens == bare.tokens


def test_linear_inputs_vs_amax_hooks_gpu(benchmark, gpu):
    arch, rows, batches = GPU_CASES["qwen3-8b"]
    session = _prepare_full_rows(_gpu_config(arch, rows, batches, sites="linear-inputs"), batches)
    bare = time_bare(session)
    plain = time_plain_amax_hooks(session)
    scanned = benchmark.pedantic(time_scan, args=(session,), rounds=1, iterations=1)
    _report("qwen3-8b linear inputs", bare, {"plain amax pre-hooks": plain, "maxact --sites linear-inputs": scanned})
    assert scanned.tokens == bare.tokens


def test_scan_vs_bare_cpu_tiny(benchmark):
    """Exercises the harness anywhere: a tiny random model on the CPU with the float64 reference."""
    session = prepare(ScanConfig(model="random:tiny-qwen3", corpus="synthetic:8:0", max_seq_len=64,
                                 tokens_per_batch=256, device="cpu", dtype="float32", backend="reference",
                                 progress=False))
    bare = time_bare(session)
    scanned = benchmark.pedantic(time_scan, args=(session,), rounds=1, iterations=1)
    _report("tiny-qwen3 (cpu)", bare, {"maxact (reference backend)": scanned})
    assert scanned.tokens == bare.tokens > 0
