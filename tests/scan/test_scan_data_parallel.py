"""A 2-process gloo scan (torchrun) equals the 1-process scan: order statistics bit for bit, sums to
1e-12. Both runs use one thread per process so the model computes the same activations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scan_helpers import write_corpus
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
FLOATY = {"sum", "sum_sq", "abs_sum", "mean", "std", "rms", "abs_mean", "mean_ratio", "std_ratio"}


def run(cmd, tmp_path, timeout=180):
    """Run a command in its own process group; on timeout the whole group (torchrun's workers) dies."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), MAXACT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s: {err[-3000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    return out


def compare(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            compare(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, f"{path}[{i}]")
    elif path.rsplit(".", 1)[-1] in FLOATY:
        assert b == pytest.approx(a, rel=1e-12, abs=1e-300), path
    else:
        assert a == b, path


@pytest.mark.parametrize("lengths", [[9, 14, 5, 14, 7, 3, 11, 14, 6], [6]])   # the second: one rank idle
def test_two_rank_scan_equals_one_process(tmp_path, lengths):
    corpus = write_corpus(tmp_path / "c.jsonl", lengths)
    args = ["-m", "maxact.scan", "--model", "random:tiny-qwen3", "--corpus", str(corpus), "--device", "cpu",
            "--dtype", "float32", "--backend", "reference", "--tokens-per-batch", "20", "-q"]
    run([sys.executable, *args, "--out", str(tmp_path / "one")], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         *args, "--out", str(tmp_path / "two")], tmp_path)
    one = json.loads((tmp_path / "one" / "stats.json").read_text())
    two = json.loads((tmp_path / "two" / "stats.json").read_text())
    assert two["metadata"]["world_size"] == 2 and one["metadata"]["world_size"] == 1
    assert two["metadata"]["num_tokens_scanned"] == one["metadata"]["num_tokens_scanned"] == sum(lengths)
    for key in ("sites", "global_max_abs", "global_max_site", "first_token", "coverage", "samples"):
        compare(one[key], two[key], key)
    s1, s2 = load_file(str(tmp_path / "one" / "stats.safetensors")), load_file(str(tmp_path / "two" / "stats.safetensors"))
    assert s1.keys() == s2.keys()
    for k in s1:
        assert np.array_equal(s1[k], s2[k]), k
