"""Turn merged states into a ScanResult: per-site summaries, metadata, end-of-scan warnings."""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Any

import numpy as np
import torch

from maxact.scan import pipeline
from maxact.scan.config import QUANTILES, ScanConfig
from maxact.scan.result import FLOAT16_MAX, SampleTable, ScanResult, SiteResult
from maxact.scan.sitestate import FIRST_SUFFIX


def site_result(spec: Any, states: dict[str, Any], totals: dict[str, Any], config: ScanConfig) -> SiteResult:
    """One site's SiteResult from its merged states (the only place summaries are synced to the host).

    With nothing skipped the reported statistics are ``merge(main, first)``: exactly those of one
    state that saw every position; under ``--skip-first-tokens`` they are ``main``'s alone.
    """
    from maxact_kernels import ActivationStats

    main = states[spec.name]
    first = states.get(spec.name + FIRST_SUFFIX)
    first_token = None
    if first is not None:
        report = ActivationStats.merge([main, first]) if config.skip_first_tokens == 0 else main
        without = pipeline.abs_max_value(main)
        pos0 = pipeline.abs_max_value(first)
        with_pos0 = max((v for v in (without, pos0) if not math.isnan(v)), default=math.nan)
        first_token = {"abs_max_without_pos0": without, "abs_max_pos0": pos0,
                       "abs_max_with_pos0": with_pos0}
    else:
        report = main
    summary = report.summary()
    qs = np.atleast_1d(report.quantile(list(QUANTILES)))
    return SiteResult(name=spec.name, component=spec.component, layer=spec.layer,
                      module=spec.module_name, num_channels=spec.num_channels, summary=summary,
                      quantiles={q: float(v) for q, v in zip(QUANTILES, qs)},
                      calls=int(totals["calls"].get(spec.name, 0)), first_token=first_token,
                      expert_tokens=totals["expert_tokens"].get(spec.name))


def build_result(config: ScanConfig, loaded: Any, corpus: Any, specs: list[Any], merged: dict[str, Any],
                 device: torch.device, plan: Any, ctx: Any, totals: dict[str, Any], *, wall: float) -> ScanResult:
    """The ScanResult of a finished scan (rank 0): sites in discovery order, metadata, warnings."""
    from maxact.scan.provenance import annotate

    sites = {spec.name: site_result(spec, merged, totals, config) for spec in specs}
    annotate(sites, corpus, getattr(loaded, "tokenizer", None))   # host side, from the corpus
    samples = SampleTable(category=corpus.category_codes(), category_names=corpus.category_names,
                          num_tokens=corpus.lengths(), corpus_index=corpus.corpus_indices())
    metadata = _metadata(config, loaded, corpus, device, plan, ctx, wall, totals["loop_time_s"],
                         totals["tokens"], totals["oom_splits"])
    backends = sorted({getattr(st, "backend", config.backend) for st in merged.values()})
    metadata["backend"] = ",".join(backends) if backends else config.backend
    metadata["preflight"] = _preflight(plan, device)
    result = ScanResult(config=config, metadata=metadata, sites=sites, samples=samples)
    result.warnings.extend(_warnings(config, result))
    return result


def _metadata(config: ScanConfig, loaded: Any, corpus: Any, device: torch.device, plan: Any, ctx: Any,
              wall: float, loop_time: float, tokens: int, oom_splits: int) -> dict[str, Any]:
    import maxact

    try:
        import transformers
        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency
        tf_version = None
    corpus_md = corpus.metadata()
    return {
        "model_name": loaded.name,
        "model_path": loaded.path,
        "model_type": loaded.model_type,
        "num_layers": loaded.num_layers,
        "hidden_size": loaded.hidden_size,
        "dtype": config.dtype,
        "attn_implementation": loaded.attn_implementation,
        "device": _device_text(device, config),
        "maxact_version": maxact.__version__,
        "torch_version": torch.__version__,
        "transformers_version": tf_version,
        "backend": config.backend,
        "corpus": corpus_md,
        "max_seq_len": config.max_seq_len,
        "tokens_per_batch": config.tokens_per_batch,
        "skip_first_tokens": config.skip_first_tokens,
        "num_batches": plan.num_batches,
        "padding_fraction": plan.padding_fraction,
        "longest_sample": plan.longest_sample,
        "num_tokens_scanned": tokens,
        "world_size": ctx.world_size,
        "oom_splits": oom_splits,
        "wall_time_s": wall,
        "scan_time_s": loop_time,
        "tokens_per_s": tokens / loop_time if loop_time > 0 else math.nan,
        "sun": {"t_val": config.sun_t_val, "t_ratio": config.sun_t_ratio},
        "hostname": platform.node(),
        "created_unix": time.time(),
        "config": config.to_dict(),
    }


def _preflight(plan: Any, device: torch.device) -> dict[str, Any]:
    """The pre-flight estimates (memory, warm-up ETA) and, on CUDA, the peak actually allocated."""
    out = {k: v for k, v in getattr(plan, "estimates", {}).items() if not isinstance(v, str)}
    if device.type == "cuda":
        out["measured_peak_allocated"] = int(torch.cuda.max_memory_allocated(device))
    return out


def _device_text(device: torch.device, config: ScanConfig) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{device} ({name})" + (f", device_map={config.device_map}" if config.device_map else "")
    return f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _warnings(config: ScanConfig, result: ScanResult) -> list[str]:
    out = []
    m = result.global_max_abs
    has_inf = any(int(s.summary["posinf_count"]) + int(s.summary["neginf_count"]) for s in result.m_sites)
    if config.dtype == "float16" and (has_inf or (not math.isnan(m) and m >= FLOAT16_MAX)):
        out.append(f"float16 run: activations reach {m:.6g} (float16 max 65504) or overflow to inf; "
                   "the statistics are clipped. Scan with --dtype bfloat16.")
    bad = result.nonfinite_sites()
    if bad:
        out.append(f"NaN/inf activations in {len(bad)} site(s), first {bad[0].name} "
                   f"(counted, excluded from sums; stats.json: nonfinite)")
    never = result.never_fired()
    if never:
        out.append(f"{len(never)} hooked site(s) never received a tensor (the forward bypasses them): "
                   + ", ".join(never[:6]) + (" ..." if len(never) > 6 else ""))
    starved = result.starved_experts(config.min_expert_tokens)
    if starved:
        names = [f"{e['site']} expert {e['expert']} ({e['tokens']} tokens)" for e in starved]
        out.append(f"{len(starved)} MoE expert(s) received fewer than {config.min_expert_tokens} tokens; their "
                   "statistics cannot be trusted (stats.json: experts): "
                   + ", ".join(names[:12]) + (f" ... (+{len(names) - 12})" if len(names) > 12 else ""))
    return out
