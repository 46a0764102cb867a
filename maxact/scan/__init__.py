"""maxact.scan: run a model over a corpus and record exact activation statistics per hook site.

    from maxact.scan import ScanConfig, scan
    result = scan(ScanConfig(model="random:tiny-qwen3", corpus="data.jsonl", out="results/tiny"))
    result.global_max_abs, result.global_max_site

The CLI ``python -m maxact.scan`` is a thin wrapper over ``scan``. Heavy modules (torch,
transformers) load on first use of ``scan``, so importing this package (and ``--help``) stays fast.
"""

from __future__ import annotations

from typing import Any

from maxact.scan.config import QUANTILES, ScanConfig
from maxact.scan.errors import ScanError, ScanInterrupted

__all__ = ["ScanConfig", "ScanError", "ScanInterrupted", "ScanResult", "LoopProbes", "QUANTILES", "scan",
           "bare_forward_throughput"]

_LAZY = {
    "scan": ("maxact.scan.runner", "scan"),
    "LoopProbes": ("maxact.scan.runner", "LoopProbes"),
    "ScanResult": ("maxact.scan.result", "ScanResult"),
    "bare_forward_throughput": ("maxact.scan.bench", "bare_forward_throughput"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'maxact.scan' has no attribute {name!r}")
