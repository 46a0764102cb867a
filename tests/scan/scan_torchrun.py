"""Helpers of the torchrun (gloo) scan tests: bounded subprocess runs and result comparison.

Every run uses one thread per process so a batch computes the same activations whichever process
runs it; a run that exceeds its timeout is killed with its whole process group (torchrun's workers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
FLOATY = {"sum", "sum_sq", "abs_sum", "mean", "std", "rms", "abs_mean", "mean_ratio", "std_ratio"}
TINY = ["--model", "random:tiny-qwen3", "--device", "cpu", "--dtype", "float32", "--backend", "reference",
        "--tokens-per-batch", "20"]


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run(cmd, cwd: Path, *, timeout: float = 180, env: dict | None = None, cache: Path | None = None,
        check: bool = True) -> Done:
    """Run ``cmd`` in its own process group; on timeout kill the group and fail the test."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
                    MAXACT_CACHE=str(cache or Path(cwd) / "cache"))
    full_env.pop("MAXACT_TEST_FAULT", None)
    full_env.update(env or {})
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s: {err[-3000:]}") from None
    done = Done(proc.returncode, out, err, time.monotonic() - t0)
    if check:
        assert done.returncode == 0, err[-3000:]
    return done


def scan_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "maxact.scan", *args]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "maxact.scan", *args]


def compare(a, b, path=""):
    """Equal bit for bit, except sums and moments (1e-12 relative); NaN equals NaN, None equals None."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            compare(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, f"{path}[{i}]")
    elif a is None or b is None:   # e.g. a Sun ratio over no candidate token
        assert a is None and b is None, path
    elif isinstance(a, float) and a != a:   # NaN (e.g. no token passed): the same on both sides
        assert isinstance(b, float) and b != b, path
    elif path.rsplit(".", 1)[-1] in FLOATY:
        assert b == pytest.approx(a, rel=1e-12, abs=1e-300), path
    else:
        assert a == b, path


def assert_same_results(one: Path, two: Path) -> tuple[dict, dict]:
    """stats.json (statistics parts) and the whole sidecar of two scans agree; returns both documents."""
    a = json.loads((one / "stats.json").read_text())
    b = json.loads((two / "stats.json").read_text())
    assert a["metadata"]["num_tokens_scanned"] == b["metadata"]["num_tokens_scanned"]
    for key in ("sites", "global_max_abs", "global_max_value", "global_max_site", "first_token", "coverage",
                "samples"):
        compare(a[key], b[key], key)
    s1, s2 = load_file(str(one / "stats.safetensors")), load_file(str(two / "stats.safetensors"))
    assert s1.keys() == s2.keys()
    for k in s1:   # histograms, per-channel and per-sample maxima: bit for bit
        assert s1[k].dtype == s2[k].dtype and np.array_equal(s1[k], s2[k]), k
    return a, b
