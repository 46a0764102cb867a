"""GPU checks of the scan loop (skipped without CUDA): no host sync from maxact inside a batch, and
the OOM split on a real CUDA device. Runs ``gpu_scan_checks.py`` in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_scan_checks():
    script = Path(__file__).with_name("gpu_scan_checks.py")
    out = subprocess.run([sys.executable, str(script), "0", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    checks = {r["check"]: r for r in map(json.loads, out.stdout.splitlines()) if "check" in r}
    syncs = checks["syncs_per_batch[random:tiny-qwen3]"]
    # transformers' own mask preparation may sync (masking_utils); nothing in maxact may.
    ours = {k: v for k, v in syncs.get("where", {}).items() if "maxact" in k or k.split(":")[0] in
            {"runner.py", "sitestate.py", "pipeline.py", "hooks.py", "stats.py", "faults.py"}}
    assert not ours, syncs
    assert checks["oom_split_cuda"]["ok"], checks["oom_split_cuda"]
