"""End-to-end check: a scan with the GPU kernels equals the same scan with the float64 reference backend.

Runs ``python -m maxact.scan`` on random-initialised models over a synthetic corpus once per backend (and
the kernels twice, to tell a nondeterministic forward from a kernel difference), then compares every
site's ``stats.json`` entry and sidecar arrays: counts, extrema, quantiles, histograms, channel and
sample maxima, top-k and the Sun criterion exactly; sums to a relative 1e-6. One JSON line per model.

Usage (on a GPU machine, repository root): python scripts/gpu_scan_backends.py OUT [--device cuda]
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

MODELS = ("random:gemma-3-270m", "random:tiny-qwen3-moe")
SCAN_ARGS = ("--corpus", "synthetic:24:3", "--max-seq-len", "512", "--tokens-per-batch", "4096", "--seed", "3")
SUMS = {"sum": "abs_sum", "sum_sq": "sum_sq", "abs_sum": "abs_sum", "mean": "abs_mean", "std": "rms",
        "rms": "rms", "abs_mean": "abs_mean"}
NOT_COMPARED = {"mean_ratio", "std_ratio"}   # float64 sums of ratios: compared with a tolerance below


def run_scan(model: str, backend: str, out: Path, device: str) -> Path:
    cmd = [sys.executable, "-m", "maxact.scan", "--model", model, "--backend", backend, "--device", device,
           "--out", str(out), *SCAN_ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return out


def close(a: float, b: float, scale: float, rtol: float = 1e-6) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= rtol * abs(scale) + 1e-300


def same(a, b) -> bool:
    """Equality of JSON values, NaN equal to NaN at any depth."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def diff_site(name: str, got: dict, want: dict) -> list[str]:
    errs = []
    for key, w in want.items():
        g = got.get(key)
        if key in SUMS:
            ok = close(g, w, want[SUMS[key]])
        elif key == "sun" and w is not None and g is not None:
            ok = all(close(g[k], v, v) if k in NOT_COMPARED and v is not None else same(g[k], v) for k, v in w.items())
        else:
            ok = same(g, w)
        if not ok:
            errs.append(f"{name}.{key}: {str(g)[:160]} vs {str(w)[:160]}")
    return errs


def diff_runs(a: Path, b: Path) -> list[str]:
    ja, jb = (json.loads((p / "stats.json").read_text()) for p in (a, b))
    errs = []
    for name, want in jb["sites"].items():
        errs += diff_site(name, ja["sites"].get(name, {}), want)
    sa, sb = load_file(str(a / "stats.safetensors")), load_file(str(b / "stats.safetensors"))
    for key, want in sb.items():
        if not np.array_equal(sa.get(key), want, equal_nan=True):
            errs.append(f"sidecar {key} differs")
    return errs


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "results/gpu_scan_backends")
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cuda"
    for model in MODELS:
        tag = model.split(":")[-1]
        try:
            kern = run_scan(model, "triton", out / tag / "triton", device)
            again = run_scan(model, "triton", out / tag / "triton-again", device)
            ref = run_scan(model, "reference", out / tag / "reference", device)
            repeat = diff_runs(again, kern)
            errs = diff_runs(kern, ref)
            sites = len(json.loads((ref / "stats.json").read_text())["sites"])
            print(json.dumps({"model": model, "sites": sites, "ok": not errs and not repeat,
                              "kernels_vs_reference": errs[:10], "n_diffs": len(errs),
                              "kernels_vs_kernels": repeat[:5]}), flush=True)
        except Exception as exc:  # one model failing still reports the others
            print(json.dumps({"model": model, "ok": False, "error": str(exc)[-2000:]}), flush=True)


if __name__ == "__main__":
    main()
