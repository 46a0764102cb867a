"""Compiled kernels on a CUDA device against the reference (on the same device), and no host sync.

The checks run in a fresh process (``tests/kernels/gpu_checks.py``): this process may already hold the
kernels in Triton's interpreter for the CPU tests. Skipped, with that reason, where no GPU is present.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiled Triton kernels)"),
]


@pytest.fixture(scope="module")
def gpu_results() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "tests.kernels.gpu_checks"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            results[rec["check"]] = rec
    assert results, f"no results from gpu_checks:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return results


def test_triton_equals_reference_on_gpu(gpu_results):
    bad = {k: v["detail"] for k, v in gpu_results.items() if k.startswith("exact") and not v["ok"]}
    assert not bad, "\n".join(f"{k}: {v}" for k, v in list(bad.items())[:10])
    assert sum(k.startswith("exact") for k in gpu_results) >= 36


def test_updates_never_sync(gpu_results):
    bad = {k: v["detail"] for k, v in gpu_results.items() if k.startswith("no host sync") and not v["ok"]}
    assert not bad, bad


def test_cuda_median_equals_torch(gpu_results):
    """The per-token median kernel against torch.nanmedian (run where cuda-core is installed)."""
    if gpu_results.get("cuda_hist available", {}).get("detail") != "True":
        pytest.skip("cuda-core is not installed: the CUDA median kernel does not run")
    checks = {k: v for k, v in gpu_results.items() if k.startswith("median")}
    bad = {k: v["detail"] for k, v in checks.items() if not v["ok"]}
    assert not bad, "\n".join(f"{k}: {v}" for k, v in list(bad.items())[:10])
    assert len(checks) >= 80
